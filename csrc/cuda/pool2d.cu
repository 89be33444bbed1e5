// pool2d.cu: max and average pooling on the GPU, forward and backward.
//
// Shape legend and semantics exactly as cpu/pool2d.cpp (read it first): N*C independent
// planes; idx = ih*W + iw, the flat index into the input plane; NaN wins (the last NaN of the
// window, as PyTorch); ties keep the first occurrence in row-major order; the average window
// is clipped to the padded input [-ph, H+ph) and divided by the clipped size
// (count_include_pad) or by the number of real taps.
//
// Every kernel computes each output element with the same operations in the same order as the
// CPU loop, so the results are bitwise identical to the CPU backend's, and deterministic:
//   max forward    one thread per output, the CPU's window loop.
//   avg forward    one thread per output, the CPU's window loop: the window's row sums (each
//                  from +0, left to right) added from +0 top to bottom, then one IEEE
//                  division.
//   avg backward   a gather: one thread per input element; g = dy / divisor of the
//                  outputs whose window covers it, added by rows (each from +0, ascending ow)
//                  and the rows from +0 in ascending oh: the CPU's gather order.
//   max backward   max_pool2d_backward gets only the indices, not the window geometry, so an
//                  input element cannot tell which outputs might point at it. One warp owns
//                  one plane and walks the outputs in batches of 32, in order; within a batch,
//                  the lowest lane of each group of equal indices adds the group's gradients in
//                  lane order. That is the CPU's sequential "dx[idx[o]] += dy[o]" for o
//                  ascending, done 32 outputs at a time: the same additions in the same order.
//                  An index outside its plane is skipped (no out-of-bounds write) and reported.
#include <cmath>
#include <cstdint>

#include "common/params.h"
#include "common/philox.h"  // DK_HOST_DEVICE

namespace dk::cuda::pool {

constexpr int kWarp = 32;

// The window of output (oh, ow) for average pooling: taps inside the input and the divisor.
// Same arithmetic as avg_window in cpu/pool2d.cpp.
struct AvgWindow {
  int64_t hs, he, ws, we;  // taps inside the input: [hs, he) x [ws, we)
  int64_t divisor;
};

DK_HOST_DEVICE AvgWindow avg_window(const Pool2dParams& p, int64_t oh, int64_t ow) {
  int64_t hs = oh * p.sh - p.ph, ws = ow * p.sw - p.pw;
  int64_t he = hs + p.kh < p.H + p.ph ? hs + p.kh : p.H + p.ph;
  int64_t we = ws + p.kw < p.W + p.pw ? ws + p.kw : p.W + p.pw;
  const int64_t padded = (he - hs) * (we - ws);
  hs = hs < 0 ? 0 : hs;
  ws = ws < 0 ? 0 : ws;
  he = he < p.H ? he : p.H;
  we = we < p.W ? we : p.W;
  const int64_t inside = (he > hs ? he - hs : 0) * (we > ws ? we - ws : 0);
  return {hs, he, ws, we, p.count_include_pad ? padded : inside};
}

// Output element o (flat over N*C*OH*OW) of max pooling.
DK_HOST_DEVICE void max_forward_element(float* y, int64_t* idx, const float* x,
                                        const Pool2dParams& p, int64_t o) {
  const int64_t OHW = p.OH * p.OW, q = o / OHW, r = o % OHW, oh = r / p.OW, ow = r % p.OW;
  const float* xp = x + q * p.H * p.W;
  const int64_t h0 = oh * p.sh - p.ph, w0 = ow * p.sw - p.pw;
  int64_t hs = h0, ws = w0;
  const int64_t he = h0 + (p.kh - 1) * p.dh + 1 < p.H ? h0 + (p.kh - 1) * p.dh + 1 : p.H;
  const int64_t we = w0 + (p.kw - 1) * p.dw + 1 < p.W ? w0 + (p.kw - 1) * p.dw + 1 : p.W;
  while (hs < 0) hs += p.dh;  // first tap inside the input
  while (ws < 0) ws += p.dw;
  float best = -INFINITY;
  // a valid in-plane index even if every tap is -inf or no tap is inside (then y = -inf)
  int64_t besti = (hs < p.H - 1 ? hs : p.H - 1) * p.W + (ws < p.W - 1 ? ws : p.W - 1);
  for (int64_t ih = hs; ih < he; ih += p.dh) {
    for (int64_t iw = ws; iw < we; iw += p.dw) {
      const float v = xp[ih * p.W + iw];
      if (v > best || v != v) {  // v != v: NaN (isnan without <cmath> host/device overloads)
        best = v;
        besti = ih * p.W + iw;
      }
    }
  }
  y[o] = best;
  idx[o] = besti;
}

// Output element o of average pooling.
DK_HOST_DEVICE void avg_forward_element(float* y, const float* x, const Pool2dParams& p, int64_t o) {
  const int64_t OHW = p.OH * p.OW, q = o / OHW, r = o % OHW, oh = r / p.OW, ow = r % p.OW;
  const float* xp = x + q * p.H * p.W;
  const AvgWindow a = avg_window(p, oh, ow);
  float s = 0.0f;
  for (int64_t ih = a.hs; ih < a.he; ++ih) {
    float r = 0.0f;
    for (int64_t iw = a.ws; iw < a.we; ++iw) r += xp[ih * p.W + iw];
    s += r;
  }
  y[o] = a.divisor > 0 ? s / static_cast<float>(a.divisor) : 0.0f;
}

// Input element i (flat over N*C*H*W) of the average-pooling gradient: the outputs whose
// window [oh*sh - ph, oh*sh - ph + kh) covers row ih are oh in [ceil((ih+ph-kh+1)/sh),
// floor((ih+ph)/sh)] within [0, OH) (clipping to the padded input never removes a real row).
DK_HOST_DEVICE void avg_backward_element(float* dx, const float* dy, const Pool2dParams& p,
                                         int64_t i) {
  const int64_t HW = p.H * p.W, q = i / HW, r = i % HW, ih = r / p.W, iw = r % p.W;
  const float* dyp = dy + q * p.OH * p.OW;
  const int64_t th = ih + p.ph - p.kh + 1, tw = iw + p.pw - p.kw + 1;
  const int64_t oh0 = th <= 0 ? 0 : (th + p.sh - 1) / p.sh;
  const int64_t ow0 = tw <= 0 ? 0 : (tw + p.sw - 1) / p.sw;
  const int64_t oh1 = (ih + p.ph) / p.sh < p.OH - 1 ? (ih + p.ph) / p.sh : p.OH - 1;
  const int64_t ow1 = (iw + p.pw) / p.sw < p.OW - 1 ? (iw + p.pw) / p.sw : p.OW - 1;
  float s = 0.0f;
  for (int64_t oh = oh0; oh <= oh1; ++oh) {
    float r = 0.0f;
    for (int64_t ow = ow0; ow <= ow1; ++ow) {
      const AvgWindow a = avg_window(p, oh, ow);
      if (a.divisor <= 0) continue;  // (adding +0 instead would give the same bits)
      r += dyp[oh * p.OW + ow] / static_cast<float>(a.divisor);
    }
    s += r;
  }
  dx[i] = s;
}

// Max-pooling backward, one batch of up to 32 outputs [base, base + 32) of plane q, in two
// steps separated by a warp barrier (see the kernel). `sj`, `sv`: the warp's 32 staging slots.
// Step 1, lane l: stage (index, gradient) of output base + l; -1 = no output / bad index.
// Returns the flat position of a bad index, or -1.
DK_HOST_DEVICE int64_t max_backward_stage(int64_t* sj, float* sv, const float* dy,
                                          const int64_t* idx, int64_t q, int64_t HW, int64_t OHW,
                                          int64_t base, int lane) {
  const int64_t o = base + lane;
  int64_t j = -1, bad = -1;
  float v = 0.0f;
  if (o < OHW) {
    j = idx[q * OHW + o];
    v = dy[q * OHW + o];
    if (j < 0 || j >= HW) {
      bad = q * OHW + o;
      j = -1;
    }
  }
  sj[lane] = j;
  sv[lane] = v;
  return bad;
}

// Step 2, lane l: if l is the first lane of the batch holding its index j, add the gradients of
// all lanes holding j, in lane order, to dxp[j]. Different leaders own different j.
DK_HOST_DEVICE void max_backward_scatter(float* dxp, const int64_t* sj, const float* sv, int lane) {
  const int64_t j = sj[lane];
  if (j < 0) return;
  for (int l = 0; l < lane; ++l)
    if (sj[l] == j) return;  // an earlier lane leads this index
  float acc = dxp[j];
  for (int l = lane; l < kWarp; ++l)
    if (sj[l] == j) acc += sv[l];
  dxp[j] = acc;
}

}  // namespace dk::cuda::pool

// ==================================================================== kernels (nvcc only)
#if defined(__CUDACC__)
#include <string>

#include "common/check.h"
#include "cuda/cuda_common.cuh"
#include "cuda/kernels_cuda.h"

namespace dk::cuda {

namespace pool {

constexpr int kWarpsPerBlock = kThreads / kWarp;

__global__ void max_forward_kernel(float* y, int64_t* idx, const float* x, const Pool2dParams p,
                                   int64_t total) {
  for (int64_t o = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; o < total;
       o += int64_t(gridDim.x) * blockDim.x)
    max_forward_element(y, idx, x, p, o);
}

__global__ void avg_forward_kernel(float* y, const float* x, const Pool2dParams p, int64_t total) {
  for (int64_t o = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; o < total;
       o += int64_t(gridDim.x) * blockDim.x)
    avg_forward_element(y, x, p, o);
}

__global__ void avg_backward_kernel(float* dx, const float* dy, const Pool2dParams p, int64_t total) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x)
    avg_backward_element(dx, dy, p, i);
}

// One warp per plane (8 planes per block). `bad` receives the smallest flat position of an
// index outside its plane (atomicMin on an integer: the reported position is deterministic).
__global__ void __launch_bounds__(kThreads) max_backward_kernel(
    float* dx, const float* dy, const int64_t* idx, int64_t planes, int64_t HW, int64_t OHW,
    unsigned long long* bad) {
  __shared__ int64_t sj[kWarpsPerBlock][kWarp];
  __shared__ float sv[kWarpsPerBlock][kWarp];
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  for (int64_t q = blockIdx.x * int64_t(kWarpsPerBlock) + warp; q < planes;
       q += int64_t(gridDim.x) * kWarpsPerBlock) {
    float* dxp = dx + q * HW;
    for (int64_t i = lane; i < HW; i += kWarp) dxp[i] = 0.0f;
    __syncwarp();  // zeros visible to every lane before any lane adds to them
    for (int64_t base = 0; base < OHW; base += kWarp) {
      const int64_t b = max_backward_stage(sj[warp], sv[warp], dy, idx, q, HW, OHW, base, lane);
      if (b >= 0) atomicMin(bad, static_cast<unsigned long long>(b));
      __syncwarp();  // the batch is staged
      max_backward_scatter(dxp, sj[warp], sv[warp], lane);
      __syncwarp();  // this batch's writes are visible, and the slots free, for the next one
    }
  }
}

}  // namespace pool

void max_pool2d_forward(float* y, int64_t* idx, const float* x, const Pool2dParams& p,
                        cudaStream_t stream) {
  const int64_t total = p.N * p.C * p.OH * p.OW;
  if (total == 0) return;
  pool::max_forward_kernel<<<grid_for(total), kThreads, 0, stream>>>(y, idx, x, p, total);
  DK_CUDA_CHECK_LAUNCH();
}

void max_pool2d_backward(float* dx, const float* dy, const int64_t* idx, const Pool2dParams& p,
                         cudaStream_t stream) {
  const int64_t planes = p.N * p.C, HW = p.H * p.W, OHW = p.OH * p.OW;
  if (planes == 0 || HW == 0) return;
  Scratch flag(sizeof(unsigned long long), stream);
  DK_CUDA_CHECK(cudaMemsetAsync(flag.as<void>(), 0xff, sizeof(unsigned long long), stream));
  pool::max_backward_kernel<<<grid_for(planes, pool::kWarpsPerBlock), kThreads, 0, stream>>>(
      dx, dy, idx, planes, HW, OHW, flag.as<unsigned long long>());
  DK_CUDA_CHECK_LAUNCH();
  unsigned long long bad = 0;
  DK_CUDA_CHECK(cudaMemcpyAsync(&bad, flag.as<void>(), sizeof bad, cudaMemcpyDeviceToHost, stream));
  DK_CUDA_CHECK(cudaStreamSynchronize(stream));
  if (bad != ~0ull) {
    int64_t j = 0;
    DK_CUDA_CHECK(cudaMemcpy(&j, idx + bad, sizeof j, cudaMemcpyDeviceToHost));
    DK_CHECK(false, "max_pool2d_backward: indices[", bad, "] = ", j,
             " is outside its input plane of ", HW, " elements");
  }
}

void avg_pool2d_forward(float* y, const float* x, const Pool2dParams& p, cudaStream_t stream) {
  const int64_t total = p.N * p.C * p.OH * p.OW;
  if (total == 0) return;
  pool::avg_forward_kernel<<<grid_for(total), kThreads, 0, stream>>>(y, x, p, total);
  DK_CUDA_CHECK_LAUNCH();
}

void avg_pool2d_backward(float* dx, const float* dy, const Pool2dParams& p, cudaStream_t stream) {
  const int64_t total = p.N * p.C * p.H * p.W;
  if (total == 0) return;
  pool::avg_backward_kernel<<<grid_for(total), kThreads, 0, stream>>>(dx, dy, p, total);
  DK_CUDA_CHECK_LAUNCH();
}

}  // namespace dk::cuda
#endif  // __CUDACC__
