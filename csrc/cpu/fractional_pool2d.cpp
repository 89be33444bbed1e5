// fractional_pool2d.cpp: fractional max pooling (Graham, "Fractional Max-Pooling", 2014),
// forward. The backward is max_pool2d_backward: both route grad_out through the indices.
//
// Shape legend: N batch, C channels, H W input, OH OW output, KH KW pooling region.
// The formula and the region scan live in common/fractional.h, shared with the CUDA kernel.
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
#include "common/fractional.h"
#include "common/parallel.h"
#include "kernels.h"

namespace dk::cpu {

namespace {

// The start of every region along one axis (common/fractional.h has the formula).
template <class T>
void region_starts(int64_t* start, T u, int64_t L, int64_t O, int64_t K) {
  for (int64_t i = 0; i < O; ++i) start[i] = fractional_start<T>(u, i, L, O, K);
}

}  // namespace

template <class T>
void fractional_max_pool2d_forward(T* y, int64_t* idx, const T* x, const T* samples,
                                   const FractionalPool2dParams& p) {
  const int64_t planes = p.N * p.C, HW = p.H * p.W, OHW = p.OH * p.OW;
  parallel_for(planes, 1, [&](int64_t q0, int64_t q1) {
    // the region starts of a plane, computed once (the CUDA kernel recomputes them per output)
    std::vector<int64_t> hs(static_cast<size_t>(p.OH)), ws(static_cast<size_t>(p.OW));
    for (int64_t q = q0; q < q1; ++q) {
      region_starts<T>(ws.data(), samples[2 * q], p.W, p.OW, p.KW);
      region_starts<T>(hs.data(), samples[2 * q + 1], p.H, p.OH, p.KH);
      const T* xp = x + q * HW;
      T* yp = y + q * OHW;
      int64_t* ip = idx + q * OHW;
      for (int64_t oh = 0; oh < p.OH; ++oh)
        for (int64_t ow = 0; ow < p.OW; ++ow)
          fractional_region_max<T>(xp, p.W, hs[oh], ws[ow], p.KH, p.KW, yp + oh * p.OW + ow,
                                   ip + oh * p.OW + ow);
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
