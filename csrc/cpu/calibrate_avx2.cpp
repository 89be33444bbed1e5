// calibrate_avx2.cpp: the calibration inner loops with AVX2 + FMA3 (compiled with -mavx2
// -mfma; called only when cpu_features reports them). See calibrate.h.
// Empty unless compiled with the ISA flags (CMake sets them on x86-64 only).
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

#include "cpu/calibrate.h"

namespace dk::cpu::avx2 {

// a = b + s*c, 4 ymm vectors (32 floats) per iteration, scalar tail.
void triad_pass(float* a, const float* b, const float* c, float s, int64_t n) {
  const __m256 vs = _mm256_set1_ps(s);
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    __m256 c0 = _mm256_loadu_ps(c + i), c1 = _mm256_loadu_ps(c + i + 8);
    __m256 c2 = _mm256_loadu_ps(c + i + 16), c3 = _mm256_loadu_ps(c + i + 24);
    _mm256_storeu_ps(a + i, _mm256_fmadd_ps(vs, c0, _mm256_loadu_ps(b + i)));
    _mm256_storeu_ps(a + i + 8, _mm256_fmadd_ps(vs, c1, _mm256_loadu_ps(b + i + 8)));
    _mm256_storeu_ps(a + i + 16, _mm256_fmadd_ps(vs, c2, _mm256_loadu_ps(b + i + 16)));
    _mm256_storeu_ps(a + i + 24, _mm256_fmadd_ps(vs, c3, _mm256_loadu_ps(b + i + 24)));
  }
  for (; i < n; ++i) a[i] = b[i] + s * c[i];
}

// 12 independent chains in ymm registers (16 are architectural; 2 hold the constants):
// covers FMA latency 5 x 2 units (Haswell) and 4 x 2 or 3 x 4 on newer cores.
// 12 chains x 8 lanes x 2 flops per iteration.
float fma_loop(int64_t iters, float seed, double* flops_per_iter) {
  constexpr int K = 12;
  const __m256 m = _mm256_set1_ps(0.999999f), add = _mm256_set1_ps(1e-6f);
  __m256 acc[K];
  for (int k = 0; k < K; ++k) acc[k] = _mm256_set1_ps(seed + 0.001f * static_cast<float>(k));
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 12
    for (int k = 0; k < K; ++k) acc[k] = _mm256_fmadd_ps(acc[k], m, add);
  }
  __m256 s = acc[0];
  for (int k = 1; k < K; ++k) s = _mm256_add_ps(s, acc[k]);
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
  *flops_per_iter = 2.0 * 8 * K;
  return _mm_cvtss_f32(h);
}

}  // namespace dk::cpu::avx2

#endif
