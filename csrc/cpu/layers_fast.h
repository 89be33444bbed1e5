// layers_fast.h: the memory-bound layer kernels (ReLU, dropout, pooling, batch norm) for one
// SIMD level, float32.
//
// Included by layers_avx512.cpp and layers_avx2.cpp after simd.h, inside namespace DK_ISA_NS
// (each copy compiled with its own -m flags). activation.cpp, dropout.cpp, pool2d.cpp and
// batch_norm.cpp call the entry points at the bottom for float32 when the CPU has AVX2;
// their own portable loops remain the reference-like path (float64, older CPUs) and the
// semantics these kernels reproduce (NaN handling, tie rules, index order, the dropout mask
// bit for bit).
//
// These ops read and write each element once (batch norm: a second read that hits L2), so
// their speed is memory bandwidth: the kernels are single passes with full-vector loads and
// stores, no branches per element, and one contiguous range (or whole planes) per thread.
#pragma once
#ifndef DK_ISA_NS
#error "define DK_ISA_NS before including layers_fast.h"
#endif
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "common/check.h"
#include "common/parallel.h"
#include "common/params.h"
#include "common/philox.h"
#include "cpu/layers_fast_api.h"
#include "cpu/simd.h"
#include "cpu/threading.h"

namespace dk::cpu::DK_ISA_NS {

using S = Simd;
using V = S::V;
constexpr int L = S::L;

// Element-wise ops: each thread takes one contiguous range (split points do not change any
// element's value), at least this many elements per thread.
constexpr int64_t kMinPerThread = 1 << 15;

// Streams that cross 4 KiB pages often can lose the hardware prefetchers at every page (AMD's
// L2 stream prefetcher does not cross page boundaries). A software prefetch kPrefetchAhead
// floats (16 KiB) ahead of the reads keeps the next pages coming, at one instruction per line.
// Measured per kernel on 64x64x32x32, 2 threads, in two machine states minutes apart
// (bench/NOTES.md): ReLU backward (two input streams) won in both (0.64-0.70 -> 0.58-0.61 ms
// with the VM's memory contended, 0.34-0.36 -> 0.32 quiet); max pooling forward and the batch
// norm forward won contended (0.30 -> 0.24 ms, ~5%) and lost quiet (0.19 -> 0.23, 0.34 ->
// 0.37); ReLU forward, dropout backward, max pooling backward and the batch norm backward were
// equal or slower. Used where it won in both: ReLU backward.
// Non-temporal (streaming) stores for outputs of tensors bigger than the L3. A normal store
// first reads the line it writes (the write-allocate read: a third more traffic on a
// read-one-write-one pass) and leaves the output in the caches, evicting what a second pass
// over the input would have found there. When an op's arrays together fill the L3 the output
// would not stay cached for the next layer anyway, so it goes straight to memory (an L3 that
// the VM shares with its neighbours and both threads share with each other: "fill" counts
// from its full size, conservatively). Used where it won, measured alternated (bench/NOTES.md,
// 64x64x32x32, 2 threads): batch norm's memory-order passes, which also keep x in the L3 for
// their second pass that way (forward 0.634 -> 0.569 ms contended, 0.354 -> 0.346 quiet;
// backward 1.333 -> 1.084, 0.874 -> 0.734), ReLU backward (0.686 -> 0.549, 0.857 -> 0.653)
// and dropout forward (0.761 -> 0.729, 0.845 -> 0.810). Not used: ReLU forward (0.370 ->
// 0.403, slower) and dropout backward (even).
// DEEPKERN_STREAM_STORES=1 forces them wherever a kernel has the path (tests run it on small
// shapes), 0 turns them off.
static inline bool stream_stores(int64_t footprint_bytes) {
  if (const char* e = std::getenv("DEEPKERN_STREAM_STORES"))
    if (*e) return std::atoi(e) != 0;
  const int64_t l3 = cpu_info().l3;
  return l3 > 0 && footprint_bytes >= l3;
}

// y[o] = g(o) for the vectors of the run [off, off + HW) with non-temporal stores: the floats
// up to y's first vector-aligned address and the tail are masked normal stores, the aligned
// middle is streamed. g(o, mask, full) computes the vector at o (masked lanes when !full).
// The floats from p (4-byte aligned) to the next vector-aligned address: 0 to L - 1.
static inline int64_t floats_to_vector_boundary(const float* p) {
  return (-(reinterpret_cast<intptr_t>(p) >> 2)) & (L - 1);
}

template <class G>
static inline void run_stream(float* y, int64_t off, int64_t HW, const G& g) {
  const int64_t end = off + HW;
  int64_t o = off;
  const int64_t head = std::min<int64_t>(HW, floats_to_vector_boundary(y + o));
  if (head) {
    const S::M m = S::mask(low_bits(head));
    S::storem(y + o, m, g(o, m, false));
    o += head;
  }
  for (; o + L <= end; o += L) S::stream(y + o, g(o, S::mask(0xFFFFFFFFu), true));
  if (o < end) {
    const S::M m = S::mask(low_bits(end - o));
    S::storem(y + o, m, g(o, m, false));
  }
}

// prefetch_ahead(p, n, end): the n floats at p + kPrefetchAhead, stopping at end.
constexpr int64_t kPrefetchAhead = 4096;
static inline void prefetch_ahead(const float* p, int64_t n, const float* end) {
  const int64_t m = std::min(n, (end - p) - kPrefetchAhead);  // no pointer formed past end
  for (int64_t i = 0; i < m; i += 64 / sizeof(float))
    _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchAhead + i), _MM_HINT_T0);
}

// ---------------------------------------------------------------------------------------------
// ReLU. y = x < 0 ? 0 : x keeps NaN: max_ps(a, b) returns b when either is NaN, so max(0, x)
// passes a NaN x through (and keeps -0.0, as x < 0 is false for it).
void relu_forward_f32(float* y_, const float* x_, int64_t n) {
  parallel_range(n, kMinPerThread, [&](int64_t b, int64_t e) {
    // local restrict copies: the lambda captures by reference, and without them the compiler
    // reloads the pointers after every store (measured: 4x slower)
    float* __restrict y = y_;
    const float* __restrict x = x_;
    const V zero = S::zero();
    int64_t i = b;
    for (; i + 4 * L <= e; i += 4 * L)
      for (int u = 0; u < 4; ++u) S::store(y + i + u * L, S::max(zero, S::load(x + i + u * L)));
    for (; i < e; i += L) {
      const S::M m = S::mask(low_bits(e - i));
      S::storem(y + i, m, S::max(zero, S::loadm(x + i, m)));
    }
  });
}

// dx = y <= 0 ? 0 : dy (PyTorch's threshold_backward: an unordered compare, NaN in y passes dy).
void relu_backward_f32(float* dx_, const float* dy_, const float* y_, int64_t n) {
  const bool nt = stream_stores(3 * n * static_cast<int64_t>(sizeof(float)));
  parallel_range(n, kMinPerThread, [&](int64_t b, int64_t e) {
    float* __restrict dx = dx_;
    const float* __restrict dy = dy_;
    const float* __restrict y = y_;
    if (nt) {
      run_stream(dx, b, e - b, [&](int64_t o, S::M m, bool full) {
        if (full) {
          prefetch_ahead(y + o, L, y + e);
          prefetch_ahead(dy + o, L, dy + e);
          return S::zero_le0(S::load(y + o), S::load(dy + o));
        }
        return S::zero_le0(S::loadm(y + o, m), S::loadm(dy + o, m));
      });
      _mm_sfence();
      return;
    }
    int64_t i = b;
    for (; i + 2 * L <= e; i += 2 * L) {
      prefetch_ahead(y + i, 2 * L, y + e);
      prefetch_ahead(dy + i, 2 * L, dy + e);
      for (int u = 0; u < 2; ++u)
        S::store(dx + i + u * L, S::zero_le0(S::load(y + i + u * L), S::load(dy + i + u * L)));
    }
    for (; i < e; i += L) {
      const S::M m = S::mask(low_bits(e - i));
      S::storem(dx + i, m, S::zero_le0(S::loadm(y + i, m), S::loadm(dy + i, m)));
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Dropout. The mask bit of element i is philox4x32_10(i / 4, seed)[i % 4] >= threshold (see
// common/philox.h): the generator runs on L/2 counters per vector, one per 64-bit lane, and the
// 4 words of each counter are then put in element order. Bit-identical to the scalar generator.
//
// Philox round: (c0, c1, c2, c3) <- (hi(M1*c2) ^ c1 ^ k0, lo(M1*c2), hi(M0*c0) ^ c3 ^ k1,
// lo(M0*c0)). mul_epu32 multiplies the low 32 bits of each 64-bit lane into the whole lane, so
// a product a = M0*c0 holds lo(a) in the low half and hi(a) in the high half. With p = c0 and
// q = c2 in the low halves (the high halves are never read by the multiply: garbage there is
// fine), a round is
//     a = M0 * p,   b = M1 * q
//     p' = (b >> 32) ^ b_prev ^ k0      (c1 = lo of the previous round's b: its low half)
//     q' = (a >> 32) ^ a_prev ^ k1      (c3 = lo of the previous round's a)
// six operations per L/2 counters (two multiplies, two shifts, two 3-way xors), against seven
// with 32-bit lanes (one counter per lane: multiplies of the even and the odd lanes, blends,
// and a mullo for the low halves). After round 10 the words are c0 = p, c1 = b, c2 = q, c3 = a
// (low halves). Measured 15% faster than the 32-bit-lane version for the mask alone on Zen 5,
// the same bits (bench/NOTES.md).

// The words of counters [ctr0, ctr0 + U*L), in element order: w[u][q] = the L elements
// 4*ctr0 + (u*4 + q)*L ... (2U vectors of L/2 counters; U independent chains in flight keep
// the vector units busy during the multiplies' latency).
template <int U>
static inline void philox_blocks(uint64_t ctr0, const uint32_t keys[2][10], S::I w[U][4]) {
  constexpr int C = 2 * U;  // counter vectors
  const S::I M0 = S::set1_i32(0xD2511F53u), M1 = S::set1_i32(0xCD9E8D57u);
  S::I p[C], q[C], a[C], b[C];
  for (int v = 0; v < C; ++v) {
    p[v] = S::add_i64(S::set1_i64(ctr0 + uint64_t(v) * (L / 2)), S::iota_i64());  // c0 = counter lo
    b[v] = S::srli64(p[v], 32);                                                     // c1 = counter hi
    a[v] = q[v] = S::set1_i32(0);                                                   // c2 = c3 = 0
  }
#pragma GCC unroll 10
  for (int r = 0; r < 10; ++r) {
    const S::I K0 = S::set1_i32(keys[0][r]), K1 = S::set1_i32(keys[1][r]);
#pragma GCC unroll 8
    for (int v = 0; v < C; ++v) {
      const S::I an = S::mul_epu32(p[v], M0), bn = S::mul_epu32(q[v], M1);
      p[v] = S::xor3_i32(S::srli64(bn, 32), b[v], K0);
      q[v] = S::xor3_i32(S::srli64(an, 32), a[v], K1);
      a[v] = an;
      b[v] = bn;
    }
  }
  for (int u = 0; u < U; ++u) {
    S::words_in_order(p[2 * u], b[2 * u], q[2 * u], a[2 * u], w[u]);
    S::words_in_order(p[2 * u + 1], b[2 * u + 1], q[2 * u + 1], a[2 * u + 1], w[u] + 2);
  }
}

// The round keys: (seed lo, seed hi) bumped by the Weyl constants each round.
static inline void philox_keys(uint64_t seed, uint32_t keys[2][10]) {
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int r = 0; r < 10; ++r) {
    keys[0][r] = k0;
    keys[1][r] = k1;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
}

// Elements [b, e) (b a multiple of 4): mask bytes (1 = keep), and when y is not null,
// y = x * (keep ? scale : 0) (a NaN or infinite x stays NaN when dropped, as x * 0 * scale).
// Stream: y + b is vector-aligned and y is written with streaming stores (full blocks; the
// ragged end with masked normal stores), without prefetching y for writing.
template <bool Stream = false>
static void dropout_range(float* __restrict y, uint8_t* __restrict mask, const float* __restrict x,
                          int64_t b, int64_t e, uint32_t thresh, uint64_t seed, float scale,
                          uint64_t first = 0) {
  constexpr int U = L == 16 ? 3 : 2;  // groups of 4L per generator call (its state fits the registers)
  const V vscale = S::set1(scale);
  const S::I th = S::set1_i32(thresh);
  uint32_t keys[2][10];
  philox_keys(seed, keys);
  // The generator is ~400 vector operations per block (AVX-512) with no memory access, longer
  // than the out-of-order window: the block's loads and stores would wait for it. Prefetching
  // ~1024 elements ahead (x to L1, y and the mask with write intent) lets the memory traffic
  // run under the arithmetic: 64x64x32x32 on 2 threads 0.58-0.64 -> 0.54-0.60 ms (bench/NOTES.md).
  constexpr int64_t kBlock = U * 4 * L, kPfBlocks = (1024 + kBlock - 1) / kBlock;
  for (int64_t i0 = b; i0 < e; i0 += kBlock) {
    if (y && i0 + (kPfBlocks + 1) * kBlock <= e) {
      const int64_t pf = i0 + kPfBlocks * kBlock;
      for (int64_t j = 0; j < kBlock; j += 64 / sizeof(float)) {
        _mm_prefetch(reinterpret_cast<const char*>(x + pf + j), _MM_HINT_T0);
        if (!Stream) __builtin_prefetch(y + pf + j, 1, 3);
      }
      for (int64_t j = 0; j < kBlock; j += 64) __builtin_prefetch(mask + pf + j, 1, 3);
    }
    S::I w[U][4];
    philox_blocks<U>((first + static_cast<uint64_t>(i0)) >> 2, keys, w);
    for (int u = 0; u < U; ++u) {
      const int64_t i = i0 + u * 4 * L, left = e - i;
      if (left <= 0) break;
      S::M keep[4];
      for (int q = 0; q < 4; ++q) keep[q] = S::ge_u32(w[u][q], th);
      S::store_mask_bytes(mask + i, keep, left);
      if (!y) continue;
      if (left >= 4 * L) {
        for (int q = 0; q < 4; ++q) {
          const V v = S::mul(S::load(x + i + q * L), S::select(keep[q], vscale));
          if (Stream)
            S::stream(y + i + q * L, v);
          else
            S::store(y + i + q * L, v);
        }
        continue;
      }
      for (int q = 0; q < 4 && q * L < left; ++q) {
        const S::M m = S::mask(low_bits(left - q * L));
        S::storem(y + i + q * L, m, S::mul(S::loadm(x + i + q * L, m), S::select(keep[q], vscale)));
      }
    }
  }
}

// Chunks of a multiple of 4 elements per thread: the Philox counter i/4 never straddles two.
template <class F>
static void split_by_counters(int64_t n, const F& f) {
  const int64_t nc = (n + 3) / 4;
  parallel_range(nc, kMinPerThread / 4, [&](int64_t c0, int64_t c1) { f(c0 * 4, std::min(n, c1 * 4)); });
}

void dropout_mask_f32(uint8_t* mask, int64_t n, uint32_t thresh, uint64_t seed, uint64_t first) {
  split_by_counters(n, [&](int64_t b, int64_t e) {
    dropout_range(nullptr, mask, nullptr, b, e, thresh, seed, 0.f, first);
  });
}

void dropout_forward_f32(float* y, uint8_t* mask, const float* x, int64_t n, uint32_t thresh,
                         uint64_t seed, float scale) {
  // x, y and the mask filling the L3: y streamed (see stream_stores), after a head of 0-12
  // elements (a whole number of Philox counters: y is at least 16-byte aligned) that brings
  // y + b to a vector boundary
  const bool nt = stream_stores(9 * n) && reinterpret_cast<uintptr_t>(y) % 16 == 0;
  split_by_counters(n, [&](int64_t b, int64_t e) {
    if (!nt) return dropout_range(y, mask, x, b, e, thresh, seed, scale);
    const int64_t head = std::min<int64_t>(e - b, floats_to_vector_boundary(y + b));
    dropout_range(y, mask, x, b, b + head, thresh, seed, scale);
    dropout_range<true>(y, mask, x, b + head, e, thresh, seed, scale);
    _mm_sfence();
  });
}

// dx = dy * (mask ? scale : 0)
void dropout_backward_f32(float* dx_, const float* dy_, const uint8_t* mask_, int64_t n, float scale) {
  parallel_range(n, kMinPerThread, [&](int64_t b, int64_t e) {
    float* __restrict dx = dx_;  // local restrict copies (see relu_forward_f32)
    const float* __restrict dy = dy_;
    const uint8_t* __restrict mask = mask_;
    const V vscale = S::set1(scale);
    int64_t i = b;
    for (; i + L <= e; i += L)  // plain loads and stores (see box_stencil)
      S::store(dx + i, S::mul(S::load(dy + i), S::select(S::mask_from_bytes(mask + i), vscale)));
    for (; i < e; i += L) {
      const S::M m = S::mask(low_bits(e - i));
      const S::M keep = S::mask_from_bytes(mask + i, e - i);
      S::storem(dx + i, m, S::mul(S::loadm(dy + i, m), S::select(keep, vscale)));
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Max pooling 2x2/s2 of planes narrower than a vector (OW < L, L % OW == 0) that the windows
// tile exactly (H == 2*OH, W == 2*OW): the planes of a small CNN (8x8 -> 4x4 -> 2x2). Row by
// row, each output row of 1-8 outputs costs a masked vector step (~24 cycles: 25 us for a
// 64 x 32 x 4 x 4 batch, measured). Instead the tensor is seen as its R = N*C*OH row pairs,
// consecutive in memory (2W = 4*OW floats each), whose outputs are consecutive too (OW
// each): g = L/OW row pairs give one vector of L outputs from 4 consecutive input vectors,
// across row and plane boundaries alike.
//
// Lane j of a vector is column c = j % OW of its k-th row pair (k = j / OW). After
// deinterleaving the input vectors (V0, V1) and (V2, V3) into their even and odd floats
// E = E01:E23 and O = O01:O23 (2L floats each), lane j's window is
//     a = E[k*2OW + c]       b = O[k*2OW + c]         (top row)
//     c = E[k*2OW + OW + c]  d = O[k*2OW + OW + c]    (bottom row)
// one two-source permute each. Its index in the plane is 2*oh*W + 2*c (+1, +W, +W+1) with
// oh = (row pair) % OH, a pattern that repeats every P = OH / gcd(OH, g) vectors: a table of
// P index vectors. The backward pass runs the same permutes inverted.
struct PairGroups {
  int64_t OW = 0, W = 0, OH = 0, HW = 0, g = 0, total = 0, nvec = 0, P = 0;
  alignas(64) int32_t top[L], bottom[L];  // lane -> position in E / O of taps a, b / c, d
  alignas(64) int32_t inv[2][L];          // E01 / E23 lane -> position in the pair (A:C) (backward)
  Vec<int32_t> base;                      // [P][L]: 2*oh*W + 2*c of each lane
};

static int64_t gcd64(int64_t a, int64_t b) {
  while (b) {
    const int64_t t = a % b;
    a = b;
    b = t;
  }
  return a;
}

// The tables, or false when the shape is not one this path takes.
static bool pair_groups(const Pool2dParams& p, PairGroups& G) {
  if (p.kh != 2 || p.kw != 2 || p.sh != 2 || p.sw != 2 || p.ph != 0 || p.pw != 0 || p.dh != 1 ||
      p.dw != 1 || p.H != 2 * p.OH || p.W != 2 * p.OW || p.OW >= L || L % p.OW != 0 ||
      p.H * p.W >= (int64_t(1) << 31))
    return false;
  G.OW = p.OW;
  G.W = p.W;
  G.OH = p.OH;
  G.HW = p.H * p.W;
  G.g = L / p.OW;
  G.total = p.N * p.C * p.OH * p.OW;
  G.nvec = (G.total + L - 1) / L;
  G.P = p.OH / gcd64(p.OH, G.g);
  if (G.P > 64) return false;  // a long pattern (tall narrow planes): the row-by-row code
  const int64_t OW = G.OW;
  for (int64_t j = 0; j < L; ++j) {
    const int64_t k = j / OW, c = j % OW;
    G.top[j] = static_cast<int32_t>(k * 2 * OW + c);
    G.bottom[j] = static_cast<int32_t>(k * 2 * OW + OW + c);
  }
  for (int h = 0; h < 2; ++h)
    for (int64_t j = 0; j < L; ++j) {
      const int64_t m = h * L + j, k = m / (2 * OW), r = m % (2 * OW);
      G.inv[h][j] = static_cast<int32_t>(r < OW ? k * OW + r : L + k * OW + r - OW);
    }
  G.base.resize(G.P * L);
  for (int64_t e = 0; e < G.P; ++e)
    for (int64_t j = 0; j < L; ++j) {
      const int64_t oh = (e * G.g + j / OW) % G.OH;
      G.base[e * L + j] = static_cast<int32_t>(2 * oh * G.W + 2 * (j % OW));
    }
  return true;
}

// Cost of one group vector on one core (~12 cycles), for the threading threshold.
constexpr double kPairGroupNs = 4.0;

// The maximum of one 2x2 window per lane and its flat input index, in the reference's tap
// order a, b (right), c (below), d (below right): a later tap wins only when it is greater or
// NaN (PyTorch's rule). base holds tap a's index; one, w0, w1 the offsets of b, c and d.
static inline void max2x2_take(V a, V b, V c, V d, S::I base, S::I one, S::I w0, S::I w1, V& best,
                               S::I& bi) {
  best = a;
  bi = base;
  S::M t = S::gt_or_nan(b, best);
  best = S::blend(t, best, b);
  bi = S::blend_i(t, bi, S::add_i32(base, one));
  t = S::gt_or_nan(c, best);
  best = S::blend(t, best, c);
  bi = S::blend_i(t, bi, S::add_i32(base, w0));
  t = S::gt_or_nan(d, best);
  best = S::blend(t, best, d);
  bi = S::blend_i(t, bi, S::add_i32(base, w1));
}

static void max_pool_groups_forward(float* y_, int64_t* idx_, const float* x_, const PairGroups& G) {
  parallel_work(G.nvec, kPairGroupNs, [&](int64_t v0, int64_t v1) {
    const float* __restrict x = x_;
    float* __restrict y = y_;
    int64_t* __restrict idx = idx_;
    const S::I ta = S::loadu_i32(G.top), tc = S::loadu_i32(G.bottom);
    const S::I one = S::set1_i32(1), w0 = S::set1_i32(static_cast<uint32_t>(G.W));
    const S::I w1 = S::set1_i32(static_cast<uint32_t>(G.W + 1));
    const int64_t total = G.total, P = G.P;
    int64_t e = v0 % P;
    for (int64_t v = v0; v < v1; ++v) {
      const int64_t o = v * L, n = std::min<int64_t>(L, total - o);
      const float* src = x + 4 * o;  // the input of outputs [o, o + n): 4n floats
      V q[4];
      for (int i = 0; i < 4; ++i)
        q[i] = n == L ? S::load(src + i * L) : S::loadm(src + i * L, S::mask(low_bits(4 * n - i * L)));
      V e01, o01, e23, o23;
      S::deinterleave(q[0], q[1], e01, o01);
      S::deinterleave(q[2], q[3], e23, o23);
      const V a = S::permute2(e01, ta, e23), b = S::permute2(o01, ta, o23);
      const V c = S::permute2(e01, tc, e23), d = S::permute2(o01, tc, o23);
      const S::I base = S::loadu_i32(G.base.data() + e * L);
      if (++e == P) e = 0;
      V best;
      S::I bi;
      max2x2_take(a, b, c, d, base, one, w0, w1, best, bi);
      if (n == L)
        S::store(y + o, best);
      else
        S::storem(y + o, S::mask(low_bits(n)), best);
      S::store_i64(idx + o, bi, n);
    }
  });
}

// false: some index is not in its own window (the caller redoes everything generically).
static bool max_pool_groups_backward(float* dx_, const float* dy_, const int64_t* idx_, const PairGroups& G) {
  bool ok = true;  // written (false) by any thread that finds a stray index
  parallel_work(G.nvec, kPairGroupNs, [&](int64_t v0, int64_t v1) {
    const float* __restrict dy = dy_;
    const int64_t* __restrict idx = idx_;
    float* __restrict dx = dx_;
    const S::I i0 = S::loadu_i32(G.inv[0]), i1 = S::loadu_i32(G.inv[1]);
    const V zero = S::zero();
    const int64_t total = G.total, P = G.P, W = G.W, HW = G.HW;
    int64_t e = v0 % P;
    for (int64_t v = v0; v < v1; ++v) {
      const int64_t o = v * L, n = std::min<int64_t>(L, total - o);
      const S::I base = S::loadu_i32(G.base.data() + e * L);
      if (++e == P) e = 0;
      S::I li;
      if (!S::load_idx32(idx + o, n, HW, li)) {
        __atomic_store_n(&ok, false, __ATOMIC_RELAXED);
        return;
      }
      const S::I loc = S::sub_i32(li, base);  // 0, 1, W or W + 1 inside the window
      const S::M ma = S::eq_i32(loc, 0), mb = S::eq_i32(loc, 1);
      const S::M mc = S::eq_i32(loc, static_cast<int32_t>(W)), md = S::eq_i32(loc, static_cast<int32_t>(W + 1));
      if (!S::all(S::or_m(S::or_m(ma, mb), S::or_m(mc, md)), n)) {
        __atomic_store_n(&ok, false, __ATOMIC_RELAXED);
        return;
      }
      const V g = n == L ? S::load(dy + o) : S::loadm(dy + o, S::mask(low_bits(n)));
      // + 0.0: the generic scatter adds dy to a zeroed dx, turning -0.0 into +0.0
      const V A = S::add(S::select(ma, g), zero), B = S::add(S::select(mb, g), zero);
      const V C = S::add(S::select(mc, g), zero), D = S::add(S::select(md, g), zero);
      V q[4];
      S::interleave(S::permute2(A, i0, C), S::permute2(B, i0, D), q[0], q[1]);
      S::interleave(S::permute2(A, i1, C), S::permute2(B, i1, D), q[2], q[3]);
      float* dst = dx + 4 * o;
      for (int i = 0; i < 4; ++i) {
        if (n == L)
          S::store(dst + i * L, q[i]);
        else
          S::storem(dst + i * L, S::mask(low_bits(4 * n - i * L)), q[i]);
      }
    }
  });
  return ok;
}

// ---------------------------------------------------------------------------------------------
// Max pooling, 2x2 windows at stride 2 without padding or dilation (the common case), one
// plane at a time (planes at least a vector wide; narrower ones: the groups above). Row pair (2oh, 2oh+1) gives L outputs per step: two loads per row,
// deinterleaved into the window's four taps a b / c d, and the running maximum is a blend
// under "v > best or v is NaN", in the reference's tap order (a, b, c, d): ties keep the
// first tap, a NaN wins and the last NaN's index is kept. No branch per element.
// Outputs whose window runs past the input (ceil_mode) are left to the generic code.
bool max_pool2d_forward_f32(float* y_, int64_t* idx_, const float* x_, const Pool2dParams& p) {
  PairGroups G;
  if (pair_groups(p, G)) {
    max_pool_groups_forward(y_, idx_, x_, G);
    return true;
  }
  if (p.kh != 2 || p.kw != 2 || p.sh != 2 || p.sw != 2 || p.ph != 0 || p.pw != 0 || p.dh != 1 ||
      p.dw != 1 || p.H * p.W >= (int64_t(1) << 31))
    return false;
  // sizes as locals: the int64 index stores could alias the fields of p (the compiler would
  // reload them after every store)
  const int64_t W = p.W, OW = p.OW, HW = p.H * p.W, OHW = p.OH * p.OW;
  const int64_t OHf = std::min(p.OH, p.H / 2), OWf = std::min(p.OW, p.W / 2);  // full windows
  // ~5 ns per output vector on one core
  const double ns_per_plane = 5.0 * static_cast<double>(OHf * ((OWf + L - 1) / L) + 1);
  parallel_work(p.N * p.C, ns_per_plane, [&, W, OW, HW, OHW, OHf, OWf](int64_t q0, int64_t q1) {
    const S::I lane2 = S::add_i32(S::iota_i32(), S::iota_i32());  // 2 * lane
    const S::I one = S::set1_i32(1), w0 = S::set1_i32(static_cast<uint32_t>(W));
    const S::I w1 = S::set1_i32(static_cast<uint32_t>(W + 1));
    for (int64_t q = q0; q < q1; ++q) {
      const float* __restrict xp = x_ + q * HW;
      float* __restrict yp = y_ + q * OHW;
      int64_t* __restrict ip = idx_ + q * OHW;
      for (int64_t oh = 0; oh < OHf; ++oh) {
        const float* r0 = xp + 2 * oh * W;
        const float* r1 = r0 + W;
        for (int64_t ow = 0; ow < OWf; ow += L) {
          const int64_t n = std::min<int64_t>(L, OWf - ow);
          V a, b, c, d;
          if (n == L) {  // plain loads and stores where possible (see below)
            S::deinterleave(S::load(r0 + 2 * ow), S::load(r0 + 2 * ow + L), a, b);
            S::deinterleave(S::load(r1 + 2 * ow), S::load(r1 + 2 * ow + L), c, d);
          } else {
            const S::M m0 = S::mask(low_bits(2 * n)), m1 = S::mask(low_bits(2 * n - L));
            S::deinterleave(S::loadm(r0 + 2 * ow, m0), S::loadm(r0 + 2 * ow + L, m1), a, b);
            S::deinterleave(S::loadm(r1 + 2 * ow, m0), S::loadm(r1 + 2 * ow + L, m1), c, d);
          }
          const S::I base = S::add_i32(S::set1_i32(static_cast<uint32_t>(2 * oh * W + 2 * ow)), lane2);
          V best;
          S::I bi;
          max2x2_take(a, b, c, d, base, one, w0, w1, best, bi);
          if (n == L) {
            S::store(yp + oh * OW + ow, best);
          } else {
            S::storem(yp + oh * OW + ow, S::mask(low_bits(n)), best);
          }
          S::store_i64(ip + oh * OW + ow, bi, n);
        }
      }
    }
  });
  return OHf == p.OH && OWf == p.OW;  // else the caller redoes every output generically
}

// Backward of the same 2x2/s2 pooling when the windows tile the input exactly: every input
// pixel belongs to one window, so dx is written once, row pair by row pair (dy where the
// window's index points, 0 elsewhere), instead of zeroing the plane and scattering. Each index
// is checked to lie in its own window; a plane with one that does not (indices not from the
// forward) is redone by the generic code, which also reports indices outside the plane.
// dy + 0.0: the scatter adds dy to 0, which turns -0.0 into +0.0; the same bits here.
bool max_pool2d_backward_f32(float* dx_, const float* dy_, const int64_t* idx_, const Pool2dParams& p) {
  PairGroups G;
  if (pair_groups(p, G)) return max_pool_groups_backward(dx_, dy_, idx_, G);
  if (p.kh != 2 || p.kw != 2 || p.sh != 2 || p.sw != 2 || p.ph != 0 || p.pw != 0 || p.dh != 1 ||
      p.dw != 1 || p.H != 2 * p.OH || p.W != 2 * p.OW || p.H * p.W >= (int64_t(1) << 31))
    return false;
  const int64_t W = p.W, OW = p.OW, OH = p.OH, HW = p.H * p.W, OHW = p.OH * p.OW;
  bool ok = true;  // written (false) by any thread that finds a stray index
  const double ns_per_plane = 5.0 * static_cast<double>(OH * ((OW + L - 1) / L) + 1);
  parallel_work(p.N * p.C, ns_per_plane, [&, W, OW, OH, HW, OHW](int64_t q0, int64_t q1) {
    const S::I lane2 = S::add_i32(S::iota_i32(), S::iota_i32());
    const V zero = S::zero();
    for (int64_t q = q0; q < q1; ++q) {
      const float* __restrict dyp = dy_ + q * OHW;
      const int64_t* __restrict ip = idx_ + q * OHW;
      float* __restrict dxp = dx_ + q * HW;
      bool plane_ok = true;
      for (int64_t oh = 0; oh < OH && plane_ok; ++oh)
        for (int64_t ow = 0; ow < OW; ow += L) {
          const int64_t n = std::min<int64_t>(L, OW - ow);
          const S::I base = S::add_i32(S::set1_i32(static_cast<uint32_t>(2 * oh * W + 2 * ow)), lane2);
          S::I li;
          if (!S::load_idx32(ip + oh * OW + ow, n, HW, li)) {
            plane_ok = false;
            break;
          }
          const S::I loc = S::sub_i32(li, base);  // position in the window: 0, 1, W or W + 1
          const S::M a = S::eq_i32(loc, 0), b = S::eq_i32(loc, 1);
          const S::M c = S::eq_i32(loc, static_cast<int32_t>(W)), d = S::eq_i32(loc, static_cast<int32_t>(W + 1));
          if (!S::all(S::or_m(S::or_m(a, b), S::or_m(c, d)), n)) {
            plane_ok = false;
            break;
          }
          const V g = n == L ? S::load(dyp + oh * OW + ow)
                             : S::loadm(dyp + oh * OW + ow, S::mask(low_bits(n)));
          V lo, hi;
          float* r0 = dxp + 2 * oh * W + 2 * ow;
          for (int row = 0; row < 2; ++row) {
            S::interleave(S::add(S::select(row ? c : a, g), zero), S::add(S::select(row ? d : b, g), zero), lo, hi);
            float* dst = r0 + row * W;
            if (n == L) {
              S::store(dst, lo);
              S::store(dst + L, hi);
            } else {
              S::storem(dst, S::mask(low_bits(2 * n)), lo);
              S::storem(dst + L, S::mask(low_bits(2 * n - L)), hi);
            }
          }
        }
      if (!plane_ok) __atomic_store_n(&ok, false, __ATOMIC_RELAXED);
    }
  });
  return ok;
}

// ---------------------------------------------------------------------------------------------
// Average pooling, stride 1, as separable box sums. The order of the additions is part of the
// result, and it is the same in pool2d.cpp's loops and the CUDA kernels (cuda/pool2d.cu): a
// window's sum is
//     s = +0 + r_0 + r_1 + ...      r_i = +0 + x[i][0] + x[i][1] + ...
// its rows top to bottom, each row's taps left to right, and y = s / divisor (one IEEE
// division, as PyTorch and the reference; 0 where nothing is counted). So the row sums of an
// input row serve all kh output rows whose windows hold it: kw + kh additions per output
// instead of kh * kw (the previous row-major order forced the full 3x3 stencil: 27% of the
// triad).
//
// Row pass: hs[c] = +0 + X[c - pad] + ... + X[c - pad + k - 1] with X the row, zero outside
// [0, W) (adding a +0 changes no sum that started at +0). The shifted vectors X[c0 + s ..] are
// built from the row's own vectors by one two-source permute each: no unaligned or masked
// loads (but the row's last partial vector), no staging copy of the plane. Column pass: out
// row = +0 + the kh row sums, kept in a ring of kh rows (L1).
//
// The backward pass is the same with the windows inverted: dx = the box sums of
// g = dy / divisor (0 where nothing is counted) over the outputs whose windows hold each
// input, rows and columns in ascending order, which for stride 1 is a box of the same size
// with padding k - 1 - pad.

// The k-th vector of a row of n floats (elements [k*L, k*L + L)), zero outside [0, n).
static inline V row_part(const float* row, int64_t n, int64_t k) {
  const int64_t b = k * L;
  if (k < 0 || b >= n) return S::zero();
  return b + L <= n ? S::load(row + b) : S::loadm(row + b, S::mask(low_bits(n - b)));
}

// Vector starting at element off (may be negative) of a row of n floats, zero outside [0, n).
static inline V row_vector_at(const float* row, int64_t n, int64_t off) {
  const int64_t k = off >= 0 ? off / L : -((-off + L - 1) / L), r = off - k * L;
  return r == 0 ? row_part(row, n, k) : S::shift2(row_part(row, n, k), row_part(row, n, k + 1), static_cast<int>(r));
}

// hs[c] for c in [0, nout): +0 + X[c - pad + j] for j < k (ascending), X = row[0, n).
// When every tap lies within one vector of c (pad < L, k - 1 - pad < L: any usual window), the
// row is walked with three vectors (previous, current, next), each loaded once, and each tap
// is one permute of two of them. K: the window width at compile time (3: unrolled), or 0.
template <int K>
static void row_box_sums_k(float* __restrict hs, const float* row, int64_t n, int64_t nout, int64_t k_,
                           int64_t pad) {
  const int64_t k = K ? K : k_;
  if (pad >= L || k - 1 - pad >= L) {  // wide windows: each tap gathered on its own
    for (int64_t c0 = 0; c0 < nout; c0 += L) {
      V acc = S::zero();
      for (int64_t j = 0; j < k; ++j) acc = S::add(acc, row_vector_at(row, n, c0 - pad + j));
      S::store(hs + c0, acc);  // (the ring rows are padded to whole vectors)
    }
    return;
  }
  V prev = S::zero(), cur = row_part(row, n, 0);
  for (int64_t c0 = 0, v = 0; c0 < nout; c0 += L, ++v) {
    const V next = row_part(row, n, v + 1);
    V acc = S::zero();
#pragma GCC unroll 4
    for (int64_t j = 0; j < k; ++j) {
      const int64_t t = j - pad;  // the tap's offset from c0, in (-L, L)
      acc = S::add(acc, t < 0 ? S::shift2(prev, cur, static_cast<int>(L + t)) : t == 0 ? cur : S::shift2(cur, next, static_cast<int>(t)));
    }
    S::store(hs + c0, acc);
    prev = cur;
    cur = next;
  }
}

static void row_box_sums(float* hs, const float* row, int64_t n, int64_t nout, int64_t k, int64_t pad) {
  if (k == 3) return row_box_sums_k<3>(hs, row, n, nout, k, pad);
  row_box_sums_k<0>(hs, row, n, nout, k, pad);
}

// One plane of box sums: out[r][c] = (+0 + sum over input rows r - pad_h + i,
// i < kh, inside [0, rows_in), of the row sums of those rows) / div[r][c] when div is given
// (0 where div is 0). rowfn(i) gives input row i. ring: kh rows of pitch `pitch` floats (input
// row i's sums in row i % kh), slots: kh pointers of scratch.
template <class RowFn>
static void box_plane(float* __restrict out, int64_t rows_out, int64_t cols_out, int64_t rows_in,
                      int64_t cols_in, int64_t kh, int64_t kw, int64_t pad_h, int64_t pad_w,
                      const float* div, float* ring, int64_t pitch, const float** slots, const RowFn& rowfn) {
  int64_t have = 0, have_slot = 0;  // input rows [0, have) have their row sums in the ring
  for (int64_t r = 0; r < rows_out; ++r) {
    const int64_t i0 = std::max<int64_t>(0, r - pad_h), i1 = std::min(rows_in, r - pad_h + kh);
    for (; have < i1; ++have) {
      row_box_sums(ring + have_slot * pitch, rowfn(have), cols_in, cols_out, kw, pad_w);
      if (++have_slot == kh) have_slot = 0;
    }
    // the window's rows, top to bottom (one modulo per output row, none per vector)
    const int64_t nr = std::max<int64_t>(0, i1 - i0);
    for (int64_t i = 0, sl = nr ? i0 % kh : 0; i < nr; ++i) {
      slots[i] = ring + sl * pitch;
      if (++sl == kh) sl = 0;
    }
    const float* dr = div ? div + r * cols_out : nullptr;
    for (int64_t c0 = 0; c0 < cols_out; c0 += L) {
      V acc = S::zero();
      for (int64_t i = 0; i < nr; ++i) acc = S::add(acc, S::load(slots[i] + c0));
      const bool full = c0 + L <= cols_out;
      const S::M m = S::mask(low_bits(cols_out - c0));
      if (dr) {
        const V d = full ? S::load(dr + c0) : S::loadm(dr + c0, m);
        acc = S::select_gt0(d, S::div(acc, d));  // no tap counted: 0
      }
      if (full)
        S::store(out + r * cols_out + c0, acc);
      else
        S::storem(out + r * cols_out + c0, m, acc);
    }
  }
}

// div[oh][ow] = the divisor of output (oh, ow) as a float (0 where nothing is counted). The divisor of a stride-1 window is (rows counted) x (columns
// counted), each clipped to the padded input when count_include_pad, to the input otherwise.
static Vec<float> avg_divisor_table(const Pool2dParams& p) {
  auto counts = [&](int64_t n, int64_t out, int64_t k, int64_t pad) {
    Vec<int64_t> c(out);
    for (int64_t o = 0; o < out; ++o) {
      const int64_t st = o - pad, en = std::min(st + k, n + pad);
      c[o] = p.count_include_pad ? en - st : std::max<int64_t>(0, std::min(en, n) - std::max<int64_t>(st, 0));
    }
    return c;
  };
  const Vec<int64_t> ch = counts(p.H, p.OH, p.kh, p.ph), cw = counts(p.W, p.OW, p.kw, p.pw);
  Vec<float> div(p.OH * p.OW);
  for (int64_t oh = 0; oh < p.OH; ++oh)
    for (int64_t ow = 0; ow < p.OW; ++ow) div[oh * p.OW + ow] = static_cast<float>(ch[oh] * cw[ow]);
  return div;
}

// The 3x3 window, stride 1, padding 1 (output size = input size), on planes at most 4 vectors
// wide (W <= 4L: 32x32 and smaller on AVX-512): the per-row calls and loops of box_plane cost
// more than the arithmetic there (1.8 ms for a 64x64x32x32 batch on one core, 3x a copy). Here
// a plane is one loop over its rows with everything in registers: the row sums of the last
// three input rows (h0, h1, h2: NV vectors each), each input row loaded once and its two
// shifted copies made by permutes. The same additions in the same order as box_plane:
//   h = +0 + X[c-1] + X[c] + X[c+1]     out[r] = (+0 + h[r-1] + h[r] + h[r+1]) / div[r]
// (taps outside the plane are +0: the same bits). PRE (the backward pass): each input vector
// is divided by its divisor first (g = dy / divisor) and the sums are not divided.
template <int NV, bool PRE>
static void box3_plane(float* __restrict out, const float* __restrict in, int64_t H, int64_t W,
                       const float* __restrict div) {
  const S::M tail = S::mask(low_bits(W - (NV - 1) * L));  // lanes of the last vector
  const bool whole = W == NV * L;  // (plain loads and stores: masked ones are slower on Zen)
  auto load = [&](const float* p, int j) {
    return j < NV - 1 || whole ? S::load(p + j * L) : S::loadm(p + j * L, tail);
  };
  auto divide = [&](V v, V d) { return S::select_gt0(d, S::div(v, d)); };  // no tap counted: 0
  V h0[NV], h1[NV], h2[NV];
  for (int j = 0; j < NV; ++j) h0[j] = h1[j] = S::zero();
  for (int64_t i = 0; i <= H; ++i) {  // input row i (i == H: below the plane), output row i - 1
    if (i < H) {
      V x[NV];
      for (int j = 0; j < NV; ++j) {
        x[j] = load(in + i * W, j);
        if (PRE) x[j] = divide(x[j], load(div + i * W, j));
      }
      for (int j = 0; j < NV; ++j) {
        const V prev = j > 0 ? x[j - 1] : S::zero(), next = j + 1 < NV ? x[j + 1] : S::zero();
        h2[j] = S::add(S::add(S::add(S::zero(), S::shift2(prev, x[j], L - 1)), x[j]), S::shift2(x[j], next, 1));
      }
    } else {
      for (int j = 0; j < NV; ++j) h2[j] = S::zero();
    }
    if (i > 0) {
      float* o = out + (i - 1) * W;
      for (int j = 0; j < NV; ++j) {
        V v = S::add(S::add(S::add(S::zero(), h0[j]), h1[j]), h2[j]);
        if (!PRE) v = divide(v, load(div + (i - 1) * W, j));
        if (j < NV - 1 || whole)
          S::store(o + j * L, v);
        else
          S::storem(o + j * L, tail, v);
      }
    }
    for (int j = 0; j < NV; ++j) {
      h0[j] = h1[j];
      h1[j] = h2[j];
    }
  }
}

// box3_plane for W in ((NV-1)L, NV L], NV <= 4; false: the window or the plane does not fit.
static bool box3_fits(const Pool2dParams& p) {
  return p.kh == 3 && p.kw == 3 && p.ph == 1 && p.pw == 1 && p.sh == 1 && p.sw == 1 && p.OH == p.H &&
         p.OW == p.W && p.W >= 1 && p.W <= 4 * L;
}
template <bool PRE>
static void box3_planes(float* out, const float* in, int64_t q0, int64_t q1, int64_t H, int64_t W,
                        const float* div) {
  const int64_t HW = H * W;
  const int64_t nv = (W + L - 1) / L;
  for (int64_t q = q0; q < q1; ++q) {
    switch (nv) {
      case 1: box3_plane<1, PRE>(out + q * HW, in + q * HW, H, W, div); break;
      case 2: box3_plane<2, PRE>(out + q * HW, in + q * HW, H, W, div); break;
      case 3: box3_plane<3, PRE>(out + q * HW, in + q * HW, H, W, div); break;
      default: box3_plane<4, PRE>(out + q * HW, in + q * HW, H, W, div); break;
    }
  }
}

// Cost per output element on one core (~0.15 ns), for the threading threshold.
constexpr double kAvgPoolNs = 0.15;

bool avg_pool2d_forward_f32(float* y_, const float* x_, const Pool2dParams& p) {
  if (p.sh != 1 || p.sw != 1) return false;
  const Vec<float> div = avg_divisor_table(p);
  const int64_t HW = p.H * p.W, OHW = p.OH * p.OW, pitch = (p.OW + L - 1) / L * L;
  const bool box3 = box3_fits(p);
  parallel_work(p.N * p.C, kAvgPoolNs * static_cast<double>(OHW), [&](int64_t q0, int64_t q1) {
    if (box3) return box3_planes<false>(y_, x_, q0, q1, p.H, p.W, div.data());
    Vec<float> ring(p.kh * pitch);
    Vec<const float*> slots(p.kh);
    for (int64_t q = q0; q < q1; ++q) {
      const float* xp = x_ + q * HW;
      box_plane(y_ + q * OHW, p.OH, p.OW, p.H, p.W, p.kh, p.kw, p.ph, p.pw, div.data(), ring.data(), pitch,
                slots.data(), [&](int64_t i) { return xp + i * p.W; });
    }
  });
  return true;
}

bool avg_pool2d_backward_f32(float* dx_, const float* dy_, const Pool2dParams& p) {
  if (p.sh != 1 || p.sw != 1 || p.ph >= p.kh || p.pw >= p.kw) return false;
  const Vec<float> div = avg_divisor_table(p);
  const int64_t HW = p.H * p.W, OHW = p.OH * p.OW, OW = p.OW;
  const int64_t pitch = (p.W + L - 1) / L * L, gpitch = (OW + L - 1) / L * L;
  const bool box3 = box3_fits(p);
  parallel_work(p.N * p.C, kAvgPoolNs * static_cast<double>(HW), [&](int64_t q0, int64_t q1) {
    if (box3) return box3_planes<true>(dx_, dy_, q0, q1, p.H, p.W, div.data());
    Vec<float> ring(p.kh * pitch), grow(gpitch);
    Vec<const float*> slots(p.kh);
    for (int64_t q = q0; q < q1; ++q) {
      const float* dyp = dy_ + q * OHW;
      // row oh of g = dy / divisor, 0 where nothing is counted
      auto grad_row = [&](int64_t oh) {
        const float* d = dyp + oh * OW;
        const float* dr = div.data() + oh * OW;
        for (int64_t c0 = 0; c0 < OW; c0 += L) {
          const bool full = c0 + L <= OW;
          const S::M m = S::mask(low_bits(OW - c0));
          const V dv = full ? S::load(dr + c0) : S::loadm(dr + c0, m);
          const V g = S::select_gt0(dv, S::div(full ? S::load(d + c0) : S::loadm(d + c0, m), dv));
          S::store(grow.data() + c0, g);
        }
        return static_cast<const float*>(grow.data());
      };
      box_plane(dx_ + q * HW, p.H, p.W, p.OH, OW, p.kh, p.kw, p.kh - 1 - p.ph, p.kw - 1 - p.pw, nullptr,
                ring.data(), pitch, slots.data(), grad_row);
    }
  });
  return true;
}

// ---------------------------------------------------------------------------------------------
// Batch norm: the two passes over the data (batch_norm.cpp holds the per-channel math between
// them, called back through BnChannelStep).
//
//   training forward  sums   s1 = sum(x - K[c]), s2 = sum((x - K[c])^2)   (K: a shift, below)
//                     step   (s1, s2) -> mean, scale, shift
//                     pass   y = (x - mean) * scale + shift
//   backward          sums   sdy = sum(dy), sdyx = sum(dy * (x - mean))
//                     step   (sdy, sdyx) -> k, kx, k0        (and the weight gradients)
//                     pass   dx = k * dy + kx * (x - mean) + k0   (eval: dx = k * dy)
//
// Schedule (planes of 256 floats or more; smaller ones: batch_norm_train_small below). Each
// thread owns a contiguous range of channels (a channel's sums never cross threads: any
// thread count gives the same bits) and takes it in blocks of channels whose data
// over the whole batch fits in a quarter of L2: the sums pass reads a block from memory, the
// element-wise pass reads it again from L2. So each input crosses the memory bus once, where
// two whole-tensor passes (the previous schedule) read it twice: 67% of the triad at best.
// Within a block both passes walk memory in order (sample by sample, the block's planes: one
// contiguous run per sample); walking one channel across the samples instead (runs of HW
// floats C*HW apart) put a 64 x 32 x 4 x 4 batch's 64 runs of one channel 2 KB apart, into 2
// sets of L1, and the passes stalled on L2 (17 us instead of 3, measured).
//
// Sums in float with pairwise blocks: each lane adds at most kFoldEvery values in float, and
// then its partial goes into a double accumulator (vcvtps2pd). A float sum of 64 terms loses
// ~1e-7 (relative); a plain float sum over a 64 x 32 x 32 channel (4096 values per lane) would
// lose ~5e-6. Converting every value to double instead (the previous schedule) costs twice
// the vector operations. Values are shifted by K[c] (the channel's first element) before
// squaring, so a large mean does not cancel the variance away (RELIABILITY.md); x - K of two
// floats within a factor of 2 of each other is exact.
//
// HW == 1 (BatchNorm1d on (N, C)): the channels are the vector lanes.
constexpr int kFoldEvery = 64;

// The two running sums of one channel (or, HW == 1, of L channels: one per lane).
struct LaneSums {
  V a = S::zero(), b = S::zero();
  int n = 0;  // float additions per lane since the last fold
  alignas(64) double da[L] = {}, db[L] = {};
  void fold() {
    S::add_to_double(da, a);
    S::add_to_double(db, b);
    a = b = S::zero();
    n = 0;
  }
  void add(V u, V v, int count) {  // a piece of `count` vectors summed in float
    a = S::add(a, u);
    b = S::add(b, v);
    if ((n += count) >= kFoldEvery) fold();
  }
  void totals(double& ta, double& tb) {  // the lanes, folded in lane order
    fold();
    ta = 0;
    tb = 0;
    for (int i = 0; i < L; ++i) {
      ta += da[i];
      tb += db[i];
    }
  }
};

// One run of HW floats (a channel of one sample, HW >= 256: small planes have their own
// schedule below) into its channel's sums, in pieces of at most kFoldEvery vectors summed with
// 4 interleaved accumulators (4 dependency chains):
//   a += u, b += u * w    with u = U(i), w = W(i) for vector i (tail lanes: 0)
template <class FU, class FW>
static inline void run_sums(LaneSums& s, int64_t HW, const FU& U, const FW& W) {
  const int64_t nfull = HW / L;
  int64_t i = 0;
  while (i < nfull) {
    const int64_t e = std::min<int64_t>(nfull, i + kFoldEvery);
    V a[4] = {S::zero(), S::zero(), S::zero(), S::zero()}, b[4] = {a[0], a[0], a[0], a[0]};
    const int count = static_cast<int>(e - i);
    for (; i + 4 <= e; i += 4)
      for (int u = 0; u < 4; ++u) {
        const V x = U(i + u, true);
        a[u] = S::add(a[u], x);
        b[u] = S::fma(x, W(i + u, true), b[u]);
      }
    // the last 0-3 vectors go to chain 0: indexing a[u] with a run-time u here made GCC keep
    // all eight accumulators on the stack for the whole loop (a store and a reload per add:
    // the sums pass ran at store-forwarding latency; bench/NOTES.md)
    for (; i < e; ++i) {
      const V x = U(i, true);
      a[0] = S::add(a[0], x);
      b[0] = S::fma(x, W(i, true), b[0]);
    }
    s.add(S::add(S::add(a[0], a[1]), S::add(a[2], a[3])), S::add(S::add(b[0], b[1]), S::add(b[2], b[3])), count);
  }
  if (nfull * L < HW) {
    const V x = U(nfull, false);
    s.add(x, S::mul(x, W(nfull, false)), 1);
  }
}

// Channels per block: a block's values over the whole batch in a quarter of L2, counting every
// array the passes read. DEEPKERN_BN_BLOCK_KB overrides the budget (benchmarks).
static int64_t bn_block(const BatchNormParams& p, int arrays) {
  static const int64_t override_kb = [] {
    const char* e = std::getenv("DEEPKERN_BN_BLOCK_KB");
    return e ? std::atoll(e) : int64_t(0);
  }();
  const int64_t budget = override_kb > 0 ? override_kb * 1024 : std::max<int64_t>(cpu_info().l2, 256 * 1024) / 4;
  const int64_t per_channel = p.N * p.HW * static_cast<int64_t>(sizeof(float)) * arrays;
  return std::max<int64_t>(1, budget / std::max<int64_t>(per_channel, 1));
}

// f(c, off, ...) for each run of the channel block [b0, b1), in memory order (reverse: the
// samples last to first, each sample's runs still in memory order; no software prefetching).
template <class F>
static inline void block_runs(const BatchNormParams& p, int64_t b0, int64_t b1, const float* r0,
                              const float* r1, float* w, const F& f, bool reverse = false) {
  if (reverse) {
    for (int64_t n = p.N - 1; n >= 0; --n)
      for (int64_t c = b0; c < b1; ++c) f(c, (n * p.C + c) * p.HW);
    return;
  }
  // the block's runs are C*HW apart: far enough for the hardware prefetchers to lose the
  // stream at every run (measured: 22 GB/s on one core). Each run asks for the same run
  // kAhead samples later: its inputs (r0, r1) to L1, its output (w) with write intent.
  // (Measured on Zen 5, one core, 64x64x32x32: the training forward 1.7 -> 1.3 ms with x
  // prefetched; the backward 2.4 -> 2.9 ms with x and dy prefetched, so it passes none.)
  constexpr int64_t kAhead = 2;
  for (int64_t n = 0; n < p.N; ++n)
    for (int64_t c = b0; c < b1; ++c) {
      const int64_t off = (n * p.C + c) * p.HW;
      if (n + kAhead < p.N) {
        const int64_t ahead = off + kAhead * p.C * p.HW;
        for (int64_t i = 0; i < p.HW; i += 16) {
          if (r0) _mm_prefetch(reinterpret_cast<const char*>(r0 + ahead + i), _MM_HINT_T0);
          if (r1) _mm_prefetch(reinterpret_cast<const char*>(r1 + ahead + i), _MM_HINT_T0);
          if (w) __builtin_prefetch(w + ahead + i, 1, 3);
        }
      }
      f(c, off);
    }
}

// Per-element cost on one core of the two passes (in cache), for the threading threshold.
constexpr double kBnNsPerElement = 0.1;

// The fused ReLU (batch_norm_relu): the forward's output v as relu_forward_f32 writes it when
// relu (p.relu, read into a local first: the vector stores may alias p), and the backward's
// gradient g at o as relu_backward_f32 gives it when relu_y is the fused forward's output
// (masked lanes: relu_y reads 0, so g stays 0). The same operations as the two unfused
// kernels, so the same bits, without their passes over memory.
static inline V bn_out(bool relu, V v) { return relu ? S::max(S::zero(), v) : v; }
static inline V bn_grad(const float* relu_y, int64_t o, V g, S::M m, bool full) {
  if (!relu_y) return g;
  return S::zero_le0(full ? S::load(relu_y + o) : S::loadm(relu_y + o, m), g);
}

// y[o] = g(o, mask, full) over the vectors of the run [off, off + HW): streamed (run_stream) or
// with normal stores (the ragged end masked)
template <class G>
static inline void run_store(float* y, int64_t off, int64_t HW, bool stream, const G& g) {
  if (stream) return run_stream(y, off, HW, g);
  int64_t o = off;
  for (; o + L <= off + HW; o += L) S::store(y + o, g(o, S::mask(0xFFFFFFFFu), true));
  if (o < off + HW) {
    const S::M m = S::mask(low_bits(off + HW - o));
    S::storem(y + o, m, g(o, m, false));
  }
}

// Small planes (HW < 256 floats: the default CNN's 8x8 and 4x4 maps). A run is then 1-15
// vectors, and the per-run work of the schedule above (a channel's accumulators loaded and
// stored, its coefficients broadcast, the loop and tail bookkeeping) cost more than the data:
// 12.5 us for a 128 x 32 x 4 x 4 forward, ~13 cycles a vector. Here a block of channels is,
// in every sample, one contiguous span of (b1 - b0) * HW floats, and each float of the span
// has its own accumulator slot: slot s = (c - b0) * HW + i holds channel c's element i summed
// over the samples. Both passes then walk each span vector by vector with no per-channel
// work (the slots, and the per-slot shift and coefficients, live in L1). A channel's total
// adds its HW slots in element order, and every slot sums the same values in the same order
// whichever block (thread count) it falls in: the same bits on any thread count.
constexpr int64_t kSpanFloats = 1024;  // the most floats in a block's span (L1: 7 arrays of it)

static bool bn_small_planes(const BatchNormParams& p) {
  return p.HW > 1 && p.HW * static_cast<int64_t>(sizeof(float)) < 1024;
}

static int64_t bn_span_block(const BatchNormParams& p, int arrays) {
  return std::max<int64_t>(1, std::min(bn_block(p, arrays), kSpanFloats / p.HW));
}

// The slots of one thread's blocks of cb channels, and four per-slot arrays q (shifts, coefficients)
struct SlotSums {
  int64_t cb, nv;      // channels per block; vectors in the longest span
  Vec<float> a, b;     // float partials over at most kFoldEvery samples
  Vec<double> da, db;  // the partials folded into double
  Vec<float> q[4];
  SlotSums(const BatchNormParams& p, int arrays, int64_t c0, int64_t c1)
      : cb(bn_span_block(p, arrays)), nv((std::min(cb, c1 - c0) * p.HW + L - 1) / L), a(nv * L), b(nv * L),
        da(nv * L), db(nv * L), q{Vec<float>(nv * L), Vec<float>(nv * L), Vec<float>(nv * L), Vec<float>(nv * L)} {}
  void reset(int64_t nvec) {
    std::fill_n(a.data(), nvec * L, 0.0f);
    std::fill_n(b.data(), nvec * L, 0.0f);
    std::fill_n(da.data(), nvec * L, 0.0);
    std::fill_n(db.data(), nvec * L, 0.0);
  }
  void fold(int64_t nvec) {
    for (int64_t j = 0; j < nvec; ++j) {
      S::add_to_double(da.data() + j * L, S::load(a.data() + j * L));
      S::add_to_double(db.data() + j * L, S::load(b.data() + j * L));
      S::store(a.data() + j * L, S::zero());
      S::store(b.data() + j * L, S::zero());
    }
  }
  // a += u, b += u * w over the samples, with (u, w) = uw(n, j, full) for the span's vector j
  // of sample n (full: not the masked last one). Samples in order, 4 at a time per visit of
  // a slot vector (one load and store of the accumulators per 4 samples, not per sample).
  template <class UW>
  void run(int64_t N, int64_t span, const UW& uw) {
    const int64_t nv = (span + L - 1) / L, nfull = span / L;
    reset(nv);
    for (int64_t n0 = 0; n0 < N; n0 += 4) {  // 4 divides kFoldEvery: no group crosses a fold
      const int64_t n1 = std::min(N, n0 + 4);
      for (int64_t j = 0; j < nv; ++j) {
        V sa = S::load(a.data() + j * L), sb = S::load(b.data() + j * L);
        for (int64_t n = n0; n < n1; ++n) {
          V u, w;
          uw(n, j, j < nfull, u, w);
          sa = S::add(sa, u);
          sb = S::fma(u, w, sb);
        }
        S::store(a.data() + j * L, sa);
        S::store(b.data() + j * L, sb);
      }
      if (n1 % kFoldEvery == 0) fold(nv);
    }
    fold(nv);
  }
  // each channel of the block [b0, b1): its totals (its HW slots added in element order) to
  // step, and step's three coefficients into the channel's slots of q0, q1, q2
  void step(int64_t b0, int64_t b1, int64_t HW, BnChannelStep st, float* q0, float* q1, float* q2) const {
    for (int64_t c = b0; c < b1; ++c) {
      const int64_t s0 = (c - b0) * HW;
      double t1 = 0, t2 = 0;
      for (int64_t i = 0; i < HW; ++i) {
        t1 += da[s0 + i];
        t2 += db[s0 + i];
      }
      float out[3];
      st.fn(st.ctx, c, t1, t2, out);
      std::fill_n(q0 + s0, HW, out[0]);
      std::fill_n(q1 + s0, HW, out[1]);
      std::fill_n(q2 + s0, HW, out[2]);
    }
  }
};

// out(j, m, full) stored at w + j*L for the span's vectors (the last one masked)
template <class G>
static inline void span_store(float* w, int64_t span, const G& g) {
  int64_t j = 0;
  for (; (j + 1) * L <= span; ++j) S::store(w + j * L, g(j, S::mask(0xFFFFFFFFu), true));
  if (j * L < span) {
    const S::M m = S::mask(low_bits(span - j * L));
    S::storem(w + j * L, m, g(j, m, false));
  }
}

// dst's slots of the block [b0, b1): channel c's value v(c) in its HW slots, 0 past the span
template <class F>
static inline void spread(float* d, int64_t b0, int64_t b1, int64_t HW, const F& v) {
  for (int64_t c = b0; c < b1; ++c) std::fill_n(d + (c - b0) * HW, HW, v(c));
  const int64_t span = (b1 - b0) * HW;
  std::fill(d + span, d + (span + L - 1) / L * L, 0.0f);
}

static void batch_norm_train_small(float* __restrict y, const float* __restrict x, const BatchNormParams& p,
                                   const float* K, BnChannelStep step, int64_t c0, int64_t c1) {
  const int64_t C = p.C, N = p.N, HW = p.HW;
  const bool relu = p.relu;
  SlotSums s(p, 1, c0, c1);
  float *k = s.q[0].data(), *mean = s.q[1].data(), *scale = s.q[2].data(), *shift = s.q[3].data();
  for (int64_t b0 = c0; b0 < c1; b0 += s.cb) {
    const int64_t b1 = std::min(c1, b0 + s.cb), span = (b1 - b0) * HW;
    spread(k, b0, b1, HW, [&](int64_t c) { return K[c]; });
    const S::M tail = S::mask(low_bits(span % L));
    s.run(N, span, [&](int64_t n, int64_t j, bool full, V& u, V& w) {
      const float* r = x + (n * C + b0) * HW + j * L;
      u = w = S::sub(full ? S::load(r) : S::loadm(r, tail), S::load(k + j * L));  // past the span: 0 - 0
    });
    s.step(b0, b1, HW, step, mean, scale, shift);
    for (int64_t n = 0; n < N; ++n) {
      const float* r = x + (n * C + b0) * HW;
      span_store(y + (n * C + b0) * HW, span, [&](int64_t j, S::M m, bool full) {
        const V v = full ? S::load(r + j * L) : S::loadm(r + j * L, m);
        return bn_out(relu, S::fma(S::sub(v, S::load(mean + j * L)), S::load(scale + j * L),
                                S::load(shift + j * L)));
      });
    }
  }
}

void batch_norm_train_f32(float* y_, const float* x_, const BatchNormParams& p, const float* K,
                          BnChannelStep step) {
  const int64_t C = p.C, N = p.N, HW = p.HW;
  const bool relu = p.relu;
  if (HW == 1) {  // (N, C): vectors of channels
    parallel_work((C + L - 1) / L, kBnNsPerElement * static_cast<double>(N * L), [&](int64_t v0, int64_t v1) {
      const float* __restrict x = x_;
      float* __restrict y = y_;
      alignas(64) float coef[3][L];
      for (int64_t v = v0; v < v1; ++v) {
        const int64_t c0 = v * L, nc = std::min<int64_t>(L, C - c0);
        const S::M m = S::mask(low_bits(nc));
        const V k = S::loadm(K + c0, m);
        LaneSums s;
        for (int64_t n = 0; n < N; ++n) {
          const V d = S::sub(S::loadm(x + n * C + c0, m), k);
          s.add(d, S::mul(d, d), 1);
        }
        s.fold();
        for (int64_t i = 0; i < nc; ++i) {
          float out[3];
          step.fn(step.ctx, c0 + i, s.da[i], s.db[i], out);
          for (int q = 0; q < 3; ++q) coef[q][i] = out[q];
        }
        const V mean = S::loadm(coef[0], m), scale = S::loadm(coef[1], m), shift = S::loadm(coef[2], m);
        for (int64_t n = 0; n < N; ++n)
          S::storem(y + n * C + c0, m, bn_out(relu, S::fma(S::sub(S::loadm(x + n * C + c0, m), mean), scale, shift)));
      }
    });
    return;
  }
  // A block of one channel of long runs (64 x 64 x 32 x 32: 64 runs of 4 KB, 256 KB apart) does
  // not stay in the L2: runs a multiple of 64 KB apart share the same L2 sets (1 MB, 16 ways on
  // Zen 5), and the second pass reads x from L3 or memory again (measured: re-reading costs
  // 0.65 ms on one core, not the 0.1 ms of an L2 read). Then two passes in memory order over
  // the thread's whole channel range, prefetchers left to themselves, are faster: 1.45-1.7 ->
  // 1.0-1.1 ms on one core (the software prefetches make that order slower: 2.8 ms). The
  // second pass takes the samples last to first: what the first pass read last is the likeliest
  // to be still in L3 (2 threads: 0.512 -> 0.472 ms, backward 1.110 -> 1.065; one thread the
  // same; reversing the runs within a sample too lost the prefetchers: 0.651 ms).
  if (bn_small_planes(p)) {
    parallel_work(C, kBnNsPerElement * static_cast<double>(N * HW),
                  [&](int64_t c0, int64_t c1) { batch_norm_train_small(y_, x_, p, K, step, c0, c1); });
    return;
  }
  const bool seq = bn_block(p, 1) == 1;  // (small planes returned above)
  const int64_t cb = seq ? C : bn_block(p, 1);
  const bool nt = seq && stream_stores(2 * N * C * HW * static_cast<int64_t>(sizeof(float)));
  parallel_work(C, kBnNsPerElement * static_cast<double>(N * HW), [&](int64_t c0, int64_t c1) {
    const float* __restrict x = x_;
    float* __restrict y = y_;
    const int64_t nb = std::min(cb, c1 - c0);
    Vec<LaneSums> sums(nb);
    Vec<float> coef(3 * nb);
    for (int64_t b0 = c0; b0 < c1; b0 += cb) {
      const int64_t b1 = std::min(c1, b0 + cb);
      for (int64_t c = b0; c < b1; ++c) sums[c - b0] = LaneSums();
      block_runs(p, b0, b1, seq ? nullptr : x, nullptr, nullptr, [&](int64_t c, int64_t off) {
        const V k = S::set1(K[c]);
        const float* xr = x + off;
        auto d = [&](int64_t i, bool full) {
          return full ? S::sub(S::load(xr + i * L), k)
                      : S::select(S::mask(low_bits(HW - i * L)), S::sub(S::loadm(xr + i * L, S::mask(low_bits(HW - i * L))), k));
        };
        run_sums(sums[c - b0], HW, d, d);
      });
      for (int64_t c = b0; c < b1; ++c) {
        double s1, s2;
        sums[c - b0].totals(s1, s2);
        step.fn(step.ctx, c, s1, s2, coef.data() + 3 * (c - b0));
      }
      block_runs(p, b0, b1, nullptr, nullptr, seq ? nullptr : y, [&](int64_t c, int64_t off) {
        const float* cf = coef.data() + 3 * (c - b0);
        const V mean = S::set1(cf[0]), scale = S::set1(cf[1]), shift = S::set1(cf[2]);
        run_store(y, off, HW, nt, [&](int64_t o, S::M m, bool full) {
          return bn_out(relu, S::fma(S::sub(full ? S::load(x + o) : S::loadm(x + o, m), mean), scale, shift));
        });
      }, seq);
    }
    if (nt) _mm_sfence();  // the streamed stores are weakly ordered: drain them before returning
  });
}

// y = (x - mean[c]) * scale[c] + shift[c] (the eval forward: statistics given)
void batch_norm_affine_f32(float* y_, const float* x_, const BatchNormParams& p, const float* mean,
                           const float* scale, const float* shift) {
  const int64_t C = p.C, N = p.N;
  const bool relu = p.relu;
  if (p.HW == 1) {
    parallel_work(N, 0.05 * static_cast<double>(C), [&](int64_t n0, int64_t n1) {
      const float* __restrict x = x_;
      float* __restrict y = y_;
      for (int64_t n = n0; n < n1; ++n)
        for (int64_t c0 = 0; c0 < C; c0 += L) {
          const S::M m = S::mask(low_bits(C - c0));
          const V d = S::sub(S::loadm(x + n * C + c0, m), S::loadm(mean + c0, m));
          S::storem(y + n * C + c0, m, bn_out(relu, S::fma(d, S::loadm(scale + c0, m), S::loadm(shift + c0, m))));
        }
    });
    return;
  }
  // One pass, nothing to reuse: each thread takes one contiguous stretch of planes in memory
  // order (64x64x32x32 on 2 threads: 0.225-0.246 -> 0.155-0.171 ms against splitting by
  // channels, where both threads walk every sample, each with its half of the channels).
  parallel_work(N * C, 0.05 * static_cast<double>(p.HW), [&](int64_t q0, int64_t q1) {
    const float* __restrict x = x_;
    float* __restrict y = y_;
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t c = q % C, off = q * p.HW;
      const V m = S::set1(mean[c]), sc = S::set1(scale[c]), sh = S::set1(shift[c]);
      int64_t i = 0;
      for (; i + L <= p.HW; i += L) S::store(y + off + i, bn_out(relu, S::fma(S::sub(S::load(x + off + i), m), sc, sh)));
      if (i < p.HW) {
        const S::M t = S::mask(low_bits(p.HW - i));
        S::storem(y + off + i, t, bn_out(relu, S::fma(S::sub(S::loadm(x + off + i, t), m), sc, sh)));
      }
    }
  });
}

// The backward on small planes (see batch_norm_train_small): slots of sum(dy), sum(dy * (x - mean))
static void batch_norm_backward_small(float* __restrict dx, const float* __restrict dy, const float* __restrict x,
                                      const BatchNormParams& p, const float* mean_, bool eval, BnChannelStep step,
                                      const float* relu_y, int64_t c0, int64_t c1) {
  const int64_t C = p.C, N = p.N, HW = p.HW;
  SlotSums s(p, 2, c0, c1);
  float *mean = s.q[0].data(), *k = s.q[1].data(), *kx = s.q[2].data(), *k0 = s.q[3].data();
  for (int64_t b0 = c0; b0 < c1; b0 += s.cb) {
    const int64_t b1 = std::min(c1, b0 + s.cb), span = (b1 - b0) * HW;
    spread(mean, b0, b1, HW, [&](int64_t c) { return mean_[c]; });
    const S::M tail = S::mask(low_bits(span % L));
    s.run(N, span, [&](int64_t n, int64_t j, bool full, V& u, V& w) {  // past the span: g = 0
      const int64_t o = (n * C + b0) * HW + j * L;
      u = bn_grad(relu_y, o, full ? S::load(dy + o) : S::loadm(dy + o, tail), tail, full);
      w = S::sub(full ? S::load(x + o) : S::loadm(x + o, tail), S::load(mean + j * L));
    });
    s.step(b0, b1, HW, step, k, kx, k0);
    for (int64_t n = 0; n < N; ++n) {
      const int64_t r = (n * C + b0) * HW;  // the span's start in sample n
      span_store(dx + r, span, [&](int64_t j, S::M m, bool full) {
        const int64_t o = r + j * L;
        const V g = bn_grad(relu_y, o, full ? S::load(dy + o) : S::loadm(dy + o, m), m, full);
        if (eval) return S::mul(S::load(k + j * L), g);
        const V xm = S::sub(full ? S::load(x + o) : S::loadm(x + o, m), S::load(mean + j * L));
        return S::fma(S::load(k + j * L), g, S::fma(S::load(kx + j * L), xm, S::load(k0 + j * L)));
      });
    }
  }
}

// The backward pass: sums, step (coef = k, kx, k0), dx. eval: dx = k * dy (x only in the sums).
void batch_norm_backward_f32(float* dx_, const float* dy_, const float* x_, const BatchNormParams& p,
                             const float* mean, bool eval, BnChannelStep step, const float* relu_y) {
  const int64_t C = p.C, N = p.N, HW = p.HW;
  if (HW == 1) {
    parallel_work((C + L - 1) / L, 1.5 * kBnNsPerElement * static_cast<double>(N * L), [&](int64_t v0, int64_t v1) {
      const float* __restrict x = x_;
      const float* __restrict dy = dy_;
      float* __restrict dx = dx_;
      alignas(64) float coef[3][L];
      for (int64_t v = v0; v < v1; ++v) {
        const int64_t c0 = v * L, nc = std::min<int64_t>(L, C - c0);
        const S::M m = S::mask(low_bits(nc));
        const V mv = S::loadm(mean + c0, m);
        LaneSums s;
        for (int64_t n = 0; n < N; ++n) {
          const V g = bn_grad(relu_y, n * C + c0, S::loadm(dy + n * C + c0, m), m, false);
          s.add(g, S::mul(g, S::sub(S::loadm(x + n * C + c0, m), mv)), 1);
        }
        s.fold();
        for (int64_t i = 0; i < nc; ++i) {
          float out[3];
          step.fn(step.ctx, c0 + i, s.da[i], s.db[i], out);
          for (int q = 0; q < 3; ++q) coef[q][i] = out[q];
        }
        const V k = S::loadm(coef[0], m), kx = S::loadm(coef[1], m), k0 = S::loadm(coef[2], m);
        for (int64_t n = 0; n < N; ++n) {
          const V g = bn_grad(relu_y, n * C + c0, S::loadm(dy + n * C + c0, m), m, false);
          const V r = eval ? S::mul(k, g) : S::fma(k, g, S::fma(kx, S::sub(S::loadm(x + n * C + c0, m), mv), k0));
          S::storem(dx + n * C + c0, m, r);
        }
      }
    });
    return;
  }
  // the training forward's choice (see there): a channel too big for the L2 budget, in long
  // runs that alias in the L2, is better read in memory order over the thread's whole range
  if (bn_small_planes(p)) {
    parallel_work(C, 1.5 * kBnNsPerElement * static_cast<double>(N * HW), [&](int64_t c0, int64_t c1) {
      batch_norm_backward_small(dx_, dy_, x_, p, mean, eval, step, relu_y, c0, c1);
    });
    return;
  }
  const bool seq = bn_block(p, 2) == 1;
  const int64_t cb = seq ? C : bn_block(p, 2);
  const bool nt = seq && stream_stores(3 * N * C * HW * static_cast<int64_t>(sizeof(float)));
  parallel_work(C, 1.5 * kBnNsPerElement * static_cast<double>(N * HW), [&](int64_t c0, int64_t c1) {
    const float* __restrict x = x_;
    const float* __restrict dy = dy_;
    float* __restrict dx = dx_;
    const int64_t nb = std::min(cb, c1 - c0);
    Vec<LaneSums> sums(nb);
    Vec<float> coef(3 * nb);
    for (int64_t b0 = c0; b0 < c1; b0 += cb) {
      const int64_t b1 = std::min(c1, b0 + cb);
      for (int64_t c = b0; c < b1; ++c) sums[c - b0] = LaneSums();
      block_runs(p, b0, b1, nullptr, nullptr, nullptr, [&](int64_t c, int64_t off) {
        const V mv = S::set1(mean[c]);
        const float* xr = x + off;
        const float* gr = dy + off;

        // masked-off lanes: g = 0 and x - mean = 0
        auto g = [&](int64_t i, bool full) {
          if (full) return bn_grad(relu_y, off + i * L, S::load(gr + i * L), S::M{}, true);
          const S::M m = S::mask(low_bits(HW - i * L));
          return bn_grad(relu_y, off + i * L, S::loadm(gr + i * L, m), m, false);
        };
        auto xm = [&](int64_t i, bool full) {
          if (full) return S::sub(S::load(xr + i * L), mv);
          const S::M m = S::mask(low_bits(HW - i * L));
          return S::select(m, S::sub(S::loadm(xr + i * L, m), mv));
        };
        run_sums(sums[c - b0], HW, g, xm);
      });
      for (int64_t c = b0; c < b1; ++c) {
        double sdy, sdyx;
        sums[c - b0].totals(sdy, sdyx);
        step.fn(step.ctx, c, sdy, sdyx, coef.data() + 3 * (c - b0));
      }
      block_runs(p, b0, b1, nullptr, nullptr, nullptr, [&](int64_t c, int64_t off) {
        const float* cf = coef.data() + 3 * (c - b0);
        const V mv = S::set1(mean[c]), k = S::set1(cf[0]), kx = S::set1(cf[1]), k0 = S::set1(cf[2]);
        run_store(dx, off, HW, nt, [&](int64_t o, S::M m, bool full) {
          const V gv = bn_grad(relu_y, o, full ? S::load(dy + o) : S::loadm(dy + o, m), m, full);
          if (eval) return S::mul(k, gv);
          return S::fma(k, gv, S::fma(kx, S::sub(full ? S::load(x + o) : S::loadm(x + o, m), mv), k0));
        });
      }, seq);
    }
    if (nt) _mm_sfence();
  });
}

}  // namespace dk::cpu::DK_ISA_NS
