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
// batch_norm_relu (p.relu; relu_y in the backward): y = relu(the y above), and the backward of
// dy is the backward above of relu_backward(dy, y), each applied as the pass reads or writes
// the element: bit for bit the two ops one after the other, without their passes in between.
//
// Numerics: the statistics are sums in double of values shifted by the channel's first
// element (x - K), so a large mean does not cancel the variance away (RELIABILITY.md:
// one-pass E[x^2] - E[x]^2 fails at mean/std ~ 1e4 in float). One read of x for the
// statistics, one for the normalization. Threads split the channels; every channel's sums
// run over the samples in order, so the results do not depend on the thread count.
//
// Two schedules of the same math:
//  - portable (float64, CPUs without AVX2): channel by channel, both passes per channel (its
//    N*HW values are then still in L2 for the second);
//  - float32 with AVX2/AVX-512 (layers_fast.h): blocks of channels small enough to stay in L2
//    between the two passes, the sums in float with pairwise blocks folded into double; the
//    per-channel math below runs between the passes through a callback (BnChannelStep).
#include <algorithm>
#include <cmath>
#include <vector>

#include <type_traits>

#include "common/parallel.h"
#include "cpu/layers_fast_api.h"
#include "kernels.h"

namespace dk::cpu {

namespace {

// ---- the per-channel scalar math, shared by both schedules

struct ChannelStats {
  double mean, var, invstd;
};

// From the shifted sums s1 = sum(x - K), s2 = sum((x - K)^2) over M values.
ChannelStats channel_stats(double K, double s1, double s2, int64_t M, double eps) {
  const double dmean = M > 0 ? s1 / M : 0.0;
  const double v = M > 0 ? (s2 - s1 * dmean) / M : 0.0;
  const double var = v < 0.0 ? 0.0 : v;  // rounding can make it slightly negative; NaN stays NaN
  return {K + dmean, var, 1.0 / std::sqrt(var + eps)};
}

template <class T>
void update_running(T* running_mean, T* running_var, int64_t c, const ChannelStats& st, int64_t M,
                    double momentum) {
  if (!running_mean) return;
  running_mean[c] = static_cast<T>((1.0 - momentum) * running_mean[c] + momentum * st.mean);
  const double unbiased = M > 1 ? st.var * M / (M - 1) : st.var;
  running_var[c] = static_cast<T>((1.0 - momentum) * running_var[c] + momentum * unbiased);
}

// dx = k * dy + kx * (x - mean) + k0, from sdy = sum(dy), sdyx = sum(dy * (x - mean)).
// In eval mode the statistics are constants and dx = k * dy exactly: the x term is left out
// (not multiplied by 0), so an infinite x does not turn dx into NaN.
struct GradCoefs {
  double k, kx, k0;
};
GradCoefs grad_coefs(double wc, double invstd, double sdy, double sdyx, int64_t M, bool training) {
  const double k = wc * invstd;
  if (!training || M == 0) return {k, 0.0, 0.0};
  return {k, -k * invstd * invstd * sdyx / M, -k * sdy / M};
}

// ---- portable schedule: channel by channel

// Shifted sums of one channel: s1 = sum(x - K), s2 = sum((x - K)^2), in double.
template <class T>
void channel_sums(const T* x, int64_t c, const BatchNormParams& p, double K, double& s1,
                  double& s2) {
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

// y = (x - mean) * scale + shift for one channel (then relu(y) when p.relu, as relu_forward
// computes it). Subtracting the mean first (rather than folding it into shift) keeps full
// precision when |mean| >> std.
template <class T>
void channel_affine(T* y, const T* x, int64_t c, const BatchNormParams& p, T mean, T scale,
                    T shift) {
  for (int64_t n = 0; n < p.N; ++n) {
    const int64_t off = (n * p.C + c) * p.HW;
    const T* xc = x + off;
    T* yc = y + off;
#pragma omp simd
    for (int64_t i = 0; i < p.HW; ++i) yc[i] = (xc[i] - mean) * scale + shift;
    if (p.relu) {
#pragma omp simd
      for (int64_t i = 0; i < p.HW; ++i) yc[i] = yc[i] < T(0) ? T(0) : yc[i];
    }
  }
}

// first element of channel c (the shift of its sums), 0 for an empty batch
template <class T>
double channel_shift(const T* x, int64_t c, const BatchNormParams& p) {
  return p.N * p.HW > 0 ? static_cast<double>(x[c * p.HW]) : 0.0;
}

// ---- float32 schedule (layers_fast.h): the per-channel steps it calls back between its passes

struct TrainStep {  // (s1, s2) -> save_mean, save_invstd, running stats; coef = mean, scale, shift
  float *save_mean, *save_invstd, *running_mean, *running_var;
  const float *w, *b, *K;
  int64_t M;
  double momentum, eps;
  static void run(void* ctx, int64_t c, double s1, double s2, float coef[3]) {
    const TrainStep& t = *static_cast<const TrainStep*>(ctx);
    const ChannelStats st = channel_stats(t.K[c], s1, s2, t.M, t.eps);
    t.save_mean[c] = static_cast<float>(st.mean);
    t.save_invstd[c] = static_cast<float>(st.invstd);
    update_running(t.running_mean, t.running_var, c, st, t.M, t.momentum);
    coef[0] = static_cast<float>(st.mean);
    coef[1] = static_cast<float>(st.invstd * (t.w ? static_cast<double>(t.w[c]) : 1.0));
    coef[2] = static_cast<float>(t.b ? static_cast<double>(t.b[c]) : 0.0);
  }
};

void forward_train_fast(float* y, float* save_mean, float* save_invstd, float* running_mean,
                        float* running_var, const float* x, const float* w, const float* b,
                        const BatchNormParams& p) {
  std::vector<float> K(p.C);
  for (int64_t c = 0; c < p.C; ++c) K[c] = static_cast<float>(channel_shift(x, c, p));
  TrainStep t{save_mean, save_invstd, running_mean, running_var, w, b, K.data(), p.N * p.HW, p.momentum, p.eps};
  DK_TRY_FAST(batch_norm_train_f32, y, x, p, K.data(), BnChannelStep{&TrainStep::run, &t});
}

}  // namespace

template <class T>
void batch_norm_forward_train(T* y, T* save_mean, T* save_invstd, T* running_mean, T* running_var,
                              const T* x, const T* w, const T* b, const BatchNormParams& p) {
  if constexpr (std::is_same_v<T, float>)
    if (has_fast_layers())
      return forward_train_fast(y, save_mean, save_invstd, running_mean, running_var, x, w, b, p);
  const int64_t M = p.N * p.HW;
  parallel_for(p.C, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const double K = channel_shift(x, c, p);
      double s1, s2;
      channel_sums(x, c, p, K, s1, s2);
      const ChannelStats st = channel_stats(K, s1, s2, M, p.eps);
      save_mean[c] = static_cast<T>(st.mean);
      save_invstd[c] = static_cast<T>(st.invstd);
      update_running(running_mean, running_var, c, st, M, p.momentum);
      const double scale = st.invstd * (w ? static_cast<double>(w[c]) : 1.0);
      const double shift = b ? static_cast<double>(b[c]) : 0.0;
      channel_affine(y, x, c, p, static_cast<T>(st.mean), static_cast<T>(scale),
                     static_cast<T>(shift));
    }
  });
}

template <class T>
void batch_norm_forward_eval(T* y, T* save_mean, T* save_invstd, const T* x, const T* w,
                             const T* b, const T* running_mean, const T* running_var,
                             const BatchNormParams& p) {
  std::vector<T> mean(p.C), scale(p.C), shift(p.C);
  for (int64_t c = 0; c < p.C; ++c) {
    const double invstd = 1.0 / std::sqrt(static_cast<double>(running_var[c]) + p.eps);
    save_mean[c] = running_mean[c];
    save_invstd[c] = static_cast<T>(invstd);
    mean[c] = running_mean[c];
    scale[c] = static_cast<T>(invstd * (w ? static_cast<double>(w[c]) : 1.0));
    shift[c] = static_cast<T>(b ? static_cast<double>(b[c]) : 0.0);
  }
  if constexpr (std::is_same_v<T, float>)
    if (DK_TRY_FAST(batch_norm_affine_f32, y, x, p, mean.data(), scale.data(), shift.data())) return;
  parallel_for(p.C, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) channel_affine(y, x, c, p, mean[c], scale[c], shift[c]);
  });
}

template <class T>
void batch_norm_backward(T* dx, T* dw, T* db, const T* dy, const T* x, const T* w,
                         const T* save_mean, const T* save_invstd, bool training,
                         const BatchNormParams& p, const T* relu_y) {
  const int64_t M = p.N * p.HW, C = p.C;
  auto finish = [&](int64_t c, double sdy, double sdyx) {  // dw, db and the dx coefficients
    const double invstd = save_invstd[c];
    if (dw) dw[c] = static_cast<T>(sdyx * invstd);
    if (db) db[c] = static_cast<T>(sdy);
    return grad_coefs(w ? static_cast<double>(w[c]) : 1.0, invstd, sdy, sdyx, M, training);
  };
  if constexpr (std::is_same_v<T, float>) {
    if (has_fast_layers()) {  // the same per-channel step, called back between the two passes
      using Finish = decltype(finish);
      const BnChannelStep step{[](void* ctx, int64_t c, double sdy, double sdyx, float coef[3]) {
                                 const GradCoefs g = (*static_cast<Finish*>(ctx))(c, sdy, sdyx);
                                 coef[0] = static_cast<float>(g.k);
                                 coef[1] = static_cast<float>(g.kx);
                                 coef[2] = static_cast<float>(g.k0);
                               },
                               &finish};
      DK_TRY_FAST(batch_norm_backward_f32, dx, dy, x, p, save_mean, !training, step, relu_y);
      return;
    }
  }
  // portable schedule, fused with a ReLU: its gradient first, into a scratch array, so that the
  // loops below (and their vectorized sums) are exactly those of the unfused op
  std::vector<T> relu_grad;
  if (relu_y) {
    relu_grad.resize(static_cast<size_t>(p.N * C * p.HW));
    relu_backward(relu_grad.data(), dy, relu_y, p.N * C * p.HW);
    dy = relu_grad.data();
  }
  parallel_for(C, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const double mean = save_mean[c];
      const T tmean = save_mean[c];
      double sdy = 0, sdyx = 0;  // sum(dy), sum(dy * (x - mean))
      for (int64_t n = 0; n < p.N; ++n) {
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
      const GradCoefs g = finish(c, sdy, sdyx);
      const T tk = static_cast<T>(g.k), tkx = static_cast<T>(g.kx), tk0 = static_cast<T>(g.k0);
      for (int64_t n = 0; n < p.N; ++n) {
        const int64_t off = (n * p.C + c) * p.HW;
        const T* xc = x + off;
        const T* dyc = dy + off;
        T* dxc = dx + off;
        if (!training) {
#pragma omp simd
          for (int64_t i = 0; i < p.HW; ++i) dxc[i] = tk * dyc[i];
          continue;
        }
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
                                       const T*, bool, const BatchNormParams&, const T*);
DK_INSTANTIATE(float)
DK_INSTANTIATE(double)
#undef DK_INSTANTIATE

}  // namespace dk::cpu
