// calibrate.h: measuring the machine's own limits, so benchmarks can say "x% of what this CPU
// can do" instead of comparing against numbers copied from a datasheet.
//
// Two limits, both on the configured thread count (dk::get_num_threads()) and the SIMD level
// in use (dk::active_isa()):
//   triad    a STREAM-like bandwidth: a[i] = b[i] + s*c[i] over float32 arrays, each thread
//            streaming its own contiguous slice, repeated; 12 bytes counted per element (read
//            b and c, write a), as STREAM counts, so the write-allocate read of `a` that a
//            normal store causes is NOT counted. Measured for any working-set size: small
//            sets run from L1/L2/L3, large ones from DRAM.
//   fma      the peak multiply-add rate: independent FMA chains held in registers, enough of
//            them to cover latency x throughput of the FMA units (8 needed on current Intel
//            and AMD cores; we use 16 zmm or 12 ymm chains). 2 flops per lane per FMA.
//
// The inner loops exist per ISA (calibrate_avx2.cpp, calibrate_avx512.cpp, compiled with their
// own -m flags, like gemm_avx*.cpp) and are chosen at run time from active_isa().
#pragma once
#include <cstdint>
#include <vector>

#include "common/cpu_features.h"

namespace dk::cpu {

struct TimedRuns {
  int64_t work = 0;              // passes (triad) or loop iterations (fma) in one run
  double units_per_run = 0;      // bytes (triad) or flops (fma) counted in one run, all threads
  std::vector<double> seconds;   // wall time of each run
  int threads = 1;
  Isa isa = Isa::scalar;
};

// Triad over n float32 elements per array (working set 12*n bytes). The number of passes per
// run is doubled until one run takes at least min_seconds; then `repeats` runs are timed.
// Throws std::invalid_argument for n < 1, repeats < 1, or when the arrays cannot be allocated.
TimedRuns triad(int64_t n, double min_seconds, int repeats);

// One triad pass a = b + s*c over the caller's n floats, split over get_num_threads() threads
// like triad()'s runs (`deepkern bench` times it interleaved with a memory-bound op on a
// working set of the op's size: the limit measured side by side). a must not overlap b or c.
void triad_once(float* a, const float* b, const float* c, float s, int64_t n);

// Peak FMA rate of `isa` (clamped to what the CPU supports): every thread runs the same
// register-only loop; iterations are doubled until one run takes at least min_seconds.
TimedRuns fma_peak(Isa isa, double min_seconds, int repeats);

// The per-ISA inner loops (calibrate.cpp holds the portable ones).
using TriadPassFn = void (*)(float* a, const float* b, const float* c, float s, int64_t n);
// Runs `iters` iterations of every FMA chain; returns a value depending on all chains (so the
// compiler cannot drop any) and the flops done per iteration through flops_per_iter.
using FmaLoopFn = float (*)(int64_t iters, float seed, double* flops_per_iter);

namespace avx2 {
void triad_pass(float* a, const float* b, const float* c, float s, int64_t n);
float fma_loop(int64_t iters, float seed, double* flops_per_iter);
}  // namespace avx2
namespace avx512 {
void triad_pass(float* a, const float* b, const float* c, float s, int64_t n);
float fma_loop(int64_t iters, float seed, double* flops_per_iter);
}  // namespace avx512

}  // namespace dk::cpu
