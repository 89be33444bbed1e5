// philox.h: Philox4x32-10, the counter-based generator behind every random mask in deepkern.
//
// Salmon, Moraes, Dror, Shaw, "Parallel random numbers: as easy as 1, 2, 3" (SC'11).
// A counter-based generator is a pure function: random(key, counter). Element i of a dropout
// mask uses counter (i / 4) and takes word (i % 4) of the output, with key = the 64-bit seed.
// So the mask depends only on (seed, flat index): not on the thread count, the chunking, the
// dtype, or the device (this header compiles for CUDA as well).
// deepkern.reference.philox4x32 is the same function in NumPy.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define DK_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define DK_HOST_DEVICE inline
#endif

namespace dk {

struct Philox4 {
  uint32_t v[4];
};

DK_HOST_DEVICE Philox4 philox4x32_10(uint64_t counter, uint64_t seed) {
  const uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u;
  const uint32_t W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32);
  uint32_t c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int r = 0; r < 10; ++r) {
    const uint64_t p0 = static_cast<uint64_t>(M0) * c0;
    const uint64_t p1 = static_cast<uint64_t>(M1) * c2;
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += W0;
    k1 += W1;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// Keep element iff its 32-bit draw is >= threshold, threshold = floor(p * 2^32) computed in
// double (p = 0 keeps everything, p = 1 drops everything: the threshold is then 2^32).
DK_HOST_DEVICE uint64_t dropout_threshold(double p) {
  if (!(p > 0.0)) return 0;
  if (p >= 1.0) return uint64_t(1) << 32;
  return static_cast<uint64_t>(p * 4294967296.0);
}

}  // namespace dk
