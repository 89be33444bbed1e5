// params.h: the plain structs that describe one op call, shared by the CPU and CUDA kernels.
//
// Shape legend (used in every kernel file):
//   N batch, C input channels, H W input height/width, OC output channels,
//   KH KW kernel size, OH OW output size, G groups.
// All sizes and offsets are int64_t: offsets are computed in 64 bits from the first
// multiplication (see RELIABILITY.md on int32 index overflow).
#pragma once
#include <cstdint>

namespace dk {

struct Conv2dParams {
  int64_t N, C, H, W;       // input
  int64_t OC, KH, KW;       // weight is (OC, C / G, KH, KW)
  int64_t OH, OW;           // output
  int64_t sh, sw;           // stride
  int64_t ph, pw;           // zero padding
  int64_t dh, dw;           // dilation
  int64_t G;                // groups
  int64_t cpg() const { return C / G; }    // input channels per group
  int64_t ocpg() const { return OC / G; }  // output channels per group
};

struct Pool2dParams {
  int64_t N, C, H, W;  // input (N*C planes)
  int64_t OH, OW;      // output
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
  bool count_include_pad;  // avg pooling only
};

struct BatchNormParams {
  int64_t N, C, HW;  // x viewed as (N, C, HW); HW = 1 for 2-D input
  double momentum, eps;
  bool relu = false;  // forward: y = relu(batch_norm(x)) in the same pass (batch_norm_relu)
};

// Output size of a convolution or pooling window along one axis (PyTorch's formula).
// ceil_mode rounds up, but a last window that would start in the right padding is dropped.
inline int64_t window_out_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d,
                               bool ceil_mode) {
  const int64_t span = in + 2 * p - d * (k - 1) - 1;
  if (span < 0) return 0;
  int64_t out = (span + (ceil_mode ? s - 1 : 0)) / s + 1;
  if (ceil_mode && (out - 1) * s >= in + p) --out;
  return out;
}

}  // namespace dk
