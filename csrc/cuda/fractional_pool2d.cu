// fractional_pool2d.cu: fractional max pooling on the GPU, forward (the backward is
// max_pool2d_backward, as on the CPU).
//
// One thread per output: it computes the start of its row and its column region from the
// plane's two samples (common/fractional.h: the CPU's formula, rounded the same way; the CPU
// computes each plane's starts once instead) and scans the region in the CPU's order, so the
// values and indices are bitwise those of the CPU backend. Deterministic (no atomics).
// float32 only, like every CUDA kernel of deepkern.
#include <cstdint>

#include "common/fractional.h"

namespace dk::cuda::fractional {

// Output element o (flat over N*C*OH*OW).
DK_HOST_DEVICE void forward_element(float* y, int64_t* idx, const float* x, const float* samples,
                                    const FractionalPool2dParams& p, int64_t o) {
  const int64_t OHW = p.OH * p.OW, q = o / OHW, r = o % OHW, oh = r / p.OW, ow = r % p.OW;
  const int64_t h0 = fractional_start<float>(samples[2 * q + 1], oh, p.H, p.OH, p.KH);
  const int64_t w0 = fractional_start<float>(samples[2 * q], ow, p.W, p.OW, p.KW);
  fractional_region_max<float>(x + q * p.H * p.W, p.W, h0, w0, p.KH, p.KW, y + o, idx + o);
}

}  // namespace dk::cuda::fractional

// ==================================================================== kernels (nvcc only)
#if defined(__CUDACC__)
#include "common/check.h"
#include "cuda/cuda_common.cuh"
#include "cuda/kernels_cuda.h"

namespace dk::cuda {

namespace fractional {

__global__ void forward_kernel(float* y, int64_t* idx, const float* x, const float* samples,
                               const FractionalPool2dParams p, int64_t total) {
  for (int64_t o = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; o < total;
       o += int64_t(gridDim.x) * blockDim.x)
    forward_element(y, idx, x, samples, p, o);
}

}  // namespace fractional

void fractional_max_pool2d_forward(float* y, int64_t* idx, const float* x, const float* samples,
                                   const FractionalPool2dParams& p, cudaStream_t stream) {
  const int64_t total = p.N * p.C * p.OH * p.OW;
  if (total == 0) return;
  fractional::forward_kernel<<<grid_for(total), kThreads, 0, stream>>>(y, idx, x, samples, p, total);
  DK_CUDA_CHECK_LAUNCH();
}

}  // namespace dk::cuda
#endif  // __CUDACC__
