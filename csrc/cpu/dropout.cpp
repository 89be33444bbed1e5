// dropout.cpp: inverted dropout with a counter-based mask.
//
//   mask[i] = philox4x32_10(i / 4, seed)[i % 4] >= floor(p * 2^32)      (uint8 0/1)
//   y[i]    = x[i] * mask[i] * scale,   scale = 1/(1 - p) computed in double, then cast
//   dx[i]   = dy[i] * mask[i] * scale
// p = 1 gives zeros (no 1/0). The mask is a pure function of (seed, i): any chunking, any
// thread count, any dtype and the CUDA kernel give the same bits. Memory-bound: one read of
// x, one write of y and of the mask; the generator runs in registers.
#include <algorithm>

#include "common/parallel.h"
#include "common/philox.h"
#include "cpu/layers_fast_api.h"
#include "kernels.h"

#include <type_traits>

namespace dk::cpu {

namespace {

constexpr int64_t kGrain = 1 << 14;  // elements per chunk (a multiple of 4)

// Mask bits of elements [b, e), b a multiple of 4; element i of the stream is first + i.
inline void mask_range(uint8_t* __restrict mask, int64_t b, int64_t e, uint64_t thresh,
                       uint64_t seed, uint64_t first = 0) {
  for (int64_t i = b; i < e; i += 4) {
    const Philox4 r = philox4x32_10((first + static_cast<uint64_t>(i)) >> 2, seed);
    const int64_t m = std::min<int64_t>(4, e - i);
    for (int64_t j = 0; j < m; ++j) mask[i + j] = static_cast<uint64_t>(r.v[j]) >= thresh;
  }
}

// Scaled product of a value and a mask bit, as x * mask * scale.
template <class T>
inline void apply_mask(T* __restrict y, const T* __restrict x, const uint8_t* __restrict mask,
                       int64_t n, T scale) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] * (mask[i] ? scale : T(0));
}

}  // namespace

// The vector generator of layers_fast.h (AVX2/AVX-512) gives the same bits as mask_range;
// it handles every p < 1 (the threshold then fits in 32 bits).
void dropout_mask(uint8_t* mask, int64_t n, double p, uint64_t seed, uint64_t first) {
  const uint64_t thresh = dropout_threshold(p);
  if (thresh < (uint64_t(1) << 32) &&
      DK_TRY_FAST(dropout_mask_f32, mask, n, static_cast<uint32_t>(thresh), seed, first))
    return;
  parallel_for(n, kGrain, [&](int64_t b, int64_t e) { mask_range(mask, b, e, thresh, seed, first); });
}

template <class T>
void dropout_forward(T* y, uint8_t* mask, const T* x, int64_t n, double p, uint64_t seed) {
  const uint64_t thresh = dropout_threshold(p);
  const bool drop_all = p >= 1.0;
  const T scale = drop_all ? T(0) : static_cast<T>(1.0 / (1.0 - p));
  if constexpr (std::is_same_v<T, float>)
    if (!drop_all &&
        DK_TRY_FAST(dropout_forward_f32, y, mask, x, n, static_cast<uint32_t>(thresh), seed, scale))
      return;
  parallel_for(n, kGrain, [&](int64_t b, int64_t e) {
    mask_range(mask, b, e, thresh, seed);
    if (drop_all)
      std::fill(y + b, y + e, T(0));
    else
      apply_mask(y + b, x + b, mask + b, e - b, scale);
  });
}

template <class T>
void dropout_backward(T* dx, const T* dy, const uint8_t* mask, int64_t n, double p) {
  const bool drop_all = p >= 1.0;
  const T scale = drop_all ? T(0) : static_cast<T>(1.0 / (1.0 - p));
  if constexpr (std::is_same_v<T, float>)
    if (!drop_all && DK_TRY_FAST(dropout_backward_f32, dx, dy, mask, n, scale)) return;
  parallel_for(n, kGrain, [&](int64_t b, int64_t e) {
    if (drop_all)
      std::fill(dx + b, dx + e, T(0));
    else
      apply_mask(dx + b, dy + b, mask + b, e - b, scale);
  });
}

#define DK_INSTANTIATE(T)                                                                  \
  template void dropout_forward<T>(T*, uint8_t*, const T*, int64_t, double, uint64_t);     \
  template void dropout_backward<T>(T*, const T*, const uint8_t*, int64_t, double);
DK_INSTANTIATE(float)
DK_INSTANTIATE(double)
#undef DK_INSTANTIATE

}  // namespace dk::cpu
