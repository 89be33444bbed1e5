// dropout.cu: inverted dropout on the GPU with the CPU's counter-based mask.
//
//   mask[i] = philox4x32_10(i / 4, seed)[i % 4] >= floor(p * 2^32)      (uint8 0/1)
//   y[i]    = x[i] * (mask[i] ? scale : 0),   scale = float(1 / (1 - p)) computed in double
//   dx[i]   = dy[i] * (mask[i] ? scale : 0)
// p = 1 gives zeros (no 1/0). The generator is the same function as on the CPU
// (common/philox.h compiles for both), so a seed gives the same mask bits on both backends,
// and the products are the same float multiplications: y and dx are bitwise the CPU's too.
// One thread handles one Philox call, i.e. the 4 elements 4t .. 4t+3. Memory-bound.
#include <cstdint>

#include "common/philox.h"

namespace dk::cuda::dropout {

// Elements 4t .. min(4t + 4, n) - 1: mask, and y = x * (mask ? scale : 0) when x is given
// (x == null: the mask only). drop_all (p == 1) writes zeros, as the CPU.
DK_HOST_DEVICE void forward_group(float* y, uint8_t* mask, const float* x, int64_t n,
                                  uint64_t threshold, float scale, bool drop_all, uint64_t seed,
                                  int64_t t) {
  const Philox4 r = philox4x32_10(static_cast<uint64_t>(t), seed);
  const int64_t i0 = 4 * t;
  for (int j = 0; j < 4 && i0 + j < n; ++j) {
    const bool keep = static_cast<uint64_t>(r.v[j]) >= threshold;
    mask[i0 + j] = keep ? 1 : 0;
    if (x) y[i0 + j] = drop_all ? 0.0f : x[i0 + j] * (keep ? scale : 0.0f);
  }
}

// Element i of the backward.
DK_HOST_DEVICE void backward_element(float* dx, const float* dy, const uint8_t* mask, float scale,
                                     bool drop_all, int64_t i) {
  dx[i] = drop_all ? 0.0f : dy[i] * (mask[i] ? scale : 0.0f);
}

// The scale as the CPU computes it: 1/(1-p) in double, rounded once to float; 0 when p == 1.
inline float scale_of(double p) { return p >= 1.0 ? 0.0f : static_cast<float>(1.0 / (1.0 - p)); }

}  // namespace dk::cuda::dropout

// ==================================================================== kernels (nvcc only)
#if defined(__CUDACC__)
#include "cuda/cuda_common.cuh"
#include "cuda/kernels_cuda.h"

namespace dk::cuda {

namespace dropout {

__global__ void forward_kernel(float* y, uint8_t* mask, const float* x, int64_t n,
                               uint64_t threshold, float scale, bool drop_all, uint64_t seed) {
  const int64_t groups = (n + 3) / 4;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < groups;
       t += int64_t(gridDim.x) * blockDim.x)
    forward_group(y, mask, x, n, threshold, scale, drop_all, seed, t);
}

__global__ void backward_kernel(float* dx, const float* dy, const uint8_t* mask, int64_t n,
                                float scale, bool drop_all) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    backward_element(dx, dy, mask, scale, drop_all, i);
}

}  // namespace dropout

void dropout_forward(float* y, uint8_t* mask, const float* x, int64_t n, double p, uint64_t seed,
                     cudaStream_t stream) {
  if (n <= 0) return;
  dropout::forward_kernel<<<grid_for(ceil_div(n, 4)), kThreads, 0, stream>>>(
      y, mask, x, n, dropout_threshold(p), dropout::scale_of(p), p >= 1.0, seed);
  DK_CUDA_CHECK_LAUNCH();
}

void dropout_mask(uint8_t* mask, int64_t n, double p, uint64_t seed, cudaStream_t stream) {
  dropout_forward(nullptr, mask, nullptr, n, p, seed, stream);
}

void dropout_backward(float* dx, const float* dy, const uint8_t* mask, int64_t n, double p,
                      cudaStream_t stream) {
  if (n <= 0) return;
  dropout::backward_kernel<<<grid_for(n), kThreads, 0, stream>>>(dx, dy, mask, n,
                                                                 dropout::scale_of(p), p >= 1.0);
  DK_CUDA_CHECK_LAUNCH();
}

}  // namespace dk::cuda
#endif  // __CUDACC__
