// conv_kernel_bench.cpp: the AVX-512 convolution pieces in isolation, one thread, CPU time
// (robust on a shared machine), as a fraction of an FMA loop timed just before each case.
//   g++ -O3 -std=c++17 -fopenmp -fno-tree-loop-distribute-patterns -mavx512f -mavx512bw -mavx512dq -mavx512vl -mfma -mavx2 \
//       -Icsrc bench/dev/conv_kernel_bench.cpp csrc/common/cpu_features.cpp -o /tmp/ckb
//   /tmp/ckb [N]
#define DK_ISA_NS avx512
#include "cpu/conv2d_entry.h"

#include <time.h>

#include <cstdio>
#include <random>

using namespace dk;
using namespace dk::cpu::avx512;

static double cpu_now() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

template <class F>
static double best_of(int reps, F f) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const double t0 = cpu_now();
    f();
    best = std::min(best, cpu_now() - t0);
  }
  return best;
}

// GFLOP/s of 12 independent FMA chains on one core (the ceiling for this thread right now)
static double fma_peak() {
  return 2.0 * 16 * 12 * 2e7 / best_of(3, [] {
    __m512 a = _mm512_set1_ps(1.0000001f), b = _mm512_set1_ps(0.9999999f);
    __m512 c[12];
    for (int j = 0; j < 12; ++j) c[j] = _mm512_set1_ps(float(j));
    for (long i = 0; i < 20000000; ++i)
      for (int j = 0; j < 12; ++j) c[j] = _mm512_fmadd_ps(a, c[j], b);
    float s = 0;
    for (int j = 0; j < 12; ++j) s += _mm512_reduce_add_ps(c[j]);
    if (s == 1.2345f) std::printf(" ");
  }) / 1e9;
}

int main(int argc, char** argv) {
  dk::set_num_threads(1);
  const int64_t N = argc > 1 ? atoll(argv[1]) : 64;
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> U(-1, 1);
  struct Case { const char* name; int64_t C, OC, H, k, s, pad; };
  const Case cases[] = {{"c1", 3, 32, 32, 3, 1, 1},   {"c2", 32, 64, 32, 3, 1, 1},
                        {"c3", 64, 128, 16, 3, 1, 1}, {"c4", 128, 256, 8, 3, 1, 1},
                        {"c5", 64, 64, 16, 1, 1, 0},  {"c6", 64, 64, 32, 3, 2, 1}};
  std::printf("N=%ld, one thread; %% of an FMA loop timed before each case\n", (long)N);
  for (const Case& cs : cases) {
    Conv2dParams p{};
    p.N = N; p.C = cs.C; p.H = p.W = cs.H; p.OC = cs.OC; p.KH = p.KW = cs.k;
    p.sh = p.sw = cs.s; p.ph = p.pw = cs.pad; p.dh = p.dw = 1; p.G = 1;
    p.OH = p.OW = (cs.H + 2 * cs.pad - cs.k) / cs.s + 1;
    std::vector<float> x(p.N * p.C * p.H * p.W), w(p.OC * p.C * p.KH * p.KW), y(p.N * p.OC * p.OH * p.OW);
    std::vector<float> dx(x.size()), dw(w.size()), db(p.OC);
    for (auto& v : x) v = U(rng);
    for (auto& v : w) v = U(rng);
    for (auto& v : y) v = U(rng);
    const double flops = 2.0 * p.N * p.OC * p.OH * p.OW * p.C * p.KH * p.KW;
    const double peak = fma_peak();
    std::printf("%s  peak %.0f", cs.name, peak);
    {
      const double t = best_of(3, [&] { forward_flat(y.data(), x.data(), w.data(), nullptr, p, false); });
      std::printf("  fwd %.0f (%.0f%%)", flops / t / 1e9, 100 * flops / t / 1e9 / peak);
    }
    {
      const double t = best_of(3, [&] { conv2d_backward_input_f32(dx.data(), y.data(), w.data(), p, dk::cpu::ConvAlgo::flat); });
      std::printf("  bwd_data %.0f (%.0f%%)", flops / t / 1e9, 100 * flops / t / 1e9 / peak);
    }
    {
      const double t = best_of(3, [&] { backward_weight_direct(dw.data(), db.data(), y.data(), x.data(), p); });
      std::printf("  bwd_weight %.0f (%.0f%%)", flops / t / 1e9, 100 * flops / t / 1e9 / peak);
    }
    std::printf("\n");
  }
}
