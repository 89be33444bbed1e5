// kernels.h: deepkern's internal C++ API, the seam between kernels and bindings.
//
// Raw pointers plus a params struct, outputs first (llm.c's order). No pybind11, no Python
// types: the bindings (csrc/bindings/) check arrays and release the GIL, the kernels here
// compute. Every kernel is instantiated for float and double, parallel over the threads
// set by dk::set_num_threads, and bitwise deterministic for any thread count.
#pragma once
#include <cstdint>

#include "common/fractional.h"  // FractionalPool2dParams
#include "common/params.h"

namespace dk::cpu {

// ---- conv2d.cpp          x (N,C,H,W)  w (OC,C/G,KH,KW)  b (OC) or null  y (N,OC,OH,OW)
template <class T> void conv2d_forward(T* y, const T* x, const T* w, const T* b, const Conv2dParams& p);
// relu(conv2d_forward): the ReLU applied as each output tile is stored (deepkern extension)
template <class T> void conv2d_relu_forward(T* y, const T* x, const T* w, const T* b, const Conv2dParams& p);
template <class T> void conv2d_backward_input(T* dx, const T* dy, const T* w, const Conv2dParams& p);
// db may be null (no bias)
template <class T> void conv2d_backward_weight(T* dw, T* db, const T* dy, const T* x, const Conv2dParams& p);

// ---- pool2d.cpp          x (N,C,H,W)  y, idx (N,C,OH,OW); idx = flat index into the H*W plane
template <class T> void max_pool2d_forward(T* y, int64_t* idx, const T* x, const Pool2dParams& p);
// Throws std::invalid_argument if an index lies outside its plane (dx is then garbage:
// callers pass a fresh buffer).
template <class T> void max_pool2d_backward(T* dx, const T* dy, const int64_t* idx, const Pool2dParams& p);
template <class T> void avg_pool2d_forward(T* y, const T* x, const Pool2dParams& p);
template <class T> void avg_pool2d_backward(T* dx, const T* dy, const Pool2dParams& p);

// ---- fractional_pool2d.cpp   x (N,C,H,W)  samples (N,C,2) in [0,1): [columns, rows] per plane
//      y, idx (N,C,OH,OW), idx as max pooling's; the backward is max_pool2d_backward.
template <class T>
void fractional_max_pool2d_forward(T* y, int64_t* idx, const T* x, const T* samples,
                                   const FractionalPool2dParams& p);
// The O region starts along one axis of length L for sample u (exposed for the tests).
template <class T> void fractional_region_starts(int64_t* start, T u, int64_t L, int64_t O, int64_t K);

// ---- batch_norm.cpp      x (N,C,HW); per-channel arrays (C); w, b, running stats may be null
template <class T>
void batch_norm_forward_train(T* y, T* save_mean, T* save_invstd, T* running_mean, T* running_var,
                              const T* x, const T* w, const T* b, const BatchNormParams& p);
template <class T>
void batch_norm_forward_eval(T* y, T* save_mean, T* save_invstd, const T* x, const T* w,
                             const T* b, const T* running_mean, const T* running_var,
                             const BatchNormParams& p);
// dw, db may be null (no affine weight). relu_y (the fused batch_norm_relu's output, or
// null): the gradient is relu_backward(dy, relu_y) instead of dy, applied as it is read.
template <class T>
void batch_norm_backward(T* dx, T* dw, T* db, const T* dy, const T* x, const T* w,
                         const T* save_mean, const T* save_invstd, bool training,
                         const BatchNormParams& p, const T* relu_y = nullptr);

// ---- dropout.cpp         any shape, n elements; mask uint8 0/1
template <class T> void dropout_forward(T* y, uint8_t* mask, const T* x, int64_t n, double p, uint64_t seed);
template <class T> void dropout_backward(T* dx, const T* dy, const uint8_t* mask, int64_t n, double p);
// mask[k] = the keep bit of element first + k (first a multiple of 4; 0 for a whole mask)
void dropout_mask(uint8_t* mask, int64_t n, double p, uint64_t seed, uint64_t first = 0);

// ---- activation.cpp      any shape, n elements
template <class T> void relu_forward(T* y, const T* x, int64_t n);
template <class T> void relu_backward(T* dx, const T* dy, const T* y, int64_t n);

// ---- loss.cpp            logits (N, C), targets (N,) int64; grad (N, C) written
// false (and nothing written) when a target is outside [0, C)
template <class T>
bool cross_entropy_indices(T* grad, double* loss, const T* z, const int64_t* y, int64_t N,
                           int64_t C, double eps, double scale);

}  // namespace dk::cpu
