// calibrate_avx512.cpp: the calibration inner loops with AVX-512F (compiled with -mavx512f
// -mfma ...; called only when cpu_features reports AVX-512). See calibrate.h.
// Empty unless compiled with the ISA flags (CMake sets them on x86-64 only).
#if defined(__AVX512F__)
#include <immintrin.h>

#include "cpu/calibrate.h"

namespace dk::cpu::avx512 {

// a = b + s*c, 4 zmm vectors (64 floats) per iteration so the loop overhead stays out of the
// way when the arrays sit in L1; the tail uses a masked load/store.
void triad_pass(float* a, const float* b, const float* c, float s, int64_t n) {
  const __m512 vs = _mm512_set1_ps(s);
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    __m512 c0 = _mm512_loadu_ps(c + i), c1 = _mm512_loadu_ps(c + i + 16);
    __m512 c2 = _mm512_loadu_ps(c + i + 32), c3 = _mm512_loadu_ps(c + i + 48);
    _mm512_storeu_ps(a + i, _mm512_fmadd_ps(vs, c0, _mm512_loadu_ps(b + i)));
    _mm512_storeu_ps(a + i + 16, _mm512_fmadd_ps(vs, c1, _mm512_loadu_ps(b + i + 16)));
    _mm512_storeu_ps(a + i + 32, _mm512_fmadd_ps(vs, c2, _mm512_loadu_ps(b + i + 32)));
    _mm512_storeu_ps(a + i + 48, _mm512_fmadd_ps(vs, c3, _mm512_loadu_ps(b + i + 48)));
  }
  for (; i < n; i += 16) {
    const int64_t left = n - i;
    const __mmask16 m = left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
    const __m512 vb = _mm512_maskz_loadu_ps(m, b + i), vc = _mm512_maskz_loadu_ps(m, c + i);
    _mm512_mask_storeu_ps(a + i, m, _mm512_fmadd_ps(vs, vc, vb));
  }
}

// 16 independent chains of acc = acc*m + add in zmm registers (32 are architectural):
// FMA latency 4 x 2 FMA units needs 8 chains in flight; 16 leaves margin for cores with
// longer latency or more units. 16 chains x 16 lanes x 2 flops per iteration.
float fma_loop(int64_t iters, float seed, double* flops_per_iter) {
  constexpr int K = 16;
  const __m512 m = _mm512_set1_ps(0.999999f), add = _mm512_set1_ps(1e-6f);
  __m512 acc[K];
  for (int k = 0; k < K; ++k) acc[k] = _mm512_set1_ps(seed + 0.001f * static_cast<float>(k));
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 16
    for (int k = 0; k < K; ++k) acc[k] = _mm512_fmadd_ps(acc[k], m, add);
  }
  __m512 s = acc[0];
  for (int k = 1; k < K; ++k) s = _mm512_add_ps(s, acc[k]);
  *flops_per_iter = 2.0 * 16 * K;
  return _mm512_reduce_add_ps(s);
}

}  // namespace dk::cpu::avx512

#endif
