// optim.h: fused optimizer steps, EMA, and multi-tensor norms/scales over many tensors at once.
//
// One call updates every parameter tensor of a step: the Python layer gathers the tensors
// (param, grad, state arrays, optional EMA) and one row of per-tensor scalars each, and the
// kernel walks all of them in a single pass over memory, reading each element of each
// stream once and writing each updated value once. See csrc/cpu/optim_impl.h for the loops
// and python/deepkern/optim/reference.py for the same updates in NumPy.
//
// Everything here is element-wise except multi_norm, so the work split cannot change a
// result: an element always runs through the same vector instructions (the ragged end of a
// range goes through a one-vector stack buffer, not a scalar loop). multi_norm folds
// per-block partials of a fixed block list in block order. Both are therefore bitwise
// identical for any thread count.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace dk::cpu {

enum class OptimKind : int { sgd = 0, adagrad = 1, adadelta = 2, rmsprop = 3, adam = 4 };
constexpr int kOptimKinds = 5;

// The per-tensor scalars each kind reads, in the order of its row. One list drives both the
// C++ enum below and the names the bindings export, so Python builds rows by name.
//   grad_scale  multiplies the gradient as it is loaded (a clip coefficient; negated for
//               maximize), so clipping costs no extra pass over the gradients
//   ema_decay   decay of the EMA updated in the same pass (read only when an EMA is given)
//   flags (nesterov, first_step, centered, amsgrad, ...) are 0.0 or 1.0
#define DK_SGD_HYPER(X) X(grad_scale) X(ema_decay) X(lr) X(weight_decay) X(momentum) \
  X(one_minus_dampening) X(nesterov) X(first_step)
#define DK_ADAGRAD_HYPER(X) X(grad_scale) X(ema_decay) X(clr) X(weight_decay) X(eps)
#define DK_ADADELTA_HYPER(X) X(grad_scale) X(ema_decay) X(lr) X(weight_decay) X(rho) \
  X(one_minus_rho) X(eps)
#define DK_RMSPROP_HYPER(X) X(grad_scale) X(ema_decay) X(lr) X(weight_decay) X(alpha) \
  X(one_minus_alpha) X(eps) X(momentum) X(centered)
#define DK_ADAM_HYPER(X) X(grad_scale) X(ema_decay) X(step_size) X(bias_correction2_sqrt) \
  X(weight_decay) X(param_scale) X(beta1) X(one_minus_beta1) X(beta2) X(one_minus_beta2) \
  X(eps) X(amsgrad)

#define DK_HYPER_ENUM(name) name,
namespace hyper {
namespace sgd { enum : int { DK_SGD_HYPER(DK_HYPER_ENUM) count }; }
namespace adagrad { enum : int { DK_ADAGRAD_HYPER(DK_HYPER_ENUM) count }; }
namespace adadelta { enum : int { DK_ADADELTA_HYPER(DK_HYPER_ENUM) count }; }
namespace rmsprop { enum : int { DK_RMSPROP_HYPER(DK_HYPER_ENUM) count }; }
namespace adam { enum : int { DK_ADAM_HYPER(DK_HYPER_ENUM) count }; }
}  // namespace hyper
#undef DK_HYPER_ENUM

// Names of the row entries of `kind`, in order (what the bindings export).
const std::vector<std::string>& optim_hyper_names(OptimKind kind);

// The state arrays each kind uses, in the order of OptimTensor::state:
//   sgd       momentum_buffer                      (null: no momentum)
//   adagrad   sum
//   adadelta  square_avg, acc_delta
//   rmsprop   square_avg, momentum_buffer, grad_avg (null where momentum == 0 / not centered)
//   adam      exp_avg, exp_avg_sq, max_exp_avg_sq  (null unless amsgrad)
//
// One parameter tensor of a step: n elements behind every non-null pointer, C-contiguous,
// all of one dtype, no two written arrays overlapping and no written array overlapping grad.
template <class T>
struct OptimTensor {
  T* param;             // updated in place
  const T* grad;        // read only, never written
  T* state[3];          // see the table above
  T* ema;               // null, or an average of param updated in the same pass
  int64_t n;
  const double* hyper;  // this tensor's row (computed in double by the caller)
};

// One fused step over `count` tensors (one OpenMP region for all of them).
template <class T>
void optim_step(OptimKind kind, const OptimTensor<T>* tensors, int64_t count);

// avg[k] = decay * avg[k] + (1 - decay) * x[k], elementwise, for k < count.
template <class T>
void ema_update(T* const* avg, const T* const* x, const int64_t* n, int64_t count, double decay);

// x[k] *= s for k < count (in the dtype: s is rounded to T once).
template <class T>
void multi_scale(T* const* x, const int64_t* n, int64_t count, double s);

// The reduction under a p-norm of all elements of all tensors, accumulated in double:
//   p == 2: sum x^2;  p == 1: sum |x|;  p == +inf: max |x|;  p == -inf: min |x|;
//   p == 0: number of nonzeros;  other p > 0: sum |x|^p.   NaN anywhere gives NaN.
// The caller takes the root. Deterministic: fixed blocks, partials folded in block order.
template <class T>
double multi_norm_reduce(const T* const* x, const int64_t* n, int64_t count, double p);

// The explicit instantiations of the functions above for one T (used once per namespace: the
// dispatcher in optim.cpp and each ISA copy of optim_impl.h).
#define DK_OPTIM_INSTANTIATE(T)                                                                  \
  template void optim_step<T>(OptimKind, const OptimTensor<T>*, int64_t);                        \
  template void ema_update<T>(T* const*, const T* const*, const int64_t*, int64_t, double);      \
  template void multi_scale<T>(T* const*, const int64_t*, int64_t, double);                     \
  template double multi_norm_reduce<T>(const T* const*, const int64_t*, int64_t, double);

}  // namespace dk::cpu
