// threading.cpp: the process-wide threshold of threading.h (one definition, in a baseline file).
#include "cpu/threading.h"

#include <cstdlib>

namespace dk::cpu {

// DEEPKERN_PARALLEL_MIN_NS overrides kMinNsPerThread (read once): 0 lets every kernel split
// even tiny jobs, which the thread-count invariance tests need to exercise the splits.
double parallel_min_ns() {
  static const double ns = [] {
    const char* e = std::getenv("DEEPKERN_PARALLEL_MIN_NS");
    return e && *e ? std::atof(e) : kMinNsPerThread;
  }();
  return ns;
}

}  // namespace dk::cpu
