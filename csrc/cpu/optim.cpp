// optim.cpp: the portable build of optim_impl.h, the run-time choice among its ISA variants,
// and the row layouts of optim.h.
#include "cpu/optim.h"

#include <stdexcept>

#include "common/cpu_features.h"

#define DK_OPTIM_NS portable
#include "cpu/optim_impl.h"
#undef DK_OPTIM_NS

namespace dk::cpu {

// ---- row layouts (names from the X-macro lists of optim.h)
#define DK_HYPER_NAME(name) #name,
const std::vector<std::string>& optim_hyper_names(OptimKind kind) {
  static const std::vector<std::string> names[kOptimKinds] = {
      {DK_SGD_HYPER(DK_HYPER_NAME)},      {DK_ADAGRAD_HYPER(DK_HYPER_NAME)},
      {DK_ADADELTA_HYPER(DK_HYPER_NAME)}, {DK_RMSPROP_HYPER(DK_HYPER_NAME)},
      {DK_ADAM_HYPER(DK_HYPER_NAME)},
  };
  const int k = static_cast<int>(kind);
  if (k < 0 || k >= kOptimKinds) throw std::invalid_argument("unknown optimizer kind");
  return names[k];
}
#undef DK_HYPER_NAME

// ---- dispatch: the best variant this CPU and build have (DEEPKERN_ISA may lower it)
#ifdef DK_HAVE_X86_VARIANTS
#define DK_OPTIM_DECL(ns)                                                                     \
  namespace ns {                                                                              \
  template <class T> void optim_step(OptimKind, const OptimTensor<T>*, int64_t);             \
  template <class T> void ema_update(T* const*, const T* const*, const int64_t*, int64_t, double); \
  template <class T> void multi_scale(T* const*, const int64_t*, int64_t, double);            \
  template <class T> double multi_norm_reduce(const T* const*, const int64_t*, int64_t, double); \
  }
DK_OPTIM_DECL(avx2)
DK_OPTIM_DECL(avx512)
#undef DK_OPTIM_DECL
#define DK_OPTIM_DISPATCH(fn, ...)                          \
  switch (active_isa()) {                                   \
    case Isa::avx512: return avx512::fn<T>(__VA_ARGS__);    \
    case Isa::avx2: return avx2::fn<T>(__VA_ARGS__);        \
    default: return portable::fn<T>(__VA_ARGS__);           \
  }
#else
#define DK_OPTIM_DISPATCH(fn, ...) return portable::fn<T>(__VA_ARGS__);
#endif

template <class T>
void optim_step(OptimKind kind, const OptimTensor<T>* tensors, int64_t count) {
  DK_OPTIM_DISPATCH(optim_step, kind, tensors, count)
}
template <class T>
void ema_update(T* const* avg, const T* const* x, const int64_t* n, int64_t count, double decay) {
  DK_OPTIM_DISPATCH(ema_update, avg, x, n, count, decay)
}
template <class T>
void multi_scale(T* const* x, const int64_t* n, int64_t count, double s) {
  DK_OPTIM_DISPATCH(multi_scale, x, n, count, s)
}
template <class T>
double multi_norm_reduce(const T* const* x, const int64_t* n, int64_t count, double p) {
  DK_OPTIM_DISPATCH(multi_norm_reduce, x, n, count, p)
}
#undef DK_OPTIM_DISPATCH

DK_OPTIM_INSTANTIATE(float)
DK_OPTIM_INSTANTIATE(double)

}  // namespace dk::cpu
