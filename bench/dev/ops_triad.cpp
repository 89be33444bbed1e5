// ops_triad.cpp: STREAM-like triad a[i] = b[i] + s * c[i] on a given working-set size, the
// bandwidth yardstick for the memory-bound layer ops (bench/dev/ops_probe.py builds and runs
// it). Bytes counted: 3 arrays x n x 4 (the write-allocate read of a is not counted, as in
// STREAM). Arrays are touched once before timing (no first-touch page faults in the timing).
//   ops_triad <total working-set bytes> <threads>   -> one JSON line
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

int main(int argc, char** argv) {
  const long bytes = argc > 1 ? std::atol(argv[1]) : 3L * 64 * 64 * 32 * 32 * 4;
  const int threads = argc > 2 ? std::atoi(argv[2]) : 2;
  const long n = bytes / 12;
  float* a = static_cast<float*>(std::aligned_alloc(64, (n * 4 + 63) / 64 * 64));
  float* b = static_cast<float*>(std::aligned_alloc(64, (n * 4 + 63) / 64 * 64));
  float* c = static_cast<float*>(std::aligned_alloc(64, (n * 4 + 63) / 64 * 64));
#pragma omp parallel for num_threads(threads) schedule(static)
  for (long i = 0; i < n; ++i) {
    a[i] = 0.f;
    b[i] = 1.f;
    c[i] = 2.f;
  }
  std::vector<double> ts;
  for (int r = 0; r < 25; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long i = 0; i < n; ++i) a[i] = b[i] + 3.f * c[i];
    ts.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ts.begin(), ts.end());
  std::printf("{\"bytes\": %ld, \"threads\": %d, \"median_gbs\": %.2f, \"best_gbs\": %.2f, \"check\": %.1f}\n",
              3 * n * 4, threads, 3.0 * n * 4 / ts[ts.size() / 2] / 1e9, 3.0 * n * 4 / ts[0] / 1e9,
              static_cast<double>(a[n / 2]));
  std::free(a);
  std::free(b);
  std::free(c);
}
