// device.cu: facts about the CUDA runtime and devices, for build_info() and backends().
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "cuda/cuda_common.cuh"

namespace dk::cuda {

int device_count() {
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  if (err == cudaErrorNoDevice || err == cudaErrorInsufficientDriver) {
    cudaGetLastError();  // clear the sticky-free error state
    return 0;
  }
  DK_CUDA_CHECK(err);
  return n;
}

int runtime_version() {
  int v = 0;
  DK_CUDA_CHECK(cudaRuntimeGetVersion(&v));
  return v;
}

}  // namespace dk::cuda
