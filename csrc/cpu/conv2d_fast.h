// conv2d_fast.h: the float32 convolution kernels for one SIMD level (AVX-512 or AVX2).
//
// Included by conv2d_avx512.cpp and conv2d_avx2.cpp after simd.h, inside namespace DK_ISA_NS,
// so each copy is compiled with its own -m flags. conv2d.cpp decides which algorithm runs
// (choose_conv_algo) and calls the entry points at the bottom of this file.
//
// Shape legend: N batch, C in-channels, H W input, OC out-channels, KH KW kernel, OH OW output,
// G groups, cpg = C/G, ocpg = OC/G, T = KH*KW taps, K = cpg*T, Q = OH*OW pixels of a plane.
//
// Every convolution here is a matrix product per sample and group,
//   forward          y[ocpg, Q]  = w[ocpg, K] . col[K, Q]
// computed GotoBLAS-style: the weights are packed once into MR-row panels (A), a block of
// `col` is packed into an NR-column panel (B) straight from x (implicit im2col: `col` itself is
// never materialized), and a register-blocked micro-kernel multiplies an MR x NR tile of y
// held in MR * NV vector registers (NR = NV * L pixels):
//
//     for k in kc:   b[0..NV) = B[k][0..NR)              NV vector loads
//                    for i < MR: a = broadcast(A[k][i])   MR broadcasts
//                                acc[i][j] += a * b[j]    MR * NV FMAs
//
// With MR = 6, NV = 4 (AVX-512) that is 24 FMAs for 10 loads: the two FMA pipes stay busy and
// the loads fit in the ports beside them. Blocking: a B panel of KC x NR floats stays in L1
// while every A panel of the block streams past it from L2 (KC from the L1 size found at run
// time); see bench/NOTES.md for the measurements behind these choices.
#ifndef DK_ISA_NS
#error "define DK_ISA_NS before including conv2d_fast.h"
#endif
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <utility>
#include <vector>

#include "common/cpu_features.h"
#include "common/parallel.h"
#include "common/params.h"
#include "cpu/conv2d_algo.h"
#include "cpu/simd.h"

namespace dk::cpu::DK_ISA_NS {

// ---------------------------------------------------------------------------------------------
// Tile shape of the micro-kernel for this ISA: MR rows x NV vectors of L lanes.
// AVX-512 has 32 vector registers: 6 x 4 = 24 accumulators + 4 B vectors + 1 broadcast.
// AVX2 has 16: 6 x 2 = 12 accumulators + 2 B vectors + 1 broadcast (the classic 6x16).
constexpr int kMR = 6;
constexpr int kNV = Simd::L == 16 ? 4 : 2;
constexpr int kNR = kNV * Simd::L;

// 64-byte aligned scratch buffer (packed panels are read with full-vector loads).
struct Buffer {
  float* p = nullptr;
  explicit Buffer(int64_t n) {
    const size_t bytes = (static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(float) + 63) / 64 * 64;
    p = static_cast<float*>(std::aligned_alloc(64, bytes));
    if (!p) throw std::bad_alloc();
  }
  ~Buffer() { std::free(p); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  float* data() const { return p; }
};

// ---------------------------------------------------------------------------------------------
// The micro-kernel: C[MR x NV*L] (+)= A[kc x MR]^T . B[kc x NV*L], both panels packed.
//   a: A panel, kc rows of MR floats;  b: B panel, kc rows of NV*L floats
//   c: MR rows of the output, row stride ldc
// What happens at the store (the epilogue): add the old C (accumulate, a later K block),
// or add a per-row bias (first K block); optionally clamp at zero (fused ReLU, last block).
// The last vector of each row stores only the lanes in tail_bits (plane sizes that are not a
// multiple of L).
struct Epilogue {
  bool accumulate = false;
  const float* bias = nullptr;  // MR values (the rows' output channels) or null
  bool relu = false;
  uint32_t tail_bits = 0xFFFFFFFFu;
};

template <int MR, int NV>
void ukernel(int64_t kc, const float* __restrict a, const float* __restrict b, float* __restrict c,
             int64_t ldc, const Epilogue& e) {
  using S = Simd;
  using V = S::V;
  constexpr int L = S::L;
  V acc[MR][NV];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) acc[i][j] = S::zero();
  for (int64_t k = 0; k < kc; ++k) {
    V bv[NV];
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) bv[j] = S::load(b + j * L);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const V av = S::set1(a[i]);
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) acc[i][j] = S::fma(av, bv[j], acc[i][j]);
    }
    a += MR;
    b += NV * L;
  }
  const typename S::M tail = S::mask(e.tail_bits);
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    float* ci = c + i * ldc;
    const V bias = e.bias ? S::set1(e.bias[i]) : S::zero();
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) {
      const bool last = j == NV - 1;
      V v = acc[i][j];
      if (e.accumulate)
        v = S::add(v, last ? S::loadm(ci + j * L, tail) : S::load(ci + j * L));
      else
        v = S::add(v, bias);
      if (e.relu) v = S::max(v, S::zero());
      if (last)
        S::storem(ci + j * L, tail, v);
      else
        S::store(ci + j * L, v);
    }
  }
}

using UkernelFn = void (*)(int64_t, const float*, const float*, float*, int64_t, const Epilogue&);

// ukernel_for(mr, nv): the instantiation for an mr x nv tile (1 <= mr <= kMR, 1 <= nv <= kNV);
// edge tiles of y use the smaller instantiations, so no work is wasted on padding rows.
template <int MR, int... NV>
constexpr void fill_row(UkernelFn* row, std::integer_sequence<int, NV...>) {
  ((row[NV] = &ukernel<MR, NV + 1>), ...);
}
template <int... MR>
constexpr void fill_table(UkernelFn (*tab)[kNV], std::integer_sequence<int, MR...>) {
  (fill_row<MR + 1>(tab[MR], std::make_integer_sequence<int, kNV>{}), ...);
}
inline UkernelFn ukernel_for(int mr, int nv) {
  static const auto table = [] {
    struct T { UkernelFn f[kMR][kNV]; } t{};
    fill_table(t.f, std::make_integer_sequence<int, kMR>{});
    return t;
  }();
  return table.f[mr - 1][nv - 1];
}

// ---------------------------------------------------------------------------------------------
// Packing A: rows [r0, r0+mr) of a row-major matrix W (row stride ldw), columns [0, K),
// into one panel ap[k][mr]. (The weights of a group are W[ocpg][K].)
inline void pack_a_rows(float* __restrict ap, const float* __restrict w, int64_t ldw, int mr,
                        int64_t K) {
  for (int i = 0; i < mr; ++i) {
    const float* wi = w + i * ldw;
    for (int64_t k = 0; k < K; ++k) ap[k * mr + i] = wi[k];
  }
}

// Packed weights of every group: for group g and row block ob (MR rows, fewer in the last),
// the panel [K][mr] starts at panel(g, ob) = (g * ocpg + ob * MR) * K.
struct PackedA {
  std::unique_ptr<Buffer> buf;
  int64_t rows = 0, K = 0, nblocks = 0;
  const float* panel(int64_t g, int64_t ob) const { return buf->data() + (g * rows + ob * kMR) * K; }
  int mr(int64_t ob) const { return static_cast<int>(std::min<int64_t>(kMR, rows - ob * kMR)); }
};

// w: G stacked row-major matrices [rows][K] (group stride rows * K).
inline PackedA pack_weights(const float* w, int64_t G, int64_t rows, int64_t K) {
  PackedA A;
  A.rows = rows;
  A.K = K;
  A.nblocks = (rows + kMR - 1) / kMR;
  A.buf = std::make_unique<Buffer>(G * rows * K);
  parallel_for(G * A.nblocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t g = b / A.nblocks, ob = b % A.nblocks;
      pack_a_rows(const_cast<float*>(A.panel(g, ob)), w + (g * rows + ob * kMR) * K, K, A.mr(ob), K);
    }
  });
  return A;
}

// ---------------------------------------------------------------------------------------------
// The "flat" implicit im2col, for stride-1 convolutions whose output is as wide as the input
// (OW == W: "same" padding, and every 1x1 convolution without padding). Output pixel q of a
// plane then reads input pixel q + off[t] for tap t = (kh, kw):
//     off[t] = (kh*dh - ph) * W + (kw*dw - pw)
// so the NR pixels of a B panel row are one contiguous (unaligned) load from the input plane.
// Lanes whose tap falls in the zero padding (above, below, or wrapping around a row edge) are
// masked off; the mask of vector v (L pixels) at tap t is precomputed in bits[v * T + t].
struct FlatGeom {
  int64_t T = 0, Q = 0, nvec = 0;
  std::vector<int64_t> off;    // [T]
  std::vector<uint32_t> bits;  // [nvec][T]
};

inline bool flat_ok(const Conv2dParams& p) { return p.sh == 1 && p.sw == 1 && p.OW == p.W; }

inline FlatGeom flat_geom(const Conv2dParams& p) {
  constexpr int L = Simd::L;
  FlatGeom g;
  g.T = p.KH * p.KW;
  g.Q = p.OH * p.OW;
  g.nvec = (g.Q + L - 1) / L;
  g.off.resize(g.T);
  g.bits.assign(g.nvec * g.T, 0);
  for (int64_t kh = 0; kh < p.KH; ++kh)
    for (int64_t kw = 0; kw < p.KW; ++kw) {
      const int64_t t = kh * p.KW + kw, dy = kh * p.dh - p.ph, dx = kw * p.dw - p.pw;
      g.off[t] = dy * p.W + dx;
      for (int64_t q = 0; q < g.Q; ++q) {
        const int64_t ih = q / p.OW + dy, iw = q % p.OW + dx;
        if (ih >= 0 && ih < p.H && iw >= 0 && iw < p.W) g.bits[(q / L) * g.T + t] |= 1u << (q % L);
      }
    }
  return g;
}

// B panel rows k in [k0, k1) (k = c*T + t) for the pixels [q0, q0 + nv*L) of one sample and
// group: xg is the group's first input channel, cs the channel stride (H*W).
inline void pack_b_flat(float* __restrict bp, int nv, const float* xg, int64_t cs, int64_t k0,
                        int64_t k1, int64_t q0, const FlatGeom& g) {
  using S = Simd;
  constexpr int L = S::L;
  const int64_t v0 = q0 / L;
  int64_t c = k0 / g.T, t = k0 % g.T;
  for (int64_t k = k0; k < k1; ++k) {
    const float* src = xg + c * cs + q0 + g.off[t];
    const uint32_t* mb = g.bits.data() + v0 * g.T + t;
    for (int v = 0; v < nv; ++v)
      S::store(bp + v * L, S::loadm(src + v * L, S::mask(mb[v * g.T])));
    bp += nv * L;
    if (++t == g.T) {
      t = 0;
      ++c;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Cache blocking from the caches found at run time. KC = the depth of a B panel: KC x NR
// floats take at most half of L1 (the other half for the A panel stream and the C tile).
inline int64_t choose_kc(int64_t K) {
  const int64_t l1 = std::max<int64_t>(cpu_info().l1d, 16 * 1024);
  int64_t kc = l1 / 2 / (kNR * static_cast<int64_t>(sizeof(float)));
  kc = std::max<int64_t>(16, kc);
  if (kc >= K) return K;
  // equal blocks: no short last block
  const int64_t nb = (K + kc - 1) / kc;
  return (K + nb - 1) / nb;
}

// ---------------------------------------------------------------------------------------------
// Forward, flat path: y = conv(x, w) + b (then ReLU if relu), for flat_ok(p).
// Work items are (sample, group, NR-pixel tile); each thread owns a contiguous range of items
// and a B panel buffer. No reductions cross items, so any split gives the same bits.
inline void forward_flat(float* y, const float* x, const float* w, const float* b,
                         const Conv2dParams& p, bool relu, int64_t kc = 0) {
  const int64_t cpg = p.cpg(), ocpg = p.ocpg(), T = p.KH * p.KW, K = cpg * T;
  const FlatGeom geo = flat_geom(p);
  const int64_t Q = geo.Q, HW = p.H * p.W;
  const PackedA A = pack_weights(w, p.G, ocpg, K);
  kc = kc > 0 ? std::min(kc, K) : choose_kc(K);
  const int64_t ntiles = (Q + kNR - 1) / kNR, items = p.N * p.G * ntiles;
  parallel_range(items, 1, [&](int64_t i0, int64_t i1) {
    Buffer bp(kc * kNR);
    for (int64_t it = i0; it < i1; ++it) {
      const int64_t n = it / (p.G * ntiles), g = (it / ntiles) % p.G, qt = it % ntiles;
      const int64_t q0 = qt * kNR;
      const int nv = static_cast<int>(std::min<int64_t>(kNV, (Q - q0 + Simd::L - 1) / Simd::L));
      const uint32_t tail = low_bits(Q - q0 - (nv - 1) * Simd::L);
      const float* xg = x + (n * p.C + g * cpg) * HW;
      float* yg = y + (n * p.OC + g * ocpg) * Q + q0;
      for (int64_t k0 = 0; k0 < K; k0 += kc) {
        const int64_t k1 = std::min(K, k0 + kc);
        pack_b_flat(bp.data(), nv, xg, HW, k0, k1, q0, geo);
        Epilogue e;
        e.accumulate = k0 > 0;
        e.relu = relu && k1 == K;
        e.tail_bits = tail;
        for (int64_t ob = 0; ob < A.nblocks; ++ob) {
          const int mr = A.mr(ob);
          e.bias = b ? b + g * ocpg + ob * kMR : nullptr;
          ukernel_for(mr, nv)(k1 - k0, A.panel(g, ob) + k0 * mr, bp.data(), yg + ob * kMR * Q, Q, e);
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Backward w.r.t. the weights: dw[oc, k] = sum_{n, q} dy[n, oc, q] * col_n[k, q]  (k = (c, kh, kw)).
//
// The sum runs along q, the contiguous axis of both dy and x, so neither is in the layout an
// outer-product kernel wants. We compute the transpose dwT[k, oc] instead, vectorized over oc:
//   B panel  dyT[q][NR]  the dy rows of NR output channels, transposed (packed per sample)
//   A        col[k][q] = xpad[c, oh*sh + kh*dh, ow*sw + kw*dw]: read straight from a
//            zero-padded copy of the input, MR rows (k's) at a time, one broadcast each
// so every (q, k-row) costs one broadcast and NV FMAs: the same 24-FMA step as the forward
// micro-kernel, with no im2col and no horizontal sums. The tile of dwT stays in registers for
// all the pixels of a group of samples.
struct DwRows {
  int64_t off[kMR];   // offset of each k-row's first tap in a padded sample
  int64_t arow, acol; // step between output rows / columns in the padded input
  int64_t OH, OW;
};

template <int MR, int NV>
void ukernel_dw(int S, const float* const* xs, const float* const* bs, const DwRows& r,
                float* __restrict c, int64_t ldc, bool accumulate) {
  using S_ = Simd;
  using V = S_::V;
  constexpr int L = S_::L;
  V acc[MR][NV];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) acc[i][j] = S_::zero();
  for (int s = 0; s < S; ++s) {
    const float* b = bs[s];
    for (int64_t oh = 0; oh < r.OH; ++oh) {
      const float* a[MR];
#pragma GCC unroll 8
      for (int i = 0; i < MR; ++i) a[i] = xs[s] + r.off[i] + oh * r.arow;
      for (int64_t ow = 0; ow < r.OW; ++ow) {
        V bv[NV];
#pragma GCC unroll 4
        for (int j = 0; j < NV; ++j) bv[j] = S_::load(b + j * L);
#pragma GCC unroll 8
        for (int i = 0; i < MR; ++i) {
          const V av = S_::set1(a[i][ow * r.acol]);
#pragma GCC unroll 4
          for (int j = 0; j < NV; ++j) acc[i][j] = S_::fma(av, bv[j], acc[i][j]);
        }
        b += NV * L;
      }
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) {
      V v = acc[i][j];
      if (accumulate) v = S_::add(v, S_::load(c + i * ldc + j * L));
      S_::store(c + i * ldc + j * L, v);
    }
}

using UkernelDwFn = void (*)(int, const float* const*, const float* const*, const DwRows&, float*,
                             int64_t, bool);
template <int MR, int... NV>
constexpr void fill_dw_row(UkernelDwFn* row, std::integer_sequence<int, NV...>) {
  ((row[NV] = &ukernel_dw<MR, NV + 1>), ...);
}
template <int... MR>
constexpr void fill_dw_table(UkernelDwFn (*tab)[kNV], std::integer_sequence<int, MR...>) {
  (fill_dw_row<MR + 1>(tab[MR], std::make_integer_sequence<int, kNV>{}), ...);
}
inline UkernelDwFn ukernel_dw_for(int mr, int nv) {
  static const auto table = [] {
    struct T { UkernelDwFn f[kMR][kNV]; } t{};
    fill_dw_table(t.f, std::make_integer_sequence<int, kMR>{});
    return t;
  }();
  return table.f[mr - 1][nv - 1];
}

// Zero-padded copy of the cpg channels at xg: xp[c][Hp][Wp], Hp = H + 2ph, Wp = W + 2pw.
inline void pad_input(float* __restrict xp, const float* __restrict xg, int64_t cpg,
                      const Conv2dParams& p) {
  const int64_t Hp = p.H + 2 * p.ph, Wp = p.W + 2 * p.pw;
  for (int64_t c = 0; c < cpg; ++c) {
    float* d = xp + c * Hp * Wp;
    const float* sx = xg + c * p.H * p.W;
    std::memset(d, 0, sizeof(float) * p.ph * Wp);
    for (int64_t h = 0; h < p.H; ++h) {
      float* row = d + (p.ph + h) * Wp;
      std::memset(row, 0, sizeof(float) * p.pw);
      std::memcpy(row + p.pw, sx + h * p.W, sizeof(float) * p.W);
      std::memset(row + p.pw + p.W, 0, sizeof(float) * p.pw);
    }
    std::memset(d + (p.ph + p.H) * Wp, 0, sizeof(float) * p.ph * Wp);
  }
}

// dyT panel of one sample: bp[q][j] = dyg[oc0 + j][q] for j < nr (zero for channels past ocpg),
// and dbsum[j] += sum_q dyg[oc0 + j][q].
inline void pack_dy_transposed(float* __restrict bp, int nr, const float* __restrict dyg,
                               int64_t oc0, int64_t ocpg, int64_t Q, float* dbsum) {
  const int64_t valid = std::min<int64_t>(nr, ocpg - oc0);
  for (int64_t q = 0; q < Q; ++q)
    for (int64_t j = valid; j < nr; ++j) bp[q * nr + j] = 0.f;
  for (int64_t j = 0; j < valid; ++j) {
    const float* d = dyg + (oc0 + j) * Q;
    float s = 0.f;
    for (int64_t q = 0; q < Q; ++q) {
      bp[q * nr + j] = d[q];
      s += d[q];
    }
    dbsum[j] += s;
  }
}

// The samples are cut into nchunks fixed chunks (a function of the shape only); each work item
// (chunk, group, tile of NR output channels) sums its chunk into its own slice of the partial
// buffer, and the partials are folded in chunk order: identical bits for any thread count.
inline void backward_weight_direct(float* dw, float* db, const float* dy, const float* x,
                                   const Conv2dParams& p) {
  using S_ = Simd;
  const int64_t cpg = p.cpg(), ocpg = p.ocpg(), T = p.KH * p.KW, K = cpg * T;
  const int64_t Q = p.OH * p.OW, HW = p.H * p.W;
  const int64_t Hp = p.H + 2 * p.ph, Wp = p.W + 2 * p.pw, plane = Hp * Wp;
  if (p.N == 0) {  // no samples: the gradients are zero
    std::fill(dw, dw + p.OC * K, 0.f);
    if (db) std::fill(db, db + p.OC, 0.f);
    return;
  }
  const int64_t noct = (ocpg + kNR - 1) / kNR;         // tiles of NR output channels
  const int64_t ocpad = noct * kNR;
  const int64_t want_items = 8;
  const int64_t want_chunks = std::min<int64_t>(p.N, std::max<int64_t>(1, want_items / (p.G * noct)));
  const int64_t per = (p.N + want_chunks - 1) / want_chunks;
  const int64_t nchunks = (p.N + per - 1) / per;  // every chunk holds at least one sample
  // samples per group: x_pad and dyT of the group in half of L2
  const int64_t per_sample = (cpg * plane + Q * kNR) * static_cast<int64_t>(sizeof(float));
  const int64_t l2 = std::max<int64_t>(cpu_info().l2, 256 * 1024);
  const int64_t S = std::clamp<int64_t>(l2 / 2 / per_sample, 1, per);
  const int64_t pstride = p.G * (K * ocpad + ocpad);    // one chunk's partial dw and db
  Buffer partial(nchunks * pstride);
  parallel_for(nchunks * p.G * noct, 1, [&](int64_t i0, int64_t i1) {
    Buffer xpad(S * cpg * plane), dyT(S * Q * kNR);
    std::vector<const float*> xs(S), bs(S);
    for (int64_t it = i0; it < i1; ++it) {
      const int64_t ch = it / (p.G * noct), g = (it / noct) % p.G, ot = it % noct;
      const int64_t oc0 = ot * kNR;
      const int nr = static_cast<int>(std::min<int64_t>(kNR, ocpg - oc0));
      const int nv = (nr + S_::L - 1) / S_::L;
      float* pw = partial.data() + ch * pstride + g * (K * ocpad + ocpad);
      float* pb = pw + K * ocpad + oc0;
      for (int64_t j = 0; j < kNR; ++j) pb[j] = 0.f;
      bool first = true;
      const int64_t n_end = std::min(p.N, (ch + 1) * per);
      for (int64_t n0 = ch * per; n0 < n_end; n0 += S) {
        const int ns = static_cast<int>(std::min<int64_t>(S, n_end - n0));
        for (int s = 0; s < ns; ++s) {
          const int64_t n = n0 + s;
          xs[s] = xpad.data() + s * cpg * plane;
          bs[s] = dyT.data() + s * Q * nv * S_::L;
          pad_input(const_cast<float*>(xs[s]), x + (n * p.C + g * cpg) * HW, cpg, p);
          pack_dy_transposed(const_cast<float*>(bs[s]), nv * S_::L,
                             dy + (n * p.OC + g * ocpg) * Q, oc0, ocpg, Q, pb);
        }
        DwRows r;
        r.arow = p.sh * Wp;
        r.acol = p.sw;
        r.OH = p.OH;
        r.OW = p.OW;
        for (int64_t k0 = 0; k0 < K; k0 += kMR) {
          const int mr = static_cast<int>(std::min<int64_t>(kMR, K - k0));
          for (int i = 0; i < mr; ++i) {
            const int64_t k = k0 + i, c = k / T, kh = (k % T) / p.KW, kw = k % p.KW;
            r.off[i] = c * plane + kh * p.dh * Wp + kw * p.dw;
          }
          ukernel_dw_for(mr, nv)(ns, xs.data(), bs.data(), r, pw + k0 * ocpad + oc0, ocpad, !first);
        }
        first = false;
      }
    }
  });
  // fold the chunks in order, transposing dwT[k][oc] back to dw[oc][k]
  parallel_for(p.G * ocpg, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t row = r0; row < r1; ++row) {
      const int64_t g = row / ocpg, oc = row % ocpg;
      float* d = dw + row * K;
      for (int64_t k = 0; k < K; ++k) d[k] = 0.f;
      float bsum = 0.f;
      for (int64_t ch = 0; ch < nchunks; ++ch) {
        const float* pw = partial.data() + ch * pstride + g * (K * ocpad + ocpad);
        for (int64_t k = 0; k < K; ++k) d[k] += pw[k * ocpad + oc];
        bsum += pw[K * ocpad + oc];
      }
      if (db) db[row] = bsum;
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Entry points (declared in conv2d_algo.h; conv2d.cpp chose `algo`).

// The backward pass w.r.t. the input of a stride-1 convolution is itself a stride-1
// convolution of dy with the weights transposed (in and out channels swapped) and flipped
// (tap (kh, kw) -> (KH-1-kh, KW-1-kw)), padded by d*(k-1) - p:
//     dx[c, ih, iw] = sum_{oc, kh, kw} w[oc, c, kh, kw] * dy[oc, ih + ph - kh*dh, iw + pw - kw*dw]
inline Conv2dParams transposed_params(const Conv2dParams& p) {
  Conv2dParams q = p;
  q.C = p.OC; q.H = p.OH; q.W = p.OW;
  q.OC = p.C; q.OH = p.H; q.OW = p.W;
  q.ph = p.dh * (p.KH - 1) - p.ph;
  q.pw = p.dw * (p.KW - 1) - p.pw;
  return q;
}

// wt (C, OC/G, KH, KW) <- w (OC, C/G, KH, KW) transposed per group and flipped.
inline void transpose_flip_weights(float* wt, const float* w, const Conv2dParams& p) {
  const int64_t cpg = p.cpg(), ocpg = p.ocpg(), T = p.KH * p.KW;
  for (int64_t g = 0; g < p.G; ++g)
    for (int64_t o = 0; o < ocpg; ++o)
      for (int64_t c = 0; c < cpg; ++c)
        for (int64_t t = 0; t < T; ++t)
          wt[((g * cpg + c) * ocpg + o) * T + (T - 1 - t)] = w[((g * ocpg + o) * cpg + c) * T + t];
}

void conv2d_forward_f32(float* y, const float* x, const float* w, const float* b,
                        const Conv2dParams& p, ConvAlgo algo, bool relu) {
  switch (algo) {
    case ConvAlgo::flat: return forward_flat(y, x, w, b, p, relu);
    default: throw std::logic_error("conv2d_forward_f32: algorithm not available");
  }
}

void conv2d_backward_input_f32(float* dx, const float* dy, const float* w, const Conv2dParams& p,
                               ConvAlgo algo) {
  switch (algo) {
    case ConvAlgo::flat: {
      std::vector<float> wt(static_cast<size_t>(p.OC * p.cpg() * p.KH * p.KW));
      transpose_flip_weights(wt.data(), w, p);
      return forward_flat(dx, dy, wt.data(), nullptr, transposed_params(p), false);
    }
    default: throw std::logic_error("conv2d_backward_input_f32: algorithm not available");
  }
}

void conv2d_backward_weight_f32(float* dw, float* db, const float* dy, const float* x,
                                const Conv2dParams& p, ConvAlgo algo) {
  switch (algo) {
    case ConvAlgo::direct: return backward_weight_direct(dw, db, dy, x, p);
    default: throw std::logic_error("conv2d_backward_weight_f32: algorithm not available");
  }
}

}  // namespace dk::cpu::DK_ISA_NS
