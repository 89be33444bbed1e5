// array_check.h: unwrapping NumPy arrays at the binding boundary.
//
// Every array reaches C++ as a py::array bound with .noconvert(): pybind11 never makes a
// silent copy (which would lose an in-place write, RELIABILITY.md C3). Here each one is
// checked for dtype, C-contiguity, writeability (for outputs) and shape, with a message that
// names the argument; then its raw pointer is taken while the GIL is still held.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "common/check.h"

namespace dk::py_bind {

namespace py = pybind11;

inline std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

template <class T>
void check_array(const py::array& a, const char* name) {
  if (!py::isinstance<py::array_t<T>>(a) || !a.dtype().is(py::dtype::of<T>()))
    throw py::type_error(str_cat(name, " must be ", py::str(py::dtype::of<T>()).cast<std::string>(),
                                 ", got ", py::str(a.dtype()).cast<std::string>()));
  DK_CHECK(a.flags() & py::array::c_style, name, " must be C-contiguous");
  // NumPy allows views at any byte offset; loading a float from one is undefined behaviour.
  DK_CHECK(reinterpret_cast<std::uintptr_t>(a.data()) % alignof(T) == 0, name,
           " must be aligned to its item size");
}

template <class T>
const T* in_ptr(const py::array& a, const char* name) {
  check_array<T>(a, name);
  return static_cast<const T*>(a.data());
}

template <class T>
T* out_ptr(py::array& a, const char* name) {
  check_array<T>(a, name);
  DK_CHECK(a.writeable(), name, " is not writeable");
  return static_cast<T*>(a.mutable_data());
}

inline void check_shape(const py::array& a, const char* name, std::initializer_list<int64_t> want) {
  bool ok = a.ndim() == static_cast<py::ssize_t>(want.size());
  py::ssize_t i = 0;
  for (int64_t d : want) {
    if (!ok) break;
    ok = a.shape(i++) == d;
  }
  if (!ok) {
    std::string w = "(";
    i = 0;
    for (int64_t d : want) w += (i++ ? ", " : "") + std::to_string(d);
    w += want.size() == 1 ? ",)" : ")";
    DK_CHECK(false, name, " has shape ", shape_str(a), ", expected ", w);
  }
}

inline void check_size(const py::array& a, const char* name, int64_t n) {
  DK_CHECK(a.size() == n, name, " has ", a.size(), " elements, expected ", n);
}

// Call f(T{}) with T = float or double according to `a`'s dtype.
template <class F>
auto dispatch_float(const py::array& a, const char* name, F&& f) {
  if (a.dtype().is(py::dtype::of<float>())) return f(float{});
  if (a.dtype().is(py::dtype::of<double>())) return f(double{});
  throw py::type_error(str_cat(name, ": unsupported dtype ", py::str(a.dtype()).cast<std::string>(),
                               " (float32 or float64 expected)"));
}

}  // namespace dk::py_bind
