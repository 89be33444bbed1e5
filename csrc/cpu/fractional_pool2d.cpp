// fractional_pool2d.cpp: fractional max pooling (Graham, "Fractional Max-Pooling", 2014),
// forward. The backward is max_pool2d_backward: both route grad_out through the indices.
//
// Shape legend: N batch, C channels, H W input, OH OW output, KH KW pooling region.
// Each plane (n, c) has two samples u = samples[n, c, 0] (columns) and v = samples[n, c, 1]
// (rows) in [0, 1). They place OH x OW regions of KH x KW taps pseudo-randomly so that the
// output shrinks by a non-integer ratio H/OH. Along one axis (input size L, output size O,
// region size K, sample u), region i starts at
//
//     alpha = (L - K) / (O - 1)                       (computed in T, as PyTorch does)
//     start[i] = int((i + u) * alpha) - int(u * alpha)     for i < O - 1
//     start[O - 1] = L - K                            (the last region touches the edge)
//
// so the starts grow by floor(alpha) or ceil(alpha): "pseudo-random" overlapping regions.
// The arithmetic is done in T (float or double) exactly as written, so that the same samples
// give PyTorch's regions bit for bit (a float rounding changes a start by one near integers).
//
// y = the largest value in the region, idx = its flat index ih*W + iw in the plane. Order of
// the scan: rows then columns; a larger value replaces the current one, so ties keep the
// first; a NaN always replaces (so the LAST NaN of the region wins: PyTorch's fractional
// pooling rule, which differs from max_pool2d's first-NaN rule in which NaN is reported).
// Planes are independent: the kernel parallelizes over planes, serial within one, so the
// result does not depend on the thread count.
#include <cmath>
#include <limits>
#include <vector>

#include "common/check.h"
#include "common/parallel.h"
#include "kernels.h"

namespace dk::cpu {

namespace {

// The start of every region along one axis (see the formula above).
template <class T>
void region_starts(int64_t* start, T u, int64_t L, int64_t O, int64_t K) {
  if (O > 1) {
    const T alpha = static_cast<T>(L - K) / static_cast<T>(O - 1);
    // u * alpha is rounded to T before the truncation, as (i + u) * alpha is: one rounding each
    const int64_t base = static_cast<int64_t>(static_cast<T>(u * alpha));
    for (int64_t i = 0; i < O - 1; ++i) {
      const T pos = static_cast<T>(static_cast<T>(static_cast<T>(i) + u) * alpha);
      start[i] = static_cast<int64_t>(pos) - base;
    }
  }
  start[O - 1] = L - K;
}

}  // namespace

template <class T>
void fractional_max_pool2d_forward(T* y, int64_t* idx, const T* x, const T* samples,
                                   const FractionalPool2dParams& p) {
  const int64_t planes = p.N * p.C, HW = p.H * p.W, OHW = p.OH * p.OW;
  parallel_for(planes, 1, [&](int64_t q0, int64_t q1) {
    std::vector<int64_t> hs(static_cast<size_t>(p.OH)), ws(static_cast<size_t>(p.OW));
    for (int64_t q = q0; q < q1; ++q) {
      const T u = samples[2 * q], v = samples[2 * q + 1];
      // The bindings check that samples lie in [0, 1): a NaN here would make int() undefined.
      region_starts<T>(ws.data(), u, p.W, p.OW, p.KW);
      region_starts<T>(hs.data(), v, p.H, p.OH, p.KH);
      const T* xp = x + q * HW;
      T* yp = y + q * OHW;
      int64_t* ip = idx + q * OHW;
      for (int64_t oh = 0; oh < p.OH; ++oh) {
        const int64_t h0 = hs[oh];
        for (int64_t ow = 0; ow < p.OW; ++ow) {
          const int64_t w0 = ws[ow];
          T best = -std::numeric_limits<T>::infinity();
          int64_t arg = h0 * p.W + w0;
          for (int64_t ih = h0; ih < h0 + p.KH; ++ih) {
            const T* row = xp + ih * p.W;
            for (int64_t iw = w0; iw < w0 + p.KW; ++iw) {
              const T val = row[iw];
              if (val > best || std::isnan(val)) {
                best = val;
                arg = ih * p.W + iw;
              }
            }
          }
          yp[oh * p.OW + ow] = best;
          ip[oh * p.OW + ow] = arg;
        }
      }
    }
  });
}

template <class T>
void fractional_region_starts(int64_t* start, T u, int64_t L, int64_t O, int64_t K) {
  region_starts<T>(start, u, L, O, K);
}

#define DK_INSTANTIATE(T)                                                                        \
  template void fractional_max_pool2d_forward<T>(T*, int64_t*, const T*, const T*,               \
                                                 const FractionalPool2dParams&);                 \
  template void fractional_region_starts<T>(int64_t*, T, int64_t, int64_t, int64_t);
DK_INSTANTIATE(float)
DK_INSTANTIATE(double)
#undef DK_INSTANTIATE

}  // namespace dk::cpu
