// simd.h: the handful of float-vector operations the fast kernels are written in, for one ISA.
//
// Included by the *_avx2.cpp / *_avx512.cpp translation units (compiled with their own -m
// flags) inside a namespace named by DK_ISA_NS, so the AVX-512 and AVX2 copies of every
// template never meet at link time. Each ISA is a struct of static functions over its vector
// type; kernels are templates over that struct (`template <class S> ... S::fma(a, b, c)`), so
// one kernel source gives both variants.
//
//   S::L           lanes per vector (16 for AVX-512, 8 for AVX2)
//   S::V           the vector type;  S::M a lane mask (from the low L bits of a uint32)
//   load/store     unaligned;  loadm/storem masked (masked-off lanes are neither read nor
//                  written, so a masked load may point past the end of an array)
#pragma once
#ifndef DK_ISA_NS
#error "define DK_ISA_NS before including simd.h"
#endif
#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>
#include <vector>

namespace dk::cpu::DK_ISA_NS {

// std::vector for ISA code: Vec<T>. Every member function of a std::vector<float> used here
// would be emitted as a weak symbol compiled with this file's -m flags, and the linker keeps one
// copy of each for the whole library: baseline code could end up calling AVX-512 instructions.
// With an allocator type of this namespace, the ISA is part of every instantiation's name, so
// none can be shared (.ci/check_isa_symbols.sh checks the object files).
template <class T>
struct Allocator {
  using value_type = T;
  Allocator() noexcept = default;
  template <class U>
  Allocator(const Allocator<U>&) noexcept {}
  // (vector types and structs holding them are over-aligned: aligned new for those)
  static constexpr bool kOver = alignof(T) > __STDCPP_DEFAULT_NEW_ALIGNMENT__;
  T* allocate(size_t n) {
    if (n > size_t(-1) / sizeof(T)) throw std::bad_array_new_length();
    if constexpr (kOver) return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(alignof(T))));
    return static_cast<T*>(::operator new(n * sizeof(T)));
  }
  void deallocate(T* p, size_t) noexcept {
    if constexpr (kOver)
      ::operator delete(p, std::align_val_t(alignof(T)));
    else
      ::operator delete(p);
  }
  friend bool operator==(const Allocator&, const Allocator&) noexcept { return true; }
  friend bool operator!=(const Allocator&, const Allocator&) noexcept { return false; }
};
template <class T>
using Vec = std::vector<T, Allocator<T>>;

// Low n bits set (n clamped to [0, 32]).
inline uint32_t low_bits(int64_t n) {
  return n >= 32 ? 0xFFFFFFFFu : n <= 0 ? 0u : (uint32_t(1) << n) - 1u;
}

#if defined(__AVX512F__)
struct Simd {
  using V = __m512;
  using M = __mmask16;
  static constexpr int L = 16;
  static const char* name() { return "avx512"; }
  static V zero() { return _mm512_setzero_ps(); }
  static V set1(float v) { return _mm512_set1_ps(v); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  // non-temporal store (p 64-byte aligned): past the caches, without reading the line first
  static void stream(float* p, V v) { _mm512_stream_ps(p, v); }
  static M mask(uint32_t bits) { return static_cast<M>(bits); }
  static V loadm(const float* p, M m) { return _mm512_maskz_loadu_ps(m, p); }
  static void storem(float* p, M m, V v) { _mm512_mask_storeu_ps(p, m, v); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V div(V a, V b) { return _mm512_div_ps(a, b); }
  static V max(V a, V b) { return _mm512_max_ps(a, b); }
  static float hsum(V v) { return _mm512_reduce_add_ps(v); }
  // acc[0..L) += the lanes of v, in double
  static void add_to_double(double* acc, V v) {
    const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
    const __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    _mm512_storeu_pd(acc, _mm512_add_pd(_mm512_loadu_pd(acc), lo));
    _mm512_storeu_pd(acc + 8, _mm512_add_pd(_mm512_loadu_pd(acc + 8), hi));
  }
  // m ? v : 0, and y > 0 ? v : 0 (ordered: NaN in y gives 0)
  static V select(M m, V v) { return _mm512_maskz_mov_ps(m, v); }
  static V select_gt0(V y, V v) { return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(y, zero(), _CMP_GT_OQ), v); }
  // y <= 0 ? 0 : v (unordered "not <=": NaN in y keeps v; relu backward's rule)
  static V zero_le0(V y, V v) { return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(y, zero(), _CMP_NLE_UQ), v); }
  // lanes where v > best or v is NaN (the max-pool "take" rule)
  static M gt_or_nan(V v, V best) {
    return _mm512_cmp_ps_mask(v, best, _CMP_GT_OQ) | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  }
  static V blend(M m, V a, V b) { return _mm512_mask_blend_ps(m, a, b); }  // m ? b : a

  // ---- integer lanes (the Philox generator, index arithmetic)
  using I = __m512i;
  static I set1_i32(uint32_t v) { return _mm512_set1_epi32(static_cast<int>(v)); }
  static I iota_i32() { return _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15); }
  static I add_i32(I a, I b) { return _mm512_add_epi32(a, b); }
  static I xor_i32(I a, I b) { return _mm512_xor_si512(a, b); }
  static I xor3_i32(I a, I b, I c) { return _mm512_ternarylogic_epi32(a, b, c, 0x96); }  // a ^ b ^ c
  static I mul_epu32(I a, I b) { return _mm512_mul_epu32(a, b); }  // even lanes, 64-bit products
  // 64-bit lanes (the Philox generator keeps one counter per 64-bit lane)
  static I set1_i64(uint64_t v) { return _mm512_set1_epi64(static_cast<long long>(v)); }
  static I iota_i64() { return _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7); }
  static I add_i64(I a, I b) { return _mm512_add_epi64(a, b); }
  // x0..x3: the low 32-bit halves of the 64-bit lanes of the four vectors (word q of counter j
  // in lane j of xq)  ->  w[0], w[1]: the 4 words of counters 0-3, then 4-7, in element order
  static void words_in_order(I x0, I x1, I x2, I x3, I w[2]) {
    const I pairs = _mm512_setr_epi32(0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30);
    const I x01 = _mm512_permutex2var_epi32(x0, pairs, x1), x23 = _mm512_permutex2var_epi32(x2, pairs, x3);
    w[0] = _mm512_permutex2var_epi32(x01, _mm512_setr_epi32(0, 1, 16, 17, 2, 3, 18, 19, 4, 5, 20, 21, 6, 7, 22, 23), x23);
    w[1] = _mm512_permutex2var_epi32(x01, _mm512_setr_epi32(8, 9, 24, 25, 10, 11, 26, 27, 12, 13, 28, 29, 14, 15, 30, 31), x23);
  }
  static I srli64(I a, int n) { return _mm512_srli_epi64(a, static_cast<unsigned>(n)); }
  static M ge_u32(I a, I b) { return _mm512_cmpge_epu32_mask(a, b); }
  static I blend_i(M m, I a, I b) { return _mm512_mask_blend_epi32(m, a, b); }
  // c_w[j] = word w of counter j  ->  w[q] = the 4L words in element order (4j + word)
  // bytes 0/1 of 4 element masks (4L elements), the first `count` of them
  static void store_mask_bytes(uint8_t* dst, const M m[4], int64_t count) {
    const uint64_t bits = uint64_t(m[0]) | uint64_t(m[1]) << 16 | uint64_t(m[2]) << 32 | uint64_t(m[3]) << 48;
    const __m512i bytes = _mm512_maskz_set1_epi8(_cvtu64_mask64(bits), 1);
    const uint64_t keep = count >= 64 ? ~uint64_t(0) : (uint64_t(1) << count) - 1;
    _mm512_mask_storeu_epi8(dst, _cvtu64_mask64(keep), bytes);
  }
  // lanes whose byte in p[0..count) is nonzero
  static M mask_from_bytes(const uint8_t* p) {  // L bytes
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm_test_epi8_mask(b, b);
  }
  static M mask_from_bytes(const uint8_t* p, int64_t count) {
    const __m128i b = _mm_maskz_loadu_epi8(static_cast<__mmask16>(low_bits(count)), p);
    return _mm_test_epi8_mask(b, b);
  }
  // the `count` int64 values at p as int32 lanes in v; false if one is outside [0, limit)
  static bool load_idx32(const int64_t* p, int64_t count, int64_t limit, I& v) {
    __m512i lo, hi;
    if (count >= 16) {  // plain loads for whole vectors (see layers_fast.h on masked loads)
      lo = _mm512_loadu_si512(p);
      hi = _mm512_loadu_si512(p + 8);
    } else {
      lo = _mm512_maskz_loadu_epi64(static_cast<__mmask8>(low_bits(count)), p);
      hi = _mm512_maskz_loadu_epi64(static_cast<__mmask8>(low_bits(count - 8)), p + 8);
    }
    const __m512i lim = _mm512_set1_epi64(limit);
    const uint32_t in = _mm512_cmplt_epu64_mask(lo, lim) | (uint32_t(_mm512_cmplt_epu64_mask(hi, lim)) << 8);
    v = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(lo)), _mm512_cvtepi64_epi32(hi), 1);
    return (in & low_bits(count)) == low_bits(count);
  }
  static I sub_i32(I a, I b) { return _mm512_sub_epi32(a, b); }
  static M eq_i32(I a, int32_t b) { return _mm512_cmpeq_epi32_mask(a, _mm512_set1_epi32(b)); }
  static bool all(M m, int64_t count) { return (m & low_bits(count)) == low_bits(count); }
  static M or_m(M a, M b) { return static_cast<M>(a | b); }
  // store L int32 lanes as int64, the first `count`
  static void store_i64(int64_t* p, I v, int64_t count) {
    const __m512i lo = _mm512_cvtepi32_epi64(_mm512_castsi512_si256(v));
    const __m512i hi = _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(v, 1));
    if (count >= 16) {  // plain stores when full: masked stores are slower to retire
      _mm512_storeu_si512(p, lo);
      _mm512_storeu_si512(p + 8, hi);
      return;
    }
    _mm512_mask_storeu_epi64(p, static_cast<__mmask8>(low_bits(count)), lo);
    _mm512_mask_storeu_epi64(p + 8, static_cast<__mmask8>(low_bits(count - 8)), hi);
  }

  // lanes [r, r + L) of the concatenation lo:hi (0 <= r < L), one two-source permute
  static V shift2(V lo, V hi, int r) {
    return _mm512_permutex2var_ps(lo, _mm512_add_epi32(iota_i32(), _mm512_set1_epi32(r)), hi);
  }
  // lane j = (lo:hi)[idx[j]], idx[j] in [0, 2L)
  static V permute2(V lo, I idx, V hi) { return _mm512_permutex2var_ps(lo, idx, hi); }
  static I loadu_i32(const int32_t* p) { return _mm512_loadu_si512(p); }
  // (lo, hi) = 2L consecutive floats -> their even and odd elements
  static void deinterleave(V lo, V hi, V& even, V& odd) {
    const __m512i e = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    even = _mm512_permutex2var_ps(lo, e, hi);
    odd = _mm512_permutex2var_ps(lo, _mm512_add_epi32(e, _mm512_set1_epi32(1)), hi);
  }
  // inverse of deinterleave
  static void interleave(V even, V odd, V& lo, V& hi) {
    const __m512i l = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    lo = _mm512_permutex2var_ps(even, l, odd);
    hi = _mm512_permutex2var_ps(even, _mm512_add_epi32(l, _mm512_set1_epi32(8)), odd);
  }
  // r[i][j] <- r[j][i] for a 16 x 16 block (4 rounds of lane shuffles)
  static void transpose(V r[16]) {
    V t[16];
    for (int i = 0; i < 8; ++i) {
      t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
      t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; ++i) {
      const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 2]);
      const __m512d c = _mm512_castps_pd(t[4 * i + 1]), d = _mm512_castps_pd(t[4 * i + 3]);
      r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
      r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
      r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(c, d));
      r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(c, d));
    }
    for (int i = 0; i < 2; ++i)
      for (int j = 0; j < 4; ++j) {
        t[8 * i + j] = _mm512_shuffle_f32x4(r[8 * i + j], r[8 * i + j + 4], 0x88);
        t[8 * i + j + 4] = _mm512_shuffle_f32x4(r[8 * i + j], r[8 * i + j + 4], 0xdd);
      }
    for (int j = 0; j < 8; ++j) {
      r[j] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0x88);
      r[j + 8] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0xdd);
    }
  }
};
#elif defined(__AVX2__) && defined(__FMA__)
struct Simd {
  using V = __m256;
  using M = __m256i;  // all-ones lanes are on
  static constexpr int L = 8;
  static const char* name() { return "avx2"; }
  static V zero() { return _mm256_setzero_ps(); }
  static V set1(float v) { return _mm256_set1_ps(v); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  // non-temporal store (p 32-byte aligned): past the caches, without reading the line first
  static void stream(float* p, V v) { _mm256_stream_ps(p, v); }
  static M mask(uint32_t bits) {
    const __m256i lane = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    const __m256i b = _mm256_and_si256(_mm256_set1_epi32(static_cast<int>(bits)), lane);
    return _mm256_cmpeq_epi32(b, lane);
  }
  static V loadm(const float* p, M m) { return _mm256_maskload_ps(p, m); }
  static void storem(float* p, M m, V v) { _mm256_maskstore_ps(p, m, v); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V div(V a, V b) { return _mm256_div_ps(a, b); }
  static V max(V a, V b) { return _mm256_max_ps(a, b); }
  static float hsum(V v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static void add_to_double(double* acc, V v) {
    const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v)), hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
    _mm256_storeu_pd(acc, _mm256_add_pd(_mm256_loadu_pd(acc), lo));
    _mm256_storeu_pd(acc + 4, _mm256_add_pd(_mm256_loadu_pd(acc + 4), hi));
  }
  static V select(M m, V v) { return _mm256_and_ps(_mm256_castsi256_ps(m), v); }
  static V select_gt0(V y, V v) { return _mm256_and_ps(_mm256_cmp_ps(y, zero(), _CMP_GT_OQ), v); }
  static V zero_le0(V y, V v) { return _mm256_and_ps(_mm256_cmp_ps(y, zero(), _CMP_NLE_UQ), v); }
  static M gt_or_nan(V v, V best) {
    return _mm256_castps_si256(_mm256_or_ps(_mm256_cmp_ps(v, best, _CMP_GT_OQ), _mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
  }
  static V blend(M m, V a, V b) { return _mm256_blendv_ps(a, b, _mm256_castsi256_ps(m)); }

  using I = __m256i;
  static I set1_i32(uint32_t v) { return _mm256_set1_epi32(static_cast<int>(v)); }
  static I iota_i32() { return _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7); }
  static I add_i32(I a, I b) { return _mm256_add_epi32(a, b); }
  static I xor_i32(I a, I b) { return _mm256_xor_si256(a, b); }
  static I xor3_i32(I a, I b, I c) { return xor_i32(xor_i32(a, b), c); }
  static I mul_epu32(I a, I b) { return _mm256_mul_epu32(a, b); }
  static I set1_i64(uint64_t v) { return _mm256_set1_epi64x(static_cast<long long>(v)); }
  static I iota_i64() { return _mm256_setr_epi64x(0, 1, 2, 3); }
  static I add_i64(I a, I b) { return _mm256_add_epi64(a, b); }
  static void words_in_order(I x0, I x1, I x2, I x3, I w[2]) {  // see the AVX-512 version
    const I x01 = _mm256_blend_epi32(x0, _mm256_slli_epi64(x1, 32), 0xAA);  // counter j: x0 x1
    const I x23 = _mm256_blend_epi32(x2, _mm256_slli_epi64(x3, 32), 0xAA);
    const I even = _mm256_unpacklo_epi64(x01, x23), odd = _mm256_unpackhi_epi64(x01, x23);  // counters 0, 2 | 1, 3
    w[0] = _mm256_permute2x128_si256(even, odd, 0x20);
    w[1] = _mm256_permute2x128_si256(even, odd, 0x31);
  }
  static I srli64(I a, int n) { return _mm256_srli_epi64(a, n); }
  static M ge_u32(I a, I b) {  // !(b > a), unsigned
    const I s = _mm256_set1_epi32(INT32_MIN);
    return _mm256_xor_si256(_mm256_cmpgt_epi32(_mm256_xor_si256(b, s), _mm256_xor_si256(a, s)), _mm256_set1_epi32(-1));
  }
  static I blend_i(M m, I a, I b) { return _mm256_blendv_epi8(a, b, m); }
  static void store_mask_bytes(uint8_t* dst, const M m[4], int64_t count) {
    const __m256i p16 = _mm256_packs_epi16(_mm256_packs_epi32(m[0], m[1]), _mm256_packs_epi32(m[2], m[3]));
    const __m256i bytes = _mm256_and_si256(
        _mm256_permutevar8x32_epi32(p16, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)), _mm256_set1_epi8(1));
    if (count >= 32) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), bytes);
    } else {
      alignas(32) uint8_t tmp[32];
      _mm256_store_si256(reinterpret_cast<__m256i*>(tmp), bytes);
      std::memcpy(dst, tmp, static_cast<size_t>(count));
    }
  }
  static M mask_from_bytes(const uint8_t* p) { return mask_from_bytes(p, 8); }
  static M mask_from_bytes(const uint8_t* p, int64_t count) {
    int64_t v = 0;
    std::memcpy(&v, p, static_cast<size_t>(count >= 8 ? 8 : count));
    const __m256i w = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(v));
    return _mm256_xor_si256(_mm256_cmpeq_epi32(w, _mm256_setzero_si256()), _mm256_set1_epi32(-1));
  }
  static bool load_idx32(const int64_t* p, int64_t count, int64_t limit, I& v) {
    alignas(32) int32_t t[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    bool ok = true;
    for (int64_t i = 0; i < count && i < 8; ++i) {
      ok = ok && p[i] >= 0 && p[i] < limit;
      t[i] = static_cast<int32_t>(p[i]);
    }
    v = _mm256_load_si256(reinterpret_cast<const __m256i*>(t));
    return ok;
  }
  static I sub_i32(I a, I b) { return _mm256_sub_epi32(a, b); }
  static M eq_i32(I a, int32_t b) { return _mm256_cmpeq_epi32(a, _mm256_set1_epi32(b)); }
  static bool all(M m, int64_t count) {
    const int bits = _mm256_movemask_ps(_mm256_castsi256_ps(m));
    return (static_cast<uint32_t>(bits) & low_bits(count)) == low_bits(count);
  }
  static M or_m(M a, M b) { return _mm256_or_si256(a, b); }
  static void store_i64(int64_t* p, I v, int64_t count) {
    alignas(32) int32_t t[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(t), v);
    for (int64_t i = 0; i < count && i < 8; ++i) p[i] = t[i];
  }

  static V permute2(V lo, I idx, V hi) {  // lane j = (lo:hi)[idx[j]], idx[j] in [0, 16)
    const __m256 from_hi = _mm256_castsi256_ps(_mm256_cmpgt_epi32(idx, _mm256_set1_epi32(7)));
    return _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, idx), _mm256_permutevar8x32_ps(hi, idx), from_hi);
  }
  static I loadu_i32(const int32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static V shift2(V lo, V hi, int r) {  // lanes [r, r + 8) of lo:hi
    const __m256i t = _mm256_add_epi32(iota_i32(), _mm256_set1_epi32(r));
    const __m256i idx = _mm256_and_si256(t, _mm256_set1_epi32(7));
    const __m256 from_hi = _mm256_castsi256_ps(_mm256_cmpgt_epi32(t, _mm256_set1_epi32(7)));
    return _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, idx), _mm256_permutevar8x32_ps(hi, idx), from_hi);
  }
  static void deinterleave(V lo, V hi, V& even, V& odd) {
    const __m256 e = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0));  // per 128-bit lane
    const __m256 o = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(3, 1, 3, 1));
    even = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e), _MM_SHUFFLE(3, 1, 2, 0)));
    odd = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(o), _MM_SHUFFLE(3, 1, 2, 0)));
  }
  static void interleave(V even, V odd, V& lo, V& hi) {
    const __m256 a = _mm256_unpacklo_ps(even, odd), b = _mm256_unpackhi_ps(even, odd);
    lo = _mm256_permute2f128_ps(a, b, 0x20);
    hi = _mm256_permute2f128_ps(a, b, 0x31);
  }
  // r[i][j] <- r[j][i] for an 8 x 8 block
  static void transpose(V r[8]) {
    V t[8];
    for (int i = 0; i < 4; ++i) {
      t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
      t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 2; ++i) {
      const __m256d a = _mm256_castps_pd(t[4 * i]), b = _mm256_castps_pd(t[4 * i + 2]);
      const __m256d c = _mm256_castps_pd(t[4 * i + 1]), d = _mm256_castps_pd(t[4 * i + 3]);
      r[4 * i] = _mm256_castpd_ps(_mm256_unpacklo_pd(a, b));
      r[4 * i + 1] = _mm256_castpd_ps(_mm256_unpackhi_pd(a, b));
      r[4 * i + 2] = _mm256_castpd_ps(_mm256_unpacklo_pd(c, d));
      r[4 * i + 3] = _mm256_castpd_ps(_mm256_unpackhi_pd(c, d));
    }
    for (int j = 0; j < 4; ++j) {
      t[j] = _mm256_permute2f128_ps(r[j], r[j + 4], 0x20);
      t[j + 4] = _mm256_permute2f128_ps(r[j], r[j + 4], 0x31);
    }
    for (int j = 0; j < 8; ++j) r[j] = t[j];
  }
};
#else
#error "simd.h needs -mavx512f or -mavx2 -mfma"
#endif

}  // namespace dk::cpu::DK_ISA_NS
