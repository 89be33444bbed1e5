// threading.h: when a kernel is worth a parallel region.
//
// A parallel region is not free, and at the sizes of a small CNN (a 64 x 16 x 8 x 8 batch: a
// few microseconds per op) it can cost more than the work it splits. Measured on the 2-core
// AMD EPYC (Zen 5) here, an empty 2-thread OpenMP region (bench/NOTES.md, "issue 8,
// continued"):
//   - 0.4-0.5 us when the helper thread is still spinning from the previous region (libgomp
//     spins for a while before it sleeps: back-to-back kernel calls of a training step);
//   - 5-25 us when it has gone to sleep and must be woken (OMP_WAIT_POLICY=passive, or a
//     gap of milliseconds);
//   - up to a scheduler tick (4 ms) when another process holds the other core.
// So a kernel goes parallel only when each thread gets at least kMinNsPerThread of work: 20x
// the cost of a hot region, so that the split gains at least ~45% when it happens, and short
// ops never risk waiting for a busy core. Each kernel estimates its cost per item on one core
// (a constant measured for it, written next to its call) and asks min_items_per_thread.
//
// The inline helpers have internal linkage: the header is included by baseline and -mavx2 /
// -mavx512f files alike, and nothing inline may be shared between them
// (.ci/check_isa_symbols.sh); parallel_min_ns is defined once, in threading.cpp.
#pragma once
#include <algorithm>
#include <cstdint>

#include "common/parallel.h"

namespace dk::cpu {

constexpr double kMinNsPerThread = 10000.0;

// kMinNsPerThread, or DEEPKERN_PARALLEL_MIN_NS when set (tests: 0 splits every job).
double parallel_min_ns();

namespace {

// Items per thread such that a thread's share costs at least parallel_min_ns(), for items
// costing ns_per_item each on one core (at least 1).
inline int64_t min_items_per_thread(double ns_per_item) {
  const double n = parallel_min_ns() / (ns_per_item > 0 ? ns_per_item : 1e-9);
  return n >= 9.0e18 ? int64_t(9e18) : std::max<int64_t>(1, static_cast<int64_t>(n));
}

// parallel_range(n, ...) with the threshold above: one contiguous range per thread, and no
// parallel region at all when the whole job is short.
template <class F>
void parallel_work(int64_t n, double ns_per_item, const F& f) {
  parallel_range(n, min_items_per_thread(ns_per_item), f);
}

}  // namespace
}  // namespace dk::cpu
