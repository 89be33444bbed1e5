// check.h: the two kinds of checks in deepkern's C++.
//
//   DK_CHECK(cond, msg...)   an argument the caller got wrong -> std::invalid_argument,
//                            which pybind11 turns into a Python ValueError. The Python layer
//                            validates first; these re-checks make calling _C directly safe.
//   DK_ASSERT(cond)          an invariant of our own code -> std::logic_error
//                            ("internal error, please report"), with file:line.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace dk {

template <class... Args>
inline std::string str_cat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

}  // namespace dk

#define DK_CHECK(cond, ...)                                            \
  do {                                                                 \
    if (!(cond)) throw std::invalid_argument(::dk::str_cat(__VA_ARGS__)); \
  } while (0)

#define DK_ASSERT(cond)                                                             \
  do {                                                                              \
    if (!(cond))                                                                    \
      throw std::logic_error(::dk::str_cat("deepkern internal error at ", __FILE__, \
                                           ":", __LINE__, ": ", #cond,              \
                                           " (please report)"));                    \
  } while (0)
