// activation.cu: ReLU forward and backward on the GPU, element-wise over any shape.
//
//   y  = x < 0 ? 0 : x        (NaN propagates, as in PyTorch and the CPU backend)
//   dx = y <= 0 ? 0 : dy      (PyTorch's threshold_backward: a NaN y passes dy through)
// No arithmetic, so the results are bitwise the CPU's. Memory-bound: a grid-stride loop.
#include <cstdint>

#include "common/philox.h"  // DK_HOST_DEVICE

namespace dk::cuda::act {

DK_HOST_DEVICE void relu_element(float* y, const float* x, int64_t i) {
  y[i] = x[i] < 0.0f ? 0.0f : x[i];
}

DK_HOST_DEVICE void relu_backward_element(float* dx, const float* dy, const float* y, int64_t i) {
  dx[i] = y[i] <= 0.0f ? 0.0f : dy[i];
}

}  // namespace dk::cuda::act

// ==================================================================== kernels (nvcc only)
#if defined(__CUDACC__)
#include "cuda/cuda_common.cuh"
#include "cuda/kernels_cuda.h"

namespace dk::cuda {

namespace act {

__global__ void relu_kernel(float* y, const float* x, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    relu_element(y, x, i);
}

__global__ void relu_backward_kernel(float* dx, const float* dy, const float* y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    relu_backward_element(dx, dy, y, i);
}

}  // namespace act

void relu_forward(float* y, const float* x, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  act::relu_kernel<<<grid_for(n), kThreads, 0, stream>>>(y, x, n);
  DK_CUDA_CHECK_LAUNCH();
}

void relu_backward(float* dx, const float* dy, const float* y, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  act::relu_backward_kernel<<<grid_for(n), kThreads, 0, stream>>>(dx, dy, y, n);
  DK_CUDA_CHECK_LAUNCH();
}

}  // namespace dk::cuda
#endif  // __CUDACC__
