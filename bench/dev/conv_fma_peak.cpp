// conv_fma_peak.cpp: the FMA throughput ceiling of this machine, per SIMD level.
//
// Each thread runs 12 independent chains of FMAs on registers (no memory traffic). With at
// least latency x pipes independent accumulators (4 cycles x 2 pipes = 8 on current x86 cores)
// the FMA units never wait, so flops/second = the peak the convolution kernels aim at.
// Built and run by bench/dev/conv_probe.py (g++ -O2 -fopenmp); prints one JSON line.
#include <immintrin.h>
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>

#define DK_FMA_BODY(V, FMA, SET1, LANES)                                                   \
  const auto t0 = std::chrono::steady_clock::now();                                        \
  float sink = 0;                                                                          \
  _Pragma("omp parallel num_threads(threads) reduction(+ : sink)") {                       \
    V a = SET1(1.0000001f), b = SET1(0.9999999f);                                          \
    V c0 = SET1(0), c1 = SET1(1), c2 = SET1(2), c3 = SET1(3), c4 = SET1(4), c5 = SET1(5);   \
    V c6 = SET1(6), c7 = SET1(7), c8 = SET1(8), c9 = SET1(9), c10 = SET1(10), c11 = SET1(11); \
    for (long i = 0; i < iters; ++i) {                                                     \
      c0 = FMA(a, c0, b); c1 = FMA(a, c1, b); c2 = FMA(a, c2, b); c3 = FMA(a, c3, b);      \
      c4 = FMA(a, c4, b); c5 = FMA(a, c5, b); c6 = FMA(a, c6, b); c7 = FMA(a, c7, b);      \
      c8 = FMA(a, c8, b); c9 = FMA(a, c9, b); c10 = FMA(a, c10, b); c11 = FMA(a, c11, b);  \
    }                                                                                      \
    V s = FMA(c0, c1, FMA(c2, c3, FMA(c4, c5, FMA(c6, c7, FMA(c8, c9, FMA(c10, c11, a)))))); \
    float out[LANES];                                                                      \
    std::memcpy(out, &s, sizeof(out));                                                     \
    sink += out[0];                                                                        \
  }                                                                                        \
  const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); \
  if (sink == 12345.f) std::printf(" ");                                                   \
  return 12.0 * 2.0 * LANES * iters * threads / sec / 1e9;

#include <cstring>

__attribute__((target("avx512f,fma"))) static double peak512(long iters, int threads) {
  DK_FMA_BODY(__m512, _mm512_fmadd_ps, _mm512_set1_ps, 16)
}
__attribute__((target("avx2,fma"))) static double peak256(long iters, int threads) {
  DK_FMA_BODY(__m256, _mm256_fmadd_ps, _mm256_set1_ps, 8)
}

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 2;
  const long iters = argc > 2 ? std::atol(argv[2]) : 50000000;
  double best512 = 0, best256 = 0;
  __builtin_cpu_init();
  const bool has512 = __builtin_cpu_supports("avx512f");
  const bool has256 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  for (int r = 0; r < 5; ++r) {
    if (has256) {
      const double g = peak256(iters, threads);
      if (g > best256) best256 = g;
    }
    if (has512) {
      const double g = peak512(iters, threads);
      if (g > best512) best512 = g;
    }
  }
  std::printf("{\"threads\": %d, \"avx2_gflops\": %.1f, \"avx512_gflops\": %.1f}\n", threads,
              best256, best512);
}
