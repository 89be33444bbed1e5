// conv2d_entry.h: the entry points of the float32 convolution for one SIMD level (declared
// in conv2d_algo.h): a switch on the algorithm conv2d.cpp chose. Included last by
// conv2d_avx512.cpp and conv2d_avx2.cpp.
#pragma once
#include "cpu/conv2d_depthwise.h"
#include "cpu/conv2d_fast.h"
#include "cpu/conv2d_winograd.h"

namespace dk::cpu::DK_ISA_NS {

// ---------------------------------------------------------------------------------------------
// Entry points (declared in conv2d_algo.h; conv2d.cpp chose `algo`).

void conv2d_forward_f32(float* y, const float* x, const float* w, const float* b,
                        const Conv2dParams& p, ConvAlgo algo, bool relu) {
  switch (algo) {
    case ConvAlgo::flat: return forward_flat(y, x, w, b, p, relu);
    case ConvAlgo::winograd: return forward_winograd(y, x, w, b, p, relu);
    case ConvAlgo::depthwise:  // (conv2d.cpp applies a ReLU after it: no epilogue here)
      if (relu) throw std::logic_error("conv2d_forward_f32: no fused relu for depthwise");
      return forward_depthwise(y, x, w, b, p);
    default: throw std::logic_error("conv2d_forward_f32: algorithm not available");
  }
}

void conv2d_backward_input_f32(float* dx, const float* dy, const float* w, const Conv2dParams& p,
                               ConvAlgo algo) {
  switch (algo) {
    case ConvAlgo::flat: return backward_input_flat(dx, dy, w, p);
    case ConvAlgo::winograd: return backward_input_winograd(dx, dy, w, p);
    case ConvAlgo::depthwise: return backward_input_depthwise(dx, dy, w, p);
    default: throw std::logic_error("conv2d_backward_input_f32: algorithm not available");
  }
}

void conv2d_backward_weight_f32(float* dw, float* db, const float* dy, const float* x,
                                const Conv2dParams& p, ConvAlgo algo) {
  switch (algo) {
    case ConvAlgo::direct: return backward_weight_direct(dw, db, dy, x, p);
    case ConvAlgo::depthwise: return backward_weight_depthwise(dw, db, dy, x, p);
    case ConvAlgo::winograd: return backward_weight_winograd(dw, db, dy, x, p);
    default: throw std::logic_error("conv2d_backward_weight_f32: algorithm not available");
  }
}

}  // namespace dk::cpu::DK_ISA_NS
