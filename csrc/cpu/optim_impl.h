// optim_impl.h: the fused optimizer kernels, written once against Vec<T> (optim_vec.h).
//
// Included once per ISA (optim.cpp: baseline, optim_avx2.cpp, optim_avx512.cpp) inside the
// namespace named by DK_OPTIM_NS, so each copy is compiled with its own -m flags.
//
// Every optimizer is one loop over its tensor piece: load the gradient, parameter and state
// vectors, compute the update in registers, store the new state and parameter (and, when the
// caller passes one, the new EMA of the parameter). Nothing is written twice, nothing is
// allocated, and the per-step scalars arrive precomputed in double (bias corrections, 1 - beta,
// the Adagrad decayed lr) and are rounded to T once per call.
//
// The formulas and the order of operations follow torch.optim's for-loop implementations (see
// each kernel), so float64 results agree with PyTorch to rounding; float32 ones to a few ulp
// per step (we fuse a*b + c where PyTorch's `add_(x, alpha=a)` does too).
#ifndef DK_OPTIM_NS
#error "define DK_OPTIM_NS before including optim_impl.h"
#endif
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "common/tensor_list.h"
#include "cpu/optim.h"
#include "cpu/optim_vec.h"

namespace dk::cpu::DK_OPTIM_NS {

// The tag of this ISA's vectors (common/tensor_list.h): List<T> instantiations of one ISA are
// never shared with another's.
struct IsaTag {};
template <class T>
using List = dk::List<T, IsaTag>;

// The arrays a kernel body touches at element index i (null: not used by this configuration).
template <class T>
struct Streams {
  T* p;        // parameter (read, written)
  const T* g;  // gradient (read)
  T* s0;       // state arrays (read, written)
  T* s1;
  T* s2;
  T* e;        // EMA of the parameter (read, written)
};

// Run body(streams, i) for i = b, b+W, ... covering [b, e) of one tensor. The ragged ends
// (the few elements before the parameter's first 64-byte boundary, and the last e - b mod W)
// are copied into a zeroed one-vector buffer, run through the very same body, and copied
// back: no scalar loop, so an element's result never depends on where a range starts or
// ends (hence on the thread count or the arrays' alignment) -- lanes never interact.
template <class T, class Body>
void through_buffer(const Streams<T>& a, int64_t i, int64_t r, const Body& body);

template <class T, class Body>
inline void for_each_vector(const Streams<T>& a, int64_t b, int64_t e, const Body& body) {
  constexpr int W = Vec<T>::W;
  int64_t i = b;
  if (W > 1) {
    // NumPy's large arrays start 16 bytes past a page, so every full-width vector would
    // straddle two cache lines. Run the first few elements through the buffer so that the
    // parameter's vectors are 64-byte aligned (the other arrays usually share its offset).
    const int64_t mis = static_cast<int64_t>((reinterpret_cast<uintptr_t>(a.p + i) % 64) / sizeof(T));
    const int64_t head = mis ? std::min<int64_t>((64 / sizeof(T)) - mis, e - i) : 0;
    for (int64_t h = 0; h < head; h += W) through_buffer(a, i + h, std::min<int64_t>(W, head - h), body);
    i += head;
  }
  for (; i + W <= e; i += W) body(a, i);
  if (e - i > 0) through_buffer(a, i, e - i, body);
}

// Run body on r < W (or <= W) elements at [i, i + r) through a zeroed one-vector buffer.
template <class T, class Body>
void through_buffer(const Streams<T>& a, int64_t i, int64_t r, const Body& body) {
  constexpr int W = Vec<T>::W;
  alignas(64) T buf[6][W];
  std::memset(buf, 0, sizeof(buf));
  T* const src[6] = {a.p, const_cast<T*>(a.g), a.s0, a.s1, a.s2, a.e};
  T* dst[6];
  for (int k = 0; k < 6; ++k) {
    dst[k] = src[k] ? buf[k] : nullptr;
    if (src[k]) std::memcpy(buf[k], src[k] + i, sizeof(T) * r);
  }
  body(Streams<T>{dst[0], dst[1], dst[2], dst[3], dst[4], dst[5]}, int64_t(0));
  for (int k = 0; k < 6; ++k)
    if (k != 1 && src[k]) std::memcpy(src[k] + i, buf[k], sizeof(T) * r);  // never the grad
}

template <class T>
inline Vec<T> bcast(double x) {
  return Vec<T>::set1(static_cast<T>(x));
}

// avg <- decay * avg + (1 - decay) * x   (shared by EMA.update() and every fused step, so the
// fused and the separate pass round identically)
template <class T>
struct EmaBlend {
  Vec<T> d, omd;
  explicit EmaBlend(double decay) : d(bcast<T>(decay)), omd(bcast<T>(1.0 - decay)) {}
  void operator()(T* avg, Vec<T> x) const { fmadd(Vec<T>::load(avg), d, x * omd).store(avg); }
};

// PyTorch's lerp: start + w * (end - start) for w < 0.5, else end + (w - 1) * (end - start),
// each one fused multiply-add (the two forms keep the result exact at w = 0 and w = 1).
template <class T>
struct Lerp {
  Vec<T> w, wm1;
  bool low;
  explicit Lerp(double weight)
      : w(bcast<T>(weight)),
        wm1(Vec<T>::set1(static_cast<T>(weight) - T(1))),
        low(std::fabs(weight) < 0.5) {}
  Vec<T> operator()(Vec<T> start, Vec<T> end) const {
    const Vec<T> diff = end - start;
    return low ? fmadd(w, diff, start) : fmadd(wm1, diff, end);
  }
};

// ---- SGD (+ momentum, dampening, Nesterov), torch.optim.SGD:
//   g = grad * grad_scale (+ weight_decay * p)
//   buf = g on the first step, else momentum * buf + (1 - dampening) * g
//   g = g + momentum * buf (Nesterov) or buf
//   p = p - lr * g
template <class T>
void sgd_range(const OptimTensor<T>& t, int64_t b, int64_t e) {
  namespace H = hyper::sgd;
  using V = Vec<T>;
  const double* h = t.hyper;
  const V gs = bcast<T>(h[H::grad_scale]), wd = bcast<T>(h[H::weight_decay]);
  const V mom = bcast<T>(h[H::momentum]), omd = bcast<T>(h[H::one_minus_dampening]);
  const V neg_lr = bcast<T>(-h[H::lr]);
  const bool has_wd = h[H::weight_decay] != 0.0, has_mom = h[H::momentum] != 0.0;
  const bool nesterov = h[H::nesterov] != 0.0, first = h[H::first_step] != 0.0;
  const EmaBlend<T> ema(h[H::ema_decay]);
  const Streams<T> s{t.param, t.grad, has_mom ? t.state[0] : nullptr, nullptr, nullptr, t.ema};
  for_each_vector<T>(s, b, e, [&](const Streams<T>& q, int64_t i) {
    V g = V::load(q.g + i) * gs;
    V p = V::load(q.p + i);
    if (has_wd) g = fmadd(p, wd, g);
    if (has_mom) {
      const V buf = first ? g : fmadd(g, omd, V::load(q.s0 + i) * mom);
      buf.store(q.s0 + i);
      g = nesterov ? fmadd(buf, mom, g) : buf;
    }
    p = fmadd(g, neg_lr, p);
    p.store(q.p + i);
    if (q.e) ema(q.e + i, p);
  });
}

// ---- Adagrad, torch.optim.Adagrad (clr = lr / (1 + (step - 1) * lr_decay) from the host):
//   sum = sum + g * g
//   p = p - clr * g / (sqrt(sum) + eps)
template <class T>
void adagrad_range(const OptimTensor<T>& t, int64_t b, int64_t e) {
  namespace H = hyper::adagrad;
  using V = Vec<T>;
  const double* h = t.hyper;
  const V gs = bcast<T>(h[H::grad_scale]), wd = bcast<T>(h[H::weight_decay]);
  const V neg_clr = bcast<T>(-h[H::clr]), eps = bcast<T>(h[H::eps]);
  const bool has_wd = h[H::weight_decay] != 0.0;
  const EmaBlend<T> ema(h[H::ema_decay]);
  const Streams<T> s{t.param, t.grad, t.state[0], nullptr, nullptr, t.ema};
  for_each_vector<T>(s, b, e, [&](const Streams<T>& q, int64_t i) {
    V g = V::load(q.g + i) * gs;
    V p = V::load(q.p + i);
    if (has_wd) g = fmadd(p, wd, g);
    const V sum = fmadd(g, g, V::load(q.s0 + i));
    sum.store(q.s0 + i);
    p = fmadd(g / (sqrt(sum) + eps), neg_clr, p);
    p.store(q.p + i);
    if (q.e) ema(q.e + i, p);
  });
}

// ---- Adadelta, torch.optim.Adadelta:
//   square_avg = rho * square_avg + (1 - rho) * g^2
//   delta = sqrt(acc_delta + eps) / sqrt(square_avg + eps) * g      (the old acc_delta)
//   acc_delta = rho * acc_delta + (1 - rho) * delta^2
//   p = p - lr * delta
template <class T>
void adadelta_range(const OptimTensor<T>& t, int64_t b, int64_t e) {
  namespace H = hyper::adadelta;
  using V = Vec<T>;
  const double* h = t.hyper;
  const V gs = bcast<T>(h[H::grad_scale]), wd = bcast<T>(h[H::weight_decay]);
  const V neg_lr = bcast<T>(-h[H::lr]), eps = bcast<T>(h[H::eps]);
  const V rho = bcast<T>(h[H::rho]), omr = bcast<T>(h[H::one_minus_rho]);
  const bool has_wd = h[H::weight_decay] != 0.0;
  const EmaBlend<T> ema(h[H::ema_decay]);
  const Streams<T> s{t.param, t.grad, t.state[0], t.state[1], nullptr, t.ema};
  for_each_vector<T>(s, b, e, [&](const Streams<T>& q, int64_t i) {
    V g = V::load(q.g + i) * gs;
    V p = V::load(q.p + i);
    if (has_wd) g = fmadd(p, wd, g);
    const V sq = fmadd(g * g, omr, V::load(q.s0 + i) * rho);
    sq.store(q.s0 + i);
    const V acc = V::load(q.s1 + i);
    const V delta = sqrt(acc + eps) / sqrt(sq + eps) * g;
    fmadd(delta * delta, omr, acc * rho).store(q.s1 + i);
    p = fmadd(delta, neg_lr, p);
    p.store(q.p + i);
    if (q.e) ema(q.e + i, p);
  });
}

// ---- RMSprop, torch.optim.RMSprop:
//   square_avg = alpha * square_avg + (1 - alpha) * g^2
//   centered: grad_avg = lerp(grad_avg, g, 1 - alpha);  avg = sqrt(square_avg - grad_avg^2) + eps
//   else:     avg = sqrt(square_avg) + eps
//   momentum > 0: buf = momentum * buf + g / avg;  p = p - lr * buf
//   else:         p = p - lr * g / avg
template <class T>
void rmsprop_range(const OptimTensor<T>& t, int64_t b, int64_t e) {
  namespace H = hyper::rmsprop;
  using V = Vec<T>;
  const double* h = t.hyper;
  const V gs = bcast<T>(h[H::grad_scale]), wd = bcast<T>(h[H::weight_decay]);
  const V neg_lr = bcast<T>(-h[H::lr]), eps = bcast<T>(h[H::eps]);
  const V alpha = bcast<T>(h[H::alpha]), oma = bcast<T>(h[H::one_minus_alpha]);
  const V mom = bcast<T>(h[H::momentum]);
  const bool has_wd = h[H::weight_decay] != 0.0, has_mom = h[H::momentum] > 0.0;
  const bool centered = h[H::centered] != 0.0;
  const Lerp<T> lerp(h[H::one_minus_alpha]);
  const EmaBlend<T> ema(h[H::ema_decay]);
  const Streams<T> s{t.param, t.grad, t.state[0], has_mom ? t.state[1] : nullptr,
                     centered ? t.state[2] : nullptr, t.ema};
  for_each_vector<T>(s, b, e, [&](const Streams<T>& q, int64_t i) {
    V g = V::load(q.g + i) * gs;
    V p = V::load(q.p + i);
    if (has_wd) g = fmadd(p, wd, g);
    const V sq = fmadd(g * g, oma, V::load(q.s0 + i) * alpha);
    sq.store(q.s0 + i);
    V avg;
    if (centered) {
      const V ga = lerp(V::load(q.s2 + i), g);
      ga.store(q.s2 + i);
      avg = sqrt(sq - ga * ga) + eps;
    } else {
      avg = sqrt(sq) + eps;
    }
    if (has_mom) {
      const V buf = V::load(q.s1 + i) * mom + g / avg;
      buf.store(q.s1 + i);
      p = fmadd(buf, neg_lr, p);
    } else {
      p = fmadd(g / avg, neg_lr, p);
    }
    p.store(q.p + i);
    if (q.e) ema(q.e + i, p);
  });
}

// ---- Adam / AdamW, torch.optim.Adam(W) (step_size = lr / (1 - beta1^t),
//      bias_correction2_sqrt = sqrt(1 - beta2^t), param_scale = 1 - lr * weight_decay for
//      AdamW and 1 for Adam, weight_decay = 0 for AdamW: all from the host):
//   p = p * param_scale;  g = g + weight_decay * p
//   exp_avg = lerp(exp_avg, g, 1 - beta1)
//   exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * g^2
//   amsgrad: max_exp_avg_sq = max(max_exp_avg_sq, exp_avg_sq), used below instead
//   p = p - step_size * exp_avg / (sqrt(exp_avg_sq) / bias_correction2_sqrt + eps)
template <class T>
void adam_range(const OptimTensor<T>& t, int64_t b, int64_t e) {
  namespace H = hyper::adam;
  using V = Vec<T>;
  const double* h = t.hyper;
  const V gs = bcast<T>(h[H::grad_scale]), wd = bcast<T>(h[H::weight_decay]);
  const V pscale = bcast<T>(h[H::param_scale]), neg_step = bcast<T>(-h[H::step_size]);
  const V bc2s = bcast<T>(h[H::bias_correction2_sqrt]), eps = bcast<T>(h[H::eps]);
  const V beta2 = bcast<T>(h[H::beta2]), omb2 = bcast<T>(h[H::one_minus_beta2]);
  const bool has_wd = h[H::weight_decay] != 0.0, amsgrad = h[H::amsgrad] != 0.0;
  const Lerp<T> lerp(h[H::one_minus_beta1]);
  const EmaBlend<T> ema(h[H::ema_decay]);
  const Streams<T> s{t.param, t.grad, t.state[0], t.state[1], amsgrad ? t.state[2] : nullptr, t.ema};
  for_each_vector<T>(s, b, e, [&](const Streams<T>& q, int64_t i) {
    V g = V::load(q.g + i) * gs;
    V p = V::load(q.p + i) * pscale;
    if (has_wd) g = fmadd(p, wd, g);
    const V m = lerp(V::load(q.s0 + i), g);
    m.store(q.s0 + i);
    V v = fmadd(g * g, omb2, V::load(q.s1 + i) * beta2);
    v.store(q.s1 + i);
    if (amsgrad) {
      v = vmax(V::load(q.s2 + i), v);
      v.store(q.s2 + i);
    }
    p = fmadd(m / (sqrt(v) / bc2s + eps), neg_step, p);
    p.store(q.p + i);
    if (q.e) ema(q.e + i, p);
  });
}

template <class T>
void optim_step(OptimKind kind, const OptimTensor<T>* tensors, int64_t count) {
  List<int64_t> sizes(static_cast<size_t>(count));
  for (int64_t k = 0; k < count; ++k) sizes[k] = tensors[k].n;
  const List<int64_t> off = prefix_offsets<IsaTag>(sizes.data(), count);
  for_each_part(off, [&](int64_t k, int64_t b, int64_t e) {
    const OptimTensor<T>& t = tensors[k];
    switch (kind) {
      case OptimKind::sgd: return sgd_range(t, b, e);
      case OptimKind::adagrad: return adagrad_range(t, b, e);
      case OptimKind::adadelta: return adadelta_range(t, b, e);
      case OptimKind::rmsprop: return rmsprop_range(t, b, e);
      case OptimKind::adam: return adam_range(t, b, e);
    }
  });
}

template <class T>
void ema_update(T* const* avg, const T* const* x, const int64_t* n, int64_t count, double decay) {
  const EmaBlend<T> ema(decay);
  for_each_part(prefix_offsets<IsaTag>(n, count), [&](int64_t k, int64_t b, int64_t e) {
    const Streams<T> s{avg[k], x[k], nullptr, nullptr, nullptr, nullptr};
    for_each_vector<T>(s, b, e, [&](const Streams<T>& q, int64_t i) { ema(q.p + i, Vec<T>::load(q.g + i)); });
  });
}

template <class T>
void multi_scale(T* const* x, const int64_t* n, int64_t count, double scale) {
  const Vec<T> sc = bcast<T>(scale);
  for_each_part(prefix_offsets<IsaTag>(n, count), [&](int64_t k, int64_t b, int64_t e) {
    const Streams<T> s{x[k], nullptr, nullptr, nullptr, nullptr, nullptr};
    for_each_vector<T>(s, b, e, [&](const Streams<T>& q, int64_t i) { (Vec<T>::load(q.p + i) * sc).store(q.p + i); });
  });
}

// ---- norms: per-block partials in double, eight interleaved accumulators per block (the
// compiler turns the k-loop into vector code; lanes never mix, so the order is fixed).
enum class NormMode { sum_sq, sum_abs, max_abs, min_abs, count_nonzero, sum_pow };

inline NormMode norm_mode(double p) {
  if (p == 2.0) return NormMode::sum_sq;
  if (p == 1.0) return NormMode::sum_abs;
  if (p == std::numeric_limits<double>::infinity()) return NormMode::max_abs;
  if (p == -std::numeric_limits<double>::infinity()) return NormMode::min_abs;
  if (p == 0.0) return NormMode::count_nonzero;
  return NormMode::sum_pow;
}

// NaN-propagating max/min (a NaN, once seen, stays)
inline double max_nan(double m, double v) { return (v > m || v != v) ? v : m; }
inline double min_nan(double m, double v) { return (v < m || v != v) ? v : m; }

template <class T>
double block_reduce(const T* x, int64_t n, NormMode mode, double p) {
  constexpr int L = 8;
  double acc[L];
  const double init = mode == NormMode::min_abs ? std::numeric_limits<double>::infinity() : 0.0;
  for (int k = 0; k < L; ++k) acc[k] = init;
  int64_t i = 0;
  switch (mode) {
    case NormMode::sum_sq:
      for (; i + L <= n; i += L)
        for (int k = 0; k < L; ++k) {
          const double v = x[i + k];
          acc[k] += v * v;
        }
      for (int k = 0; i < n; ++i, ++k) acc[k] += double(x[i]) * double(x[i]);
      break;
    case NormMode::sum_abs:
      for (; i + L <= n; i += L)
        for (int k = 0; k < L; ++k) acc[k] += std::fabs(double(x[i + k]));
      for (int k = 0; i < n; ++i, ++k) acc[k] += std::fabs(double(x[i]));
      break;
    case NormMode::max_abs:
      for (; i < n; ++i) acc[i % L] = max_nan(acc[i % L], std::fabs(double(x[i])));
      break;
    case NormMode::min_abs:
      for (; i < n; ++i) acc[i % L] = min_nan(acc[i % L], std::fabs(double(x[i])));
      break;
    case NormMode::count_nonzero:
      for (; i < n; ++i) acc[i % L] += x[i] != T(0) ? 1.0 : 0.0;
      break;
    case NormMode::sum_pow:
      for (; i < n; ++i) acc[i % L] += std::pow(std::fabs(double(x[i])), p);
      break;
  }
  double r = acc[0];
  for (int k = 1; k < L; ++k) {
    if (mode == NormMode::max_abs) r = max_nan(r, acc[k]);
    else if (mode == NormMode::min_abs) r = min_nan(r, acc[k]);
    else r += acc[k];
  }
  return r;
}

template <class T>
double multi_norm_reduce(const T* const* x, const int64_t* n, int64_t count, double p) {
  const NormMode mode = norm_mode(p);
  const List<Block> blocks = make_blocks<IsaTag>(n, count);
  const List<double> part = map_blocks<double>(blocks, [&](const Block& blk) {
    return block_reduce<T>(x[blk.tensor] + blk.begin, blk.end - blk.begin, mode, p);
  });
  double r = mode == NormMode::min_abs ? std::numeric_limits<double>::infinity() : 0.0;
  for (double v : part) {
    if (mode == NormMode::max_abs) r = max_nan(r, v);
    else if (mode == NormMode::min_abs) r = min_nan(r, v);
    else r += v;
  }
  return r;
}

}  // namespace dk::cpu::DK_OPTIM_NS

// The instantiations of this ISA's copy (each including .cpp file gets them once).
namespace dk::cpu::DK_OPTIM_NS {
DK_OPTIM_INSTANTIATE(float)
DK_OPTIM_INSTANTIATE(double)
}  // namespace dk::cpu::DK_OPTIM_NS
