// optim.cu: every optimizer step, the EMA, gradient scaling and copies as multi-tensor kernels,
// and the global gradient norm as a deterministic two-level reduction.
//
// A training step updates tens to hundreds of parameter tensors of very different sizes. One
// kernel launch per tensor costs a few microseconds of launch overhead each and leaves the GPU
// idle on the small ones, so every parameter of a step goes into ONE launch ("multi-tensor
// apply"): the launch gets a table, passed by value as the kernel's argument (no host-to-device
// copy, no synchronization), that lists every tensor's pointers and size, and block b of the
// grid processes chunk b of the concatenation of all the tensors' chunks:
//
//     tensor 0: chunks 0..2 | tensor 1: chunk 3 | tensor 2: chunks 4..9 | ...
//     Slot.first_chunk = 0      = 3                   = 4
//
// A block finds its tensor by a binary search over first_chunk (a few steps in the constant
// bank), then streams through its kChunk elements. Kernel arguments are limited to 4 KiB, so a
// table holds at most kMaxTensors tensors and kMaxRows distinct rows of scalars; a step with
// more becomes a few launches (plan()). A zero-size tensor has no chunk and no slot.
//
// The math is the CPU's, operation for operation (csrc/cpu/optim_impl.h): the per-step scalars
// arrive as the same float64 row (csrc/cpu/optim.h's DK_*_HYPER layout), are rounded to float
// once on the host, and every element runs through the same sequence of IEEE operations with
// the same explicit fused multiply-adds. So a CUDA step gives the bits of the CPU's AVX2 /
// AVX-512 step (the CPU's portable build, which has no FMA, may differ in the last bits).
//
// The per-element work and the planner are plain C++ above `#if defined(__CUDACC__)`, so the
// host emulator (tests/cuda_host/emulate.cpp) runs this very code on the CPU.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <vector>

#include "common/philox.h"  // DK_HOST_DEVICE
#include "cpu/optim.h"      // OptimKind, OptimTensor, the per-tensor row layouts

namespace dk::cuda::mt {

// ---------------------------------------------------------------- explicit rounding
// csrc/cpu/optim_vec.h's policy on the GPU: each of these is one IEEE operation rounded to
// nearest; fma() is one fused multiply-add. The _rn intrinsics are never contracted into FMAs
// or reassociated by nvcc (whatever --fmad says); the emulator compiles the host versions with
// -ffp-contract=off. Division and square root are the correctly rounded ones (as _mm*_div_ps
// and _mm*_sqrt_ps), never the fast approximations.
#if defined(__CUDA_ARCH__)
DK_HOST_DEVICE float add(float a, float b) { return __fadd_rn(a, b); }
DK_HOST_DEVICE float sub(float a, float b) { return __fsub_rn(a, b); }
DK_HOST_DEVICE float mul(float a, float b) { return __fmul_rn(a, b); }
DK_HOST_DEVICE float div(float a, float b) { return __fdiv_rn(a, b); }
DK_HOST_DEVICE float root(float a) { return __fsqrt_rn(a); }
DK_HOST_DEVICE float fma(float a, float b, float c) { return __fmaf_rn(a, b, c); }
DK_HOST_DEVICE double fma(double a, double b, double c) { return __fma_rn(a, b, c); }
#else
DK_HOST_DEVICE float add(float a, float b) { return a + b; }
DK_HOST_DEVICE float sub(float a, float b) { return a - b; }
DK_HOST_DEVICE float mul(float a, float b) { return a * b; }
DK_HOST_DEVICE float div(float a, float b) { return a / b; }
DK_HOST_DEVICE float root(float a) { return std::sqrt(a); }
DK_HOST_DEVICE float fma(float a, float b, float c) { return std::fma(a, b, c); }
DK_HOST_DEVICE double fma(double a, double b, double c) { return std::fma(a, b, c); }
#endif
// max(a, b) = a > b ? a : b: b when unordered (a NaN in b included), as _mm*_max_ps.
DK_HOST_DEVICE float vmax(float a, float b) { return a > b ? a : b; }

// ---------------------------------------------------------------- one element
// The values of one element in the streams of a step: parameter, gradient, three state arrays,
// EMA. The kernel loads the ones the tensor has, the op updates them in registers, the kernel
// stores the written ones back.
struct Elem {
  float p, g, s0, s1, s2, e;
};

// Stream indices of Slot::ptr.
enum Stream : int { kP = 0, kG = 1, kS0 = 2, kS1 = 3, kS2 = 4, kE = 5, kStreams = 6 };

// avg <- decay * avg + (1 - decay) * p (the CPU's EmaBlend: fma(avg, d, p * omd))
struct EmaCoef {
  float d, omd;
};
inline EmaCoef ema_coef(double decay) {
  return {static_cast<float>(decay), static_cast<float>(1.0 - decay)};
}
DK_HOST_DEVICE float ema_blend(const EmaCoef& c, float avg, float x) { return fma(avg, c.d, mul(x, c.omd)); }

// PyTorch's lerp (the CPU's Lerp): start + w * (end - start) for |w| < 0.5, else
// end + (w - 1) * (end - start), one fused multiply-add each.
struct LerpCoef {
  float w, wm1;
  bool low;
};
inline LerpCoef lerp_coef(double weight) {
  return {static_cast<float>(weight), static_cast<float>(weight) - 1.0f, std::fabs(weight) < 0.5};
}
DK_HOST_DEVICE float lerp(const LerpCoef& c, float start, float end) {
  const float diff = sub(end, start);
  return c.low ? fma(c.w, diff, start) : fma(c.wm1, diff, end);
}

// Each optimizer: its scalars in float (from the row, as the CPU's bcast<float>), and the update
// of one element. The comments give the CPU kernel each one mirrors; the equations are there.

// ---- SGD (sgd_range)
struct SgdCoef {
  float gs, wd, mom, omd, neg_lr;
  bool has_wd, has_mom, nesterov, first;
  EmaCoef ema;
};
inline SgdCoef sgd_coef(const double* h) {
  namespace H = cpu::hyper::sgd;
  return {static_cast<float>(h[H::grad_scale]), static_cast<float>(h[H::weight_decay]),
          static_cast<float>(h[H::momentum]), static_cast<float>(h[H::one_minus_dampening]),
          static_cast<float>(-h[H::lr]), h[H::weight_decay] != 0.0, h[H::momentum] != 0.0,
          h[H::nesterov] != 0.0, h[H::first_step] != 0.0, ema_coef(h[H::ema_decay])};
}
DK_HOST_DEVICE void update(const SgdCoef& c, Elem& v, bool has_e) {
  float g = mul(v.g, c.gs);
  if (c.has_wd) g = fma(v.p, c.wd, g);
  if (c.has_mom) {
    const float buf = c.first ? g : fma(g, c.omd, mul(v.s0, c.mom));
    v.s0 = buf;
    g = c.nesterov ? fma(buf, c.mom, g) : buf;
  }
  v.p = fma(g, c.neg_lr, v.p);
  if (has_e) v.e = ema_blend(c.ema, v.e, v.p);
}

// ---- Adagrad (adagrad_range)
struct AdagradCoef {
  float gs, wd, neg_clr, eps;
  bool has_wd;
  EmaCoef ema;
};
inline AdagradCoef adagrad_coef(const double* h) {
  namespace H = cpu::hyper::adagrad;
  return {static_cast<float>(h[H::grad_scale]), static_cast<float>(h[H::weight_decay]),
          static_cast<float>(-h[H::clr]), static_cast<float>(h[H::eps]), h[H::weight_decay] != 0.0,
          ema_coef(h[H::ema_decay])};
}
DK_HOST_DEVICE void update(const AdagradCoef& c, Elem& v, bool has_e) {
  float g = mul(v.g, c.gs);
  if (c.has_wd) g = fma(v.p, c.wd, g);
  const float sum = fma(g, g, v.s0);
  v.s0 = sum;
  v.p = fma(div(g, add(root(sum), c.eps)), c.neg_clr, v.p);
  if (has_e) v.e = ema_blend(c.ema, v.e, v.p);
}

// ---- Adadelta (adadelta_range)
struct AdadeltaCoef {
  float gs, wd, neg_lr, eps, rho, omr;
  bool has_wd;
  EmaCoef ema;
};
inline AdadeltaCoef adadelta_coef(const double* h) {
  namespace H = cpu::hyper::adadelta;
  return {static_cast<float>(h[H::grad_scale]), static_cast<float>(h[H::weight_decay]),
          static_cast<float>(-h[H::lr]), static_cast<float>(h[H::eps]), static_cast<float>(h[H::rho]),
          static_cast<float>(h[H::one_minus_rho]), h[H::weight_decay] != 0.0, ema_coef(h[H::ema_decay])};
}
DK_HOST_DEVICE void update(const AdadeltaCoef& c, Elem& v, bool has_e) {
  float g = mul(v.g, c.gs);
  if (c.has_wd) g = fma(v.p, c.wd, g);
  const float sq = fma(mul(g, g), c.omr, mul(v.s0, c.rho));
  v.s0 = sq;
  const float acc = v.s1;
  const float delta = mul(div(root(add(acc, c.eps)), root(add(sq, c.eps))), g);
  v.s1 = fma(mul(delta, delta), c.omr, mul(acc, c.rho));
  v.p = fma(delta, c.neg_lr, v.p);
  if (has_e) v.e = ema_blend(c.ema, v.e, v.p);
}

// ---- RMSprop (rmsprop_range): state s0 square_avg, s1 momentum_buffer, s2 grad_avg
struct RmspropCoef {
  float gs, wd, neg_lr, eps, alpha, oma, mom;
  bool has_wd, has_mom, centered;
  LerpCoef lerp;
  EmaCoef ema;
};
inline RmspropCoef rmsprop_coef(const double* h) {
  namespace H = cpu::hyper::rmsprop;
  return {static_cast<float>(h[H::grad_scale]), static_cast<float>(h[H::weight_decay]),
          static_cast<float>(-h[H::lr]), static_cast<float>(h[H::eps]), static_cast<float>(h[H::alpha]),
          static_cast<float>(h[H::one_minus_alpha]), static_cast<float>(h[H::momentum]),
          h[H::weight_decay] != 0.0, h[H::momentum] > 0.0, h[H::centered] != 0.0,
          lerp_coef(h[H::one_minus_alpha]), ema_coef(h[H::ema_decay])};
}
DK_HOST_DEVICE void update(const RmspropCoef& c, Elem& v, bool has_e) {
  float g = mul(v.g, c.gs);
  if (c.has_wd) g = fma(v.p, c.wd, g);
  const float sq = fma(mul(g, g), c.oma, mul(v.s0, c.alpha));
  v.s0 = sq;
  float avg;
  if (c.centered) {
    const float ga = lerp(c.lerp, v.s2, g);
    v.s2 = ga;
    avg = add(root(sub(sq, mul(ga, ga))), c.eps);
  } else {
    avg = add(root(sq), c.eps);
  }
  if (c.has_mom) {
    const float buf = add(mul(v.s1, c.mom), div(g, avg));
    v.s1 = buf;
    v.p = fma(buf, c.neg_lr, v.p);
  } else {
    v.p = fma(div(g, avg), c.neg_lr, v.p);
  }
  if (has_e) v.e = ema_blend(c.ema, v.e, v.p);
}

// ---- Adam / AdamW (adam_range): state s0 exp_avg, s1 exp_avg_sq, s2 max_exp_avg_sq
struct AdamCoef {
  float gs, wd, pscale, neg_step, bc2s, eps, beta2, omb2;
  bool has_wd, amsgrad;
  LerpCoef lerp;
  EmaCoef ema;
};
inline AdamCoef adam_coef(const double* h) {
  namespace H = cpu::hyper::adam;
  return {static_cast<float>(h[H::grad_scale]), static_cast<float>(h[H::weight_decay]),
          static_cast<float>(h[H::param_scale]), static_cast<float>(-h[H::step_size]),
          static_cast<float>(h[H::bias_correction2_sqrt]), static_cast<float>(h[H::eps]),
          static_cast<float>(h[H::beta2]), static_cast<float>(h[H::one_minus_beta2]),
          h[H::weight_decay] != 0.0, h[H::amsgrad] != 0.0, lerp_coef(h[H::one_minus_beta1]),
          ema_coef(h[H::ema_decay])};
}
DK_HOST_DEVICE void update(const AdamCoef& c, Elem& v, bool has_e) {
  float g = mul(v.g, c.gs);
  v.p = mul(v.p, c.pscale);
  if (c.has_wd) g = fma(v.p, c.wd, g);
  const float m = lerp(c.lerp, v.s0, g);
  v.s0 = m;
  float s = fma(mul(g, g), c.omb2, mul(v.s1, c.beta2));
  v.s1 = s;
  if (c.amsgrad) {
    s = vmax(v.s2, s);
    v.s2 = s;
  }
  v.p = fma(div(m, add(div(root(s), c.bc2s), c.eps)), c.neg_step, v.p);
  if (has_e) v.e = ema_blend(c.ema, v.e, v.p);
}

// ---- the other element-wise passes: EMA.update() (p = the average, g = the parameter),
// clip_grad_norm_'s scaling (p = the gradient), EMA.copy_to() (p = destination, g = source)
struct EmaUpdateCoef {
  EmaCoef ema;
};
DK_HOST_DEVICE void update(const EmaUpdateCoef& c, Elem& v, bool) { v.p = ema_blend(c.ema, v.p, v.g); }

struct ScaleCoef {
  float s;
};
DK_HOST_DEVICE void update(const ScaleCoef& c, Elem& v, bool) { v.p = mul(v.p, c.s); }

struct CopyCoef {
  int unused;
};
DK_HOST_DEVICE void update(const CopyCoef&, Elem& v, bool) { v.p = v.g; }

// Whether a pass reads the destination before writing it (a copy does not: one stream less).
template <class Coef>
struct ReadsParam {
  static constexpr bool value = true;
};
template <>
struct ReadsParam<CopyCoef> {
  static constexpr bool value = false;
};

// ---------------------------------------------------------------- norms
// The reduction under a p-norm (csrc/cpu/optim.h's multi_norm_reduce), in double:
//   sum_sq: sum x^2;  sum_abs: sum |x|;  max_abs / min_abs (a NaN, once seen, stays);
//   count_nonzero;  sum_pow: sum |x|^p.   The caller takes the root.
enum NormMode : int { sum_sq = 0, sum_abs, max_abs, min_abs, count_nonzero, sum_pow };

struct NormCoef {
  int mode;
  double p;
};
inline NormCoef norm_coef(double p) {
  const double inf = std::numeric_limits<double>::infinity();
  const int mode = p == 2.0 ? sum_sq : p == 1.0 ? sum_abs : p == inf ? max_abs : p == -inf ? min_abs
                   : p == 0.0 ? count_nonzero : sum_pow;
  return {mode, p};
}
DK_HOST_DEVICE double norm_identity(const NormCoef& c) {
  return c.mode == min_abs ? std::numeric_limits<double>::infinity() : 0.0;
}
// Fold one element into a running value.
DK_HOST_DEVICE double norm_accumulate(const NormCoef& c, double acc, float xf) {
  const double x = xf;
  switch (c.mode) {
    case sum_sq: return fma(x, x, acc);
    case sum_abs: return acc + ::fabs(x);
    case max_abs: return (::fabs(x) > acc || x != x) ? ::fabs(x) : acc;
    case min_abs: return (::fabs(x) < acc || x != x) ? ::fabs(x) : acc;
    case count_nonzero: return acc + (xf != 0.0f ? 1.0 : 0.0);
    default: return acc + ::pow(::fabs(x), c.p);
  }
}
// Combine two partial results (the tree steps and the partial folds).
DK_HOST_DEVICE double norm_combine(const NormCoef& c, double a, double b) {
  switch (c.mode) {
    case max_abs: return (b > a || b != b) ? b : a;
    case min_abs: return (b < a || b != b) ? b : a;
    default: return a + b;
  }
}

// ---------------------------------------------------------------- the launch table
constexpr int64_t kChunk = 16384;  // elements per block (64 KiB of each float32 stream)
constexpr int kMaxTensors = 36;    // tensors per launch
constexpr int kMaxRows = 8;        // distinct scalar rows per launch
constexpr int kBlock = 256;        // threads per block

struct Slot {
  float* ptr[kStreams];  // p, g, s0, s1, s2, e; null: this tensor has no such stream
  int64_t n;             // elements (>= 1)
  int64_t first_chunk;   // index of the tensor's first chunk among the launch's blocks
  int32_t row;           // index into Table::rows
};

template <class Coef>
struct Table {
  Slot t[kMaxTensors];
  Coef rows[kMaxRows];
  int32_t ntensors;
  int32_t nrows;
  int64_t nchunks;       // the launch's grid size
  int64_t partial_base;  // norms: index of this launch's first block partial
};

// The slot holding chunk `block`: the last slot whose first_chunk <= block.
template <class Coef>
DK_HOST_DEVICE int find_slot(const Table<Coef>& tb, int64_t block) {
  int lo = 0, hi = tb.ntensors - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (tb.t[mid].first_chunk <= block) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

// The element range [begin, end) of the slot's tensor that block `block` processes.
template <class Coef>
DK_HOST_DEVICE void chunk_range(const Table<Coef>& tb, int slot, int64_t block, int64_t& begin, int64_t& end) {
  begin = (block - tb.t[slot].first_chunk) * kChunk;
  end = begin + kChunk < tb.t[slot].n ? begin + kChunk : tb.t[slot].n;
}

// One tensor as the planner receives it.
struct TensorIn {
  float* ptr[kStreams];
  int64_t n;
  const double* row;  // its row of float64 scalars (H of them); null for passes with one row
};

// Split the tensors into launch tables: in order, skipping empty tensors, starting a new table
// when kMaxTensors tensors or kMaxRows distinct rows (compared bit for bit) are used up.
// `make` turns a row into the pass's Coef. Depends only on the arguments (no device).
template <class Coef, class Make>
std::vector<Table<Coef>> plan(const std::vector<TensorIn>& ts, int H, const Make& make) {
  std::vector<Table<Coef>> out;
  std::vector<const double*> row_src;  // the rows of the table being filled
  int64_t chunks_before = 0;
  for (const TensorIn& in : ts) {
    if (in.n <= 0) continue;
    const int64_t chunks = (in.n + kChunk - 1) / kChunk;
    if (chunks > int64_t(std::numeric_limits<int32_t>::max()))
      throw std::invalid_argument("multi-tensor pass: a tensor is too large for one grid");
    int row = -1;
    if (!out.empty()) {
      for (size_t r = 0; r < row_src.size(); ++r)
        if (row_src[r] == in.row || (in.row && row_src[r] &&
                                     std::memcmp(row_src[r], in.row, sizeof(double) * H) == 0))
          row = static_cast<int>(r);
    }
    const bool full = out.empty() || out.back().ntensors == kMaxTensors ||
                      (row < 0 && out.back().nrows == kMaxRows) ||
                      out.back().nchunks + chunks > int64_t(std::numeric_limits<int32_t>::max());
    if (full) {
      Table<Coef> tb;
      std::memset(static_cast<void*>(&tb), 0, sizeof(tb));
      tb.partial_base = chunks_before;
      out.push_back(tb);
      row_src.clear();
      row = -1;
    }
    Table<Coef>& tb = out.back();
    if (row < 0) {
      row = tb.nrows++;
      tb.rows[row] = make(in.row);
      row_src.push_back(in.row);
    }
    Slot& s = tb.t[tb.ntensors++];
    for (int k = 0; k < kStreams; ++k) s.ptr[k] = in.ptr[k];
    s.n = in.n;
    s.first_chunk = tb.nchunks;
    s.row = row;
    tb.nchunks += chunks;
    chunks_before += chunks;
  }
  return out;
}

// Element i of slot s: load the streams it has, update, store the written ones. (The device
// kernel does the same four elements at a time with 16-byte loads where it can; an element's
// arithmetic is the same either way.)
template <class Coef>
DK_HOST_DEVICE void step_element(const Slot& s, const Coef& c, int64_t i) {
  float* const* q = s.ptr;
  Elem v{};
  if (ReadsParam<Coef>::value) v.p = q[kP][i];
  if (q[kG]) v.g = q[kG][i];
  if (q[kS0]) v.s0 = q[kS0][i];
  if (q[kS1]) v.s1 = q[kS1][i];
  if (q[kS2]) v.s2 = q[kS2][i];
  if (q[kE]) v.e = q[kE][i];
  update(c, v, q[kE] != nullptr);
  q[kP][i] = v.p;
  if (q[kS0]) q[kS0][i] = v.s0;
  if (q[kS1]) q[kS1][i] = v.s1;
  if (q[kS2]) q[kS2][i] = v.s2;
  if (q[kE]) q[kE][i] = v.e;
}

// Norm level 1, one thread of a block: elements begin + t, begin + t + step, ... in order.
DK_HOST_DEVICE double norm_thread(const NormCoef& c, const float* x, int64_t begin, int64_t end,
                                  int64_t t, int64_t step) {
  double acc = norm_identity(c);
  for (int64_t i = begin + t; i < end; i += step) acc = norm_accumulate(c, acc, x[i]);
  return acc;
}

// Norm level 2, thread t of the one folding block: partials t, t + step, ... in order.
DK_HOST_DEVICE double fold_thread(const NormCoef& c, const double* partial, int64_t count, int64_t t,
                                  int64_t step) {
  double acc = norm_identity(c);
  for (int64_t i = t; i < count; i += step) acc = norm_combine(c, acc, partial[i]);
  return acc;
}

// ---------------------------------------------------------------- the step's tensors, planned
// The state streams a row of `kind` uses (the CPU's choice of null streams, optim_impl.h).
inline bool uses_state(cpu::OptimKind kind, const double* h, int j) {
  using K = cpu::OptimKind;
  switch (kind) {
    case K::sgd: return j == 0 && h[cpu::hyper::sgd::momentum] != 0.0;
    case K::adagrad: return j == 0;
    case K::adadelta: return j < 2;
    case K::rmsprop:
      return j == 0 || (j == 1 && h[cpu::hyper::rmsprop::momentum] > 0.0) ||
             (j == 2 && h[cpu::hyper::rmsprop::centered] != 0.0);
    case K::adam: return j < 2 || h[cpu::hyper::adam::amsgrad] != 0.0;
  }
  return false;
}

inline int hyper_count(cpu::OptimKind kind) {
  using K = cpu::OptimKind;
  switch (kind) {
    case K::sgd: return cpu::hyper::sgd::count;
    case K::adagrad: return cpu::hyper::adagrad::count;
    case K::adadelta: return cpu::hyper::adadelta::count;
    case K::rmsprop: return cpu::hyper::rmsprop::count;
    case K::adam: return cpu::hyper::adam::count;
  }
  return 0;
}

inline std::vector<TensorIn> step_tensors(cpu::OptimKind kind, const cpu::OptimTensor<float>* t, int64_t count) {
  std::vector<TensorIn> ts(static_cast<size_t>(count));
  for (int64_t k = 0; k < count; ++k) {
    TensorIn& in = ts[k];
    in.ptr[kP] = t[k].param;
    in.ptr[kG] = const_cast<float*>(t[k].grad);
    for (int j = 0; j < 3; ++j) in.ptr[kS0 + j] = uses_state(kind, t[k].hyper, j) ? t[k].state[j] : nullptr;
    in.ptr[kE] = t[k].ema;
    in.n = t[k].n;
    in.row = t[k].hyper;
  }
  return ts;
}

// Calls f(tables) with the step's tables planned for `kind`'s Coef (one switch, used by the
// launcher and by the emulator).
template <class F>
void with_step_plan(cpu::OptimKind kind, const cpu::OptimTensor<float>* t, int64_t count, F&& f) {
  using K = cpu::OptimKind;
  const std::vector<TensorIn> ts = step_tensors(kind, t, count);
  const int H = hyper_count(kind);
  switch (kind) {
    case K::sgd: return f(plan<SgdCoef>(ts, H, sgd_coef));
    case K::adagrad: return f(plan<AdagradCoef>(ts, H, adagrad_coef));
    case K::adadelta: return f(plan<AdadeltaCoef>(ts, H, adadelta_coef));
    case K::rmsprop: return f(plan<RmspropCoef>(ts, H, rmsprop_coef));
    case K::adam: return f(plan<AdamCoef>(ts, H, adam_coef));
  }
}

// Tensors of the two-stream passes (dst written, src read or null) under one row.
inline std::vector<TensorIn> pair_tensors(float* const* dst, const float* const* src, const int64_t* n,
                                          int64_t count) {
  std::vector<TensorIn> ts(static_cast<size_t>(count));
  for (int64_t k = 0; k < count; ++k) {
    TensorIn& in = ts[k];
    std::memset(in.ptr, 0, sizeof(in.ptr));
    in.ptr[kP] = dst[k];
    in.ptr[kG] = src ? const_cast<float*>(src[k]) : nullptr;
    in.n = n[k];
    in.row = nullptr;
  }
  return ts;
}

}  // namespace dk::cuda::mt

// ==================================================================== kernels (nvcc only)
#if defined(__CUDACC__)
#include "cuda/cuda_common.cuh"
#include "cuda/kernels_cuda.h"
#include "cuda/reduce.cuh"

namespace dk::cuda {

namespace mt {

static_assert(sizeof(Table<AdamCoef>) <= 4000 && sizeof(Table<RmspropCoef>) <= 4000 &&
                  sizeof(Table<NormCoef>) <= 4000,
              "a launch table must fit in the 4 KiB of kernel arguments");

DK_HOST_DEVICE bool aligned16(const float* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// Block b: chunk b of the table. Where every stream of the tensor is 16-byte aligned (CuPy and
// PyTorch allocations are), thread t handles the float4 groups t, t + 256, ... (one 16-byte
// load and store per stream: full 128-byte lines per warp), and the last n mod 4 elements one
// by one; otherwise everything one by one. Each element runs update() exactly once.
template <class Coef>
__global__ void __launch_bounds__(kBlock) apply_kernel(const Table<Coef> tb) {
  const int64_t block = blockIdx.x;
  const int k = find_slot(tb, block);
  const Slot s = tb.t[k];
  const Coef c = tb.rows[s.row];
  int64_t begin, end;
  chunk_range(tb, k, block, begin, end);
  float* q[kStreams];
  bool vec = true;
  for (int j = 0; j < kStreams; ++j) {
    q[j] = s.ptr[j];
    if (q[j] && !aligned16(q[j])) vec = false;
  }
  const bool has_e = q[kE] != nullptr;
  int64_t scalar_from = begin;
  if (vec) {
    const int64_t groups = (end - begin) / 4;
    for (int64_t v = threadIdx.x; v < groups; v += kBlock) {
      const int64_t i = begin + 4 * v;
      float4 in[kStreams] = {};
      for (int j = 0; j < kStreams; ++j)
        if (q[j] && (j != kP || ReadsParam<Coef>::value)) in[j] = *reinterpret_cast<const float4*>(q[j] + i);
      Elem e[4];
#pragma unroll
      for (int l = 0; l < 4; ++l) {
        const float* f[kStreams];
        for (int j = 0; j < kStreams; ++j) f[j] = reinterpret_cast<const float*>(&in[j]);
        e[l] = Elem{ReadsParam<Coef>::value ? f[kP][l] : 0.0f, q[kG] ? f[kG][l] : 0.0f,
                    q[kS0] ? f[kS0][l] : 0.0f, q[kS1] ? f[kS1][l] : 0.0f,
                    q[kS2] ? f[kS2][l] : 0.0f, q[kE] ? f[kE][l] : 0.0f};
        update(c, e[l], has_e);
      }
      *reinterpret_cast<float4*>(q[kP] + i) = make_float4(e[0].p, e[1].p, e[2].p, e[3].p);
      if (q[kS0]) *reinterpret_cast<float4*>(q[kS0] + i) = make_float4(e[0].s0, e[1].s0, e[2].s0, e[3].s0);
      if (q[kS1]) *reinterpret_cast<float4*>(q[kS1] + i) = make_float4(e[0].s1, e[1].s1, e[2].s1, e[3].s1);
      if (q[kS2]) *reinterpret_cast<float4*>(q[kS2] + i) = make_float4(e[0].s2, e[1].s2, e[2].s2, e[3].s2);
      if (q[kE]) *reinterpret_cast<float4*>(q[kE] + i) = make_float4(e[0].e, e[1].e, e[2].e, e[3].e);
    }
    scalar_from = begin + 4 * groups;
  }
  for (int64_t i = scalar_from + threadIdx.x; i < end; i += kBlock) step_element(s, c, i);
}

// Norm level 1: block b reduces its chunk into partial[partial_base + b].
__global__ void __launch_bounds__(kBlock) norm_partial_kernel(const Table<NormCoef> tb, double* partial) {
  __shared__ double smem[kBlock];
  const int64_t block = blockIdx.x;
  const int k = find_slot(tb, block);
  const NormCoef c = tb.rows[0];
  int64_t begin, end;
  chunk_range(tb, k, block, begin, end);
  const double v = norm_thread(c, tb.t[k].ptr[kP], begin, end, threadIdx.x, kBlock);
  const double r = block_reduce<kBlock>(v, smem, [&](double a, double b) { return norm_combine(c, a, b); });
  if (threadIdx.x == 0) partial[tb.partial_base + block] = r;
}

// Norm level 2: one block folds the `count` partials in a fixed order into *out.
__global__ void __launch_bounds__(kBlock) norm_fold_kernel(NormCoef c, const double* partial, int64_t count,
                                                           double* out) {
  __shared__ double smem[kBlock];
  const double v = fold_thread(c, partial, count, threadIdx.x, kBlock);
  const double r = block_reduce<kBlock>(v, smem, [&](double a, double b) { return norm_combine(c, a, b); });
  if (threadIdx.x == 0) *out = r;
}

template <class Coef>
void launch_all(const std::vector<Table<Coef>>& tables, cudaStream_t stream) {
  for (const Table<Coef>& tb : tables) {
    apply_kernel<Coef><<<static_cast<unsigned>(tb.nchunks), kBlock, 0, stream>>>(tb);
    DK_CUDA_CHECK_LAUNCH();
  }
}

}  // namespace mt

void optim_step(cpu::OptimKind kind, const cpu::OptimTensor<float>* tensors, int64_t count,
                cudaStream_t stream) {
  mt::with_step_plan(kind, tensors, count, [&](const auto& tables) { mt::launch_all(tables, stream); });
}

void ema_update(float* const* avg, const float* const* x, const int64_t* n, int64_t count, double decay,
                cudaStream_t stream) {
  const mt::EmaUpdateCoef c{mt::ema_coef(decay)};
  mt::launch_all(mt::plan<mt::EmaUpdateCoef>(mt::pair_tensors(avg, x, n, count), 0,
                                             [&](const double*) { return c; }),
                 stream);
}

void multi_scale(float* const* x, const int64_t* n, int64_t count, double s, cudaStream_t stream) {
  const mt::ScaleCoef c{static_cast<float>(s)};
  mt::launch_all(mt::plan<mt::ScaleCoef>(mt::pair_tensors(x, nullptr, n, count), 0,
                                         [&](const double*) { return c; }),
                 stream);
}

void multi_copy(float* const* dst, const float* const* src, const int64_t* n, int64_t count,
                cudaStream_t stream) {
  mt::launch_all(mt::plan<mt::CopyCoef>(mt::pair_tensors(dst, src, n, count), 0,
                                        [](const double*) { return mt::CopyCoef{0}; }),
                 stream);
}

double multi_norm_reduce(const float* const* x, const int64_t* n, int64_t count, double p,
                         cudaStream_t stream) {
  const mt::NormCoef c = mt::norm_coef(p);
  std::vector<float*> xs(static_cast<size_t>(count));
  for (int64_t k = 0; k < count; ++k) xs[k] = const_cast<float*>(x[k]);
  const auto tables = mt::plan<mt::NormCoef>(mt::pair_tensors(xs.data(), nullptr, n, count), 0,
                                             [&](const double*) { return c; });
  int64_t partials = 0;
  for (const auto& tb : tables) partials += tb.nchunks;
  if (partials == 0) return mt::norm_identity(c);
  Scratch scratch(sizeof(double) * static_cast<size_t>(partials + 1), stream);
  double* partial = scratch.as<double>();
  for (const auto& tb : tables) {
    mt::norm_partial_kernel<<<static_cast<unsigned>(tb.nchunks), mt::kBlock, 0, stream>>>(tb, partial);
    DK_CUDA_CHECK_LAUNCH();
  }
  mt::norm_fold_kernel<<<1, mt::kBlock, 0, stream>>>(c, partial, partials, partial + partials);
  DK_CUDA_CHECK_LAUNCH();
  double result = 0.0;
  DK_CUDA_CHECK(cudaMemcpyAsync(&result, partial + partials, sizeof(double), cudaMemcpyDeviceToHost, stream));
  DK_CUDA_CHECK(cudaStreamSynchronize(stream));
  return result;
}

}  // namespace dk::cuda
#endif  // __CUDACC__
