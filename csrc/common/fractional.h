// fractional.h: the region math of fractional max pooling, shared by the CPU kernel
// (cpu/fractional_pool2d.cpp) and the CUDA kernel (cuda/fractional_pool2d.cu), so both place
// the same regions and pick the same taps. See cpu/fractional_pool2d.cpp for the method.
#pragma once
#include <cmath>  // INFINITY
#include <cstdint>

#include "common/philox.h"  // DK_HOST_DEVICE

namespace dk {

struct FractionalPool2dParams {
  int64_t N, C, H, W;  // input
  int64_t OH, OW;      // output
  int64_t KH, KW;      // pooling region, KH + OH - 1 <= H and KW + OW - 1 <= W
};

// Start of region i (of O) along an axis of length L, region size K, sample u in [0, 1):
// PyTorch's formula, each product and sum rounded to T. The result is clamped into
// [0, L - K]: for valid samples it always lies there; the clamp keeps a bad sample (NaN,
// which the bindings reject) from ever addressing memory outside the plane.
template <class T>
DK_HOST_DEVICE int64_t fractional_start(T u, int64_t i, int64_t L, int64_t O, int64_t K) {
  if (i >= O - 1) return L - K;
  const T alpha = static_cast<T>(L - K) / static_cast<T>(O - 1);
  const T pos = static_cast<T>(static_cast<T>(static_cast<T>(i) + u) * alpha);
  const T base = static_cast<T>(u * alpha);
  const int64_t s = static_cast<int64_t>(pos) - static_cast<int64_t>(base);
  return s < 0 ? 0 : (s > L - K ? L - K : s);
}

// The max of the KH x KW region at (h0, w0) of one plane xp (row length W): rows then
// columns; a larger value or a NaN replaces the current one (ties keep the first tap, the
// last NaN wins: PyTorch's rule). v != v is isnan without <cmath>'s host/device overloads.
template <class T>
DK_HOST_DEVICE void fractional_region_max(const T* xp, int64_t W, int64_t h0, int64_t w0, int64_t KH,
                                          int64_t KW, T* y, int64_t* idx) {
  T best = -static_cast<T>(INFINITY);
  int64_t arg = h0 * W + w0;
  for (int64_t ih = h0; ih < h0 + KH; ++ih) {
    for (int64_t iw = w0; iw < w0 + KW; ++iw) {
      const T v = xp[ih * W + iw];
      if (v > best || v != v) {
        best = v;
        arg = ih * W + iw;
      }
    }
  }
  *y = best;
  *idx = arg;
}

}  // namespace dk
