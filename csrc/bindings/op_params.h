// op_params.h: the op parameter structs built from array shapes, with the checks both
// bindings (_C's bind_layers.cpp over NumPy arrays, _cuda's module_cuda.cpp over CUDA arrays)
// make before a kernel may trust them. Shapes are plain vectors, so the two share one copy.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <utility>
#include <vector>

#include "common/check.h"
#include "common/params.h"

namespace dk::bind {

using Shape = std::vector<int64_t>;
using Pair = std::pair<int64_t, int64_t>;

// Window arguments are bounded as deepkern.functional bounds them (_validate.MAX_ARG), so the
// int64 arithmetic of window_out_size (in + 2p - d(k-1) - 1) cannot overflow whatever a direct
// caller of a binding passes (UBSan found 2**62 * 2 there).
constexpr int64_t kMaxArg = (int64_t(1) << 31) - 1;

inline bool all_at_most_max(std::initializer_list<int64_t> vs) {
  for (int64_t v : vs)
    if (v > kMaxArg) return false;
  return true;
}

inline Conv2dParams conv_params(const Shape& x, const Shape& w, const Shape& y, Pair stride,
                                Pair padding, Pair dilation, int64_t groups) {
  DK_CHECK(x.size() == 4 && w.size() == 4 && y.size() == 4, "conv2d: x, weight, y must be 4-D");
  Conv2dParams p{};
  p.N = x[0]; p.C = x[1]; p.H = x[2]; p.W = x[3];
  p.OC = w[0]; p.KH = w[2]; p.KW = w[3];
  p.OH = y[2]; p.OW = y[3];
  p.sh = stride.first; p.sw = stride.second;
  p.ph = padding.first; p.pw = padding.second;
  p.dh = dilation.first; p.dw = dilation.second;
  p.G = groups;
  DK_CHECK(p.sh > 0 && p.sw > 0 && p.dh > 0 && p.dw > 0 && p.ph >= 0 && p.pw >= 0 && p.G > 0,
           "conv2d: invalid stride/padding/dilation/groups");
  DK_CHECK(all_at_most_max({p.sh, p.sw, p.ph, p.pw, p.dh, p.dw, p.G, p.KH, p.KW}),
           "conv2d: stride/padding/dilation/groups/kernel size above 2**31-1");
  DK_CHECK(p.C % p.G == 0 && p.OC % p.G == 0 && w[1] * p.G == p.C,
           "conv2d: channels do not match groups");
  DK_CHECK(y[0] == p.N && y[1] == p.OC, "conv2d: y has the wrong shape");
  DK_CHECK(p.OH == window_out_size(p.H, p.KH, p.sh, p.ph, p.dh, false) &&
               p.OW == window_out_size(p.W, p.KW, p.sw, p.pw, p.dw, false) && p.OH > 0 && p.OW > 0,
           "conv2d: output size does not match the arguments");
  return p;
}

inline Pool2dParams pool_params(const Shape& x, const Shape& y, Pair k, Pair s, Pair pad, Pair d,
                                bool ceil_mode, bool count_include_pad) {
  DK_CHECK(x.size() == 4 && y.size() == 4, "pool2d: x and y must be 4-D");
  Pool2dParams p{};
  p.N = x[0]; p.C = x[1]; p.H = x[2]; p.W = x[3];
  p.OH = y[2]; p.OW = y[3];
  p.kh = k.first; p.kw = k.second; p.sh = s.first; p.sw = s.second;
  p.ph = pad.first; p.pw = pad.second; p.dh = d.first; p.dw = d.second;
  p.count_include_pad = count_include_pad;
  DK_CHECK(p.kh > 0 && p.kw > 0 && p.sh > 0 && p.sw > 0 && p.dh > 0 && p.dw > 0 && p.ph >= 0 &&
               p.pw >= 0 && p.ph <= p.kh / 2 && p.pw <= p.kw / 2,
           "pool2d: invalid kernel/stride/padding/dilation");
  DK_CHECK(all_at_most_max({p.kh, p.kw, p.sh, p.sw, p.ph, p.pw, p.dh, p.dw}),
           "pool2d: kernel/stride/padding/dilation above 2**31-1");
  DK_CHECK(p.H > 0 && p.W > 0, "pool2d: empty input plane");
  DK_CHECK(y[0] == p.N && y[1] == p.C &&
               p.OH == window_out_size(p.H, p.kh, p.sh, p.ph, p.dh, ceil_mode) &&
               p.OW == window_out_size(p.W, p.kw, p.sw, p.pw, p.dw, ceil_mode) && p.OH > 0 &&
               p.OW > 0,
           "pool2d: output shape does not match the arguments");
  return p;
}

// max_pool2d_backward gets no window geometry: only the sizes of dx (N, C, H, W) and dy.
inline Pool2dParams pool_backward_sizes(const Shape& dx, const Shape& dy) {
  DK_CHECK(dx.size() == 4 && dy.size() == 4, "max_pool2d_backward: 4-D arrays expected");
  DK_CHECK(dx[0] == dy[0] && dx[1] == dy[1],
           "max_pool2d_backward: grad_x and grad_out disagree on (N, C)");
  Pool2dParams p{};
  p.N = dx[0]; p.C = dx[1]; p.H = dx[2]; p.W = dx[3];
  p.OH = dy[2]; p.OW = dy[3];
  // The indices carry all the scatter needs; the window geometry is a hint for the CPU's fast
  // paths (cpu/layers_fast.h), which take 2x2 windows at stride 2 when the input tiles into
  // them exactly, check every index against its own window, and leave any plane with an index
  // elsewhere to the generic scatter. Windows that tile are disjoint, so an accepted set of
  // indices has no two on one element: the fast paths' "dx = dy at the index, 0 elsewhere" is
  // the scatter-add, whatever window the forward used. (Without the hint no backward ever
  // took them: every call zeroed dx and scattered element by element.)
  if (p.H == 2 * p.OH && p.W == 2 * p.OW) {
    p.kh = p.kw = p.sh = p.sw = 2;
    p.dh = p.dw = 1;
  }
  return p;
}

inline BatchNormParams bn_params(const Shape& x, double momentum, double eps) {
  DK_CHECK(x.size() == 2 || x.size() == 4, "batch_norm: x must be 2-D or 4-D");
  BatchNormParams p{};
  p.N = x[0];
  p.C = x[1];
  p.HW = x.size() == 4 ? x[2] * x[3] : 1;
  p.momentum = momentum;
  p.eps = eps;
  DK_CHECK(eps > 0, "batch_norm: eps must be positive");
  return p;
}

}  // namespace dk::bind
