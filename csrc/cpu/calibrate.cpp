// calibrate.cpp: the drivers of the triad bandwidth and FMA peak measurements (calibrate.h),
// the portable inner loops, and the run-time choice among the ISA variants.
//
// Method (the same for both): every configured thread works on its own data with no
// synchronization inside a run; a run is timed from outside the parallel region with a
// steady clock; the work per run is doubled until a run lasts at least `min_seconds`, so the
// fixed cost of starting the threads (a few microseconds) stays below ~1% of every sample.
// The caller (deepkern/bench.py) keeps the best and the median of the runs.
#include "cpu/calibrate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "common/check.h"
#include "common/parallel.h"

namespace dk::cpu {

namespace portable {

// One pass of the triad. Compiled for baseline x86-64 (SSE2) or whatever the target is;
// `omp simd` lets the compiler vectorize without -ffast-math.
void triad_pass(float* __restrict a, const float* __restrict b, const float* __restrict c,
                float s, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) a[i] = b[i] + s * c[i];
}

// 16 independent multiply-add chains (2 flops each per iteration). Without an FMA instruction
// in the baseline ISA this measures separate multiplies and adds, which is what the portable
// code can reach; the compiler may pack the chains into SSE registers, as it does for kernels.
float fma_loop(int64_t iters, float seed, double* flops_per_iter) {
  constexpr int K = 16;
  float acc[K];
  for (int k = 0; k < K; ++k) acc[k] = seed + 0.001f * static_cast<float>(k);
  const float m = 0.999999f, add = 1e-6f;
  for (int64_t it = 0; it < iters; ++it) {
    for (int k = 0; k < K; ++k) acc[k] = acc[k] * m + add;
  }
  float sum = 0;
  for (int k = 0; k < K; ++k) sum += acc[k];
  *flops_per_iter = 2.0 * K;
  return sum;
}

}  // namespace portable

namespace {

using clock = std::chrono::steady_clock;

TriadPassFn pick_triad(Isa isa) {
#ifdef DK_HAVE_X86_VARIANTS
  if (isa == Isa::avx512) return avx512::triad_pass;
  if (isa == Isa::avx2) return avx2::triad_pass;
#endif
  (void)isa;
  return portable::triad_pass;
}

FmaLoopFn pick_fma(Isa isa) {
#ifdef DK_HAVE_X86_VARIANTS
  if (isa == Isa::avx512) return avx512::fma_loop;
  if (isa == Isa::avx2) return avx2::fma_loop;
#endif
  (void)isa;
  return portable::fma_loop;
}

// A 64-byte-aligned float buffer (one cache line; also the AVX-512 vector size).
struct AlignedFloats {
  float* p = nullptr;
  explicit AlignedFloats(int64_t n) {
    const size_t bytes = ((static_cast<size_t>(n) * sizeof(float) + 63) / 64) * 64;
    if (posix_memalign(reinterpret_cast<void**>(&p), 64, bytes) != 0) p = nullptr;
    DK_CHECK(p != nullptr, "calibrate: cannot allocate ", bytes, " bytes");
  }
  ~AlignedFloats() { std::free(p); }
  AlignedFloats(const AlignedFloats&) = delete;
  AlignedFloats& operator=(const AlignedFloats&) = delete;
};

// Thread t of nt owns [lo, hi): contiguous, split at multiples of 16 floats (64 bytes) so no
// two threads share a cache line.
inline void slice(int64_t n, int t, int nt, int64_t* lo, int64_t* hi) {
  auto at = [&](int k) { return k >= nt ? n : std::min(n, (n * k / nt) / 16 * 16); };
  *lo = at(t);
  *hi = at(t + 1);
}

// Run f(t) once on each of nt threads (one chunk per thread: parallel_for's static schedule).
template <class F>
void on_each_thread(int nt, const F& f) {
  parallel_for(nt, 1, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) f(static_cast<int>(t));
  });
}

// Time one call of f; return seconds.
template <class F>
double timed(const F& f) {
  const auto t0 = clock::now();
  f();
  return std::chrono::duration<double>(clock::now() - t0).count();
}

// The amount of work (passes, iterations) that makes one run last about `seconds`, found by
// timing work(k) on the calling thread alone, doubling k until it lasts 2 ms (or `seconds`
// when shorter). Timing a parallel run instead would count the wake-up of the other threads
// as work: on a loaded machine a thread can take milliseconds to be scheduled, and the runs
// would then be mostly waiting.
template <class F>
int64_t work_for(double seconds, const F& work) {
  const double probe = std::min(seconds, 2e-3);
  int64_t k = 1;
  double t = timed([&] { work(k); });
  while (t < probe && k < (int64_t(1) << 40)) {
    k *= 2;
    t = timed([&] { work(k); });
  }
  const double per_unit = t / static_cast<double>(k);
  return std::max<int64_t>(1, static_cast<int64_t>(std::ceil(seconds / std::max(per_unit, 1e-12))));
}

}  // namespace

TimedRuns triad(int64_t n, double min_seconds, int repeats) {
  DK_CHECK(n >= 1, "triad: n must be >= 1, got ", n);
  DK_CHECK(repeats >= 1, "triad: repeats must be >= 1, got ", repeats);
  DK_CHECK(min_seconds >= 0 && min_seconds <= 60, "triad: min_seconds must be in [0, 60]");
  TimedRuns r;
  r.threads = std::max(1, static_cast<int>(std::min<int64_t>(get_num_threads(), (n + 15) / 16)));
  r.isa = active_isa();
  const int nt = r.threads;
  const TriadPassFn pass = pick_triad(r.isa);
  // One allocation holding the three arrays, each starting on a cache line, with b and c
  // shifted by a few lines so that a[i], b[i] and c[i] never share their address modulo
  // 4 KiB: on Intel cores loads of b and c can then falsely wait on stores to a ("4K
  // aliasing") when the sizes are multiples of a page. (Not measurable on the Zen 5 this was
  // written on: bench/NOTES.md.) STREAM offsets its arrays for the same reason.
  const int64_t stride = (n + 15) / 16 * 16 + 16 * 5;  // floats; 5 extra cache lines
  AlignedFloats buf(3 * stride + 16 * 3);
  struct { float* p; } a{buf.p}, b{buf.p + stride + 16}, c{buf.p + 2 * stride + 48};
  // First touch by the thread that will stream the slice, so on a multi-socket machine each
  // slice lives in its thread's memory node (STREAM does the same).
  on_each_thread(nt, [&](int t) {
    int64_t lo, hi;
    slice(n, t, nt, &lo, &hi);
    for (int64_t i = lo; i < hi; ++i) { a.p[i] = 0.f; b.p[i] = 1.f; c.p[i] = 2.f; }
  });
  const float s = 3.f;  // b + s*c = 7 exactly, with or without a fused multiply-add
  auto run = [&](int64_t passes) {
    return timed([&] {
      on_each_thread(nt, [&](int t) {
        int64_t lo, hi;
        slice(n, t, nt, &lo, &hi);
        // The call through a function pointer cannot be hoisted out of the loop: every pass
        // really streams the arrays again.
        for (int64_t p = 0; p < passes; ++p) pass(a.p + lo, b.p + lo, c.p + lo, s, hi - lo);
      });
    });
  };
  // How many passes make a run last min_seconds: timed on the calling thread alone over one
  // thread's slice (see work_for).
  int64_t lo0, hi0;
  slice(n, 0, nt, &lo0, &hi0);
  run(1);  // warm-up: page mapping, caches, thread pool
  const int64_t passes = work_for(min_seconds, [&](int64_t k) {
    for (int64_t p = 0; p < k; ++p) pass(a.p + lo0, b.p + lo0, c.p + lo0, s, hi0 - lo0);
  });
  r.work = passes;
  r.units_per_run = 12.0 * static_cast<double>(n) * static_cast<double>(passes);
  for (int k = 0; k < repeats; ++k) r.seconds.push_back(run(passes));
  for (int64_t i = 0; i < n; i += std::max<int64_t>(1, n / 97))
    DK_ASSERT(a.p[i] == 7.f);
  DK_ASSERT(a.p[n - 1] == 7.f);
  return r;
}

void triad_once(float* a, const float* b, const float* c, float s, int64_t n) {
  DK_CHECK(n >= 0, "triad: n must be >= 0, got ", n);
  const int nt = std::max(1, static_cast<int>(std::min<int64_t>(get_num_threads(), (n + 15) / 16)));
  const TriadPassFn pass = pick_triad(active_isa());
  on_each_thread(nt, [&](int t) {
    int64_t lo, hi;
    slice(n, t, nt, &lo, &hi);
    if (hi > lo) pass(a + lo, b + lo, c + lo, s, hi - lo);
  });
}

TimedRuns fma_peak(Isa isa, double min_seconds, int repeats) {
  DK_CHECK(repeats >= 1, "fma_peak: repeats must be >= 1, got ", repeats);
  DK_CHECK(min_seconds >= 0 && min_seconds <= 60, "fma_peak: min_seconds must be in [0, 60]");
  // Never run an ISA the CPU lacks: clamp to the best supported level.
  const Isa saved = active_isa();
  set_active_isa(isa);
  TimedRuns r;
  r.isa = active_isa();
  set_active_isa(saved);
  r.threads = get_num_threads();
  const int nt = r.threads;
  const FmaLoopFn loop = pick_fma(r.isa);
  std::unique_ptr<float[]> sink(new float[nt]);
  double flops_per_iter = 0;
  auto run = [&](int64_t iters) {
    return timed([&] {
      on_each_thread(nt, [&](int t) {
        double f = 0;
        sink[t] = loop(iters, 1.0f + 0.01f * static_cast<float>(t), &f);
        if (t == 0) flops_per_iter = f;
      });
    });
  };
  run(1024);  // warm-up: wakes the cores and, on some CPUs, the wide vector units
  const int64_t iters = work_for(min_seconds, [&](int64_t k) {
    double f;
    sink[0] = loop(k, 1.0f, &f);
  });
  r.work = iters;
  for (int k = 0; k < repeats; ++k) r.seconds.push_back(run(iters));
  r.units_per_run = flops_per_iter * static_cast<double>(iters) * nt;
  for (int t = 0; t < nt; ++t) DK_ASSERT(std::isfinite(sink[t]));  // also keeps the loops alive
  return r;
}

}  // namespace dk::cpu
