// ops_kernel_bench.cpp: the memory-bound layer kernels through kernels.h, no Python in the
// way, wall time (best of R) on T threads, with the bytes each one must move, against a triad
// (a[i] = b[i] + s*c[i], 12 bytes counted per element as STREAM) on a working set of the same
// size, timed right before each op on the same threads (best of R as well). Build (objects of
// the sources with the same flags as CMakeLists.txt, AVX-512 ones with their -m flags):
//   see bench/dev/ops_kernel_bench.sh;  run: ops_kernel_bench [threads] [reps] [only-op]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "common/parallel.h"
#include "kernels.h"

using clk = std::chrono::steady_clock;

template <class F>
static double best(int reps, F f) {
  double b = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = clk::now();
    f();
    b = std::min(b, std::chrono::duration<double>(clk::now() - t0).count());
  }
  return b;
}

// GB/s of the triad on `bytes` of working set (3 arrays), best of reps, same thread split as the
// kernels (one contiguous range per thread)
static double triad_gbs(double bytes, int reps) {
  const int64_t n = static_cast<int64_t>(bytes / 12) / 16 * 16;
  std::vector<float> a(n, 0.f), b(n, 1.f), c(n, 2.f);
  float* pa = a.data();
  const float* pb = b.data();
  const float* pc = c.data();
  const double t = best(reps, [&] {
    dk::parallel_range(n, 1 << 15, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) pa[i] = pb[i] + 3.f * pc[i];
    });
  });
  return 12.0 * n / t / 1e9;
}

int main(int argc, char** argv) {
  dk::set_num_threads(argc > 1 ? std::atoi(argv[1]) : 2);
  const int reps = argc > 2 ? std::atoi(argv[2]) : 20;
  const char* only = argc > 3 ? argv[3] : nullptr;
  const int64_t N = 64, C = 64, H = 32, W = 32, n = N * C * H * W;
  std::vector<float> x(n), y(n), dy(n), dx(n), sm(C), si(C), wv(C, 1.f), bv(C, 0.f);
  std::vector<float> py(n / 4), pdy(n / 4);
  std::vector<int64_t> idx(n / 4);
  std::vector<uint8_t> mask(n);
  std::mt19937 g(1);
  std::normal_distribution<float> nd;
  for (auto* v : {&x, &dy}) for (auto& e : *v) e = nd(g);
  for (auto& e : pdy) e = nd(g);
  dk::Pool2dParams mp{N, C, H, W, 16, 16, 2, 2, 2, 2, 0, 0, 1, 1, false};
  dk::Pool2dParams ap{N, C, H, W, 32, 32, 3, 3, 1, 1, 1, 1, 1, 1, true};
  dk::BatchNormParams bp{N, C, H * W, 0.1, 1e-5};
  const double f4 = 4, MB = 1e6;
  struct Row { const char* name; double bytes; double t; double triad; };
  std::vector<Row> rows;
  auto run = [&](const char* name, double bytes, auto f) {
    if (only && std::string(only) != name) return;
    f();  // warm-up (and first touch of the outputs)
    const double tr = triad_gbs(bytes, reps);
    rows.push_back({name, bytes, best(reps, f), tr});
  };
  run("relu fwd", 2 * n * f4, [&] { dk::cpu::relu_forward<float>(y.data(), x.data(), n); });
  run("relu bwd", 3 * n * f4, [&] { dk::cpu::relu_backward<float>(dx.data(), dy.data(), y.data(), n); });
  run("maxpool fwd", n * f4 + n / 4 * 12.0, [&] { dk::cpu::max_pool2d_forward<float>(py.data(), idx.data(), x.data(), mp); });
  run("maxpool bwd", n * f4 + n / 4 * 12.0, [&] { dk::cpu::max_pool2d_backward<float>(dx.data(), pdy.data(), idx.data(), mp); });
  run("avgpool fwd", 2 * n * f4, [&] { dk::cpu::avg_pool2d_forward<float>(y.data(), x.data(), ap); });
  run("avgpool bwd", 2 * n * f4, [&] { dk::cpu::avg_pool2d_backward<float>(dx.data(), dy.data(), ap); });
  run("batchnorm fwd", 2 * n * f4, [&] {
    dk::cpu::batch_norm_forward_train<float>(y.data(), sm.data(), si.data(), nullptr, nullptr, x.data(), wv.data(), bv.data(), bp);
  });
  run("batchnorm bwd", 3 * n * f4, [&] {
    dk::cpu::batch_norm_backward<float>(dx.data(), nullptr, nullptr, dy.data(), x.data(), wv.data(), sm.data(), si.data(), true, bp);
  });
  run("dropout fwd", 2 * n * f4 + n, [&] { dk::cpu::dropout_forward<float>(y.data(), mask.data(), x.data(), n, 0.5, 7); });
  // the mask alone (Philox): what the forward costs beyond its memory traffic
  run("dropout mask", n, [&] { dk::cpu::dropout_mask(mask.data(), n, 0.5, 7); });
  run("dropout bwd", 2 * n * f4 + n, [&] { dk::cpu::dropout_backward<float>(dx.data(), dy.data(), mask.data(), n, 0.5); });
  std::printf("%d threads, (64, 64, 32, 32) float32, best of %d; triad on the same working set\n",
              dk::get_num_threads(), reps);
  for (const Row& r : rows)
    std::printf("%-14s %6.1f MB %8.3f ms %7.1f GB/s  triad %6.1f GB/s  %5.0f%%\n", r.name, r.bytes / MB, r.t * 1e3,
                r.bytes / r.t / 1e9, r.triad, 100.0 * r.bytes / r.t / 1e9 / r.triad);
}
