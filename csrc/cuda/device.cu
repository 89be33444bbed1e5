// device.cu: facts about the CUDA runtime, the driver and the devices, for build_info() and
// backends(). Nothing here throws on a machine without a driver or a GPU: the Python layer
// asks probe_error() and reports the backend as unavailable with that reason.
#include <cuda_runtime.h>

#include <string>

#include "cuda/cuda_common.cuh"

namespace dk::cuda {

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the error so it is not reported by a later, unrelated check
    return 0;
  }
  return n;
}

int runtime_version() {
  int v = 0;
  DK_CUDA_CHECK(cudaRuntimeGetVersion(&v));
  return v;
}

int driver_version() {
  int v = 0;
  if (cudaDriverGetVersion(&v) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return v;
}

std::string probe_error() {
  const int drv = driver_version();
  if (drv == 0) return "no CUDA driver is installed (libcuda was not found)";
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return std::string("the CUDA driver reports ") + cudaGetErrorName(err) + ": " +
           cudaGetErrorString(err);
  }
  if (n == 0) return "no CUDA device is visible";
  return "";
}

}  // namespace dk::cuda
