// loss.cpp: cross-entropy of softmax(logits) against class indices, with label smoothing,
// forward and gradient in one pass over the logits.
//
// For a row z of C logits, target class y and smoothing eps (the math is derived in
// python/deepkern/nn/functional.py):
//
//   m    = max_c z[c]                     (subtracted so every exp() is <= 1)
//   s[c] = z[c] - m,   lse = log(sum_c exp(s[c]))
//   loss = lse - (1 - eps) * s[y] - eps / C * sum_c s[c]
//   grad[c] = (exp(s[c]) / sum_k exp(s[k]) - eps / C - (1 - eps) * [c == y]) * scale
//
// with scale = 1/N for the mean and 1 for the sum. The small batches a CNN classifier sees
// (64 x 10) make this a per-call-overhead problem, not a FLOP problem: the NumPy version is
// ten array calls (~30 us), this is one loop (~1 us). Serial on purpose: the row losses are
// summed in double, in row order, so the result never depends on the thread count.
#include <cmath>

#include "kernels.h"

namespace dk::cpu {

template <class T>
bool cross_entropy_indices(T* grad, double* loss, const T* z, const int64_t* y, int64_t N,
                           int64_t C, double eps, double scale) {
  for (int64_t n = 0; n < N; ++n)  // the caller falls back to the general path: nothing written
    if (y[n] < 0 || y[n] >= C) return false;
  const T off = T(eps / double(C)), on = T(1.0 - eps), sc = T(scale);
  double total = 0.0;
  for (int64_t n = 0; n < N; ++n) {
    const T* row = z + n * C;
    T* g = grad + n * C;
    T m = row[0];
    for (int64_t c = 1; c < C; ++c)  // NaN wins, as in NumPy's max: the row's loss is NaN
      if (row[c] > m || row[c] != row[c]) m = row[c];
    T se = T(0);
    double ssum = 0.0;
    for (int64_t c = 0; c < C; ++c) {
      const T s = row[c] - m;
      const T e = std::exp(s);
      g[c] = e;
      se += e;
      ssum += double(s);
    }
    total += double(std::log(se)) - (1.0 - eps) * double(row[y[n]] - m) - eps / double(C) * ssum;
    for (int64_t c = 0; c < C; ++c) g[c] = (g[c] / se - off) * sc;
    g[y[n]] -= on * sc;
  }
  *loss = total * scale;
  return true;
}

template bool cross_entropy_indices<float>(float*, double*, const float*, const int64_t*, int64_t,
                                           int64_t, double, double);
template bool cross_entropy_indices<double>(double*, double*, const double*, const int64_t*,
                                            int64_t, int64_t, double, double);

}  // namespace dk::cpu
