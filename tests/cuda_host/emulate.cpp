// emulate.cpp: the CUDA kernels' own code, run on the CPU, for machines without a GPU.
//
// Each csrc/cuda/*.cu file keeps the per-thread work of its kernels (index math, window
// loops, tile loads, the inner product, the Philox draw) in DK_HOST_DEVICE functions above its
// `#if defined(__CUDACC__)` section. Compiled here with g++, only those functions exist; this
// file replays each kernel around them: every block, every thread, in the kernel's order of
// steps and barriers (a barrier = finish the step for all threads of the block before the
// next step). What it cannot check: the launch configuration, shared-memory and warp
// semantics on real hardware, races, and performance (tests/test_cuda.py does, on a GPU).
//
// A plain C ABI (ctypes, no pybind11): tests/test_cuda_host.py compiles this file and calls
// it on NumPy arrays. Conv and pool parameters travel as int64 arrays in params.h's order.
#include <cstdint>
#include <vector>

#include "cuda/activation.cu"
#include "cuda/batch_norm.cu"
#include "cuda/conv2d.cu"
#include "cuda/dropout.cu"
#include "cuda/fractional_pool2d.cu"
#include "cuda/optim.cu"
#include "cuda/pool2d.cu"

namespace {

using namespace dk;
using namespace dk::cuda;

constexpr int kThreads = 256;  // cuda_common.cuh's kThreads (the reduction block size)

Conv2dParams conv_params(const int64_t* a) {
  Conv2dParams p{};
  p.N = a[0]; p.C = a[1]; p.H = a[2]; p.W = a[3]; p.OC = a[4]; p.KH = a[5]; p.KW = a[6];
  p.OH = a[7]; p.OW = a[8]; p.sh = a[9]; p.sw = a[10]; p.ph = a[11]; p.pw = a[12];
  p.dh = a[13]; p.dw = a[14]; p.G = a[15];
  return p;
}

Pool2dParams pool_params(const int64_t* a) {
  Pool2dParams p{};
  p.N = a[0]; p.C = a[1]; p.H = a[2]; p.W = a[3]; p.OH = a[4]; p.OW = a[5];
  p.kh = a[6]; p.kw = a[7]; p.sh = a[8]; p.sw = a[9]; p.ph = a[10]; p.pw = a[11];
  p.dh = a[12]; p.dw = a[13]; p.count_include_pad = a[14] != 0;
  return p;
}

// reduce.cuh's block_reduce: 256 values folded in the same fixed tree, combine(v[t], v[t + s]).
template <class T, class Combine>
T block_fold(std::vector<T> v, Combine combine) {
  for (int s = kThreads / 2; s > 0; s >>= 1)
    for (int t = 0; t < s; ++t) v[t] = combine(v[t], v[t + s]);
  return v[0];
}

template <class T>
T block_sum(std::vector<T> v) {
  return block_fold(std::move(v), [](T a, T b) { return a + b; });
}

// optim.cu's apply_kernel, for every table of a plan: every block b updates each element of
// its chunk once (the device does most of them four at a time; the arithmetic is the same).
// Returns the number of launches.
template <class Coef>
int64_t mt_apply(const std::vector<mt::Table<Coef>>& tables) {
  for (const mt::Table<Coef>& tb : tables)
    for (int64_t b = 0; b < tb.nchunks; ++b) {
      const int k = mt::find_slot(tb, b);
      int64_t begin, end;
      mt::chunk_range(tb, k, b, begin, end);
      for (int64_t i = begin; i < end; ++i) mt::step_element(tb.t[k], tb.rows[tb.t[k].row], i);
    }
  return static_cast<int64_t>(tables.size());
}

// conv2d.cu's igemm_kernel: all blocks (column tile, row tile, group * split), each thread of
// a block running load_tile, [barrier], mma_tile, [barrier] per k slice, then store_tile.
template <class Op>
void igemm(const Op& op, int64_t groups, int64_t splits, int64_t k_chunk) {
  using namespace conv;
  if (op.M == 0 || op.N == 0) return;
  Tile tile;
  for (int64_t bx = 0; bx < (op.N + BN - 1) / BN; ++bx) {
    for (int64_t mt = 0; mt < (op.M + BM - 1) / BM; ++mt) {
      for (int64_t z = 0; z < groups * splits; ++z) {
        const int64_t g = z / splits, s = z % splits;
        const int64_t kb = s * k_chunk, ke = std::min(op.K, kb + k_chunk);
        float a[NT][TM][TN] = {};
        for (int64_t k0 = kb; k0 < ke; k0 += BK) {
          for (int t = 0; t < NT; ++t) load_tile(op, tile, t, g, mt * BM, bx * BN, k0, ke);
          for (int t = 0; t < NT; ++t) mma_tile(tile, t, a[t]);
        }
        for (int t = 0; t < NT; ++t) store_tile(op, t, g, s, mt * BM, bx * BN, a[t]);
      }
    }
  }
}

// batch_norm.cu's partial_kernel: block (c, s), 256 threads, two block sums.
void bn_partials(bn::Sums* partial, int64_t S, const float* x, const float* dy, const float* relu_y,
                 const float* save_mean, const BatchNormParams& p) {
  const int64_t M = p.N * p.HW, chunk = (M + S - 1) / S;
  for (int64_t blk = 0; blk < p.C * S; ++blk) {
    const int64_t c = blk / S, s = blk % S, beg = s * chunk, end = std::min(M, beg + chunk);
    std::vector<double> va(kThreads), vb(kThreads);
    for (int t = 0; t < kThreads; ++t) {
      const bn::Sums r = dy ? bn::grad_thread(dy, relu_y, x, save_mean, p, c, beg, end, t, kThreads)
                            : bn::stats_thread(x, p, c, beg, end, t, kThreads);
      va[t] = r.a;
      vb[t] = r.b;
    }
    partial[blk] = bn::Sums{block_sum(va), block_sum(vb)};
  }
}

}  // namespace

extern "C" {

// ---------------------------------------------------------------- conv2d
void emu_conv2d_forward(float* y, const float* x, const float* w, const float* b, const int64_t* pa) {
  const Conv2dParams p = conv_params(pa);
  const conv::ForwardOp op = conv::make_forward(p, y, x, w, b);
  igemm(op, p.G, 1, op.K);
}

void emu_conv2d_backward_input(float* dx, const float* dy, const float* w, const int64_t* pa) {
  const Conv2dParams p = conv_params(pa);
  const conv::BackwardInputOp op = conv::make_backward_input(p, dx, dy, w);
  igemm(op, p.G, 1, op.K);
}

// Returns the number of k chunks used (so the tests can see split-K happen).
int64_t emu_conv2d_backward_weight(float* dw, float* db, const float* dy, const float* x,
                                   const int64_t* pa) {
  const Conv2dParams p = conv_params(pa);
  conv::BackwardWeightOp op = conv::make_backward_weight(p, dw, dy, x);
  const conv::SplitPlan plan = conv::weight_grad_plan(op);
  const int64_t total = p.OC * op.N;
  if (plan.splits == 1) {
    igemm(op, p.G, 1, plan.chunk);
  } else {
    std::vector<float> partial(static_cast<size_t>(plan.splits * total));
    op.out = partial.data();
    igemm(op, p.G, plan.splits, plan.chunk);
    for (int64_t i = 0; i < total; ++i) conv::fold_partials(dw, partial.data(), total, plan.splits, i);
  }
  if (db) {  // bias_grad_kernel: block oc, thread t sums r = t, t + 256, ..., then the tree
    const int64_t P = p.OH * p.OW;
    for (int64_t oc = 0; oc < p.OC; ++oc) {
      std::vector<float> v(kThreads, 0.0f);
      for (int t = 0; t < kThreads; ++t)
        for (int64_t r = t; r < p.N * P; r += kThreads) v[t] += dy[((r / P) * p.OC + oc) * P + r % P];
      db[oc] = block_sum(v);
    }
  }
  return plan.splits;
}

// ---------------------------------------------------------------- pooling
void emu_max_pool2d_forward(float* y, int64_t* idx, const float* x, const int64_t* pa) {
  const Pool2dParams p = pool_params(pa);
  for (int64_t o = 0; o < p.N * p.C * p.OH * p.OW; ++o) pool::max_forward_element(y, idx, x, p, o);
}

// max_backward_kernel: one warp per plane; per batch of 32 outputs, all lanes stage, [syncwarp],
// all lanes scatter, [syncwarp]. Returns the smallest bad position, or -1.
int64_t emu_max_pool2d_backward(float* dx, const float* dy, const int64_t* idx, const int64_t* pa) {
  const Pool2dParams p = pool_params(pa);
  const int64_t HW = p.H * p.W, OHW = p.OH * p.OW;
  int64_t bad = -1;
  int64_t sj[pool::kWarp];
  float sv[pool::kWarp];
  for (int64_t q = 0; q < p.N * p.C; ++q) {
    float* dxp = dx + q * HW;
    for (int64_t i = 0; i < HW; ++i) dxp[i] = 0.0f;
    for (int64_t base = 0; base < OHW; base += pool::kWarp) {
      for (int l = 0; l < pool::kWarp; ++l) {
        const int64_t b = pool::max_backward_stage(sj, sv, dy, idx, q, HW, OHW, base, l);
        if (b >= 0 && (bad < 0 || b < bad)) bad = b;
      }
      for (int l = 0; l < pool::kWarp; ++l) pool::max_backward_scatter(dxp, sj, sv, l);
    }
  }
  return bad;
}

void emu_avg_pool2d_forward(float* y, const float* x, const int64_t* pa) {
  const Pool2dParams p = pool_params(pa);
  for (int64_t o = 0; o < p.N * p.C * p.OH * p.OW; ++o) pool::avg_forward_element(y, x, p, o);
}

void emu_avg_pool2d_backward(float* dx, const float* dy, const int64_t* pa) {
  const Pool2dParams p = pool_params(pa);
  for (int64_t i = 0; i < p.N * p.C * p.H * p.W; ++i) pool::avg_backward_element(dx, dy, p, i);
}

// fractional forward_kernel: one thread per output (grid-stride), independent threads.
void emu_fractional_max_pool2d_forward(float* y, int64_t* idx, const float* x, const float* samples,
                                       const int64_t* pa) {
  const FractionalPool2dParams p{pa[0], pa[1], pa[2], pa[3], pa[4], pa[5], pa[6], pa[7]};
  for (int64_t o = 0; o < p.N * p.C * p.OH * p.OW; ++o)
    fractional::forward_element(y, idx, x, samples, p, o);
}

// ---------------------------------------------------------------- batch norm
void emu_batch_norm_forward(float* y, float* save_mean, float* save_invstd, float* running_mean,
                            float* running_var, const float* x, const float* w, const float* b,
                            int64_t N, int64_t C, int64_t HW, int training, double momentum,
                            double eps, int relu) {
  const BatchNormParams p{N, C, HW, momentum, eps, relu != 0};
  std::vector<bn::Coef> coef(static_cast<size_t>(C));
  if (training) {
    const int64_t S = bn::chunks_per_channel(N * HW);
    std::vector<bn::Sums> partial(static_cast<size_t>(C * S));
    bn_partials(partial.data(), S, x, nullptr, nullptr, nullptr, p);
    for (int64_t c = 0; c < C; ++c)
      bn::finalize_train(coef.data(), save_mean, save_invstd, running_mean, running_var,
                         partial.data(), S, x, w, b, p, c);
  } else {
    for (int64_t c = 0; c < C; ++c)
      bn::finalize_eval(coef.data(), save_mean, save_invstd, running_mean, running_var, w, b, p, c);
  }
  for (int64_t e = 0; e < N * C * HW; ++e) bn::apply_element(y, x, nullptr, nullptr, coef.data(), p, e);
}

void emu_batch_norm_backward(float* dx, float* dw, float* db, const float* dy, const float* x,
                             const float* w, const float* save_mean, const float* save_invstd,
                             int64_t N, int64_t C, int64_t HW, int training, const float* relu_y) {
  const BatchNormParams p{N, C, HW, 0.0, 1.0};
  const int64_t S = bn::chunks_per_channel(N * HW);
  std::vector<bn::Sums> partial(static_cast<size_t>(C * S));
  std::vector<bn::Coef> coef(static_cast<size_t>(C));
  bn_partials(partial.data(), S, x, dy, relu_y, save_mean, p);
  for (int64_t c = 0; c < C; ++c)
    bn::finalize_backward(coef.data(), dw, db, partial.data(), S, w, save_mean, save_invstd,
                          training != 0, p, c);
  for (int64_t e = 0; e < N * C * HW; ++e) bn::apply_element(dx, x, dy, relu_y, coef.data(), p, e);
}

// ---------------------------------------------------------------- dropout, relu
void emu_dropout_forward(float* y, uint8_t* mask, const float* x, int64_t n, double p, uint64_t seed) {
  for (int64_t t = 0; t < (n + 3) / 4; ++t)
    dropout::forward_group(y, mask, x, n, dropout_threshold(p), dropout::scale_of(p), p >= 1.0,
                           seed, t);
}

void emu_dropout_backward(float* dx, const float* dy, const uint8_t* mask, int64_t n, double p) {
  for (int64_t i = 0; i < n; ++i)
    dropout::backward_element(dx, dy, mask, dropout::scale_of(p), p >= 1.0, i);
}

void emu_relu_forward(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) act::relu_element(y, x, i);
}

void emu_relu_backward(float* dx, const float* dy, const float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) act::relu_backward_element(dx, dy, y, i);
}

// ---------------------------------------------------------------- multi-tensor passes
// Tensors cross as arrays of pointers (a null pointer: no such array); states holds three per
// tensor (states[3k + j]). Each returns the number of launches its plan needs.
int64_t emu_optim_step(int kind, float** params, float** grads, float** states, float** emas,
                       const int64_t* n, const double* hyper, int64_t count, int64_t H) {
  std::vector<cpu::OptimTensor<float>> t(static_cast<size_t>(count));
  for (int64_t k = 0; k < count; ++k) {
    t[k].param = params[k];
    t[k].grad = grads[k];
    for (int j = 0; j < 3; ++j) t[k].state[j] = states[3 * k + j];
    t[k].ema = emas ? emas[k] : nullptr;
    t[k].n = n[k];
    t[k].hyper = hyper + k * H;
  }
  int64_t launches = 0;
  mt::with_step_plan(static_cast<cpu::OptimKind>(kind), t.data(), count,
                     [&](const auto& tables) { launches = mt_apply(tables); });
  return launches;
}

int64_t emu_ema_update(float** avg, float** x, const int64_t* n, int64_t count, double decay) {
  const mt::EmaUpdateCoef c{mt::ema_coef(decay)};
  return mt_apply(mt::plan<mt::EmaUpdateCoef>(mt::pair_tensors(avg, x, n, count), 0,
                                              [&](const double*) { return c; }));
}

int64_t emu_multi_scale(float** x, const int64_t* n, int64_t count, double s) {
  const mt::ScaleCoef c{static_cast<float>(s)};
  return mt_apply(mt::plan<mt::ScaleCoef>(mt::pair_tensors(x, nullptr, n, count), 0,
                                          [&](const double*) { return c; }));
}

int64_t emu_multi_copy(float** dst, float** src, const int64_t* n, int64_t count) {
  return mt_apply(mt::plan<mt::CopyCoef>(mt::pair_tensors(dst, src, n, count), 0,
                                         [](const double*) { return mt::CopyCoef{0}; }));
}

// norm_partial_kernel over every table (partials in launch order), then norm_fold_kernel.
double emu_multi_norm_reduce(float** x, const int64_t* n, int64_t count, double p, int64_t* launches) {
  const mt::NormCoef c = mt::norm_coef(p);
  const auto combine = [&](double a, double b) { return mt::norm_combine(c, a, b); };
  const auto tables = mt::plan<mt::NormCoef>(mt::pair_tensors(x, nullptr, n, count), 0,
                                             [&](const double*) { return c; });
  *launches = static_cast<int64_t>(tables.size());
  std::vector<double> partial;
  for (const auto& tb : tables)
    for (int64_t b = 0; b < tb.nchunks; ++b) {
      const int k = mt::find_slot(tb, b);
      int64_t begin, end;
      mt::chunk_range(tb, k, b, begin, end);
      std::vector<double> v(kThreads);
      for (int t = 0; t < kThreads; ++t) v[t] = mt::norm_thread(c, tb.t[k].ptr[mt::kP], begin, end, t, kThreads);
      partial.push_back(block_fold(v, combine));
    }
  if (partial.empty()) return mt::norm_identity(c);
  std::vector<double> v(kThreads);
  for (int t = 0; t < kThreads; ++t)
    v[t] = mt::fold_thread(c, partial.data(), static_cast<int64_t>(partial.size()), t, kThreads);
  return block_fold(v, combine);
}

}  // extern "C"
