// small_kernel_bench.cpp: every kernel of the default digits CNN (deepkern train, issue 6) at its
// real shapes, through kernels.h: no Python, no allocations, outputs preallocated.
//
//   conv(1->C1, 3x3 p1) bn relu maxpool2  conv(C1->C2, 3x3 p1) bn relu maxpool2  dropout
//   on (N, 1, 8, 8), N = 64 by default.
//
// Build and run with bench/dev/small_kernel_bench.sh [threads] [C1] [C2] [N] [only-op] [iters]
// For each op: the minimum and the median over 31 blocks of `calls` calls (µs per call), wall
// time. The minimum estimates the quiet-machine cost on a shared machine. With only-op set, that
// op alone runs `iters` times (for perf record / valgrind --tool=callgrind).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "common/parallel.h"
#include "kernels.h"

using clk = std::chrono::steady_clock;

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 1;
  const int64_t C1 = argc > 2 ? std::atoll(argv[2]) : 16, C2 = argc > 3 ? std::atoll(argv[3]) : 32;
  const int64_t N = argc > 4 ? std::atoll(argv[4]) : 64;
  const std::string only = argc > 5 ? argv[5] : "";
  const long iters = argc > 6 ? std::atol(argv[6]) : 20000;
  dk::set_num_threads(threads);
  std::mt19937 g(1);
  std::normal_distribution<float> nd;
  auto vec = [&](int64_t n, float s = 1.f) {
    std::vector<float> v(n);
    for (auto& e : v) e = s * nd(g);
    return v;
  };
  const dk::Conv2dParams cp1{N, 1, 8, 8, C1, 3, 3, 8, 8, 1, 1, 1, 1, 1, 1, 1};
  const dk::Conv2dParams cp2{N, C1, 4, 4, C2, 3, 3, 4, 4, 1, 1, 1, 1, 1, 1, 1};
  const dk::BatchNormParams bp1{N, C1, 64, 0.1, 1e-5}, bp2{N, C2, 16, 0.1, 1e-5};
  const dk::Pool2dParams pp1{N, C1, 8, 8, 4, 4, 2, 2, 2, 2, 0, 0, 1, 1, false};
  const dk::Pool2dParams pp2{N, C2, 4, 4, 2, 2, 2, 2, 2, 2, 0, 0, 1, 1, false};
  const int64_t n1 = N * C1 * 64, q1 = N * C1 * 16, n2 = N * C2 * 16, q2 = N * C2 * 4;
  auto x = vec(N * 64), w1 = vec(C1 * 9, 0.3f), b1 = vec(C1), w2 = vec(C2 * C1 * 9, 0.1f), b2 = vec(C2);
  auto a1 = vec(n1), a2 = vec(n2), r1 = vec(n1), r2 = vec(n2), o1 = vec(n1), o2 = vec(n2);
  auto p1 = vec(q1), p2 = vec(q2), gp1 = vec(q1), gp2 = vec(q2), gx = vec(N * 64);
  auto gw1 = vec(C1 * 9), gb1 = vec(C1), gw2 = vec(C2 * C1 * 9), gb2 = vec(C2);
  auto s1 = vec(C1), i1 = vec(C1), s2 = vec(C2), i2 = vec(C2), rm1 = vec(C1), rv1 = vec(C1);
  auto rm2 = vec(C2), rv2 = vec(C2), g1 = vec(C1), be1 = vec(C1), g2 = vec(C2), be2 = vec(C2);
  auto dw1 = vec(C1), db1 = vec(C1), dw2 = vec(C2), db2 = vec(C2);
  for (auto& v : rv1) v = 1.f;
  for (auto& v : rv2) v = 1.f;
  std::vector<int64_t> idx1(q1), idx2(q2);
  std::vector<uint8_t> mask(q2);
  auto fl = vec(q2), fo = vec(q2);
  using namespace dk::cpu;
  dk::cpu::relu_forward<float>(r1.data(), a1.data(), n1);
  dk::cpu::relu_forward<float>(r2.data(), a2.data(), n2);
  max_pool2d_forward<float>(p1.data(), idx1.data(), r1.data(), pp1);
  max_pool2d_forward<float>(p2.data(), idx2.data(), r2.data(), pp2);
  batch_norm_forward_train<float>(o1.data(), s1.data(), i1.data(), nullptr, nullptr, a1.data(), g1.data(), be1.data(), bp1);
  batch_norm_forward_train<float>(o2.data(), s2.data(), i2.data(), nullptr, nullptr, a2.data(), g2.data(), be2.data(), bp2);

  struct Op {
    const char* name;
    std::function<void()> f;
  };
  std::vector<Op> ops = {
      {"conv1 fwd", [&] { conv2d_forward<float>(a1.data(), x.data(), w1.data(), b1.data(), cp1); }},
      {"bn1 fwd", [&] { batch_norm_forward_train<float>(o1.data(), s1.data(), i1.data(), rm1.data(), rv1.data(), a1.data(), g1.data(), be1.data(), bp1); }},
      {"relu1 fwd", [&] { relu_forward<float>(o1.data(), a1.data(), n1); }},
      {"pool1 fwd", [&] { max_pool2d_forward<float>(p1.data(), idx1.data(), r1.data(), pp1); }},
      {"conv2 fwd", [&] { conv2d_forward<float>(a2.data(), p1.data(), w2.data(), b2.data(), cp2); }},
      {"bn2 fwd", [&] { batch_norm_forward_train<float>(o2.data(), s2.data(), i2.data(), rm2.data(), rv2.data(), a2.data(), g2.data(), be2.data(), bp2); }},
      {"relu2 fwd", [&] { relu_forward<float>(o2.data(), a2.data(), n2); }},
      {"pool2 fwd", [&] { max_pool2d_forward<float>(p2.data(), idx2.data(), r2.data(), pp2); }},
      {"dropout fwd", [&] { dropout_forward<float>(fo.data(), mask.data(), fl.data(), q2, 0.25, 7); }},
      {"dropout bwd", [&] { dropout_backward<float>(fo.data(), fl.data(), mask.data(), q2, 0.25); }},
      {"pool2 bwd", [&] { max_pool2d_backward<float>(o2.data(), gp2.data(), idx2.data(), pp2); }},
      {"relu2 bwd", [&] { relu_backward<float>(o2.data(), a2.data(), r2.data(), n2); }},
      {"bn2 bwd", [&] { batch_norm_backward<float>(o2.data(), dw2.data(), db2.data(), a2.data(), a2.data(), g2.data(), s2.data(), i2.data(), true, bp2); }},
      {"conv2 bwd data", [&] { conv2d_backward_input<float>(gp1.data(), a2.data(), w2.data(), cp2); }},
      {"conv2 bwd weight", [&] { conv2d_backward_weight<float>(gw2.data(), gb2.data(), a2.data(), p1.data(), cp2); }},
      {"pool1 bwd", [&] { max_pool2d_backward<float>(o1.data(), gp1.data(), idx1.data(), pp1); }},
      {"relu1 bwd", [&] { relu_backward<float>(o1.data(), a1.data(), r1.data(), n1); }},
      {"bn1 bwd", [&] { batch_norm_backward<float>(o1.data(), dw1.data(), db1.data(), a1.data(), a1.data(), g1.data(), s1.data(), i1.data(), true, bp1); }},
      {"conv1 bwd data", [&] { conv2d_backward_input<float>(gx.data(), a1.data(), w1.data(), cp1); }},
      {"conv1 bwd weight", [&] { conv2d_backward_weight<float>(gw1.data(), gb1.data(), a1.data(), x.data(), cp1); }},
  };
  if (!only.empty()) {
    for (auto& op : ops)
      if (only == op.name) {
        for (long i = 0; i < iters; ++i) op.f();
        return 0;
      }
    std::fprintf(stderr, "no op named '%s'\n", only.c_str());
    return 1;
  }
  std::printf("threads %d, N %ld, C1 %ld, C2 %ld: us per call, min / median of 31 blocks\n", threads,
              static_cast<long>(N), static_cast<long>(C1), static_cast<long>(C2));
  double tmin = 0, tmed = 0;
  for (auto& op : ops) {
    for (int i = 0; i < 20; ++i) op.f();
    // calls per block: ~2 ms of work
    auto t0 = clk::now();
    op.f();
    const double one = std::chrono::duration<double>(clk::now() - t0).count();
    const int calls = std::clamp(static_cast<int>(2e-3 / std::max(one, 1e-7)), 5, 2000);
    std::vector<double> b;
    for (int r = 0; r < 31; ++r) {
      t0 = clk::now();
      for (int i = 0; i < calls; ++i) op.f();
      b.push_back(std::chrono::duration<double>(clk::now() - t0).count() / calls * 1e6);
    }
    std::sort(b.begin(), b.end());
    std::printf("%-18s %9.2f %9.2f\n", op.name, b[0], b[15]);
    tmin += b[0];
    tmed += b[15];
  }
  std::printf("%-18s %9.2f %9.2f\n", "sum", tmin, tmed);
  return 0;
}
