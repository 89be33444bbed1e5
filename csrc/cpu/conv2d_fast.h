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
      const bool last = j == NV - 1 && !full;
      V v = acc[i][j];
      if (e.accumulate)
        v = S::add(v, last ? S::loadm(ci + j * L, tail) : S::load(ci + j * L));
      else
        v = S::add(v, bias);
      if (e.relu) v = S::max(S::zero(), v);  // max(0, v): keeps NaN, as relu does
      if (last)
        S::storem(ci + j * L, tail, v);
      else
        S::store(ci + j * L, v);
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
inline void pack_a_rows(float* __restrict ap, const float* __restrict w, int64_t ldw, int mr,
                        int64_t K) {
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
  parallel_for(G * A.nblocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t g = b / A.nblocks, ob = b % A.nblocks;
      pack_a_rows(A.panel(g, ob), w + (g * rows + ob * kMR) * K, K, A.mr(ob), K);
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
  std::vector<int64_t> off;     // [T] input offset of each tap, relative to the output pixel
  std::vector<uint32_t> bits;   // [nvec][T] lanes whose tap reads a real input pixel

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

// Row deinterleave for the phase split: dst_b[j] = src[j*s + b] for j < width (zero past the
// source row of length w), for every phase b < s. Vectorized for s == 2 (the common stride).
inline void split_row(float* const* dst, int64_t width, const float* src, int64_t w, int64_t s) {
  int64_t j = 0;
  if (s == 2) {
    using S = Simd;
    constexpr int L = S::L;
    for (; j < width; j += L) {  // 2L source floats -> L even + L odd
      const S::V lo = S::loadm(src + 2 * j, S::mask(low_bits(w - 2 * j)));
      const S::V hi = S::loadm(src + 2 * j + L, S::mask(low_bits(w - 2 * j - L)));
      S::V even, odd;
      S::deinterleave(lo, hi, even, odd);
      const S::M m = S::mask(low_bits(width - j));
      S::storem(dst[0] + j, m, even);
      S::storem(dst[1] + j, m, odd);
    }
    return;
  }
  for (; j < width; ++j)
    for (int64_t b = 0; b < s; ++b) {
      const int64_t iw = j * s + b;
      dst[b][j] = iw < w ? src[iw] : 0.f;
    }
}

// Inverse of split_row: dst[j*s + b] = src_b[j] for every column j*s + b < w.
inline void merge_row(float* dst, int64_t w, const float* const* src, int64_t s) {
  if (s == 2) {
    using S = Simd;
    constexpr int L = S::L;
    for (int64_t j = 0; 2 * j < w; j += L) {
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
struct FlatInput {
  bool copy = false;
  int64_t Hz = 0, width = 0;  // phase plane rows and width
  int64_t cs = 0;             // channel stride in the buffer the kernel reads
};

inline FlatInput flat_input(const Conv2dParams& p) {
  FlatInput in;
  const int64_t Wz = (p.W + p.sw - 1) / p.sw;
  in.Hz = (p.H + p.sh - 1) / p.sh;
  in.width = std::max(p.OW, Wz);
  in.copy = !(p.sh == 1 && p.sw == 1 && in.width == p.W);
  in.cs = in.copy ? p.sh * p.sw * in.Hz * in.width : p.H * p.W;
  return in;
}

// z[c][a][b][i][j] = x[c][i*sh + a][j*sw + b] (zero outside x), i < Hz, j < width.
inline void make_flat_input(float* z, const float* xg, int64_t cpg, const Conv2dParams& p,
                            const FlatInput& in) {
  const int64_t plane = in.Hz * in.width;
  std::vector<float*> dst(p.sw);
  for (int64_t c = 0; c < cpg; ++c)
    for (int64_t a = 0; a < p.sh; ++a)
      for (int64_t i = 0; i < in.Hz; ++i) {
        const int64_t ih = i * p.sh + a;
        float* zr = z + (c * p.sh * p.sw + a * p.sw) * plane + i * in.width;
        for (int64_t b = 0; b < p.sw; ++b) dst[b] = zr + b * plane;
        if (ih < p.H) {
          split_row(dst.data(), in.width, xg + (c * p.H + ih) * p.W, p.W, p.sw);
        } else {
          for (int64_t b = 0; b < p.sw; ++b) std::memset(dst[b], 0, sizeof(float) * in.width);
        }
      }
}

inline FlatSpec forward_spec(const Conv2dParams& p, const FlatInput& in) {
  FlatSpec f(p.KH * p.KW, p.OH, in.width);
  for (int64_t kh = 0; kh < p.KH; ++kh)
    for (int64_t kw = 0; kw < p.KW; ++kw) {
      const int64_t eh = kh * p.dh - p.ph, ew = kw * p.dw - p.pw;
      const int64_t o = in.copy ? (pmod(eh, p.sh) * p.sw + pmod(ew, p.sw)) * in.Hz * in.width +
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
  const int64_t ntiles = (f.Q + kNR - 1) / kNR;
  const int64_t per_item = in.copy || crop ? ntiles : 1;  // tiles per work item
  const int64_t items = p.N * p.G * (ntiles / per_item);
  parallel_range(items, 1, [&](int64_t i0, int64_t i1) {
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
  std::vector<Phase> ph(nph);
  for (int64_t a = 0; a < s_h; ++a)
    for (int64_t b = 0; b < s_w; ++b) {
      std::vector<std::pair<int64_t, int64_t>> taps;  // (kh, kw) reaching this phase
      for (int64_t kh = 0; kh < p.KH; ++kh)
        for (int64_t kw = 0; kw < p.KW; ++kw)
          if (pmod(a + p.ph - kh * p.dh, s_h) == 0 && pmod(b + p.pw - kw * p.dw, s_w) == 0)
            taps.push_back({kh, kw});
      Phase& P = ph[a * s_w + b];
      const int64_t Tp = static_cast<int64_t>(taps.size());
      if (Tp == 0) continue;  // no tap reaches this phase: it stays zero
      P.f = std::make_unique<FlatSpec>(Tp, Hd, width);
      const int64_t Ha = (p.H - a + s_h - 1) / s_h, Wb = (p.W - b + s_w - 1) / s_w;
      std::vector<float> wp(p.G * cpg * ocpg * Tp);  // [g][c][oc][t]
      for (int64_t t = 0; t < Tp; ++t) {
        const auto [kh, kw] = taps[t];
        const int64_t eh = (a + p.ph - kh * p.dh) / s_h, ew = (b + p.pw - kw * p.dw) / s_w;
        // grid pixel (i, j) reads dy[i + eh, j + ew]; valid inside dy and inside this phase
        P.f->set_tap(t, eh * width + ew, std::max(-eh, int64_t(0)), std::min(p.OH - eh, Ha),
                     std::max(-ew, int64_t(0)), std::min(p.OW - ew, Wb));
        for (int64_t g = 0; g < p.G; ++g)
          for (int64_t c = 0; c < cpg; ++c)
            for (int64_t o = 0; o < ocpg; ++o)
              wp[((g * cpg + c) * ocpg + o) * Tp + t] =
                  w[(((g * ocpg + o) * cpg + c) * p.KH + kh) * p.KW + kw];
      }
      P.A = pack_weights(wp.data(), p.G, cpg, ocpg * Tp);
    }
  const int64_t K = ocpg * T;  // upper bound of every phase's depth
  const int64_t kc = choose_kc(K, cpg);
  const int64_t Qg = Hd * width;
  parallel_range(p.N * p.G, 1, [&](int64_t i0, int64_t i1) {
    float* bp = scratch(0, kc * kNR);
    float* tmp = scratch(1, nph * cpg * Qg);
    float* wide = copy ? scratch(2, ocpg * cs) : nullptr;
    std::vector<const float*> src(s_w);
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
  const int64_t want_items = 8;
  const int64_t want_chunks = std::min<int64_t>(p.N, std::max<int64_t>(1, want_items / (p.G * noct)));
  const int64_t per = (p.N + want_chunks - 1) / want_chunks;
  const int64_t nchunks = (p.N + per - 1) / per;  // every chunk holds at least one sample
  // samples per group: x_pad and dyT of the group in half of L2
  const int64_t per_sample = (cpg * plane + Q * kNR) * static_cast<int64_t>(sizeof(float));
  const int64_t l2 = std::max<int64_t>(cpu_info().l2, 256 * 1024);
  const int64_t S = kc_override() ? 1 : std::clamp<int64_t>(l2 / 2 / per_sample, 1, per);
  const int64_t pstride = p.G * (K * ocpad + ocpad);    // one chunk's partial dw and db
  float* partial = scratch(3, nchunks * pstride);
  parallel_for(nchunks * p.G * noct, 1, [&](int64_t i0, int64_t i1) {
    float* xpad = scratch(4, S * cpg * plane);
    std::fill(xpad, xpad + S * cpg * plane, 0.f);  // the borders; pad_input writes interiors
    float* dyT = scratch(5, S * Q * kNR);
    std::vector<const float*> xs(S), bs(S);
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
  // fold the chunks in order, transposing dwT[k][oc] back to dw[oc][k]
  parallel_for(p.G * ocpg, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t row = r0; row < r1; ++row) {
      const int64_t g = row / ocpg, oc = row % ocpg;
      float* d = dw + row * K;
      for (int64_t k = 0; k < K; ++k) d[k] = 0.f;
      float bsum = 0.f;
      for (int64_t ch = 0; ch < nchunks; ++ch) {
        const float* pw = partial + ch * pstride + g * (K * ocpad + ocpad);
        for (int64_t k = 0; k < K; ++k) d[k] += pw[k * ocpad + oc];
        bsum += pw[K * ocpad + oc];
      }
      if (db) db[row] = bsum;
    }
  });
}

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
  std::vector<float> wf(p.OC * T);  // flipped taps
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
    std::vector<const float*> xs(p.N), ds(p.N);
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

// ---------------------------------------------------------------------------------------------
// Winograd F(2x2, 3x3) for 3x3 stride-1 convolutions (Lavin & Gray, "Fast Algorithms for
// Convolutional Neural Networks", 2016).
//
// Each 2x2 output tile is computed from a 4x4 input tile d as
//     Y = A^T [ sum_c (G g_c G^T) .* (B^T d_c B) ] A
// with the 3x3 filter g, elementwise product .*, and the constant matrices
//     B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]   G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1]
//     A^T = [1 1 1 0; 0 1 -1 -1]
// The sum over input channels is, for each of the 16 positions xi of the 4x4 transformed
// tile, a matrix product  M_xi[oc, tile] = U_xi[oc, c] . V_xi[c, tile]:  16 products of the
// same size as the direct convolution's but with 4 tiles x 16 = 64 multiplies per 4 outputs
// per channel pair instead of 4 x 9 = 36... per output: 16/4 = 4 instead of 9, 2.25x fewer.
// The transforms are additions only (and halvings for the weights), done once per tile and
// channel: a few percent of the work when C and OC are >= 32.
//
// Layout: lanes = tiles. The 4x4 input tiles at stride 2 are exactly the taps of a stride-2
// 4x4 "convolution", so the phase-split flat geometry above gives every tile element d[r][s]
// of L tiles as one masked vector load. Tiles are numbered per sample (t = i*tw + j); a block
// is NV "slots" of L tiles each (a slot = one vector of one sample's tiles). Per block:
//   1. input transform  V[xi][c][slot lanes]      (16 B panels, c rows)
//   2. for a chunk of output channels: 16 micro-kernel GEMMs M[xi] = U[xi] . V[xi]
//   3. output transform Y = A^T M A (+ bias, ReLU) -> the 4 phase planes of the output,
//      interleaved into y.
constexpr int kWinoXi = 16;

// U[xi][oc][c] = G g G^T for w (OC, C, 3, 3), written straight into A panels (16 "groups" of
// OC rows, K = C).
inline PackedA winograd_weights(const float* w, int64_t OC, int64_t C, float* storage) {
  PackedA U(kWinoXi, OC, C, storage);
  parallel_for(OC, 1, [&](int64_t o0, int64_t o1) {
    for (int64_t oc = o0; oc < o1; ++oc) {
      const int64_t ob = oc / kMR, i = oc % kMR;
      const int mr = U.mr(ob);
      for (int64_t c = 0; c < C; ++c) {
        const float* g = w + (oc * C + c) * 9;
        float t[4][3];  // G g
        for (int k = 0; k < 3; ++k) {
          t[0][k] = g[k];
          t[1][k] = 0.5f * (g[k] + g[3 + k] + g[6 + k]);
          t[2][k] = 0.5f * (g[k] - g[3 + k] + g[6 + k]);
          t[3][k] = g[6 + k];
        }
        for (int r = 0; r < 4; ++r) {  // (G g) G^T
          const float u[4] = {t[r][0], 0.5f * (t[r][0] + t[r][1] + t[r][2]),
                              0.5f * (t[r][0] - t[r][1] + t[r][2]), t[r][2]};
          for (int q = 0; q < 4; ++q) U.panel(r * 4 + q, ob)[c * mr + i] = u[q];
        }
      }
    }
  });
  return U;
}

// The geometry of the 4x4 input tiles: a stride-2, 4x4-kernel convolution with the same
// padding, on the tile grid th x tw.
inline Conv2dParams winograd_tile_params(const Conv2dParams& p) {
  Conv2dParams t = p;
  t.KH = t.KW = 4;
  t.sh = t.sw = 2;
  t.dh = t.dw = 1;
  t.OH = (p.OH + 1) / 2;
  t.OW = (p.OW + 1) / 2;
  return t;
}

// B^T d B for 4 x 4 vectors (in place, d[r*4 + s]).
inline void winograd_input_transform(Simd::V d[16]) {
  using S = Simd;
  for (int s = 0; s < 4; ++s) {  // B^T d: rows
    const Simd::V d0 = d[s], d1 = d[4 + s], d2 = d[8 + s], d3 = d[12 + s];
    d[s] = S::sub(d0, d2);
    d[4 + s] = S::add(d1, d2);
    d[8 + s] = S::sub(d2, d1);
    d[12 + s] = S::sub(d1, d3);
  }
  for (int r = 0; r < 4; ++r) {  // (B^T d) B: columns
    Simd::V* x = d + 4 * r;
    const Simd::V d0 = x[0], d1 = x[1], d2 = x[2], d3 = x[3];
    x[0] = S::sub(d0, d2);
    x[1] = S::add(d1, d2);
    x[2] = S::sub(d2, d1);
    x[3] = S::sub(d1, d3);
  }
}

// A^T m A for 4 x 4 vectors -> y[a*2 + b], the 2 x 2 outputs.
inline void winograd_output_transform(const Simd::V m[16], Simd::V y[4]) {
  using S = Simd;
  Simd::V t[2][4];  // A^T m
  for (int s = 0; s < 4; ++s) {
    t[0][s] = S::add(S::add(m[s], m[4 + s]), m[8 + s]);
    t[1][s] = S::sub(S::sub(m[4 + s], m[8 + s]), m[12 + s]);
  }
  for (int a = 0; a < 2; ++a) {  // (A^T m) A
    y[a * 2 + 0] = S::add(S::add(t[a][0], t[a][1]), t[a][2]);
    y[a * 2 + 1] = S::sub(S::sub(t[a][1], t[a][2]), t[a][3]);
  }
}

// Write the 2x2 outputs of L tiles (t0.. of a sample, tw tiles per row) into one output
// plane: output row 2i + a gets the interleaved pair (y[a][0], y[a][1]) of each tile.
inline void winograd_store_tiles(float* yp, int64_t OH, int64_t OW, int64_t tw, int64_t t0,
                                 int64_t ntiles, const Simd::V y[4]) {
  using S = Simd;
  constexpr int L = S::L;
  alignas(64) float pairs[2][2 * L];  // per a: the tiles' pixel pairs in tile order
  for (int a = 0; a < 2; ++a) {
    alignas(64) float e[L], o[L];
    S::store(e, y[a * 2]);
    S::store(o, y[a * 2 + 1]);
#if defined(__AVX512F__)
    const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i hi = _mm512_add_epi32(lo, _mm512_set1_epi32(8));
    _mm512_store_ps(pairs[a], _mm512_permutex2var_ps(y[a * 2], lo, y[a * 2 + 1]));
    _mm512_store_ps(pairs[a] + L, _mm512_permutex2var_ps(y[a * 2], hi, y[a * 2 + 1]));
    (void)e; (void)o;
#else
    for (int l = 0; l < L; ++l) {
      pairs[a][2 * l] = e[l];
      pairs[a][2 * l + 1] = o[l];
    }
#endif
  }
  // runs of tiles in one tile row: one masked store per output row
  for (int64_t l = 0; l < ntiles;) {
    const int64_t t = t0 + l, i = t / tw, j = t % tw;
    const int64_t len = std::min(ntiles - l, tw - j);
    const int64_t npix = std::min(2 * len, OW - 2 * j);  // the last column may be outside
    for (int a = 0; a < 2; ++a) {
      const int64_t row = 2 * i + a;
      if (row >= OH) continue;
      float* dst = yp + row * OW + 2 * j;
      const float* src = pairs[a] + 2 * l;
      for (int64_t k = 0; k < npix; k += L)
        S::storem(dst + k, S::mask(low_bits(npix - k)), S::load(src + k));
    }
    l += len;
  }
}

// y = conv(x, w) + b (then ReLU): Winograd F(2x2, 3x3) forward, for winograd_ok(p).
inline void forward_winograd(float* y, const float* x, const float* w, const float* b,
                             const Conv2dParams& p, bool relu) {
  using S = Simd;
  using V = S::V;
  constexpr int L = S::L;
  const int64_t C = p.C, OC = p.OC, HW = p.H * p.W, OHW = p.OH * p.OW;
  const Conv2dParams tp = winograd_tile_params(p);
  const FlatInput in = flat_input(tp);
  const FlatSpec f = forward_spec(tp, in);  // 16 taps = the tile elements d[r][s]
  const int64_t tw = tp.OW, ntiles = tp.OH * tp.OW;  // tiles per sample
  const int64_t nvt = (ntiles + L - 1) / L;            // vectors (slots) per sample
  const int64_t NB = kNR;                              // lanes of a block (kNV slots)
  const PackedA U = winograd_weights(w, OC, C, scratch(7, kWinoXi * OC * C));
  // output channels per chunk: the chunk's 16 M panels (16 x OCc x NB) in a quarter of L2
  const int64_t l2 = std::max<int64_t>(cpu_info().l2, 256 * 1024);
  int64_t occ = std::max<int64_t>(kMR, l2 / 4 / (kWinoXi * NB * int64_t(sizeof(float))));
  occ = std::min(OC, occ / kMR * kMR);
  const int64_t nslots = p.N * nvt, nblocks = (nslots + kNV - 1) / kNV;
  parallel_range(nblocks, 1, [&](int64_t b0, int64_t b1) {
    // the 16 panels of V (and of M) are written together: their strides are padded by one
    // cache line so they do not all fall into the same L1 set (the unpadded strides are
    // multiples of 4 KB)
    const int64_t vstride = C * NB + 16, mstride = occ * NB + 16;
    float* z = scratch(1, C * in.cs);
    float* vb = scratch(4, kWinoXi * vstride);
    float* mb = scratch(5, kWinoXi * mstride);
    int64_t zn = -1;  // the sample whose phase split is in z
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t s0 = blk * kNV;
      const int nv = static_cast<int>(std::min<int64_t>(kNV, nslots - s0));
      const int64_t ldb = nv * L;  // B panel rows: the block's lanes
      // 1. input transform of the block's slots
      for (int j = 0; j < nv; ++j) {
        const int64_t n = (s0 + j) / nvt, v = (s0 + j) % nvt;
        if (n != zn) {
          const float* xn = x + n * C * HW;
          if (n + 1 < p.N) prefetch_l2(xn + C * HW, C * HW * sizeof(float));
          make_flat_input(z, xn, C, tp, in);
          zn = n;
        }
        const uint32_t* mbits = f.bits.data() + v * 16;
        for (int64_t c = 0; c < C; ++c) {
          const float* src = z + c * in.cs + v * L;
          V d[16];
          for (int t = 0; t < 16; ++t) d[t] = S::loadm(src + f.off[t], S::mask(mbits[t]));
          winograd_input_transform(d);
          for (int xi = 0; xi < 16; ++xi) S::store(vb + xi * vstride + c * ldb + j * L, d[xi]);
        }
      }
      // 2. + 3. per chunk of output channels: 16 GEMMs, then the output transform
      for (int64_t oc0 = 0; oc0 < OC; oc0 += occ) {
        const int64_t oc1 = std::min(OC, oc0 + occ);
        Epilogue e;
        for (int xi = 0; xi < 16; ++xi)
          for (int64_t ob = oc0 / kMR; ob * kMR < oc1; ++ob)
            ukernel_for(U.mr(ob), nv)(C, U.panel(xi, ob), vb + xi * vstride,
                                      mb + xi * mstride + (ob * kMR - oc0) * NB, NB, e);
        for (int64_t oc = oc0; oc < oc1; ++oc) {
          const V bias = S::set1(b ? b[oc] : 0.f);
          for (int j = 0; j < nv; ++j) {
            const int64_t n = (s0 + j) / nvt, v = (s0 + j) % nvt;
            V m[16], yv[4];
            for (int xi = 0; xi < 16; ++xi) m[xi] = S::load(mb + xi * mstride + (oc - oc0) * NB + j * L);
            winograd_output_transform(m, yv);
            for (int k = 0; k < 4; ++k) {
              yv[k] = S::add(yv[k], bias);
              if (relu) yv[k] = S::max(S::zero(), yv[k]);  // keeps NaN, as relu does
            }
            winograd_store_tiles(y + (n * OC + oc) * OHW, p.OH, p.OW, tw, v * L,
                                 std::min<int64_t>(L, ntiles - v * L), yv);
          }
        }
      }
    }
  });
}

// Backward w.r.t. the weights with the same transforms. With V the transformed input tiles
// and dM = A dY A^T the adjoint of the output transform applied to the dy tiles,
//     dU_xi[oc, c] = sum_tiles dM_xi[oc, tile] * V_xi[c, tile]        dw[oc, c] = G^T dU G
// As in backward_weight_direct, the transpose dU^T[c][oc] is computed, oc vectorized: the
// V rows are broadcast, dM^T[tile][oc lanes] is the B panel (built from the transposed dy).
// Work items are (chunk of samples, up to 64 output channels); partial dU per chunk, folded
// in chunk order.

// dM = A dY A^T for 2 x 2 vectors dy[a*2 + b] -> 16 vectors m[r*4 + s].
inline void winograd_output_adjoint(const Simd::V dy[4], Simd::V m[16]) {
  using S = Simd;
  Simd::V t[4][2];  // A dY: t[r][b]
  for (int b = 0; b < 2; ++b) {
    t[0][b] = dy[b];
    t[1][b] = S::add(dy[b], dy[2 + b]);
    t[2][b] = S::sub(dy[b], dy[2 + b]);
    t[3][b] = S::sub(S::zero(), dy[2 + b]);
  }
  for (int r = 0; r < 4; ++r) {  // (A dY) A^T
    m[r * 4 + 0] = t[r][0];
    m[r * 4 + 1] = S::add(t[r][0], t[r][1]);
    m[r * 4 + 2] = S::sub(t[r][0], t[r][1]);
    m[r * 4 + 3] = S::sub(S::zero(), t[r][1]);
  }
}

inline void backward_weight_winograd(float* dw, float* db, const float* dy, const float* x,
                                     const Conv2dParams& p) {
  using S = Simd;
  using V = S::V;
  constexpr int L = S::L;
  const int64_t C = p.C, OC = p.OC, HW = p.H * p.W, OHW = p.OH * p.OW;
  if (p.N == 0) {
    std::fill(dw, dw + OC * C * 9, 0.f);
    if (db) std::fill(db, db + OC, 0.f);
    return;
  }
  const Conv2dParams tp = winograd_tile_params(p);
  const FlatInput in = flat_input(tp);
  const FlatSpec f = forward_spec(tp, in);
  const int64_t tw = tp.OW, ntiles = tp.OH * tp.OW, nvt = (ntiles + L - 1) / L;
  const int64_t tpad = nvt * L;  // tiles of a sample, rounded up to whole vectors
  const int64_t noct = (OC + kNR - 1) / kNR, ocpad = noct * kNR;
  // a work item takes up to 64 output channels (4 tiles of 16 with AVX2, 1 of 64 with
  // AVX-512): the input transform, shared by its tiles, is computed once per item
  const int64_t tiles_per_item = std::max<int64_t>(1, 64 / kNR);
  const int64_t nitems_oc = (noct + tiles_per_item - 1) / tiles_per_item;
  const int64_t want_items = 8;
  const int64_t want_chunks = std::min<int64_t>(p.N, std::max<int64_t>(1, want_items / nitems_oc));
  const int64_t per = (p.N + want_chunks - 1) / want_chunks;
  const int64_t nchunks = (p.N + per - 1) / per;
  // samples per group: V (16 x C x tiles) and dM^T (16 x tiles x NR) in half of L2
  const int64_t l2 = std::max<int64_t>(cpu_info().l2, 256 * 1024);
  const int64_t per_sample = kWinoXi * tpad * (C + kNR) * int64_t(sizeof(float));
  const int64_t S_ = kc_override() ? 1 : std::clamp<int64_t>(l2 / 2 / per_sample, 1, per);
  const int64_t pstride = kWinoXi * C * ocpad + ocpad;  // one chunk's dU^T and db
  float* partial = scratch(3, nchunks * pstride);
  parallel_for(nchunks * nitems_oc, 1, [&](int64_t i0, int64_t i1) {
    const int64_t gt = S_ * tpad;  // tile lanes of a group
    // per-xi strides padded by a cache line (see forward_winograd)
    const int64_t vstride = C * gt + 16, mstride = gt * kNR + 16;
    float* z = scratch(1, C * in.cs);
    float* vb = scratch(4, kWinoXi * vstride);
    float* mt = scratch(5, kWinoXi * mstride);
    float* dyT = scratch(6, OHW * kNR);
    for (int64_t it = i0; it < i1; ++it) {
      const int64_t ch = it / nitems_oc, ot0 = (it % nitems_oc) * tiles_per_item;
      const int64_t ot1 = std::min(noct, ot0 + tiles_per_item);
      float* pu = partial + ch * pstride;
      for (int64_t j = ot0 * kNR; j < ot1 * kNR; ++j) pu[kWinoXi * C * ocpad + j] = 0.f;
      const int64_t n_first = ch * per, n_end = std::min(p.N, (ch + 1) * per);
      for (int64_t n0 = n_first; n0 < n_end; n0 += S_) {
        const int64_t ns = std::min<int64_t>(S_, n_end - n0), nt = ns * tpad;
        for (int64_t s = 0; s < ns; ++s) {  // V of the samples: lanes = tiles (as the forward)
          make_flat_input(z, x + (n0 + s) * C * HW, C, tp, in);
          for (int64_t v = 0; v < nvt; ++v) {
            const uint32_t* mbits = f.bits.data() + v * 16;
            for (int64_t c = 0; c < C; ++c) {
              const float* src = z + c * in.cs + v * L;
              V d[16];
              for (int t = 0; t < 16; ++t) d[t] = S::loadm(src + f.off[t], S::mask(mbits[t]));
              winograd_input_transform(d);
              for (int xi = 0; xi < 16; ++xi)
                S::store(vb + xi * vstride + c * gt + s * tpad + v * L, d[xi]);
            }
          }
        }
        for (int64_t ot = ot0; ot < ot1; ++ot) {
          const int64_t oc0 = ot * kNR;
          const int nr = static_cast<int>(std::min<int64_t>(kNR, OC - oc0));
          const int nv = (nr + L - 1) / L, nrl = nv * L;
          float* pb = pu + kWinoXi * C * ocpad + oc0;
          for (int64_t s = 0; s < ns; ++s) {  // dM^T: lanes = output channels, from dy^T
            pack_dy_transposed(dyT, nrl, dy + (n0 + s) * OC * OHW, oc0, OC, OHW, pb);
            for (int64_t t = 0; t < tpad; ++t) {
              float* mrow = mt + (s * tpad + t) * nrl;
              if (t >= ntiles) {  // padding lanes of the last vector: no contribution
                for (int xi = 0; xi < 16; ++xi)
                  for (int k = 0; k < nv; ++k) S::store(mrow + xi * mstride + k * L, S::zero());
                continue;
              }
              const int64_t i = t / tw, j = t % tw;
              for (int k = 0; k < nv; ++k) {
                V dyv[4], m[16];
                for (int a = 0; a < 2; ++a)
                  for (int b = 0; b < 2; ++b) {
                    const int64_t oh = 2 * i + a, ow = 2 * j + b;
                    dyv[a * 2 + b] = oh < p.OH && ow < p.OW
                                         ? S::load(dyT + (oh * p.OW + ow) * nrl + k * L)
                                         : S::zero();
                  }
                winograd_output_adjoint(dyv, m);
                for (int xi = 0; xi < 16; ++xi) S::store(mrow + xi * mstride + k * L, m[xi]);
              }
            }
          }
          // 16 products over the group's tiles, accumulated into the chunk's dU^T
          DwRows r;
          r.arow = 0;
          r.acol = 1;
          r.OH = 1;
          r.OW = nt;
          for (int xi = 0; xi < 16; ++xi) {
            const float* vx = vb + xi * vstride;
            const float* mx = mt + xi * mstride;
            for (int64_t c0 = 0; c0 < C; c0 += kMR) {
              const int mr = static_cast<int>(std::min<int64_t>(kMR, C - c0));
              for (int i = 0; i < mr; ++i) r.off[i] = (c0 + i) * gt;
              ukernel_dw_for(mr, nv)(1, &vx, &mx, r, pu + (xi * C + c0) * ocpad + oc0, ocpad,
                                     n0 != n_first);
            }
          }
        }
      }
    }
  });
  // fold the chunks in order, then dw = G^T dU G per (oc, c), L output channels at a time
  // (lanes = oc: the partial rows are read contiguously)
  const int64_t nvo = (OC + L - 1) / L;
  parallel_for(nvo, 1, [&](int64_t v0, int64_t v1) {
    for (int64_t vo = v0; vo < v1; ++vo) {
      const int64_t oc0 = vo * L, nl = std::min<int64_t>(L, OC - oc0);
      const typename S::M lanes = S::mask(low_bits(nl));
      if (db) {
        V bsum = S::zero();
        for (int64_t ch = 0; ch < nchunks; ++ch)
          bsum = S::add(bsum, S::load(partial + ch * pstride + kWinoXi * C * ocpad + oc0));
        S::storem(db + oc0, lanes, bsum);
      }
      for (int64_t c = 0; c < C; ++c) {
        V u[16];
        for (int xi = 0; xi < 16; ++xi) {
          u[xi] = S::zero();
          for (int64_t ch = 0; ch < nchunks; ++ch)
            u[xi] = S::add(u[xi], S::load(partial + ch * pstride + (xi * C + c) * ocpad + oc0));
        }
        const V h = S::set1(0.5f);
        V t[3][4];  // G^T dU
        for (int s2 = 0; s2 < 4; ++s2) {
          t[0][s2] = S::fma(h, S::add(u[4 + s2], u[8 + s2]), u[s2]);
          t[1][s2] = S::mul(h, S::sub(u[4 + s2], u[8 + s2]));
          t[2][s2] = S::fma(h, S::add(u[4 + s2], u[8 + s2]), u[12 + s2]);
        }
        alignas(64) float g[9][L];
        for (int k = 0; k < 3; ++k) {  // (G^T dU) G
          S::store(g[k * 3 + 0], S::fma(h, S::add(t[k][1], t[k][2]), t[k][0]));
          S::store(g[k * 3 + 1], S::mul(h, S::sub(t[k][1], t[k][2])));
          S::store(g[k * 3 + 2], S::fma(h, S::add(t[k][1], t[k][2]), t[k][3]));
        }
        for (int64_t l = 0; l < nl; ++l)
          for (int k = 0; k < 9; ++k) dw[((oc0 + l) * C + c) * 9 + k] = g[k][l];
      }
    }
  });
}

inline void backward_input_winograd(float* dx, const float* dy, const float* w,
                                    const Conv2dParams& p) {
  float* wt = scratch(6, p.OC * p.C * 9);  // forward_winograd does not use slot 6
  transpose_flip_weights(wt, w, p);
  forward_winograd(dx, dy, wt, nullptr, transposed_params(p), false);
}

// ---------------------------------------------------------------------------------------------
// Entry points (declared in conv2d_algo.h; conv2d.cpp chose `algo`).

void conv2d_forward_f32(float* y, const float* x, const float* w, const float* b,
                        const Conv2dParams& p, ConvAlgo algo, bool relu) {
  switch (algo) {
    case ConvAlgo::flat: return forward_flat(y, x, w, b, p, relu);
    case ConvAlgo::winograd: return forward_winograd(y, x, w, b, p, relu);
    case ConvAlgo::depthwise:  // (conv2d.cpp applies a ReLU after it: no epilogue here)
      if (relu) throw std::logic_error("conv2d_forward_f32: no fused relu for depthwise");
      return forward_depthwise(y, x, w, b, p);
    default: throw std::logic_error("conv2d_forward_f32: algorithm not available");
  }
}

void conv2d_backward_input_f32(float* dx, const float* dy, const float* w, const Conv2dParams& p,
                               ConvAlgo algo) {
  switch (algo) {
    case ConvAlgo::flat: return backward_input_flat(dx, dy, w, p);
    case ConvAlgo::winograd: return backward_input_winograd(dx, dy, w, p);
    case ConvAlgo::depthwise: return backward_input_depthwise(dx, dy, w, p);
    default: throw std::logic_error("conv2d_backward_input_f32: algorithm not available");
  }
}

void conv2d_backward_weight_f32(float* dw, float* db, const float* dy, const float* x,
                                const Conv2dParams& p, ConvAlgo algo) {
  switch (algo) {
    case ConvAlgo::direct: return backward_weight_direct(dw, db, dy, x, p);
    case ConvAlgo::depthwise: return backward_weight_depthwise(dw, db, dy, x, p);
    case ConvAlgo::winograd: return backward_weight_winograd(dw, db, dy, x, p);
    default: throw std::logic_error("conv2d_backward_weight_f32: algorithm not available");
  }
}

}  // namespace dk::cpu::DK_ISA_NS
