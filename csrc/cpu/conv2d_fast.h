// conv2d_fast.h: the float32 convolution kernels for one SIMD level (AVX-512 or AVX2): the
// micro-kernels, the packing, the GEMM driver, the backward passes of the GEMM paths.
//
// Compiled once per SIMD level (conv2d_avx512.cpp, conv2d_avx2.cpp include conv2d_entry.h,
// which includes this file, conv2d_depthwise.h and conv2d_winograd.h) inside namespace
// DK_ISA_NS, each copy with its own -m flags. conv2d.cpp decides which algorithm runs
// (choose_conv_algo) and calls the entry points of conv2d_entry.h.
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
// the loads fit in the ports beside them. Blocking: one B panel (KC x NR) is multiplied by
// every A panel of the block before the next is packed; both stay in L2, KC from the cache
// sizes found at run time (choose_kc). bench/NOTES.md has the measurements behind these
// choices.
#pragma once
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
#include "cpu/threading.h"

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
// multiple of L). With cols set, the NV vectors of a row are not contiguous: vector j of row i
// goes to cols[j] + i*ldc, its lanes in tails[j] (tiles spanning several small planes).
struct Epilogue {
  bool accumulate = false;
  const float* bias = nullptr;  // MR values (the rows' output channels) or null
  bool relu = false;
  uint32_t tail_bits = 0xFFFFFFFFu;
  float* const* cols = nullptr;  // [NV] or null
  const uint32_t* tails = nullptr;  // [NV] with cols
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
  // masked loads/stores only for a partial last vector: on Zen 5 masked stores followed by
  // loads to nearby addresses run far slower than plain ones (measured 3x on max pooling)
  const bool full = e.tail_bits == 0xFFFFFFFFu || (e.tail_bits & low_bits(L)) == low_bits(L);
  const typename S::M tail = S::mask(e.tail_bits);
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    float* ci = c + i * ldc;
    const V bias = e.bias ? S::set1(e.bias[i]) : S::zero();
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) {
      const bool last = e.cols ? e.tails[j] != 0xFFFFFFFFu : j == NV - 1 && !full;
      const typename S::M m = e.cols ? S::mask(e.tails[j]) : tail;
      float* dst = e.cols ? e.cols[j] + i * ldc : ci + j * L;
      V v = acc[i][j];
      if (e.accumulate)
        v = S::add(v, last ? S::loadm(dst, m) : S::load(dst));
      else
        v = S::add(v, bias);
      if (e.relu) v = S::max(S::zero(), v);  // max(0, v): keeps NaN, as relu does
      if (last)
        S::storem(dst, m, v);
      else
        S::store(dst, v);
    }
  }
}

// A table of every MR x NV instantiation of a kernel template (1 <= mr <= kMR, 1 <= nv <= kNV):
// edge tiles use the smaller ones, so no work is wasted on padding rows or lanes.
template <class Fn, template <int, int> class K>
struct TileTable {
  Fn f[kMR][kNV];
  template <int MR, int... NV>
  constexpr void row(std::integer_sequence<int, NV...>) {
    ((f[MR - 1][NV] = K<MR, NV + 1>::fn), ...);
  }
  template <int... MR>
  constexpr void fill(std::integer_sequence<int, MR...>) {
    (row<MR + 1>(std::make_integer_sequence<int, kNV>{}), ...);
  }
  TileTable() { fill(std::make_integer_sequence<int, kMR>{}); }
  Fn operator()(int mr, int nv) const { return f[mr - 1][nv - 1]; }
};

using UkernelFn = void (*)(int64_t, const float*, const float*, float*, int64_t, const Epilogue&);
template <int MR, int NV>
struct UkernelOf {
  static constexpr UkernelFn fn = &ukernel<MR, NV>;
};
inline UkernelFn ukernel_for(int mr, int nv) {
  static const TileTable<UkernelFn, UkernelOf> table;
  return table(mr, nv);
}

// ---------------------------------------------------------------------------------------------
// Packing A: rows [r0, r0+mr) of a row-major matrix W (row stride ldw), columns [0, K),
// into one panel ap[k][mr]. (The weights of a group are W[ocpg][K].)
// A full panel (mr == kMR, a constant) unrolls into kMR loads and stores per k: the generic
// loop with a run-time mr ran at ~4 cycles per element, 3-4 us a call for the 32x144 weights
// of the digits CNN's second convolution, paid again by every forward (bench/NOTES.md).
template <int MR>
inline void pack_a_rows_fixed(float* __restrict ap, const float* __restrict w, int64_t ldw, int64_t K) {
  for (int64_t k = 0; k < K; ++k)
    for (int i = 0; i < MR; ++i) ap[k * MR + i] = w[i * ldw + k];
}

inline void pack_a_rows(float* __restrict ap, const float* __restrict w, int64_t ldw, int mr,
                        int64_t K) {
  if (mr == kMR) return pack_a_rows_fixed<kMR>(ap, w, ldw, K);
  for (int64_t k = 0; k < K; ++k)
    for (int i = 0; i < mr; ++i) ap[k * mr + i] = w[i * ldw + k];
}

// Packed weights of every group: for group g and row block ob (MR rows, fewer in the last),
// the panel [K][mr] starts at panel(g, ob) = (g * ocpg + ob * MR) * K.
struct PackedA {
  std::unique_ptr<Buffer> own;  // the storage, unless the caller lent some
  float* data = nullptr;
  int64_t rows = 0, K = 0, nblocks = 0;
  float* panel(int64_t g, int64_t ob) const { return data + (g * rows + ob * kMR) * K; }
  int mr(int64_t ob) const { return static_cast<int>(std::min<int64_t>(kMR, rows - ob * kMR)); }
  PackedA() = default;
  PackedA(int64_t G, int64_t rows_, int64_t K_, float* storage) : rows(rows_), K(K_) {
    nblocks = (rows + kMR - 1) / kMR;
    if (!storage) {
      own = std::make_unique<Buffer>(G * rows * K);
      storage = own->data();
    }
    data = storage;
  }
};

// w: G stacked row-major matrices [rows][K] (group stride rows * K). storage: G*rows*K floats
// or null (allocate).
inline PackedA pack_weights(const float* w, int64_t G, int64_t rows, int64_t K,
                            float* storage = nullptr) {
  PackedA A(G, rows, K, storage);
  parallel_work(G * A.nblocks, 0.3 * static_cast<double>(kMR * K), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t g = b / A.nblocks, ob = b % A.nblocks;
      pack_a_rows(A.panel(g, ob), w + (g * rows + ob * kMR) * K, K, A.mr(ob), K);
    }
  });
  return A;
}

// The packed weights of the input gradient for one stride phase, straight from w[G][ocpg][cpg]
// [KH*KW]: rows are the input channels c, depth k = o * Tp + t over the output channels o and
// the Tp taps reaching the phase (tap[t]: the tap's offset kh * KW + kw in a filter), i.e.
//     A[g][c][o * Tp + t] = w[g][o][c][tap[t]]
// in panels of MR channels, without an intermediate transposed copy.
inline PackedA pack_weights_by_tap(const float* w, int64_t G, int64_t cpg, int64_t ocpg, int64_t T,
                                   const int64_t* tap, int64_t Tp) {
  PackedA A(G, cpg, ocpg * Tp, nullptr);
  parallel_work(G * A.nblocks, 0.3 * static_cast<double>(kMR * A.K), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t g = b / A.nblocks, ob = b % A.nblocks;
      const int mr = A.mr(ob);
      float* __restrict ap = A.panel(g, ob);
      for (int64_t o = 0; o < ocpg; ++o) {
        const float* wo = w + ((g * ocpg + o) * cpg + ob * kMR) * T;
        for (int64_t t = 0; t < Tp; ++t, ap += mr) {
          const float* src = wo + tap[t];
          for (int i = 0; i < mr; ++i) ap[i] = src[i * T];
        }
      }
    }
  });
  return A;
}

// ---------------------------------------------------------------------------------------------
// The "flat" implicit im2col.
//
// For a stride-1 convolution whose output is as wide as its input (OW == W: "same" padding),
// output pixel q of a plane reads input pixel q + off[t] at tap t = (kh, kw):
//     off[t] = (kh*dh - ph) * W + (kw*dw - pw)
// so the NR pixels of one B panel row are one contiguous (unaligned) vector load from the
// input plane. Lanes whose tap falls in the zero padding (above, below, or wrapping around a
// row edge) are masked off; the mask of vector v at tap t is precomputed in bits[v * T + t].
//
// Every other convolution is brought to that form:
//  - stride s: the input is split into s*s phase planes, z[c][a][b][i][j] = x[c][i*s+a][j*s+b]
//    (space-to-depth); each tap reads one phase plane at a flat offset, as above;
//  - an output narrower or wider than its input: the output is computed on a grid as wide as
//    the input planes (the extra columns are discarded), or the input rows are padded.
// An explicit copy is made only in these cases (once per sample, a small fraction of the work).
struct FlatSpec {
  int64_t T = 0;                // taps
  int64_t rows = 0, width = 0;  // the output grid (width >= the real output width)
  int64_t Q = 0, nvec = 0;      // rows * width pixels, in nvec vectors of L lanes
  Vec<int64_t> off;     // [T] input offset of each tap, relative to the output pixel
  Vec<uint32_t> bits;   // [nvec][T] lanes whose tap reads a real input pixel

  FlatSpec(int64_t T_, int64_t rows_, int64_t width_) : T(T_), rows(rows_), width(width_) {
    Q = rows * width;
    nvec = (Q + Simd::L - 1) / Simd::L;
    off.assign(T, 0);
    bits.assign(nvec * T, 0);
  }
  // Tap t reads input offset o; it is valid for the grid pixels [r0, r1) x [c0, c1).
  void set_tap(int64_t t, int64_t o, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
    constexpr int L = Simd::L;
    off[t] = o;
    r0 = std::max<int64_t>(r0, 0); r1 = std::min(r1, rows);
    c0 = std::max<int64_t>(c0, 0); c1 = std::min(c1, width);
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t q = r * width + c0; q < r * width + c1; ++q) bits[(q / L) * T + t] |= 1u << (q % L);
  }
};

// floor division and non-negative remainder
inline int64_t fdiv(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
inline int64_t pmod(int64_t a, int64_t b) { return a - fdiv(a, b) * b; }
// first integer i with i*s + e >= lo
inline int64_t first_at_least(int64_t lo, int64_t e, int64_t s) { return -fdiv(e - lo, s); }

// B panel rows k in [k0, k1) (k = c*T + t) for the grid pixels [q0, q0 + nv*L): in is the
// first input channel of the sample and group, cs the channel stride.
inline void pack_b_flat(float* __restrict bp, int nv, const float* in, int64_t cs, int64_t k0,
                        int64_t k1, int64_t q0, const FlatSpec& f) {
  using S = Simd;
  constexpr int L = S::L;
  const int64_t v0 = q0 / L;
  int64_t c = k0 / f.T, t = k0 % f.T;
  for (int64_t k = k0; k < k1; ++k) {
    const float* src = in + c * cs + q0 + f.off[t];
    const uint32_t* mb = f.bits.data() + v0 * f.T + t;
    for (int v = 0; v < nv; ++v)
      S::store(bp + v * L, S::loadm(src + v * L, S::mask(mb[v * f.T])));
    bp += nv * L;
    if (++t == f.T) {
      t = 0;
      ++c;
    }
  }
}

// Ask for [p, p + bytes) to be brought into L2 (non-blocking): for the next sample's input while
// this one computes. The planes of a sample are read in short runs one plane apart (one run
// per channel), which the hardware prefetchers do not follow.
inline void prefetch_l2(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t i = 0; i < bytes; i += 64) _mm_prefetch(c + i, _MM_HINT_T1);
}

// DEEPKERN_CONV_KC=k in the environment forces the K block depth, and one sample per group in
// the weight gradient: tests use it to run the multi-block paths on small shapes, benchmarks
// to compare depths.
inline int64_t kc_override() {
  const char* e = std::getenv("DEEPKERN_CONV_KC");
  return e ? std::max<int64_t>(0, std::atoll(e)) : 0;
}

// ---------------------------------------------------------------------------------------------
// Cache blocking from the caches found at run time. KC = the depth of a B panel. The B panel
// (KC x NR) is reused by every A panel of the block, the A block (rows x KC) by every B panel
// of a sample: both should stay in L2, so KC x NR <= L2/4 and rows x KC <= L2/2. Deep
// panels mean fewer passes over the output tile (each K block after the first reloads it).
// Measured on Zen 5 (bench/NOTES.md): KC = 96 (B panel in L1) and KC = 576 (in L2) run the
// micro-kernel equally fast; the deep one saves the output reloads.
inline int64_t choose_kc(int64_t K, int64_t rows) {
  if (int64_t kc = kc_override()) return std::min(kc, K);
  const int64_t l2 = std::max<int64_t>(cpu_info().l2, 256 * 1024);
  const int64_t f = sizeof(float);
  int64_t kc = std::min(l2 / 4 / (kNR * f), l2 / 2 / (std::max<int64_t>(rows, kMR) * f));
  kc = std::max<int64_t>(kc, 64);
  if (kc >= K) return K;
  const int64_t nb = (K + kc - 1) / kc;  // equal blocks: no short last block
  return (K + nb - 1) / nb;
}

// out[rows of A][ldo] = A_g . col for the grid tiles [t0, t1) of one sample and group (+ bias,
// then ReLU). bp: a B panel buffer of kc * NR floats.
inline void run_flat(float* out, int64_t ldo, const float* in, int64_t cs, const FlatSpec& f,
                     const PackedA& A, int64_t g, const float* bias, bool relu, int64_t kc,
                     int64_t t0, int64_t t1, float* bp) {
  const int64_t K = A.K;
  for (int64_t qt = t0; qt < t1; ++qt) {
    const int64_t q0 = qt * kNR;
    const int nv = static_cast<int>(std::min<int64_t>(kNV, (f.Q - q0 + Simd::L - 1) / Simd::L));
    Epilogue e;
    e.tail_bits = low_bits(f.Q - q0 - (nv - 1) * Simd::L);
    for (int64_t k0 = 0; k0 < K; k0 += kc) {
      const int64_t k1 = std::min(K, k0 + kc);
      pack_b_flat(bp, nv, in, cs, k0, k1, q0, f);
      e.accumulate = k0 > 0;
      e.relu = relu && k1 == K;
      for (int64_t ob = 0; ob < A.nblocks; ++ob) {
        const int mr = A.mr(ob);
        e.bias = bias ? bias + ob * kMR : nullptr;
        ukernel_for(mr, nv)(k1 - k0, A.panel(g, ob) + k0 * mr, bp, out + ob * kMR * ldo + q0, ldo, e);
      }
    }
  }
}

// The same for planes of fewer than kNV vectors (8x8 and smaller on AVX-512), where a tile of
// one plane would leave the micro-kernel 1-3 vectors wide (4x4 planes: 6 accumulators, 7 loads
// per 6 FMAs, latency-bound). A tile instead takes kNV consecutive "virtual vectors"
// vv = n * nvec + v (vector v < nvec of sample n) across sample boundaries: the B panel packs
// each from its own sample, and the epilogue stores each to its own sample (Epilogue::cols).
//   y, ys, ldo: output of the group's first sample, sample stride, channel stride (= f.Q)
//   x, xs, cs: input of the group's first sample, sample stride, channel stride
// Tiles [t0, t1) of the group; bp: a B panel buffer of kc * NR floats.
inline void run_flat_samples(float* y, int64_t ys, int64_t ldo, const float* x, int64_t xs,
                             int64_t cs, int64_t nsamples, const FlatSpec& f, const PackedA& A,
                             int64_t g, const float* bias, bool relu, int64_t kc, int64_t t0,
                             int64_t t1, float* bp) {
  using S = Simd;
  constexpr int L = S::L;
  const int64_t K = A.K, T = f.T, total = nsamples * f.nvec;
  for (int64_t tile = t0; tile < t1; ++tile) {
    const int64_t vv0 = tile * kNV;
    const int nv = static_cast<int>(std::min<int64_t>(kNV, total - vv0));
    const float* in[kNV];
    const uint32_t* mb[kNV];
    float* out[kNV];
    uint32_t tails[kNV];
    for (int j = 0; j < nv; ++j) {
      const int64_t n = (vv0 + j) / f.nvec, v = (vv0 + j) % f.nvec;
      in[j] = x + n * xs + v * L;
      mb[j] = f.bits.data() + v * T;
      out[j] = y + n * ys + v * L;
      tails[j] = low_bits(f.Q - v * L);
    }
    Epilogue e;
    e.tails = tails;
    for (int64_t k0 = 0; k0 < K; k0 += kc) {
      const int64_t k1 = std::min(K, k0 + kc);
      float* __restrict b = bp;  // pack rows [k0, k1): (c, t) of every virtual vector
      int64_t c = k0 / T, t = k0 % T;
      for (int64_t k = k0; k < k1; ++k) {
        const int64_t o = c * cs + f.off[t];
        for (int j = 0; j < nv; ++j) S::store(b + j * L, S::loadm(in[j] + o, S::mask(mb[j][t])));
        b += nv * L;
        if (++t == T) {
          t = 0;
          ++c;
        }
      }
      e.accumulate = k0 > 0;
      e.relu = relu && k1 == K;
      for (int64_t ob = 0; ob < A.nblocks; ++ob) {
        float* cols[kNV];
        for (int j = 0; j < nv; ++j) cols[j] = out[j] + ob * kMR * ldo;
        e.cols = cols;
        e.bias = bias ? bias + ob * kMR : nullptr;
        const int mr = A.mr(ob);
        ukernel_for(mr, nv)(k1 - k0, A.panel(g, ob) + k0 * mr, bp, cols[0], ldo, e);  // (c: unused)
      }
    }
  }
}

// Inverse of split_row: dst[j*s + b] = src_b[j] for every column j*s + b < w.
inline void merge_row(float* dst, int64_t w, const float* const* src, int64_t s) {
  if (s == 2) {
    using S = Simd;
    constexpr int L = S::L;
    for (int64_t j = 0; 2 * j < w; j += L) {
      if (2 * j + 2 * L <= w) {  // whole vectors: plain loads and stores (see split_row)
        S::V lo, hi;
        S::interleave(S::load(src[0] + j), S::load(src[1] + j), lo, hi);
        S::store(dst + 2 * j, lo);
        S::store(dst + 2 * j + L, hi);
        continue;
      }
      const int64_t n = (w - 2 * j + 1) / 2;  // source columns left (the odd phase may be one short)
      const S::V e = S::loadm(src[0] + j, S::mask(low_bits(n)));
      const S::V o = S::loadm(src[1] + j, S::mask(low_bits(w / 2 - j)));
      S::V lo, hi;
      S::interleave(e, o, lo, hi);
      S::storem(dst + 2 * j, S::mask(low_bits(w - 2 * j)), lo);
      S::storem(dst + 2 * j + L, S::mask(low_bits(w - 2 * j - L)), hi);
    }
    return;
  }
  for (int64_t iw = 0; iw < w; ++iw) dst[iw] = src[iw % s][iw / s];
}

// Per-thread scratch memory, reused across calls: only the first call of a given size pays
// the page faults of fresh memory (measured: ~0.5 ms for the 4 MB of partial sums of a large
// weight gradient). Each function uses its own slot numbers; the buffers live until the
// thread ends.
inline float* scratch(int slot, int64_t n) {
  struct Arena {
    float* p[8] = {};
    int64_t cap[8] = {};
    ~Arena() {
      for (float* q : p) std::free(q);
    }
  };
  thread_local Arena a;
  if (a.cap[slot] < n) {
    std::free(a.p[slot]);
    const size_t bytes = (static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(float) + 63) / 64 * 64;
    a.p[slot] = static_cast<float*>(std::aligned_alloc(64, bytes));
    if (!a.p[slot]) {
      a.cap[slot] = 0;
      throw std::bad_alloc();
    }
    a.cap[slot] = n;
  }
  return a.p[slot];
}

// The input layout the flat forward reads: x itself, or a copy in phase planes / wider rows.
// Only the phases some tap reads are copied: a 1x1 stride-2 layer reads one phase of four,
// and a stride larger than the window leaves most input pixels unread (copying them all
// would also page in inputs that are never touched otherwise).
struct FlatInput {
  bool copy = false;
  int64_t Hz = 0, width = 0;               // phase plane rows and width
  int64_t cs = 0;                          // channel stride in the buffer the kernel reads
  Vec<int64_t> rows, cols;                 // the row / column phases a tap reads (copy)
  // Position of a phase in rows / cols. A linear search over at most KH (KW) entries: a table
  // indexed by phase would need `stride` entries, and strides reach 2^31 (hostile but legal).
  static int64_t slot(const Vec<int64_t>& v, int64_t phase) {
    for (size_t i = 0; i < v.size(); ++i)
      if (v[i] == phase) return static_cast<int64_t>(i);
    return -1;
  }
  int64_t plane_of(int64_t a, int64_t b) const {
    return (slot(rows, a) * static_cast<int64_t>(cols.size()) + slot(cols, b)) * Hz * width;
  }
};

inline FlatInput flat_input(const Conv2dParams& p) {
  FlatInput in;
  const int64_t Wz = (p.W + p.sw - 1) / p.sw;
  in.Hz = (p.H + p.sh - 1) / p.sh;
  in.width = std::max(p.OW, Wz);
  in.copy = !(p.sh == 1 && p.sw == 1 && in.width == p.W);
  if (!in.copy) {
    in.cs = p.H * p.W;
    return in;
  }
  for (int64_t kh = 0; kh < p.KH; ++kh) {
    const int64_t a = pmod(kh * p.dh - p.ph, p.sh);
    if (FlatInput::slot(in.rows, a) < 0) in.rows.push_back(a);
  }
  for (int64_t kw = 0; kw < p.KW; ++kw) {
    const int64_t b = pmod(kw * p.dw - p.pw, p.sw);
    if (FlatInput::slot(in.cols, b) < 0) in.cols.push_back(b);
  }
  in.cs = static_cast<int64_t>(in.rows.size() * in.cols.size()) * in.Hz * in.width;
  return in;
}

// Row deinterleave for the phase split: dst[k][j] = src[j*s + cols[k]] for j < width (zero
// past the source row of length w). Vectorized for s == 2 (the common stride).
inline void split_row(float* const* dst, int64_t width, const float* src, int64_t w, int64_t s,
                      const Vec<int64_t>& cols) {
  if (s == 2) {
    using S = Simd;
    constexpr int L = S::L;
    for (int64_t j = 0; j < width; j += L) {  // 2L source floats -> L even + L odd
      if (2 * j + 2 * L <= w && j + L <= width) {
        // whole vectors: plain loads and stores. Masked stores retire slowly on Zen 4/5: with
        // them this copy took 35% of c6's forward, more than its GEMM (bench/NOTES.md)
        S::V eo[2];
        S::deinterleave(S::load(src + 2 * j), S::load(src + 2 * j + L), eo[0], eo[1]);
        for (size_t k = 0; k < cols.size(); ++k) S::store(dst[k] + j, eo[cols[k]]);
        continue;
      }
      const S::V lo = S::loadm(src + 2 * j, S::mask(low_bits(w - 2 * j)));
      const S::V hi = S::loadm(src + 2 * j + L, S::mask(low_bits(w - 2 * j - L)));
      S::V eo[2];
      S::deinterleave(lo, hi, eo[0], eo[1]);
      const S::M m = S::mask(low_bits(width - j));
      for (size_t k = 0; k < cols.size(); ++k) S::storem(dst[k] + j, m, eo[cols[k]]);
    }
    return;
  }
  for (size_t k = 0; k < cols.size(); ++k)
    for (int64_t j = 0; j < width; ++j) {
      const int64_t iw = j * s + cols[k];
      dst[k][j] = iw < w ? src[iw] : 0.f;
    }
}

// z[c][phase (a, b)][i][j] = x[c][i*sh + a][j*sw + b] (zero outside x), i < Hz, j < width,
// for the phases a tap reads.
inline void make_flat_input(float* z, const float* xg, int64_t cpg, const Conv2dParams& p,
                            const FlatInput& in) {
  const int64_t plane = in.Hz * in.width, nb = static_cast<int64_t>(in.cols.size());
  Vec<float*> dst(nb);
  for (int64_t c = 0; c < cpg; ++c)
    for (size_t ia = 0; ia < in.rows.size(); ++ia)
      for (int64_t i = 0; i < in.Hz; ++i) {
        const int64_t ih = i * p.sh + in.rows[ia];
        for (int64_t k = 0; k < nb; ++k)
          dst[k] = z + c * in.cs + (static_cast<int64_t>(ia) * nb + k) * plane + i * in.width;
        if (ih < p.H) {
          split_row(dst.data(), in.width, xg + (c * p.H + ih) * p.W, p.W, p.sw, in.cols);
        } else {
          for (int64_t k = 0; k < nb; ++k) std::memset(dst[k], 0, sizeof(float) * in.width);
        }
      }
}

inline FlatSpec forward_spec(const Conv2dParams& p, const FlatInput& in) {
  FlatSpec f(p.KH * p.KW, p.OH, in.width);
  for (int64_t kh = 0; kh < p.KH; ++kh)
    for (int64_t kw = 0; kw < p.KW; ++kw) {
      const int64_t eh = kh * p.dh - p.ph, ew = kw * p.dw - p.pw;
      const int64_t o = in.copy ? in.plane_of(pmod(eh, p.sh), pmod(ew, p.sw)) +
                                      fdiv(eh, p.sh) * in.width + fdiv(ew, p.sw)
                                : eh * p.W + ew;
      // output rows oh with 0 <= oh*sh + eh < H, columns likewise (and inside the real output)
      f.set_tap(kh * p.KW + kw, o, first_at_least(0, eh, p.sh),
                std::min(first_at_least(p.H, eh, p.sh), p.OH), first_at_least(0, ew, p.sw),
                std::min(first_at_least(p.W, ew, p.sw), p.OW));
    }
  return f;
}

// ---------------------------------------------------------------------------------------------
// Forward: y = conv(x, w) + b (then ReLU if relu), any stride, padding, dilation and groups.
// Work items are (sample, group, NR-pixel tile) when the kernel reads x directly, or (sample,
// group) when a per-sample copy is made; each thread owns a contiguous range of items and its
// buffers. No reductions cross items, so any split gives the same bits.
inline void forward_flat(float* y, const float* x, const float* w, const float* b,
                         const Conv2dParams& p, bool relu, int64_t kc = 0) {
  const int64_t cpg = p.cpg(), ocpg = p.ocpg(), T = p.KH * p.KW, K = cpg * T, HW = p.H * p.W;
  const FlatInput in = flat_input(p);
  const FlatSpec f = forward_spec(p, in);
  const bool crop = f.width != p.OW;  // computed on a wider grid: crop into y
  const PackedA A = pack_weights(w, p.G, ocpg, K, scratch(7, p.G * ocpg * K));
  kc = kc > 0 ? std::min(kc, K) : choose_kc(K, ocpg);
  // cost of one NR-pixel tile on one core at ~150 GFLOP/s (the threading threshold)
  const double tile_ns = 2.0 * static_cast<double>(ocpg * K * kNR) / 150.0;
  if (!in.copy && !crop && f.nvec < kNV) {  // small planes: tiles across samples
    const int64_t ntiles = (p.N * f.nvec + kNV - 1) / kNV;
    parallel_work(p.G * ntiles, tile_ns, [&](int64_t i0, int64_t i1) {
      float* bp = scratch(0, kc * kNR);
      for (int64_t it = i0; it < i1;) {  // the tiles of one group at a time
        const int64_t g = it / ntiles, t0 = it % ntiles, t1 = std::min(ntiles, t0 + (i1 - it));
        run_flat_samples(y + g * ocpg * f.Q, p.OC * f.Q, f.Q, x + g * cpg * HW, p.C * HW, in.cs, p.N, f, A, g,
                         b ? b + g * ocpg : nullptr, relu, kc, t0, t1, bp);
        it += t1 - t0;
      }
    });
    return;
  }
  const int64_t ntiles = (f.Q + kNR - 1) / kNR;
  const int64_t per_item = in.copy || crop ? ntiles : 1;  // tiles per work item
  const int64_t items = p.N * p.G * (ntiles / per_item);
  parallel_work(items, tile_ns * static_cast<double>(per_item), [&](int64_t i0, int64_t i1) {
    float* bp = scratch(0, kc * kNR);
    float* z = in.copy ? scratch(1, cpg * in.cs) : nullptr;
    float* tmp = crop ? scratch(2, ocpg * f.Q) : nullptr;
    for (int64_t it = i0; it < i1; ++it) {
      const int64_t ng = it / (ntiles / per_item), n = ng / p.G, g = ng % p.G;
      const int64_t t0 = (it % (ntiles / per_item)) * per_item;
      const float* xg = x + (n * p.C + g * cpg) * HW;
      if (t0 == 0 && ng + 1 < p.N * p.G) prefetch_l2(xg + cpg * HW, cpg * HW * sizeof(float));
      const float* src = xg;
      if (in.copy) {
        make_flat_input(z, xg, cpg, p, in);
        src = z;
      }
      const float* bias = b ? b + g * ocpg : nullptr;
      float* yg = y + (n * p.OC + g * ocpg) * p.OH * p.OW;
      if (!crop) {
        run_flat(yg, f.Q, src, in.cs, f, A, g, bias, relu, kc, t0, t0 + per_item, bp);
        continue;
      }
      run_flat(tmp, f.Q, src, in.cs, f, A, g, bias, relu, kc, 0, ntiles, bp);
      for (int64_t o = 0; o < ocpg; ++o)
        for (int64_t oh = 0; oh < p.OH; ++oh)
          std::memcpy(yg + (o * p.OH + oh) * p.OW, tmp + o * f.Q + oh * f.width,
                      sizeof(float) * p.OW);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Backward w.r.t. the input.
//
// Stride 1: dx is itself a stride-1 convolution of dy with the weights transposed (in and out
// channels swapped) and flipped (tap (kh, kw) -> (KH-1-kh, KW-1-kw)), padded by d*(k-1) - p:
//     dx[c, ih, iw] = sum_{oc, kh, kw} w[oc, c, kh, kw] * dy[oc, ih + ph - kh*dh, iw + pw - kw*dw]
// so it runs on the forward code.
// Stride s > 1: split dx into its s*s phases, dx_ab[c, i, j] = dx[c, i*s + a, j*s + b]. Only the
// taps with kh*dh == a + ph (mod s) (and likewise kw) reach phase (a, b), and they read dy at
// the fixed shift e = (a + ph - kh*dh) / s: each phase is a stride-1 convolution of dy with
// its own subset of the taps, on the flat code; the phases are then interleaved into dx.
// wt (C, OC/G, KH, KW) <- w (OC, C/G, KH, KW) transposed per group and flipped.
inline void transpose_flip_weights(float* wt, const float* w, const Conv2dParams& p) {
  const int64_t cpg = p.cpg(), ocpg = p.ocpg(), T = p.KH * p.KW;
  for (int64_t g = 0; g < p.G; ++g)
    for (int64_t o = 0; o < ocpg; ++o)
      for (int64_t c = 0; c < cpg; ++c)
        for (int64_t t = 0; t < T; ++t)
          wt[((g * cpg + c) * ocpg + o) * T + (T - 1 - t)] = w[((g * ocpg + o) * cpg + c) * T + t];
}

inline void backward_input_strided(float* dx, const float* dy, const float* w,
                                   const Conv2dParams& p) {
  const int64_t cpg = p.cpg(), ocpg = p.ocpg(), T = p.KH * p.KW, OHW = p.OH * p.OW;
  const int64_t s_h = p.sh, s_w = p.sw, nph = s_h * s_w;
  const int64_t Hd = (p.H + s_h - 1) / s_h, Wd = (p.W + s_w - 1) / s_w;
  // dy is read in place when its rows are as wide as the grid, else copied into wider rows
  const int64_t width = std::max(p.OW, Wd);
  const bool copy = width != p.OW;
  const int64_t cs = copy ? p.OH * width : OHW;
  struct Phase {
    std::unique_ptr<FlatSpec> f;
    PackedA A;
  };
  Vec<Phase> ph(nph);
  for (int64_t a = 0; a < s_h; ++a)
    for (int64_t b = 0; b < s_w; ++b) {
      Vec<std::pair<int64_t, int64_t>> taps;  // (kh, kw) reaching this phase
      for (int64_t kh = 0; kh < p.KH; ++kh)
        for (int64_t kw = 0; kw < p.KW; ++kw)
          if (pmod(a + p.ph - kh * p.dh, s_h) == 0 && pmod(b + p.pw - kw * p.dw, s_w) == 0)
            taps.push_back({kh, kw});
      Phase& P = ph[a * s_w + b];
      const int64_t Tp = static_cast<int64_t>(taps.size());
      if (Tp == 0) continue;  // no tap reaches this phase: it stays zero
      P.f = std::make_unique<FlatSpec>(Tp, Hd, width);
      const int64_t Ha = (p.H - a + s_h - 1) / s_h, Wb = (p.W - b + s_w - 1) / s_w;
      Vec<int64_t> tap(Tp);
      for (int64_t t = 0; t < Tp; ++t) {
        const auto [kh, kw] = taps[t];
        const int64_t eh = (a + p.ph - kh * p.dh) / s_h, ew = (b + p.pw - kw * p.dw) / s_w;
        // grid pixel (i, j) reads dy[i + eh, j + ew]; valid inside dy and inside this phase
        P.f->set_tap(t, eh * width + ew, std::max(-eh, int64_t(0)), std::min(p.OH - eh, Ha),
                     std::max(-ew, int64_t(0)), std::min(p.OW - ew, Wb));
        tap[t] = kh * p.KW + kw;
      }
      P.A = pack_weights_by_tap(w, p.G, cpg, ocpg, T, tap.data(), Tp);
    }
  const int64_t K = ocpg * T;  // upper bound of every phase's depth
  const int64_t kc = choose_kc(K, cpg);
  const int64_t Qg = Hd * width;
  parallel_range(p.N * p.G, 1, [&](int64_t i0, int64_t i1) {
    float* bp = scratch(0, kc * kNR);
    float* tmp = scratch(1, nph * cpg * Qg);
    float* wide = copy ? scratch(2, ocpg * cs) : nullptr;
    Vec<const float*> src(s_w);
    for (int64_t it = i0; it < i1; ++it) {
      const int64_t n = it / p.G, g = it % p.G;
      const float* dyg = dy + (n * p.OC + g * ocpg) * OHW;
      if (it + 1 < p.N * p.G) prefetch_l2(dyg + ocpg * OHW, ocpg * OHW * sizeof(float));
      const float* in = dyg;
      if (copy) {
        for (int64_t o = 0; o < ocpg; ++o)
          for (int64_t r = 0; r < p.OH; ++r) {
            float* d = wide + o * cs + r * width;
            std::memcpy(d, dyg + o * OHW + r * p.OW, sizeof(float) * p.OW);
            std::memset(d + p.OW, 0, sizeof(float) * (width - p.OW));
          }
        in = wide;
      }
      for (int64_t k = 0; k < nph; ++k) {
        float* out = tmp + k * cpg * Qg;
        if (!ph[k].f) {
          std::memset(out, 0, sizeof(float) * cpg * Qg);
          continue;
        }
        run_flat(out, Qg, in, cs, *ph[k].f, ph[k].A, g, nullptr, false, kc, 0,
                 (Qg + kNR - 1) / kNR, bp);
      }
      float* dxg = dx + (n * p.C + g * cpg) * p.H * p.W;
      for (int64_t c = 0; c < cpg; ++c)
        for (int64_t ih = 0; ih < p.H; ++ih) {
          const int64_t a = ih % s_h, i = ih / s_h;
          for (int64_t b = 0; b < s_w; ++b)
            src[b] = tmp + ((a * s_w + b) * cpg + c) * Qg + i * width;
          merge_row(dxg + (c * p.H + ih) * p.W, p.W, src.data(), s_w);
        }
    }
  });
}

inline void backward_input_flat(float* dx, const float* dy, const float* w, const Conv2dParams& p) {
  if (p.sh == 1 && p.sw == 1) {
    float* wt = scratch(6, p.OC * p.cpg() * p.KH * p.KW);  // forward_flat does not use slot 6
    transpose_flip_weights(wt, w, p);
    return forward_flat(dx, dy, wt, nullptr, transposed_params(p), false);
  }
  backward_input_strided(dx, dy, w, p);
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
template <int MR, int NV>
struct UkernelDwOf {
  static constexpr UkernelDwFn fn = &ukernel_dw<MR, NV>;
};
inline UkernelDwFn ukernel_dw_for(int mr, int nv) {
  static const TileTable<UkernelDwFn, UkernelDwOf> table;
  return table(mr, nv);
}

// Zero-padded copy of the cpg channels at xg: xp[c][Hp][Wp], Hp = H + 2ph, Wp = W + 2pw.
// Only the interior is written (vector copies, a row at a time): the caller zeroed the
// buffer once, and the border stays zero from sample to sample. (Per-row memset/memcpy calls
// cost as much as a third of the weight gradient of a 32x32 stride-2 layer.)
inline void pad_input(float* __restrict xp, const float* __restrict xg, int64_t cpg,
                      const Conv2dParams& p) {
  using S = Simd;
  constexpr int L = S::L;
  const int64_t Hp = p.H + 2 * p.ph, Wp = p.W + 2 * p.pw, W = p.W;
  for (int64_t c = 0; c < cpg; ++c)
    for (int64_t h = 0; h < p.H; ++h) {
      float* __restrict d = xp + (c * Hp + p.ph + h) * Wp + p.pw;
      const float* __restrict src = xg + (c * p.H + h) * W;
      int64_t i = 0;
      for (; i + L <= W; i += L) S::store(d + i, S::load(src + i));
      if (i < W) {
        const S::M m = S::mask(low_bits(W - i));
        S::storem(d + i, m, S::loadm(src + i, m));
      }
    }
}

// dyT panel of one sample: bp[q][j] = dyg[oc0 + j][q] for j < nr (zero for channels past ocpg),
// and dbsum[j] += sum_q dyg[oc0 + j][q]. L x L blocks are transposed in registers; the sum of
// the transposed vectors is the vector of the channels' sums (the bias gradient, for free).
inline void pack_dy_transposed(float* __restrict bp, int nr, const float* __restrict dyg,
                               int64_t oc0, int64_t ocpg, int64_t Q, float* dbsum) {
  using S = Simd;
  using V = S::V;
  constexpr int L = S::L;
  const int64_t valid = std::min<int64_t>(nr, ocpg - oc0);
  for (int jb = 0; jb < nr; jb += L) {
    V sum = S::zero();
    for (int64_t q0 = 0; q0 < Q; q0 += L) {
      const int64_t nq = std::min<int64_t>(L, Q - q0);
      const typename S::M m = S::mask(low_bits(nq));
      V r[L];
      for (int i = 0; i < L; ++i)
        r[i] = jb + i < valid ? S::loadm(dyg + (oc0 + jb + i) * Q + q0, m) : S::zero();
      S::transpose(r);
      for (int64_t i = 0; i < nq; ++i) {
        S::store(bp + (q0 + i) * nr + jb, r[i]);
        sum = S::add(sum, r[i]);
      }
    }
    alignas(64) float lanes[L];
    S::store(lanes, sum);
    for (int i = 0; i < L; ++i) dbsum[jb + i] += lanes[i];
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
  // Work items: up to 8, but no more than one per kMinNsPerThread of work (at ~150 GFLOP/s):
  // each chunk costs a partial dw to fold, which small layers do not pay back. A function of
  // the shape only (never of the thread count), so the sums are the same on any thread count.
  const double work_ns = 2.0 * static_cast<double>(p.N * Q * K * ocpg * p.G) / 150.0;
  const int64_t want_items = std::clamp<int64_t>(static_cast<int64_t>(work_ns / kMinNsPerThread), 1, 8);
  const int64_t want_chunks = std::min<int64_t>(p.N, std::max<int64_t>(1, want_items / (p.G * noct)));
  const int64_t per = (p.N + want_chunks - 1) / want_chunks;
  const int64_t nchunks = (p.N + per - 1) / per;  // every chunk holds at least one sample
  // samples per group: x_pad and dyT of the group in half of L2
  const int64_t per_sample = (cpg * plane + Q * kNR) * static_cast<int64_t>(sizeof(float));
  const int64_t l2 = std::max<int64_t>(cpu_info().l2, 256 * 1024);
  const int64_t S = kc_override() ? 1 : std::clamp<int64_t>(l2 / 2 / per_sample, 1, per);
  const int64_t pstride = p.G * (K * ocpad + ocpad);    // one chunk's partial dw and db
  float* partial = scratch(3, nchunks * pstride);
  parallel_work(nchunks * p.G * noct, work_ns / static_cast<double>(nchunks * p.G * noct), [&](int64_t i0, int64_t i1) {
    float* xpad = scratch(4, S * cpg * plane);
    std::fill(xpad, xpad + S * cpg * plane, 0.f);  // the borders; pad_input writes interiors
    float* dyT = scratch(5, S * Q * kNR);
    Vec<const float*> xs(S), bs(S);
    for (int64_t it = i0; it < i1; ++it) {
      const int64_t ch = it / (p.G * noct), g = (it / noct) % p.G, ot = it % noct;
      const int64_t oc0 = ot * kNR;
      const int nr = static_cast<int>(std::min<int64_t>(kNR, ocpg - oc0));
      const int nv = (nr + S_::L - 1) / S_::L;
      float* pw = partial + ch * pstride + g * (K * ocpad + ocpad);
      float* pb = pw + K * ocpad + oc0;
      for (int64_t j = 0; j < kNR; ++j) pb[j] = 0.f;
      bool first = true;
      const int64_t n_end = std::min(p.N, (ch + 1) * per);
      for (int64_t n0 = ch * per; n0 < n_end; n0 += S) {
        const int ns = static_cast<int>(std::min<int64_t>(S, n_end - n0));
        for (int s = 0; s < ns; ++s) {
          const int64_t n = n0 + s;
          xs[s] = xpad + s * cpg * plane;
          bs[s] = dyT + s * Q * nv * S_::L;
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
  // fold the chunks in order, transposing dwT[k][oc] back to dw[oc][k]: L x L blocks, the
  // chunks summed lane-wise (0 + chunk 0 + chunk 1 ...), then transposed in registers
  const int64_t nkt = (K + S_::L - 1) / S_::L, nct = (ocpg + S_::L - 1) / S_::L;
  parallel_work(p.G * nct * nkt, 0.5 * static_cast<double>(S_::L * S_::L * nchunks), [&](int64_t i0, int64_t i1) {
    using V = S_::V;
    constexpr int L = S_::L;
    for (int64_t it = i0; it < i1; ++it) {
      const int64_t g = it / (nct * nkt), oc0 = (it / nkt) % nct * L, k0 = it % nkt * L;
      const int64_t nk = std::min<int64_t>(L, K - k0), noc = std::min<int64_t>(L, ocpg - oc0);
      V r[L];
      for (int i = 0; i < L; ++i) {
        r[i] = S_::zero();
        if (i >= nk) continue;
        for (int64_t ch = 0; ch < nchunks; ++ch)
          r[i] = S_::add(r[i], S_::load(partial + ch * pstride + g * (K * ocpad + ocpad) + (k0 + i) * ocpad + oc0));
      }
      S_::transpose(r);  // r[j]: output channel oc0 + j, lanes k0 ..
      const typename S_::M m = S_::mask(low_bits(nk));
      for (int64_t j = 0; j < noc; ++j) {
        float* d = dw + (g * ocpg + oc0 + j) * K + k0;
        if (nk == L)
          S_::store(d, r[j]);
        else
          S_::storem(d, m, r[j]);
      }
      if (db && k0 == 0) {
        V s = S_::zero();
        for (int64_t ch = 0; ch < nchunks; ++ch)
          s = S_::add(s, S_::load(partial + ch * pstride + g * (K * ocpad + ocpad) + K * ocpad + oc0));
        S_::storem(db + g * ocpg + oc0, S_::mask(low_bits(noc)), s);
      }
    }
  });
}

}  // namespace dk::cpu::DK_ISA_NS
