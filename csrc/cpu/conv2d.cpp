// conv2d.cpp: 2-D convolution (cross-correlation, as in PyTorch), forward and both backward
// passes, as im2col + matrix products.
//
// Shape legend: N batch, C in-channels, H W input, OC out-channels, KH KW kernel,
// OH OW output, G groups, cpg = C/G, ocpg = OC/G, K = cpg*KH*KW (the reduction length of one
// output), P = OH*OW (output pixels of one plane).
//
//   y[n, oc, oh, ow] = b[oc] + sum_{c, kh, kw} w[oc, c, kh, kw]
//                               * x[n, g*cpg + c, oh*sh - ph + kh*dh, ow*sw - pw + kw*dw]
//
// For one sample and group, im2col unrolls the input into col[K, P] (zero where a tap falls
// in the padding), and then
//   forward          y_g[ocpg, P]  = w_g[ocpg, K] . col[K, P]
//   backward input   dcol[K, P]    = w_g^T . dy_g[ocpg, P];   dx = col2im(dcol)
//   backward weight  dw_g[ocpg, K] += dy_g[ocpg, P] . col^T
// deepkern.reference.conv2d is the same computation written with NumPy.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "common/parallel.h"
#include "common/cpu_features.h"
#include "cpu/conv2d_algo.h"
#include "cpu/gemm.h"
#include "kernels.h"

namespace dk::cpu {

namespace {

// A 1x1 convolution with stride 1 and no padding needs no im2col: the input plane is col.
bool is_pointwise(const Conv2dParams& p) {
  return p.KH == 1 && p.KW == 1 && p.sh == 1 && p.sw == 1 && p.ph == 0 && p.pw == 0;
}

// col[K, P] from the cpg channels at xg (one sample, one group).
template <class T>
void im2col(T* __restrict col, const T* __restrict xg, const Conv2dParams& p) {
  const int64_t P = p.OH * p.OW;
  for (int64_t c = 0; c < p.cpg(); ++c) {
    const T* xc = xg + c * p.H * p.W;
    for (int64_t kh = 0; kh < p.KH; ++kh) {
      for (int64_t kw = 0; kw < p.KW; ++kw) {
        T* row = col + ((c * p.KH + kh) * p.KW + kw) * P;
        for (int64_t oh = 0; oh < p.OH; ++oh) {
          const int64_t ih = oh * p.sh - p.ph + kh * p.dh;
          T* out = row + oh * p.OW;
          if (ih < 0 || ih >= p.H) {
            std::memset(out, 0, sizeof(T) * p.OW);
            continue;
          }
          const T* xrow = xc + ih * p.W;
          for (int64_t ow = 0; ow < p.OW; ++ow) {
            const int64_t iw = ow * p.sw - p.pw + kw * p.dw;
            out[ow] = (iw >= 0 && iw < p.W) ? xrow[iw] : T(0);
          }
        }
      }
    }
  }
}

// dxg += col2im(dcol): the adjoint of im2col (scatter-add, serial within a sample).
template <class T>
void col2im_add(T* __restrict dxg, const T* __restrict dcol, const Conv2dParams& p) {
  const int64_t P = p.OH * p.OW;
  for (int64_t c = 0; c < p.cpg(); ++c) {
    T* dxc = dxg + c * p.H * p.W;
    for (int64_t kh = 0; kh < p.KH; ++kh) {
      for (int64_t kw = 0; kw < p.KW; ++kw) {
        const T* row = dcol + ((c * p.KH + kh) * p.KW + kw) * P;
        for (int64_t oh = 0; oh < p.OH; ++oh) {
          const int64_t ih = oh * p.sh - p.ph + kh * p.dh;
          if (ih < 0 || ih >= p.H) continue;
          T* dxrow = dxc + ih * p.W;
          const T* in = row + oh * p.OW;
          for (int64_t ow = 0; ow < p.OW; ++ow) {
            const int64_t iw = ow * p.sw - p.pw + kw * p.dw;
            if (iw >= 0 && iw < p.W) dxrow[iw] += in[ow];
          }
        }
      }
    }
  }
}

// Parallelize over samples n; each chunk of samples owns an im2col workspace.
template <class T>
void portable_forward(T* y, const T* x, const T* w, const T* b, const Conv2dParams& p) {
  const int64_t P = p.OH * p.OW, K = p.cpg() * p.KH * p.KW, ocpg = p.ocpg();
  const bool pointwise = is_pointwise(p);
  parallel_for(p.N, 1, [&](int64_t n0, int64_t n1) {
    std::vector<T> col(pointwise ? 0 : K * P);
    for (int64_t n = n0; n < n1; ++n) {
      for (int64_t g = 0; g < p.G; ++g) {
        const T* xg = x + (n * p.C + g * p.cpg()) * p.H * p.W;
        T* yg = y + (n * p.OC + g * ocpg) * P;
        const T* src = xg;
        if (!pointwise) {
          im2col(col.data(), xg, p);
          src = col.data();
        }
        gemm_nn<T>(ocpg, P, K, w + g * ocpg * K, K, src, P, yg, P, false);
        if (b) {
          for (int64_t o = 0; o < ocpg; ++o) {
            const T bo = b[g * ocpg + o];
            T* yo = yg + o * P;
            for (int64_t i = 0; i < P; ++i) yo[i] += bo;
          }
        }
      }
    }
  });
}

// Parallelize over samples n: each sample's dx is independent.
template <class T>
void portable_backward_input(T* dx, const T* dy, const T* w, const Conv2dParams& p) {
  const int64_t P = p.OH * p.OW, K = p.cpg() * p.KH * p.KW, ocpg = p.ocpg();
  const bool pointwise = is_pointwise(p);
  parallel_for(p.N, 1, [&](int64_t n0, int64_t n1) {
    std::vector<T> dcol(pointwise ? 0 : K * P);
    for (int64_t n = n0; n < n1; ++n) {
      T* dxn = dx + n * p.C * p.H * p.W;
      if (!pointwise) std::memset(dxn, 0, sizeof(T) * p.C * p.H * p.W);
      for (int64_t g = 0; g < p.G; ++g) {
        const T* dyg = dy + (n * p.OC + g * ocpg) * P;
        T* dxg = dxn + g * p.cpg() * p.H * p.W;
        if (pointwise) {
          gemm_tn<T>(K, P, ocpg, w + g * ocpg * K, K, dyg, P, dxg, P, false);
        } else {
          gemm_tn<T>(K, P, ocpg, w + g * ocpg * K, K, dyg, P, dcol.data(), P, false);
          col2im_add(dxg, dcol.data(), p);
        }
      }
    }
  });
}

// Samples are cut into a fixed number of chunks (a function of N only); each chunk sums its
// own partial dw/db, and the partials are added in chunk order: identical for any thread count.
template <class T>
void portable_backward_weight(T* dw, T* db, const T* dy, const T* x, const Conv2dParams& p) {
  const int64_t P = p.OH * p.OW, K = p.cpg() * p.KH * p.KW, ocpg = p.ocpg();
  const int64_t wsize = p.OC * K;
  const bool pointwise = is_pointwise(p);
  std::fill(dw, dw + wsize, T(0));
  if (db) std::fill(db, db + p.OC, T(0));
  if (p.N == 0) return;
  const int64_t nchunks = std::min<int64_t>(p.N, 8);
  const int64_t per = (p.N + nchunks - 1) / nchunks;
  const int64_t nparts = (p.N + per - 1) / per;
  std::vector<T> partial(static_cast<size_t>(nparts * (wsize + p.OC)), T(0));
  parallel_for(nparts, 1, [&](int64_t c0, int64_t c1) {
    std::vector<T> col(pointwise ? 0 : K * P);
    for (int64_t c = c0; c < c1; ++c) {
      T* pw = partial.data() + c * (wsize + p.OC);
      T* pb = pw + wsize;
      for (int64_t n = c * per; n < std::min(p.N, (c + 1) * per); ++n) {
        for (int64_t g = 0; g < p.G; ++g) {
          const T* xg = x + (n * p.C + g * p.cpg()) * p.H * p.W;
          const T* dyg = dy + (n * p.OC + g * ocpg) * P;
          const T* src = xg;
          if (!pointwise) {
            im2col(col.data(), xg, p);
            src = col.data();
          }
          gemm_nt<T>(ocpg, K, P, dyg, P, src, P, pw + g * ocpg * K, K, true);
          for (int64_t o = 0; o < ocpg; ++o) {
            const T* d = dyg + o * P;
            T s = 0;
            for (int64_t i = 0; i < P; ++i) s += d[i];
            pb[g * ocpg + o] += s;
          }
        }
      }
    }
  });
  for (int64_t c = 0; c < nparts; ++c) {
    const T* pw = partial.data() + c * (wsize + p.OC);
    for (int64_t i = 0; i < wsize; ++i) dw[i] += pw[i];
    if (db)
      for (int64_t o = 0; o < p.OC; ++o) db[o] += pw[wsize + o];
  }
}

}  // namespace

const char* conv_algo_name(ConvAlgo a) {
  switch (a) {
    case ConvAlgo::flat: return "flat";
    case ConvAlgo::direct: return "direct";
    case ConvAlgo::depthwise: return "depthwise";
    case ConvAlgo::winograd: return "winograd";
    default: return "portable";
  }
}

// Winograd F(2x2, 3x3) applies to 3x3 kernels, stride 1, dilation 1, one group, padding 1 or 2
// on the width (the tile grid must be as wide as the input's column phases; see conv2d_fast.h).
static bool winograd_applies(const Conv2dParams& p) {
  return p.KH == 3 && p.KW == 3 && p.sh == 1 && p.sw == 1 && p.dh == 1 && p.dw == 1 &&
         p.G == 1 && p.ph <= 2 && p.pw >= 1 && p.pw <= 2;
}

// Winograd puts the 2x2 tiles of one sample in the vector lanes: with few tiles per sample
// (4x4 outputs: 4 tiles) most lanes idle and the 2.25x saving is gone. Worth it when at least
// 60% of the lanes carry a tile (16 lanes for AVX-512, 8 for AVX2).
static bool winograd_fills_lanes(const Conv2dParams& q, Isa isa) {
  const int64_t lanes = isa == Isa::avx512 ? 16 : 8;
  const int64_t tiles = ((q.OH + 1) / 2) * ((q.OW + 1) / 2);
  const int64_t vectors = (tiles + lanes - 1) / lanes;
  return 10 * tiles >= 6 * vectors * lanes;
}

// DEEPKERN_CONV_ALGO=flat|winograd|direct|depthwise in the environment forces that algorithm
// wherever it applies (tests run every path on the same shapes; benchmarks compare them).
static const char* forced_algo() {
  const char* e = std::getenv("DEEPKERN_CONV_ALGO");
  return e && *e ? e : nullptr;
}

// The algorithm for one call: the one place it is chosen (measurements in bench/NOTES.md).
ConvAlgo choose_conv_algo(const Conv2dParams& p, ConvDir dir, Isa isa) {
  // float64 and CPUs without AVX2 + FMA run the portable loops (conv2d_forward<double> etc.
  // never ask); everything else has a vectorized path.
  if (isa == Isa::scalar) return ConvAlgo::portable;
  const char* force = forced_algo();
  auto forced = [&](const char* name) { return force && !std::strcmp(force, name); };
  // depthwise (one input channel per group): no matrix product worth blocking, a stencil per
  // plane at memory speed; the input gradient of a strided one goes to the phase code below
  const bool depthwise = p.cpg() == 1 && p.G > 1;
  if (depthwise && !forced("flat") && !forced("direct") &&
      (dir != ConvDir::backward_input || (p.sh == 1 && p.sw == 1)))
    return ConvAlgo::depthwise;
  // Winograd F(2x2, 3x3): 2.25x fewer multiplies. Its transforms cost a few percent per
  // channel (so >= 16 channels on both sides), and its tiles must fill the vector lanes.
  auto winograd = [&](const Conv2dParams& q) {
    if (!winograd_applies(q) || forced("flat") || forced("direct")) return false;
    return forced("winograd") || (q.C >= 16 && q.OC >= 16 && winograd_fills_lanes(q, isa));
  };
  // the strided input gradient runs one convolution per stride phase (sh*sw of them): when
  // the phases outnumber the taps (a stride larger than the window, or 1x1 with stride) most
  // are empty, and hostile strides (up to 2^31) would mean 2^62 phases; the portable col2im
  // visits the taps only
  if (dir == ConvDir::backward_input && (p.sh > 1 || p.sw > 1) &&
      (p.sh > p.dh * (p.KH - 1) + 1 || p.sw > p.dw * (p.KW - 1) + 1 || p.sh * p.sw > p.KH * p.KW))
    return ConvAlgo::portable;
  switch (dir) {
    case ConvDir::forward:
    case ConvDir::backward_input:
      // (the stride-1 input gradient is a forward convolution of dy: judged as one)
      if (winograd(dir == ConvDir::forward ? p : transposed_params(p))) return ConvAlgo::winograd;
      // implicit-im2col GEMM for every shape: stride 1 "same" convolutions read the planes
      // in place; other strides and widths go through a per-sample phase split
      return ConvAlgo::flat;
    case ConvDir::backward_weight:
      if (winograd(p)) return ConvAlgo::winograd;
      // a stride larger than the window leaves input pixels no tap reads: the padded copy of
      // the input the outer products broadcast from would still read (and page in) all of
      // them; the portable im2col gathers just the taps (1x1 stride-2 layers land here too)
      if (p.sh > p.dh * (p.KH - 1) + 1 || p.sw > p.dw * (p.KW - 1) + 1) return ConvAlgo::portable;
      // the padded copy is only worth it while padding is small next to the image (hostile
      // paddings reach 2^31: the copy would be 2^62 elements, the taps' gather a handful)
      if ((p.H + 2 * p.ph) * (p.W + 2 * p.pw) > 4 * p.H * p.W + 65536) return ConvAlgo::portable;
      // any other stride, padding, dilation: outer products over output pixels, oc vectorized
      return ConvAlgo::direct;
  }
  return ConvAlgo::portable;
}

// RUN_FAST(call): the fast float32 kernel of the active SIMD level (namespaces avx512 / avx2,
// conv2d_algo.h); choose_conv_algo never picks one in builds without x86 variants.
#ifdef DK_HAVE_X86_VARIANTS
#define DK_RUN_FAST(isa, call) ((isa) == Isa::avx512 ? avx512::call : avx2::call)
#else
#define DK_RUN_FAST(isa, call) throw std::logic_error("conv2d: no fast kernels in this build")
#endif

namespace {
// y = conv2d(x, w, b), then ReLU when relu: inside the store of each output tile where the
// algorithm has an epilogue (flat GEMM, Winograd), else as a pass over y (same bits).
template <class T>
void forward_impl(T* y, const T* x, const T* w, const T* b, const Conv2dParams& p, bool relu) {
  if constexpr (std::is_same_v<T, float>) {
    const Isa isa = active_isa();
    const ConvAlgo a = choose_conv_algo(p, ConvDir::forward, isa);
    const bool fused = relu && (a == ConvAlgo::flat || a == ConvAlgo::winograd);
    if (a != ConvAlgo::portable) {
      DK_RUN_FAST(isa, conv2d_forward_f32(y, x, w, b, p, a, fused));
      if (relu && !fused) relu_forward(y, y, p.N * p.OC * p.OH * p.OW);
      return;
    }
  }
  portable_forward(y, x, w, b, p);
  if (relu) relu_forward(y, y, p.N * p.OC * p.OH * p.OW);
}
}  // namespace

template <class T>
void conv2d_forward(T* y, const T* x, const T* w, const T* b, const Conv2dParams& p) {
  forward_impl(y, x, w, b, p, false);
}

template <class T>
void conv2d_relu_forward(T* y, const T* x, const T* w, const T* b, const Conv2dParams& p) {
  forward_impl(y, x, w, b, p, true);
}

template <class T>
void conv2d_backward_input(T* dx, const T* dy, const T* w, const Conv2dParams& p) {
  if constexpr (std::is_same_v<T, float>) {
    const Isa isa = active_isa();
    const ConvAlgo a = choose_conv_algo(p, ConvDir::backward_input, isa);
    if (a != ConvAlgo::portable)
      return DK_RUN_FAST(isa, conv2d_backward_input_f32(dx, dy, w, p, a));
  }
  portable_backward_input(dx, dy, w, p);
}

template <class T>
void conv2d_backward_weight(T* dw, T* db, const T* dy, const T* x, const Conv2dParams& p) {
  if constexpr (std::is_same_v<T, float>) {
    const Isa isa = active_isa();
    const ConvAlgo a = choose_conv_algo(p, ConvDir::backward_weight, isa);
    if (a != ConvAlgo::portable)
      return DK_RUN_FAST(isa, conv2d_backward_weight_f32(dw, db, dy, x, p, a));
  }
  portable_backward_weight(dw, db, dy, x, p);
}

#define DK_INSTANTIATE(T)                                                                  \
  template void conv2d_forward<T>(T*, const T*, const T*, const T*, const Conv2dParams&);  \
  template void conv2d_relu_forward<T>(T*, const T*, const T*, const T*, const Conv2dParams&); \
  template void conv2d_backward_input<T>(T*, const T*, const T*, const Conv2dParams&);     \
  template void conv2d_backward_weight<T>(T*, T*, const T*, const T*, const Conv2dParams&);
DK_INSTANTIATE(float)
DK_INSTANTIATE(double)
#undef DK_INSTANTIATE

}  // namespace dk::cpu
