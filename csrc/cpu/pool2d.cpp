// pool2d.cpp: max and average pooling over 2-D windows, forward and backward.
//
// Shape legend: N batch, C channels, H W input, OH OW output; kh kw window, sh sw stride,
// ph pw zero padding, dh dw dilation (max pooling only).
// Window of output (oh, ow): rows oh*sh - ph + i*dh for i < kh, columns likewise.
//
// max:  y = the largest value in the window; NaN wins (a window holding NaN gives NaN and the
//       index of its last NaN, as PyTorch); ties keep the first occurrence in row-major order;
//       idx = ih*W + iw, the flat index into the input plane.
// avg:  y = sum(window inside the input) / divisor. The window is clipped to the padded
//       input [-ph, H+ph) (so a ceil_mode overhang never counts); divisor = the clipped size
//       when count_include_pad, else the number of taps inside the real input. The sum is
//       separable: +0 plus the window's row sums top to bottom, each +0 plus its taps left to
//       right, then one division. The vector kernels (layers_fast.h) and the
//       CUDA kernels add in exactly this order: every path gives the same bits. The backward
//       pass is a gather in the same order: dx = +0 plus, for the outputs whose window holds
//       the input, by rows, (+0 plus dy / divisor by columns).
// Every plane (n, c) is independent: all four kernels parallelize over planes and are
// serial (hence deterministic) within a plane.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "common/check.h"
#include <type_traits>

#include "common/parallel.h"
#include "cpu/layers_fast_api.h"
#include "kernels.h"

namespace dk::cpu {

// float32 on AVX2/AVX-512 CPUs: the vector kernels of layers_fast.h for the shapes they take
// (max: 2x2 windows at stride 2; avg: stride 1), with the same results as the loops below.
template <class T>
void max_pool2d_forward(T* y, int64_t* idx, const T* x, const Pool2dParams& p) {
  if constexpr (std::is_same_v<T, float>)
    if (DK_TRY_FAST_IF(max_pool2d_forward_f32, y, idx, x, p)) return;
  const int64_t planes = p.N * p.C, HW = p.H * p.W, OHW = p.OH * p.OW;
  parallel_for(planes, 1, [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      const T* xp = x + q * HW;
      T* yp = y + q * OHW;
      int64_t* ip = idx + q * OHW;
      for (int64_t oh = 0; oh < p.OH; ++oh) {
        int64_t h0 = oh * p.sh - p.ph;
        int64_t hs = h0, he = std::min(h0 + (p.kh - 1) * p.dh + 1, p.H);
        while (hs < 0) hs += p.dh;  // first tap inside the input
        for (int64_t ow = 0; ow < p.OW; ++ow) {
          int64_t w0 = ow * p.sw - p.pw;
          int64_t ws = w0, we = std::min(w0 + (p.kw - 1) * p.dw + 1, p.W);
          while (ws < 0) ws += p.dw;
          T best = -std::numeric_limits<T>::infinity();
          // a valid in-plane index even if every tap is -inf (or, with dilation, no tap
          // falls inside the input at all: then y = -inf, as in PyTorch)
          int64_t besti = std::min(hs, p.H - 1) * p.W + std::min(ws, p.W - 1);
          for (int64_t ih = hs; ih < he; ih += p.dh) {
            for (int64_t iw = ws; iw < we; iw += p.dw) {
              const T v = xp[ih * p.W + iw];
              if (v > best || std::isnan(v)) {
                best = v;
                besti = ih * p.W + iw;
              }
            }
          }
          yp[oh * p.OW + ow] = best;
          ip[oh * p.OW + ow] = besti;
        }
      }
    }
  });
}

template <class T>
void max_pool2d_backward(T* dx, const T* dy, const int64_t* idx, const Pool2dParams& p) {
  if constexpr (std::is_same_v<T, float>)
    if (DK_TRY_FAST_IF(max_pool2d_backward_f32, dx, dy, idx, p)) return;
  const int64_t planes = p.N * p.C, HW = p.H * p.W, OHW = p.OH * p.OW;
  parallel_for(planes, 1, [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      T* dxp = dx + q * HW;
      const T* dyp = dy + q * OHW;
      const int64_t* ip = idx + q * OHW;
      for (int64_t i = 0; i < HW; ++i) dxp[i] = T(0);
      for (int64_t o = 0; o < OHW; ++o) {
        const int64_t j = ip[o];
        DK_CHECK(j >= 0 && j < HW, "max_pool2d_backward: indices[", q * OHW + o, "] = ", j,
                 " is outside its input plane of ", HW, " elements");
        dxp[j] += dyp[o];
      }
    }
  });
}

namespace {
struct AvgWindow {
  int64_t hs, he, ws, we;  // taps inside the input: [hs, he) x [ws, we)
  int64_t divisor;
};

inline AvgWindow avg_window(const Pool2dParams& p, int64_t oh, int64_t ow) {
  int64_t hs = oh * p.sh - p.ph, ws = ow * p.sw - p.pw;
  int64_t he = std::min(hs + p.kh, p.H + p.ph), we = std::min(ws + p.kw, p.W + p.pw);
  const int64_t padded = (he - hs) * (we - ws);
  hs = std::max<int64_t>(hs, 0);
  ws = std::max<int64_t>(ws, 0);
  he = std::min(he, p.H);
  we = std::min(we, p.W);
  const int64_t inside = std::max<int64_t>(he - hs, 0) * std::max<int64_t>(we - ws, 0);
  return {hs, he, ws, we, p.count_include_pad ? padded : inside};
}
}  // namespace

template <class T>
void avg_pool2d_forward(T* y, const T* x, const Pool2dParams& p) {
  if constexpr (std::is_same_v<T, float>)
    if (DK_TRY_FAST_IF(avg_pool2d_forward_f32, y, x, p)) return;
  const int64_t planes = p.N * p.C, HW = p.H * p.W, OHW = p.OH * p.OW;
  parallel_for(planes, 1, [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      const T* xp = x + q * HW;
      T* yp = y + q * OHW;
      for (int64_t oh = 0; oh < p.OH; ++oh) {
        for (int64_t ow = 0; ow < p.OW; ++ow) {
          const AvgWindow a = avg_window(p, oh, ow);
          T s = 0;
          for (int64_t ih = a.hs; ih < a.he; ++ih) {
            T r = 0;
            for (int64_t iw = a.ws; iw < a.we; ++iw) r += xp[ih * p.W + iw];
            s += r;
          }
          yp[oh * p.OW + ow] = a.divisor > 0 ? s / static_cast<T>(a.divisor) : T(0);
        }
      }
    }
  });
}

template <class T>
void avg_pool2d_backward(T* dx, const T* dy, const Pool2dParams& p) {
  if constexpr (std::is_same_v<T, float>)
    if (DK_TRY_FAST_IF(avg_pool2d_backward_f32, dx, dy, p)) return;
  const int64_t planes = p.N * p.C, HW = p.H * p.W, OHW = p.OH * p.OW;
  // g of every output, then a gather per input element: the outputs whose window
  // [o*s - pad, o*s - pad + k) holds input i are o in [ceil((i + pad - k + 1) / s), (i + pad) / s]
  // within [0, O) (clipping a window to the padded input never removes a real row)
  parallel_for(planes, 1, [&](int64_t q0, int64_t q1) {
    std::vector<T> g(OHW);
    for (int64_t q = q0; q < q1; ++q) {
      T* dxp = dx + q * HW;
      const T* dyp = dy + q * OHW;
      for (int64_t oh = 0; oh < p.OH; ++oh)
        for (int64_t ow = 0; ow < p.OW; ++ow) {
          const AvgWindow a = avg_window(p, oh, ow);
          g[oh * p.OW + ow] = a.divisor > 0 ? dyp[oh * p.OW + ow] / static_cast<T>(a.divisor) : T(0);
        }
      for (int64_t ih = 0; ih < p.H; ++ih) {
        const int64_t th = ih + p.ph - p.kh + 1;
        const int64_t oh0 = th <= 0 ? 0 : (th + p.sh - 1) / p.sh;
        const int64_t oh1 = std::min((ih + p.ph) / p.sh, p.OH - 1);
        for (int64_t iw = 0; iw < p.W; ++iw) {
          const int64_t tw = iw + p.pw - p.kw + 1;
          const int64_t ow0 = tw <= 0 ? 0 : (tw + p.sw - 1) / p.sw;
          const int64_t ow1 = std::min((iw + p.pw) / p.sw, p.OW - 1);
          T s = 0;
          for (int64_t oh = oh0; oh <= oh1; ++oh) {
            T r = 0;
            for (int64_t ow = ow0; ow <= ow1; ++ow) r += g[oh * p.OW + ow];
            s += r;
          }
          dxp[ih * p.W + iw] = s;
        }
      }
    }
  });
}

#define DK_INSTANTIATE(T)                                                                   \
  template void max_pool2d_forward<T>(T*, int64_t*, const T*, const Pool2dParams&);         \
  template void max_pool2d_backward<T>(T*, const T*, const int64_t*, const Pool2dParams&);  \
  template void avg_pool2d_forward<T>(T*, const T*, const Pool2dParams&);                   \
  template void avg_pool2d_backward<T>(T*, const T*, const Pool2dParams&);
DK_INSTANTIATE(float)
DK_INSTANTIATE(double)
#undef DK_INSTANTIATE

}  // namespace dk::cpu
