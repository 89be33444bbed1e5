// kernels_cuda.h: deepkern's internal CUDA API, the seam between the CUDA kernels and
// bindings/module_cuda.cpp. It mirrors csrc/kernels.h: raw (device) pointers plus the same
// params structs, outputs first, with the stream to run on last.
//
// float32 only. Every function queues its kernels on `stream` and returns without waiting
// (the one exception, max_pool2d_backward, reads back an error flag and so synchronizes).
// The caller has made the arrays' device current (DeviceGuard). Errors: std::invalid_argument
// for bad arguments (-> ValueError), std::runtime_error for CUDA errors (-> RuntimeError).
//
// Determinism: no kernel adds floats atomically into a result. Reductions are split into
// chunks whose boundaries depend only on the problem size, each chunk is reduced in a fixed
// order, and the chunk partials are folded in chunk order: two runs give the same bits.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "common/fractional.h"
#include "common/params.h"
#include "cpu/optim.h"  // OptimKind, OptimTensor and the row layouts, shared with the CPU

namespace dk::cuda {

// ---- conv2d.cu           x (N,C,H,W)  w (OC,C/G,KH,KW)  b (OC) or null  y (N,OC,OH,OW)
void conv2d_forward(float* y, const float* x, const float* w, const float* b,
                    const Conv2dParams& p, cudaStream_t stream);
void conv2d_backward_input(float* dx, const float* dy, const float* w, const Conv2dParams& p,
                           cudaStream_t stream);
// db may be null (no bias)
void conv2d_backward_weight(float* dw, float* db, const float* dy, const float* x,
                            const Conv2dParams& p, cudaStream_t stream);

// ---- pool2d.cu           x (N,C,H,W)  y, idx (N,C,OH,OW); idx = flat index into the H*W plane
void max_pool2d_forward(float* y, int64_t* idx, const float* x, const Pool2dParams& p,
                        cudaStream_t stream);
// Throws std::invalid_argument if an index lies outside its plane (after the kernel, which
// skips such entries; dx is then incomplete: callers pass a fresh buffer). Synchronizes.
void max_pool2d_backward(float* dx, const float* dy, const int64_t* idx, const Pool2dParams& p,
                         cudaStream_t stream);
void avg_pool2d_forward(float* y, const float* x, const Pool2dParams& p, cudaStream_t stream);
void avg_pool2d_backward(float* dx, const float* dy, const Pool2dParams& p, cudaStream_t stream);

// ---- fractional_pool2d.cu  samples (N,C,2) in [0,1) on the device; idx as max pooling's
void fractional_max_pool2d_forward(float* y, int64_t* idx, const float* x, const float* samples,
                                   const FractionalPool2dParams& p, cudaStream_t stream);

// ---- batch_norm.cu       x (N,C,HW); per-channel arrays (C); w, b, running stats may be null
void batch_norm_forward_train(float* y, float* save_mean, float* save_invstd,
                              float* running_mean, float* running_var, const float* x,
                              const float* w, const float* b, const BatchNormParams& p,
                              cudaStream_t stream);
void batch_norm_forward_eval(float* y, float* save_mean, float* save_invstd, const float* x,
                             const float* w, const float* b, const float* running_mean,
                             const float* running_var, const BatchNormParams& p,
                             cudaStream_t stream);
// (p.relu: y = relu(batch_norm(x)), batch_norm_relu.) dw, db may be null (no affine weight);
// relu_y (batch_norm_relu's output, or null): the gradient is relu_backward(dy, relu_y).
void batch_norm_backward(float* dx, float* dw, float* db, const float* dy, const float* x,
                         const float* w, const float* save_mean, const float* save_invstd,
                         bool training, const BatchNormParams& p, const float* relu_y,
                         cudaStream_t stream);

// ---- dropout.cu          any shape, n elements; mask uint8 0/1, bit-identical to the CPU's
void dropout_forward(float* y, uint8_t* mask, const float* x, int64_t n, double p, uint64_t seed,
                     cudaStream_t stream);
void dropout_backward(float* dx, const float* dy, const uint8_t* mask, int64_t n, double p,
                      cudaStream_t stream);
void dropout_mask(uint8_t* mask, int64_t n, double p, uint64_t seed, cudaStream_t stream);

// ---- activation.cu       any shape, n elements
void relu_forward(float* y, const float* x, int64_t n, cudaStream_t stream);
void relu_backward(float* dx, const float* dy, const float* y, int64_t n, cudaStream_t stream);

// ---- optim.cu           multi-tensor passes over `count` float32 tensors (one launch per up to
// 36 tensors; empty tensors are skipped). The optimizer rows are the CPU's (cpu/optim.h), and
// each element is computed with the same IEEE operations as the CPU's FMA builds.
void optim_step(cpu::OptimKind kind, const cpu::OptimTensor<float>* tensors, int64_t count,
                cudaStream_t stream);
// avg[k] <- decay * avg[k] + (1 - decay) * x[k]
void ema_update(float* const* avg, const float* const* x, const int64_t* n, int64_t count, double decay,
                cudaStream_t stream);
// x[k] *= s (s rounded to float once)
void multi_scale(float* const* x, const int64_t* n, int64_t count, double s, cudaStream_t stream);
// dst[k] <- src[k]
void multi_copy(float* const* dst, const float* const* src, const int64_t* n, int64_t count,
                cudaStream_t stream);
// The reduction under a p-norm of all elements (sum x^2 for p = 2, max |x| for inf, ...), in
// double, deterministic (per-chunk partials folded in a fixed order). Synchronizes: the result
// comes back to the host.
double multi_norm_reduce(const float* const* x, const int64_t* n, int64_t count, double p,
                         cudaStream_t stream);

// ---- calibrate.cu       the GPU's limits for deepkern bench (each synchronizes)
// Times (seconds) of `repeats` device-to-device copies of `bytes` bytes (cudaMemcpyAsync).
std::vector<double> copy_times(int64_t bytes, int repeats);
// Times (seconds) of `repeats` runs of a kernel doing `flops_out` float32 FMA flops (2 per FMA).
std::vector<double> fma_times(int repeats, double* flops_out);

}  // namespace dk::cuda
