// activation.cpp: ReLU forward and backward, element-wise over any shape.
//
//   y  = x < 0 ? 0 : x        (NaN propagates, as in PyTorch)
//   dx = y <= 0 ? 0 : dy      (PyTorch's threshold_backward: a NaN y passes dy through)
#include <type_traits>

#include "common/parallel.h"
#include "cpu/layers_fast_api.h"
#include "kernels.h"

namespace dk::cpu {

constexpr int64_t kGrain = 1 << 15;

// float32 on AVX2/AVX-512 CPUs: the vector kernels of layers_fast.h (same results, bit for bit).
template <class T>
void relu_forward(T* y, const T* x, int64_t n) {
  if constexpr (std::is_same_v<T, float>)
    if (DK_TRY_FAST(relu_forward_f32, y, x, n)) return;
  parallel_for(n, kGrain, [&](int64_t b, int64_t e) {
    const T* __restrict xi = x;
    T* __restrict yi = y;
#pragma omp simd
    for (int64_t i = b; i < e; ++i) yi[i] = xi[i] < T(0) ? T(0) : xi[i];
  });
}

template <class T>
void relu_backward(T* dx, const T* dy, const T* y, int64_t n) {
  if constexpr (std::is_same_v<T, float>)
    if (DK_TRY_FAST(relu_backward_f32, dx, dy, y, n)) return;
  parallel_for(n, kGrain, [&](int64_t b, int64_t e) {
    const T* __restrict dyi = dy;
    const T* __restrict yi = y;
    T* __restrict dxi = dx;
#pragma omp simd
    for (int64_t i = b; i < e; ++i) dxi[i] = yi[i] <= T(0) ? T(0) : dyi[i];
  });
}

template void relu_forward<float>(float*, const float*, int64_t);
template void relu_forward<double>(double*, const double*, int64_t);
template void relu_backward<float>(float*, const float*, const float*, int64_t);
template void relu_backward<double>(double*, const double*, const double*, int64_t);

}  // namespace dk::cpu
