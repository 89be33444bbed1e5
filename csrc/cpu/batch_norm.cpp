// batch_norm.cpp: batch normalization over (N, HW) for each channel, train and eval, and its
// backward.
//
// Shape legend: x viewed as (N, C, HW), HW = H*W (1 for a 2-D input); M = N*HW values per
// channel.
//
// train:  mean = sum(x)/M;  var = sum((x - mean)^2)/M (biased);  invstd = 1/sqrt(var + eps)
//         y = (x - mean) * invstd * w + b
//         running_mean = (1 - momentum) * running_mean + momentum * mean
//         running_var  = (1 - momentum) * running_var  + momentum * var * M/(M - 1)  (unbiased)
// eval:   the same y with running_mean / running_var in place of the batch statistics.
// backward (train), with xhat = (x - mean) * invstd:
//         db = sum(dy);  dw = sum(dy * xhat)
//         dx = w * invstd * (dy - db/M - xhat * dw/M)
// backward (eval): dx = w * invstd * dy (the statistics are constants).
//
// Numerics: the statistics are sums in double of values shifted by the channel's first
// element (x - K), so a large mean does not cancel the variance away (RELIABILITY.md:
// one-pass E[x^2] - E[x]^2 fails at mean/std ~ 1e4 in float). One read of x for the
// statistics, one for the normalization; a channel of a mid-sized batch fits in L2, so the
// second read rarely reaches DRAM. Parallel over channels, serial within one: deterministic.
#include <cmath>

#include <type_traits>

#include "common/parallel.h"
#include "cpu/layers_fast_api.h"
#include "kernels.h"

namespace dk::cpu {

namespace {

// Shifted sums of one channel: s1 = sum(x - K), s2 = sum((x - K)^2), in double.
// (float32 on AVX2/AVX-512: the same loops compiled for that ISA, in layers_fast.h)
template <class T>
void channel_sums(const T* x, int64_t c, const BatchNormParams& p, double K, double& s1,
                  double& s2) {
  if constexpr (std::is_same_v<T, float>)
    if (has_fast_layers()) return DK_FAST(batch_norm_stats_f32)(x, c, p, K, s1, s2);
  double a = 0, b = 0;
  for (int64_t n = 0; n < p.N; ++n) {
    const T* xc = x + (n * p.C + c) * p.HW;
#pragma omp simd reduction(+ : a, b)
    for (int64_t i = 0; i < p.HW; ++i) {
      const double d = static_cast<double>(xc[i]) - K;
      a += d;
      b += d * d;
    }
  }
  s1 = a;
  s2 = b;
}

// y = (x - mean) * scale + shift for one channel. Subtracting the mean first (rather than
// folding it into shift) keeps full precision when |mean| >> std.
template <class T>
void channel_affine(T* y, const T* x, int64_t c, const BatchNormParams& p, T mean, T scale,
                    T shift) {
  if constexpr (std::is_same_v<T, float>)
    if (has_fast_layers()) return DK_FAST(batch_norm_affine_f32)(y, x, c, p, mean, scale, shift);
  for (int64_t n = 0; n < p.N; ++n) {
    const int64_t off = (n * p.C + c) * p.HW;
    const T* xc = x + off;
    T* yc = y + off;
#pragma omp simd
    for (int64_t i = 0; i < p.HW; ++i) yc[i] = (xc[i] - mean) * scale + shift;
  }
}

}  // namespace

template <class T>
void batch_norm_forward_train(T* y, T* save_mean, T* save_invstd, T* running_mean, T* running_var,
                              const T* x, const T* w, const T* b, const BatchNormParams& p) {
  const int64_t M = p.N * p.HW;
  parallel_for(p.C, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const double K = static_cast<double>(x[c * p.HW]);  // first element of channel c
      double s1, s2;
      channel_sums(x, c, p, K, s1, s2);
      const double dmean = s1 / M;
      const double var = std::max(0.0, (s2 - s1 * dmean) / M);
      const double mean = K + dmean;
      const double invstd = 1.0 / std::sqrt(var + p.eps);
      save_mean[c] = static_cast<T>(mean);
      save_invstd[c] = static_cast<T>(invstd);
      if (running_mean) {
        running_mean[c] = static_cast<T>((1.0 - p.momentum) * running_mean[c] + p.momentum * mean);
        const double unbiased = M > 1 ? var * M / (M - 1) : var;
        running_var[c] = static_cast<T>((1.0 - p.momentum) * running_var[c] + p.momentum * unbiased);
      }
      const double scale = invstd * (w ? static_cast<double>(w[c]) : 1.0);
      const double shift = b ? static_cast<double>(b[c]) : 0.0;
      channel_affine(y, x, c, p, static_cast<T>(mean), static_cast<T>(scale),
                     static_cast<T>(shift));
    }
  });
}

template <class T>
void batch_norm_forward_eval(T* y, T* save_mean, T* save_invstd, const T* x, const T* w,
                             const T* b, const T* running_mean, const T* running_var,
                             const BatchNormParams& p) {
  parallel_for(p.C, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const double mean = running_mean[c];
      const double invstd = 1.0 / std::sqrt(static_cast<double>(running_var[c]) + p.eps);
      save_mean[c] = running_mean[c];
      save_invstd[c] = static_cast<T>(invstd);
      const double scale = invstd * (w ? static_cast<double>(w[c]) : 1.0);
      const double shift = b ? static_cast<double>(b[c]) : 0.0;
      channel_affine(y, x, c, p, static_cast<T>(mean), static_cast<T>(scale),
                     static_cast<T>(shift));
    }
  });
}

template <class T>
void batch_norm_backward(T* dx, T* dw, T* db, const T* dy, const T* x, const T* w,
                         const T* save_mean, const T* save_invstd, bool training,
                         const BatchNormParams& p) {
  const int64_t M = p.N * p.HW;
  parallel_for(p.C, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const double mean = save_mean[c], invstd = save_invstd[c];
      const T tmean = save_mean[c];
      double sdy = 0, sdyx = 0;  // sum(dy), sum(dy * (x - mean))
      bool fast = false;
      if constexpr (std::is_same_v<T, float>) {
        if (has_fast_layers()) {
          DK_FAST(batch_norm_grad_sums_f32)(dy, x, c, p, mean, sdy, sdyx);
          fast = true;
        }
      }
      for (int64_t n = 0; n < p.N && !fast; ++n) {
        const int64_t off = (n * p.C + c) * p.HW;
        const T* xc = x + off;
        const T* dyc = dy + off;
        double a = 0, bsum = 0;
#pragma omp simd reduction(+ : a, bsum)
        for (int64_t i = 0; i < p.HW; ++i) {
          a += dyc[i];
          bsum += static_cast<double>(dyc[i]) * (static_cast<double>(xc[i]) - mean);
        }
        sdy += a;
        sdyx += bsum;
      }
      if (dw) dw[c] = static_cast<T>(sdyx * invstd);
      if (db) db[c] = static_cast<T>(sdy);
      const double wc = w ? static_cast<double>(w[c]) : 1.0;
      // dx = k * dy + kx * (x - mean) + k0
      const double k = wc * invstd;
      const double kx = training ? -k * invstd * invstd * sdyx / M : 0.0;
      const double k0 = training ? -k * sdy / M : 0.0;
      const T tk = static_cast<T>(k), tkx = static_cast<T>(kx), tk0 = static_cast<T>(k0);
      if (fast) {
        if constexpr (std::is_same_v<T, float>)
          DK_FAST(batch_norm_grad_apply_f32)(dx, dy, x, c, p, tmean, tk, tkx, tk0);
        continue;
      }
      for (int64_t n = 0; n < p.N; ++n) {
        const int64_t off = (n * p.C + c) * p.HW;
        const T* xc = x + off;
        const T* dyc = dy + off;
        T* dxc = dx + off;
#pragma omp simd
        for (int64_t i = 0; i < p.HW; ++i) dxc[i] = tk * dyc[i] + tkx * (xc[i] - tmean) + tk0;
      }
    }
  });
}

#define DK_INSTANTIATE(T)                                                                  \
  template void batch_norm_forward_train<T>(T*, T*, T*, T*, T*, const T*, const T*,        \
                                            const T*, const BatchNormParams&);             \
  template void batch_norm_forward_eval<T>(T*, T*, T*, const T*, const T*, const T*,       \
                                           const T*, const T*, const BatchNormParams&);    \
  template void batch_norm_backward<T>(T*, T*, T*, const T*, const T*, const T*, const T*, \
                                       const T*, bool, const BatchNormParams&);
DK_INSTANTIATE(float)
DK_INSTANTIATE(double)
#undef DK_INSTANTIATE

}  // namespace dk::cpu
