// layers_fast_api.h: the entry points of layers_fast.h (float32, one copy per SIMD level) and
// the run-time choice among them. activation.cpp, dropout.cpp, pool2d.cpp and batch_norm.cpp
// call these for float32 and keep their portable loops for float64 and CPUs without AVX2.
#pragma once
#include <cstdint>

#include "common/cpu_features.h"
#include "common/params.h"

namespace dk::cpu {

// Batch norm's per-channel step between its two passes (batch_norm.cpp): from the channel's
// two sums, the three floats of the element-wise pass (see layers_fast.h).
struct BnChannelStep {
  void (*fn)(void* ctx, int64_t c, double sum_a, double sum_b, float coef[3]);
  void* ctx;
};

#define DK_LAYERS_FAST_DECL(ns)                                                                  \
  namespace ns {                                                                                 \
  void relu_forward_f32(float* y, const float* x, int64_t n);                                    \
  void relu_backward_f32(float* dx, const float* dy, const float* y, int64_t n);                 \
  void dropout_mask_f32(uint8_t* mask, int64_t n, uint32_t thresh, uint64_t seed,                \
                        uint64_t first);                                                         \
  void dropout_forward_f32(float* y, uint8_t* mask, const float* x, int64_t n, uint32_t thresh,  \
                           uint64_t seed, float scale);                                          \
  void dropout_backward_f32(float* dx, const float* dy, const uint8_t* mask, int64_t n,          \
                            float scale);                                                        \
  /* true: every output written; false: the caller runs its generic code over all outputs */   \
  bool max_pool2d_forward_f32(float* y, int64_t* idx, const float* x, const Pool2dParams& p);    \
  bool max_pool2d_backward_f32(float* dx, const float* dy, const int64_t* idx,                  \
                               const Pool2dParams& p);                                           \
  bool avg_pool2d_forward_f32(float* y, const float* x, const Pool2dParams& p);                  \
  bool avg_pool2d_backward_f32(float* dx, const float* dy, const Pool2dParams& p);               \
  void batch_norm_train_f32(float* y, const float* x, const BatchNormParams& p, const float* K,  \
                            BnChannelStep step);                                                 \
  void batch_norm_affine_f32(float* y, const float* x, const BatchNormParams& p,                 \
                             const float* mean, const float* scale, const float* shift);         \
  void batch_norm_backward_f32(float* dx, const float* dy, const float* x,                       \
                               const BatchNormParams& p, const float* mean, bool eval,           \
                               BnChannelStep step, const float* relu_y);                         \
  }
#ifdef DK_HAVE_X86_VARIANTS
DK_LAYERS_FAST_DECL(avx2)
DK_LAYERS_FAST_DECL(avx512)
#endif
#undef DK_LAYERS_FAST_DECL

// Calling them from the op files:
//   DK_TRY_FAST(fn, args...)     runs fn of the active SIMD level and gives true, or gives false
//                                (nothing run) on CPUs without AVX2;
//   DK_TRY_FAST_IF(fn, args...)  the same for the kernels that return false for shapes they
//                                do not take (then nothing was written).
// In builds without x86 variants both are `false` and their arguments are not compiled.
#ifdef DK_HAVE_X86_VARIANTS
inline bool has_fast_layers() { return active_isa() != Isa::scalar; }
#define DK_FAST(fn) \
  (::dk::active_isa() == ::dk::Isa::avx512 ? &::dk::cpu::avx512::fn : &::dk::cpu::avx2::fn)
#define DK_TRY_FAST(fn, ...) (::dk::cpu::has_fast_layers() ? (DK_FAST(fn)(__VA_ARGS__), true) : false)
#define DK_TRY_FAST_IF(fn, ...) (::dk::cpu::has_fast_layers() && DK_FAST(fn)(__VA_ARGS__))
#else
inline bool has_fast_layers() { return false; }
#define DK_TRY_FAST(fn, ...) false
#define DK_TRY_FAST_IF(fn, ...) false
#endif

}  // namespace dk::cpu
