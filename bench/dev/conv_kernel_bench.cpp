// conv_kernel_bench.cpp: times the pieces of the AVX-512 convolution in isolation, one thread,
// CPU time (robust on a shared machine). Build and run:
//   g++ -O3 -std=c++17 -fopenmp -mavx512f -mavx512bw -mavx512dq -mavx512vl -mfma -mavx2 \
//       -Icsrc bench/dev/conv_kernel_bench.cpp csrc/common/cpu_features.cpp -o /tmp/ckb && /tmp/ckb
#define DK_ISA_NS avx512
#include "cpu/conv2d_fast.h"

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

int main(int argc, char** argv) {
  dk::set_num_threads(1);
  const double ghz_peak = 64.0;  // flops per cycle per core (2 x 512-bit FMA); see conv_fma_peak
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> U(-1, 1);
  // 1) micro-kernel alone, panels in L1
  {
    const int64_t kc = argc > 1 ? atoll(argv[1]) : 96;
    Buffer a(kc * kMR), b(kc * kNR), c(kMR * 1024);
    for (int64_t i = 0; i < kc * kMR; ++i) a.data()[i] = U(rng);
    for (int64_t i = 0; i < kc * kNR; ++i) b.data()[i] = U(rng);
    Epilogue e;
    const int calls = 20000;
    const double t = best_of(5, [&] {
      for (int i = 0; i < calls; ++i) {
        e.accumulate = i > 0;
        ukernel<kMR, kNV>(kc, a.data(), b.data(), c.data(), 1024, e);
      }
    });
    const double flops = 2.0 * kMR * kNR * kc * calls;
    std::printf("ukernel %dx%d kc=%ld: %.1f GFLOP/s/core = %.1f flops/ns\n", kMR, kNR, (long)kc,
                flops / t / 1e9, flops / t / 1e9);
  }
  // 2) forward_flat on the suite shapes, N = 8, one thread
  struct Case { const char* name; int64_t C, OC, H, k, s, pad; };
  const Case cases[] = {{"c2", 32, 64, 32, 3, 1, 1}, {"c3", 64, 128, 16, 3, 1, 1},
                        {"c4", 128, 256, 8, 3, 1, 1}, {"c5", 64, 64, 16, 1, 1, 0}};
  for (const Case& cs : cases) {
    Conv2dParams p{};
    p.N = 8; p.C = cs.C; p.H = p.W = cs.H; p.OC = cs.OC; p.KH = p.KW = cs.k;
    p.sh = p.sw = cs.s; p.ph = p.pw = cs.pad; p.dh = p.dw = 1; p.G = 1;
    p.OH = p.OW = (cs.H + 2 * cs.pad - cs.k) / cs.s + 1;
    std::vector<float> x(p.N * p.C * p.H * p.W), w(p.OC * p.C * p.KH * p.KW), y(p.N * p.OC * p.OH * p.OW);
    for (auto& v : x) v = U(rng);
    for (auto& v : w) v = U(rng);
    const double flops = 2.0 * p.N * p.OC * p.OH * p.OW * p.C * p.KH * p.KW;
    for (int64_t kc : {0, 48, 96, 144, 192, 288, 576, 1152}) {
      const double t = best_of(5, [&] { forward_flat(y.data(), x.data(), w.data(), nullptr, p, false, kc); });
      std::printf("%s forward_flat kc=%ld: %.1f GFLOP/s/core\n", cs.name, (long)kc, flops / t / 1e9);
    }
  }
  (void)ghz_peak;
}
