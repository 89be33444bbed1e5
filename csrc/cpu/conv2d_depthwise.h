// conv2d_depthwise.h: depthwise convolution (groups == C), all three directions.
//
// Part of the float32 convolution kernels for one SIMD level: included after conv2d_fast.h
// by conv2d_avx512.cpp and conv2d_avx2.cpp (see conv2d_fast.h for the conventions).
#pragma once
#include "cpu/conv2d_fast.h"

namespace dk::cpu::DK_ISA_NS {

// ---------------------------------------------------------------------------------------------
// Depthwise convolution (groups == C: one input channel per group, m = OC/C outputs each).
//
// No matrix product to block: each output plane is a T-tap stencil over one input plane
// (m planes for the input gradient), vectorized along the pixels with the flat geometry
// above; the tap weights sit in registers for the whole plane. The work is one read of the
// input and one write of the output: memory speed, not FMA speed, is the limit.
//
// out[q] = bias + sum_{i < nin} sum_t w[i*T + t] * in[i*cs + q + off[t]]   for grid pixels q
inline void depthwise_plane(float* __restrict out, const float* in, int64_t cs, int64_t nin,
                            const float* w, float bias, const FlatSpec& f) {
  using S = Simd;
  using V = S::V;
  constexpr int L = S::L, U = 4;  // U vectors at once: independent FMA chains
  const int64_t T = f.T;
  const int64_t nfull = f.Q / L;  // vectors with all L lanes on the grid
  int64_t v = 0;
  for (; v + U <= nfull; v += U) {
    V acc[U];
    for (int u = 0; u < U; ++u) acc[u] = S::set1(bias);
    for (int64_t i = 0; i < nin; ++i)
      for (int64_t t = 0; t < T; ++t) {
        const V wt = S::set1(w[i * T + t]);
        const float* src = in + i * cs + v * L + f.off[t];
        const uint32_t* mb = f.bits.data() + v * T + t;
#pragma GCC unroll 4
        for (int u = 0; u < U; ++u)
          acc[u] = S::fma(wt, S::loadm(src + u * L, S::mask(mb[u * T])), acc[u]);
      }
    for (int u = 0; u < U; ++u) S::store(out + (v + u) * L, acc[u]);
  }
  for (; v < f.nvec; ++v) {
    V acc = S::set1(bias);
    for (int64_t i = 0; i < nin; ++i)
      for (int64_t t = 0; t < T; ++t)
        acc = S::fma(S::set1(w[i * T + t]),
                     S::loadm(in + i * cs + v * L + f.off[t], S::mask(f.bits[v * T + t])), acc);
    S::storem(out + v * L, S::mask(low_bits(f.Q - v * L)), acc);
  }
}

// Copy a grid-wide plane (rows x width) into an output plane (rows x OW), or back.
inline void crop_plane(float* dst, const float* src, int64_t rows, int64_t width, int64_t OW) {
  for (int64_t r = 0; r < rows; ++r) std::memcpy(dst + r * OW, src + r * width, sizeof(float) * OW);
}
inline void widen_plane(float* dst, const float* src, int64_t rows, int64_t OW, int64_t width) {
  for (int64_t r = 0; r < rows; ++r) {
    std::memcpy(dst + r * width, src + r * OW, sizeof(float) * OW);
    std::memset(dst + r * width + OW, 0, sizeof(float) * (width - OW));
  }
}

// Forward: any stride, padding, dilation (strided inputs go through the phase split).
inline void forward_depthwise(float* y, const float* x, const float* w, const float* b,
                              const Conv2dParams& p) {
  const int64_t m = p.ocpg(), T = p.KH * p.KW, HW = p.H * p.W, OHW = p.OH * p.OW;
  const FlatInput in = flat_input(p);
  const FlatSpec f = forward_spec(p, in);
  const bool crop = f.width != p.OW;
  parallel_range(p.N * p.C, 1, [&](int64_t i0, int64_t i1) {
    std::unique_ptr<Buffer> z, tmp;
    if (in.copy) z = std::make_unique<Buffer>(in.cs);
    if (crop) tmp = std::make_unique<Buffer>(f.Q);
    for (int64_t it = i0; it < i1; ++it) {  // it = n * C + c: one input plane
      const float* xp = x + it * HW;
      if (it + 1 < i1) prefetch_l2(xp + HW, HW * sizeof(float));
      const float* src = xp;
      if (in.copy) {
        make_flat_input(z->data(), xp, 1, p, in);
        src = z->data();
      }
      const int64_t c = it % p.C;
      for (int64_t j = 0; j < m; ++j) {
        const int64_t oc = c * m + j;
        float* yp = y + ((it / p.C) * p.OC + oc) * OHW;
        depthwise_plane(crop ? tmp->data() : yp, src, in.cs, 1, w + oc * T, b ? b[oc] : 0.f, f);
        if (crop) crop_plane(yp, tmp->data(), p.OH, f.width, p.OW);
      }
    }
  });
}

// Backward w.r.t. the input, stride 1: dx[c] = sum_j conv(dy[c*m + j], flipped w[c*m + j]).
inline void backward_input_depthwise(float* dx, const float* dy, const float* w,
                                     const Conv2dParams& p) {
  const Conv2dParams q = transposed_params(p);  // dy -> dx, taps flipped
  const int64_t m = p.ocpg(), T = p.KH * p.KW, HW = p.H * p.W, OHW = p.OH * p.OW;
  const FlatInput in = flat_input(q);  // stride 1: a copy only for odd widths
  const FlatSpec f = forward_spec(q, in);
  const bool crop = f.width != q.OW;
  Vec<float> wf(p.OC * T);  // flipped taps
  for (int64_t oc = 0; oc < p.OC; ++oc)
    for (int64_t t = 0; t < T; ++t) wf[oc * T + t] = w[oc * T + (T - 1 - t)];
  parallel_range(p.N * p.C, 1, [&](int64_t i0, int64_t i1) {
    std::unique_ptr<Buffer> z, tmp;
    if (in.copy) z = std::make_unique<Buffer>(m * in.cs);
    if (crop) tmp = std::make_unique<Buffer>(f.Q);
    for (int64_t it = i0; it < i1; ++it) {  // it = n * C + c: one dx plane
      const int64_t n = it / p.C, c = it % p.C;
      const float* dyp = dy + (n * p.OC + c * m) * OHW;
      if (it + 1 < i1) prefetch_l2(dyp + m * OHW, m * OHW * sizeof(float));
      const float* src = dyp;
      if (in.copy) {
        make_flat_input(z->data(), dyp, m, q, in);
        src = z->data();
      }
      float* dxp = dx + it * HW;
      depthwise_plane(crop ? tmp->data() : dxp, src, in.cs, m, wf.data() + c * m * T, 0.f, f);
      if (crop) crop_plane(dxp, tmp->data(), q.OH, f.width, q.OW);
    }
  });
}

// Backward w.r.t. the weights: dw[oc][t] = sum_{n, q} dy[n, oc, q] * x_n[c][q + off[t]], one
// vector accumulator per tap (and one for the bias), summed over the samples in order and
// reduced across lanes at the end. Threads split the channels: every sum has one fixed order.
// TT = T known at compile time (3x3: the accumulators live in registers), or 0 (any T).
template <int TT>
void depthwise_weight_channel(float* dwo, float* dbo, const float* const* xs, const float* const* ds,
                              int64_t nsamp, const FlatSpec& f) {
  using S = Simd;
  using V = S::V;
  constexpr int L = S::L;
  const int64_t T = TT ? TT : f.T;
  V accs[TT ? TT : 1];
  std::unique_ptr<Buffer> heap;
  float* accm = nullptr;  // runtime T: accumulators in memory
  if (!TT) {
    heap = std::make_unique<Buffer>(T * L);
    accm = heap->data();
    for (int64_t t = 0; t < T; ++t) S::store(accm + t * L, S::zero());
  }
  for (int64_t t = 0; t < (TT ? TT : 0); ++t) accs[t] = S::zero();
  V accb = S::zero();
  for (int64_t n = 0; n < nsamp; ++n) {
    const float* src = xs[n];
    const float* d = ds[n];
    for (int64_t v = 0; v < f.nvec; ++v) {
      const V dv = S::loadm(d + v * L, S::mask(low_bits(f.Q - v * L)));
      accb = S::add(accb, dv);
      const uint32_t* mb = f.bits.data() + v * T;
      const float* sv = src + v * L;
      if constexpr (TT > 0) {
#pragma GCC unroll 16
        for (int t = 0; t < TT; ++t) accs[t] = S::fma(dv, S::loadm(sv + f.off[t], S::mask(mb[t])), accs[t]);
      } else {
        for (int64_t t = 0; t < T; ++t)
          S::store(accm + t * L, S::fma(dv, S::loadm(sv + f.off[t], S::mask(mb[t])), S::load(accm + t * L)));
      }
    }
  }
  for (int64_t t = 0; t < T; ++t) dwo[t] = S::hsum(TT ? accs[TT ? t : 0] : S::load(accm + t * L));
  if (dbo) *dbo = S::hsum(accb);
}

inline void backward_weight_depthwise(float* dw, float* db, const float* dy, const float* x,
                                      const Conv2dParams& p) {
  const int64_t m = p.ocpg(), T = p.KH * p.KW, HW = p.H * p.W, OHW = p.OH * p.OW;
  const FlatInput in = flat_input(p);
  const FlatSpec f = forward_spec(p, in);
  const bool widen = f.width != p.OW;  // dy re-laid on the grid (zero extra columns)
  const bool copy = in.copy || widen;
  parallel_range(p.OC, 1, [&](int64_t o0, int64_t o1) {
    // the planes of every sample for one channel: in place, or copied (phase split / widened)
    std::unique_ptr<Buffer> z, wide;
    if (in.copy) z = std::make_unique<Buffer>(p.N * in.cs);
    if (widen) wide = std::make_unique<Buffer>(p.N * f.Q);
    Vec<const float*> xs(p.N), ds(p.N);
    for (int64_t oc = o0; oc < o1; ++oc) {
      const int64_t c = oc / m;
      for (int64_t n = 0; n < p.N; ++n) {
        xs[n] = x + (n * p.C + c) * HW;
        ds[n] = dy + (n * p.OC + oc) * OHW;
        if (!copy) {
          if (n + 1 < p.N) {  // the planes of one channel lie a whole sample apart
            prefetch_l2(xs[n] + p.C * HW, HW * sizeof(float));
            prefetch_l2(ds[n] + p.OC * OHW, OHW * sizeof(float));
          }
          continue;
        }
        if (in.copy) {
          make_flat_input(z->data() + n * in.cs, xs[n], 1, p, in);
          xs[n] = z->data() + n * in.cs;
        }
        if (widen) {
          widen_plane(wide->data() + n * f.Q, ds[n], p.OH, p.OW, f.width);
          ds[n] = wide->data() + n * f.Q;
        }
      }
      float* dbo = db ? db + oc : nullptr;
      if (T == 9)
        depthwise_weight_channel<9>(dw + oc * T, dbo, xs.data(), ds.data(), p.N, f);
      else
        depthwise_weight_channel<0>(dw + oc * T, dbo, xs.data(), ds.data(), p.N, f);
    }
  });
}

}  // namespace dk::cpu::DK_ISA_NS
