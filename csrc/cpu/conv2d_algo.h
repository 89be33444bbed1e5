// conv2d_algo.h: which convolution algorithm runs for a given call, and the per-ISA entry
// points of the fast float32 kernels (conv2d_fast.h, compiled once per SIMD level).
#pragma once
#include <cstdint>

#include "common/cpu_features.h"
#include "common/params.h"

namespace dk::cpu {

enum class ConvAlgo {
  portable,   // im2col + plain loop nests (conv2d.cpp): float64, CPUs without AVX2
  flat,       // implicit-im2col GEMM on the NCHW planes, stride 1 and OW == W (conv2d_fast.h)
  direct,     // backward weight: outer products over pixels from a zero-padded input copy
  depthwise,  // groups == C: a vectorized stencil per plane (conv2d_fast.h)
  winograd,   // 3x3 stride 1: Winograd F(2x2, 3x3), 16 GEMMs on transformed tiles
};

enum class ConvDir { forward, backward_input, backward_weight };

// The stride-1 input gradient is the convolution of dy with the flipped, transposed weights,
// padded by d*(k-1) - p: its parameters as a forward convolution (dy -> dx).
inline Conv2dParams transposed_params(const Conv2dParams& p) {
  Conv2dParams q = p;
  q.C = p.OC; q.H = p.OH; q.W = p.OW;
  q.OC = p.C; q.OH = p.H; q.OW = p.W;
  q.ph = p.dh * (p.KH - 1) - p.ph;
  q.pw = p.dw * (p.KW - 1) - p.pw;
  return q;
}

const char* conv_algo_name(ConvAlgo a);

// The one place the algorithm is chosen; see conv2d.cpp for the reasons.
ConvAlgo choose_conv_algo(const Conv2dParams& p, ConvDir dir, Isa isa);

#define DK_CONV_FAST_DECL(ns)                                                                  \
  namespace ns {                                                                               \
  void conv2d_forward_f32(float* y, const float* x, const float* w, const float* b,            \
                          const Conv2dParams& p, ConvAlgo algo, bool relu);                    \
  void conv2d_backward_input_f32(float* dx, const float* dy, const float* w,                   \
                                 const Conv2dParams& p, ConvAlgo algo);                        \
  void conv2d_backward_weight_f32(float* dw, float* db, const float* dy, const float* x,       \
                                  const Conv2dParams& p, ConvAlgo algo);                       \
  }
#ifdef DK_HAVE_X86_VARIANTS
DK_CONV_FAST_DECL(avx2)
DK_CONV_FAST_DECL(avx512)
#endif
#undef DK_CONV_FAST_DECL

}  // namespace dk::cpu
