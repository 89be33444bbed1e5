// parallel.h: the one place deepkern talks to OpenMP.
//
// The thread count is a process-wide setting read once at the start of every kernel call
// (never omp_set_num_threads, whose value is per OS thread and would not reach kernels
// called from other Python threads). Without OpenMP everything runs serially.
//
// Determinism rule used throughout: work is split into chunks whose boundaries depend only
// on the problem size (never on the thread count), and any reduction folds per-chunk
// partials in chunk order. Results are then bitwise identical for every thread count.
#pragma once
#include <algorithm>
#include <cstdint>
#include <exception>

#ifdef DEEPKERN_HAS_OPENMP
#include <omp.h>
#endif

namespace dk {

int get_num_threads();       // the configured count (>= 1)
void set_num_threads(int n);  // n >= 1
bool has_openmp();

// Run f(begin, end) over [0, n) in chunks of `grain` (the last one shorter), spread over the
// configured threads. Chunk boundaries depend only on n and grain. An exception thrown by f
// is captured and rethrown on the calling thread after the loop (OpenMP forbids letting it
// escape a parallel region). The capture uses an OpenMP critical section, not std::mutex:
// parallel_for is instantiated in the -mavx2/-mavx512f files too, and std::mutex::lock (an
// inline function, emitted as a weak symbol there) could then be the copy the linker keeps for
// baseline code (.ci/check_isa_symbols.sh).
template <class F>
void parallel_for(int64_t n, int64_t grain, const F& f) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t nchunks = (n + grain - 1) / grain;
  const int nt = static_cast<int>(std::min<int64_t>(get_num_threads(), nchunks));
  if (nt <= 1) {
    f(int64_t(0), n);
    return;
  }
#ifdef DEEPKERN_HAS_OPENMP
  std::exception_ptr err = nullptr;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t c = 0; c < nchunks; ++c) {
    try {
      const int64_t b = c * grain;
      f(b, std::min(n, b + grain));
    } catch (...) {
#pragma omp critical(dk_parallel_for_error)
      if (!err) err = std::current_exception();
    }
  }
  if (err) std::rethrow_exception(err);
#else
  f(int64_t(0), n);
#endif
}

// Split [0, n) into at most get_num_threads() contiguous ranges: for work where the split
// does not change the result (element-wise ops), fewer and larger ranges are cheaper.
template <class F>
void parallel_range(int64_t n, int64_t min_per_thread, const F& f) {
  if (n <= 0) return;
  const int64_t want = std::max<int64_t>(1, n / std::max<int64_t>(min_per_thread, 1));
  const int nt = static_cast<int>(std::min<int64_t>(get_num_threads(), want));
  const int64_t grain = (n + nt - 1) / nt;
  parallel_for(n, grain, f);
}

}  // namespace dk
