// cuda_common.cuh: error checking and small helpers shared by the CUDA kernels.
//
// DK_CUDA_CHECK throws std::runtime_error with file:line (never exit(): we live inside a
// Python process; pybind11 turns it into RuntimeError).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#define DK_CUDA_CHECK(expr)                                                                  \
  do {                                                                                       \
    cudaError_t dk_err_ = (expr);                                                            \
    if (dk_err_ != cudaSuccess)                                                              \
      throw std::runtime_error(std::string("CUDA error at ") + __FILE__ + ":" +              \
                               std::to_string(__LINE__) + ": " + cudaGetErrorString(dk_err_) + \
                               " (" #expr ")");                                             \
  } while (0)

namespace dk::cuda {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int device_count();
int runtime_version();

}  // namespace dk::cuda
