// batch_norm.cu: batch normalization on the GPU, train and eval forward, and backward.
//
// Formulas and numerics exactly as cpu/batch_norm.cpp (read it first): x viewed as (N, C, HW),
// M = N*HW values per channel; statistics are sums in double of values shifted by the
// channel's first element K = x[0, c, 0] (so a large mean does not cancel the variance away);
// normalize with the biased variance, update running_var with the unbiased one.
//
// The CPU gives each channel to one thread. A GPU needs more parallelism than C channels, so
// every reduction runs in two deterministic levels:
//   1. partial kernel   block (c, s) sums chunk s of channel c: thread t takes the elements
//                       t, t + 256, ... of the chunk in order, the block adds its 256 sums in
//                       a fixed tree (reduce.cuh). S chunks per channel, S = f(M) only.
//   2. finalize kernel  one thread per channel folds its S partials in chunk order, computes
//                       mean / invstd (or the gradient coefficients) in double, as the CPU,
//                       writes save_mean / save_invstd / running stats / dw / db, and the three
//                       per-channel float coefficients of the element-wise pass.
//   3. apply kernel     element-wise: y = (x - mean) * scale + shift, or
//                       dx = k * dy + kx * (x - mean) + k0.
// batch_norm_relu (p.relu; relu_y in the backward) as on the CPU: y = relu(y) as it is stored,
// and dy read as relu_backward(dy, relu_y), with activation.cu's per-element expressions: the
// bits of the two ops in turn.
// Two reads of x (or x and dy) and one write, like the CPU; no atomics: deterministic.
#include <cmath>
#include <cstdint>

#include "common/params.h"
#include "common/philox.h"  // DK_HOST_DEVICE

namespace dk::cuda::bn {

// Per-channel coefficients of the element-wise pass: out = k * in + kx * (x - mean) + k0.
// Forward: in = 0 and (kx, k0) = (scale, shift); backward: in = dy.
struct Coef {
  float mean, k, kx, k0;
};

struct Sums {
  double a, b;
};

// Chunks per channel: about 4096 values each, at most 1024 chunks. Depends on M only.
inline int64_t chunks_per_channel(int64_t M) {
  const int64_t s = (M + 4095) / 4096;
  return s < 1 ? 1 : (s > 1024 ? 1024 : s);
}

// Flat offset of value m (0 <= m < M) of channel c in x (N, C, HW).
DK_HOST_DEVICE int64_t offset(const BatchNormParams& p, int64_t c, int64_t m) {
  return ((m / p.HW) * p.C + c) * p.HW + m % p.HW;
}

// Level 1, forward: the shifted sums (x - K) and (x - K)^2 of values m = t, t + step, ... in
// [beg, end) of channel c (one thread's share of a chunk).
DK_HOST_DEVICE Sums stats_thread(const float* x, const BatchNormParams& p, int64_t c, int64_t beg,
                                 int64_t end, int64_t t, int64_t step) {
  const double K = x[c * p.HW];  // first element of channel c
  Sums s{0.0, 0.0};
  for (int64_t m = beg + t; m < end; m += step) {
    const double d = static_cast<double>(x[offset(p, c, m)]) - K;
    s.a += d;
    s.b += d * d;
  }
  return s;
}

// The gradient of element o as the backward reads it: dy, or relu_backward(dy, relu_y) for the
// fused batch_norm_relu (activation.cu's relu_backward_element: y <= 0 gives 0).
DK_HOST_DEVICE float grad_at(const float* dy, const float* relu_y, int64_t o) {
  return relu_y && relu_y[o] <= 0.0f ? 0.0f : dy[o];
}

// Level 1, backward: sum(dy) and sum(dy * (x - mean)) over one thread's share.
DK_HOST_DEVICE Sums grad_thread(const float* dy, const float* relu_y, const float* x,
                                const float* save_mean, const BatchNormParams& p, int64_t c,
                                int64_t beg, int64_t end, int64_t t, int64_t step) {
  const double mean = save_mean[c];
  Sums s{0.0, 0.0};
  for (int64_t m = beg + t; m < end; m += step) {
    const int64_t o = offset(p, c, m);
    const float g = grad_at(dy, relu_y, o);
    s.a += g;
    s.b += static_cast<double>(g) * (static_cast<double>(x[o]) - mean);
  }
  return s;
}

// Fold channel c's S partials in chunk order.
DK_HOST_DEVICE Sums fold(const Sums* partial, int64_t S, int64_t c) {
  Sums s{0.0, 0.0};
  for (int64_t k = 0; k < S; ++k) {
    s.a += partial[c * S + k].a;
    s.b += partial[c * S + k].b;
  }
  return s;
}

// Level 2, train forward, channel c (the CPU's per-channel arithmetic, in double).
DK_HOST_DEVICE void finalize_train(Coef* coef, float* save_mean, float* save_invstd,
                                   float* running_mean, float* running_var, const Sums* partial,
                                   int64_t S, const float* x, const float* w, const float* b,
                                   const BatchNormParams& p, int64_t c) {
  const int64_t M = p.N * p.HW;
  const Sums s = fold(partial, S, c);
  const double K = x[c * p.HW];
  const double dmean = s.a / M;
  const double v = (s.b - s.a * dmean) / M;
  const double var = v > 0.0 ? v : 0.0;
  const double mean = K + dmean;
  const double invstd = 1.0 / sqrt(var + p.eps);
  save_mean[c] = static_cast<float>(mean);
  save_invstd[c] = static_cast<float>(invstd);
  if (running_mean) {
    running_mean[c] = static_cast<float>((1.0 - p.momentum) * running_mean[c] + p.momentum * mean);
    const double unbiased = M > 1 ? var * M / (M - 1) : var;
    running_var[c] = static_cast<float>((1.0 - p.momentum) * running_var[c] + p.momentum * unbiased);
  }
  const double scale = invstd * (w ? static_cast<double>(w[c]) : 1.0);
  const double shift = b ? static_cast<double>(b[c]) : 0.0;
  coef[c] = Coef{static_cast<float>(mean), 0.0f, static_cast<float>(scale), static_cast<float>(shift)};
}

// Level 2, eval forward, channel c: the running statistics stand in for the batch's.
DK_HOST_DEVICE void finalize_eval(Coef* coef, float* save_mean, float* save_invstd,
                                  const float* running_mean, const float* running_var,
                                  const float* w, const float* b, const BatchNormParams& p,
                                  int64_t c) {
  const double mean = running_mean[c];
  const double invstd = 1.0 / sqrt(static_cast<double>(running_var[c]) + p.eps);
  save_mean[c] = running_mean[c];
  save_invstd[c] = static_cast<float>(invstd);
  const double scale = invstd * (w ? static_cast<double>(w[c]) : 1.0);
  const double shift = b ? static_cast<double>(b[c]) : 0.0;
  coef[c] = Coef{static_cast<float>(mean), 0.0f, static_cast<float>(scale), static_cast<float>(shift)};
}

// Level 2, backward, channel c: dw, db and dx = k * dy + kx * (x - mean) + k0.
DK_HOST_DEVICE void finalize_backward(Coef* coef, float* dw, float* db, const Sums* partial,
                                      int64_t S, const float* w, const float* save_mean,
                                      const float* save_invstd, bool training,
                                      const BatchNormParams& p, int64_t c) {
  const int64_t M = p.N * p.HW;
  const Sums s = fold(partial, S, c);  // a = sum(dy), b = sum(dy * (x - mean))
  const double invstd = save_invstd[c];
  if (dw) dw[c] = static_cast<float>(s.b * invstd);
  if (db) db[c] = static_cast<float>(s.a);
  const double wc = w ? static_cast<double>(w[c]) : 1.0;
  const double k = wc * invstd;
  const double kx = training ? -k * invstd * invstd * s.b / M : 0.0;
  const double k0 = training ? -k * s.a / M : 0.0;
  coef[c] = Coef{save_mean[c], static_cast<float>(k), static_cast<float>(kx), static_cast<float>(k0)};
}

// Level 3, element e of x (N, C, HW): the forward (dy = null) or the backward output.
DK_HOST_DEVICE void apply_element(float* out, const float* x, const float* dy, const float* relu_y,
                                  const Coef* coef, const BatchNormParams& p, int64_t e) {
  const Coef cf = coef[(e / p.HW) % p.C];
  if (dy) {
    out[e] = cf.k * grad_at(dy, relu_y, e) + cf.kx * (x[e] - cf.mean) + cf.k0;
  } else {
    const float v = (x[e] - cf.mean) * cf.kx + cf.k0;
    out[e] = p.relu && v < 0.0f ? 0.0f : v;  // (activation.cu's relu_element)
  }
}

}  // namespace dk::cuda::bn

// ==================================================================== kernels (nvcc only)
#if defined(__CUDACC__)
#include "cuda/cuda_common.cuh"
#include "cuda/kernels_cuda.h"
#include "cuda/reduce.cuh"

namespace dk::cuda {

namespace bn {

// Level 1: block (c, s) -> partial[c * S + s]. dy == null: forward statistics of x.
__global__ void __launch_bounds__(kThreads) partial_kernel(Sums* partial, const float* x,
                                                           const float* dy, const float* relu_y,
                                                           const float* save_mean,
                                                           const BatchNormParams p, int64_t S,
                                                           int64_t chunk) {
  __shared__ double sa[kThreads];
  const int64_t M = p.N * p.HW;
  for (int64_t blk = blockIdx.x; blk < p.C * S; blk += gridDim.x) {
    const int64_t c = blk / S, s = blk % S;
    const int64_t beg = s * chunk, end = min(M, beg + chunk);
    const Sums t = dy ? grad_thread(dy, relu_y, x, save_mean, p, c, beg, end, threadIdx.x, kThreads)
                      : stats_thread(x, p, c, beg, end, threadIdx.x, kThreads);
    const double a = block_sum<kThreads>(t.a, sa);
    const double b = block_sum<kThreads>(t.b, sa);
    if (threadIdx.x == 0) partial[blk] = Sums{a, b};
  }
}

__global__ void finalize_train_kernel(Coef* coef, float* save_mean, float* save_invstd,
                                      float* running_mean, float* running_var,
                                      const Sums* partial, int64_t S, const float* x,
                                      const float* w, const float* b, const BatchNormParams p) {
  for (int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; c < p.C;
       c += int64_t(gridDim.x) * blockDim.x)
    finalize_train(coef, save_mean, save_invstd, running_mean, running_var, partial, S, x, w, b, p, c);
}

__global__ void finalize_eval_kernel(Coef* coef, float* save_mean, float* save_invstd,
                                     const float* running_mean, const float* running_var,
                                     const float* w, const float* b, const BatchNormParams p) {
  for (int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; c < p.C;
       c += int64_t(gridDim.x) * blockDim.x)
    finalize_eval(coef, save_mean, save_invstd, running_mean, running_var, w, b, p, c);
}

__global__ void finalize_backward_kernel(Coef* coef, float* dw, float* db, const Sums* partial,
                                         int64_t S, const float* w, const float* save_mean,
                                         const float* save_invstd, bool training,
                                         const BatchNormParams p) {
  for (int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; c < p.C;
       c += int64_t(gridDim.x) * blockDim.x)
    finalize_backward(coef, dw, db, partial, S, w, save_mean, save_invstd, training, p, c);
}

__global__ void apply_kernel(float* out, const float* x, const float* dy, const float* relu_y,
                             const Coef* coef, const BatchNormParams p, int64_t total) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x)
    apply_element(out, x, dy, relu_y, coef, p, e);
}

// Level 1 for M values per channel; returns S (partial holds C * S sums).
void launch_partials(Sums* partial, int64_t S, const float* x, const float* dy, const float* relu_y,
                     const float* save_mean, const BatchNormParams& p, cudaStream_t stream) {
  const int64_t M = p.N * p.HW, chunk = ceil_div(M, S);
  partial_kernel<<<grid_for(p.C * S, 1), kThreads, 0, stream>>>(partial, x, dy, relu_y, save_mean,
                                                                  p, S, chunk);
  DK_CUDA_CHECK_LAUNCH();
}

void launch_apply(float* out, const float* x, const float* dy, const float* relu_y, const Coef* coef,
                  const BatchNormParams& p, cudaStream_t stream) {
  const int64_t total = p.N * p.C * p.HW;
  if (total == 0) return;
  apply_kernel<<<grid_for(total), kThreads, 0, stream>>>(out, x, dy, relu_y, coef, p, total);
  DK_CUDA_CHECK_LAUNCH();
}

}  // namespace bn

void batch_norm_forward_train(float* y, float* save_mean, float* save_invstd,
                              float* running_mean, float* running_var, const float* x,
                              const float* w, const float* b, const BatchNormParams& p,
                              cudaStream_t stream) {
  if (p.C == 0) return;
  const int64_t S = bn::chunks_per_channel(p.N * p.HW);
  Scratch partial(sizeof(bn::Sums) * static_cast<size_t>(p.C * S), stream);
  Scratch coef(sizeof(bn::Coef) * static_cast<size_t>(p.C), stream);
  bn::launch_partials(partial.as<bn::Sums>(), S, x, nullptr, nullptr, nullptr, p, stream);
  bn::finalize_train_kernel<<<grid_for(p.C), kThreads, 0, stream>>>(
      coef.as<bn::Coef>(), save_mean, save_invstd, running_mean, running_var,
      partial.as<bn::Sums>(), S, x, w, b, p);
  DK_CUDA_CHECK_LAUNCH();
  bn::launch_apply(y, x, nullptr, nullptr, coef.as<bn::Coef>(), p, stream);
}

void batch_norm_forward_eval(float* y, float* save_mean, float* save_invstd, const float* x,
                             const float* w, const float* b, const float* running_mean,
                             const float* running_var, const BatchNormParams& p,
                             cudaStream_t stream) {
  if (p.C == 0) return;
  Scratch coef(sizeof(bn::Coef) * static_cast<size_t>(p.C), stream);
  bn::finalize_eval_kernel<<<grid_for(p.C), kThreads, 0, stream>>>(
      coef.as<bn::Coef>(), save_mean, save_invstd, running_mean, running_var, w, b, p);
  DK_CUDA_CHECK_LAUNCH();
  bn::launch_apply(y, x, nullptr, nullptr, coef.as<bn::Coef>(), p, stream);
}

void batch_norm_backward(float* dx, float* dw, float* db, const float* dy, const float* x,
                         const float* w, const float* save_mean, const float* save_invstd,
                         bool training, const BatchNormParams& p, const float* relu_y,
                         cudaStream_t stream) {
  if (p.C == 0) return;
  const int64_t S = bn::chunks_per_channel(p.N * p.HW);
  Scratch partial(sizeof(bn::Sums) * static_cast<size_t>(p.C * S), stream);
  Scratch coef(sizeof(bn::Coef) * static_cast<size_t>(p.C), stream);
  bn::launch_partials(partial.as<bn::Sums>(), S, x, dy, relu_y, save_mean, p, stream);
  bn::finalize_backward_kernel<<<grid_for(p.C), kThreads, 0, stream>>>(
      coef.as<bn::Coef>(), dw, db, partial.as<bn::Sums>(), S, w, save_mean, save_invstd,
      training, p);
  DK_CUDA_CHECK_LAUNCH();
  bn::launch_apply(dx, x, dy, relu_y, coef.as<bn::Coef>(), p, stream);
}

}  // namespace dk::cuda
#endif  // __CUDACC__
