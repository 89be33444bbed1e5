// conv2d.cu: 2-D convolution on the GPU, forward and both backward passes, as implicit GEMM.
//
// Shape legend as in cpu/conv2d.cpp: N batch, C in-channels, H W input, OC out-channels,
// KH KW kernel, OH OW output, G groups, cpg = C/G, ocpg = OC/G, P = OH*OW.
//
// The CPU unrolls the input into a matrix col[K, P] (im2col) and calls a GEMM. Here the
// unrolling is implicit: one tiled GEMM kernel reads each element of the virtual matrices
// straight from x, dy or w while it loads a tile into shared memory, so nothing of size K*P is
// ever written to memory. Each pass is C[m, n] = sum_k A[m, k] * B[k, n] per group g:
//
//   forward          m = oc (in the group)   n = (img, oh, ow)   k = (c, kh, kw)
//                    A = w_g   B[k, n] = x[img, c, oh*sh - ph + kh*dh, ow*sw - pw + kw*dw]
//                    y[img, oc, oh, ow] = C + b[oc]
//   backward input   m = c (in the group)    n = (img, ih, iw)   k = (o, kh, kw)
//                    A[m, k] = w[o, m, kh, kw]
//                    B[k, n] = dy[img, o, oh, ow] for the output (oh, ow) whose tap (kh, kw)
//                    lands on (ih, iw): oh = (ih + ph - kh*dh) / sh when that divides exactly
//                    and is in range, else 0 (likewise ow).
//                    A gather: every dx element is computed by one thread, no atomics (the
//                    CPU scatters with col2im; on the GPU a scatter would need atomics).
//   backward weight  m = o (in the group)    n = (c, kh, kw)     k = (img, oh, ow)
//                    A[m, k] = dy[img, o, oh, ow]   B[k, n] = the forward B, transposed
//                    The reduction (N*OH*OW) is long and the output small, so it is split
//                    into S chunks (split-K): each block writes the partial dw of its chunk,
//                    and a second kernel adds the S partials in chunk order. S depends only
//                    on the problem size: the result is deterministic (no float atomics).
//                    db[oc] = sum of dy over (img, oh, ow): one block per oc, fixed tree.
//
// The tiled kernel (llm.c / "how to optimize a CUDA matmul" style, kept simple): a block of
// 256 threads computes a 64 x 64 tile of C; it walks k in slices of 16, each slice of A
// (64 x 16) and B (16 x 64) is loaded into shared memory, then every thread accumulates its
// 4 x 4 outputs from shared memory with FMAs. Each output is the sum over k in ascending
// order, in float32 (TF32 tensor cores are not used). The loads, the inner product and the
// stores are DK_HOST_DEVICE functions, so tests/cuda_host/ can run the same code on the CPU.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "common/params.h"
#include "common/philox.h"  // DK_HOST_DEVICE

namespace dk::cuda::conv {

// ---------------------------------------------------------------- tile geometry

constexpr int BM = 64, BN = 64, BK = 16;  // block tile: BM x BN outputs, BK-deep k slices
constexpr int NT = 256;                   // threads per block, seen as a 16 x 16 grid (tx, ty)
constexpr int TM = 4, TN = 4;             // outputs per thread: rows ty + 16 i, cols tx + 16 j
constexpr int kPad = 1;                   // shared-memory padding against bank conflicts
static_assert(16 * TM == BM && 16 * TN == BN && NT == 256, "16 x 16 threads, 4 x 4 outputs each");
static_assert((BM * BK) % NT == 0 && (BK * BN) % NT == 0, "tiles load evenly");

// One k slice of A and B, k-major: the inner product reads a row of each per step.
struct Tile {
  float a[BK][BM + kPad];
  float b[BK][BN + kPad];
};

// ---------------------------------------------------------------- the three virtual GEMMs
// Each problem gives the GEMM sizes M, N, K (per group) and three accessors: a(g, m, k),
// b(g, k, n) and store(g, split, m, n, value). kBKFast says how a B slice is loaded: with
// consecutive threads on consecutive k (true) or on consecutive n (false), whichever walks
// memory contiguously for that problem.

// Element (k, n) of im2col(x) for group g: k = (c, kh, kw), n = (img, oh, ow); 0 in the padding.
DK_HOST_DEVICE float im2col_at(const Conv2dParams& p, const float* x, int64_t cpg, int64_t g,
                               int64_t k, int64_t n) {
  const int64_t kw = k % p.KW, kt = k / p.KW, kh = kt % p.KH, c = kt / p.KH;
  const int64_t ow = n % p.OW, nt = n / p.OW, oh = nt % p.OH, img = nt / p.OH;
  const int64_t ih = oh * p.sh - p.ph + kh * p.dh, iw = ow * p.sw - p.pw + kw * p.dw;
  if (ih < 0 || ih >= p.H || iw < 0 || iw >= p.W) return 0.0f;  // zero padding
  return x[((img * p.C + g * cpg + c) * p.H + ih) * p.W + iw];
}

struct ForwardOp {
  Conv2dParams p;
  int64_t cpg, ocpg;
  int64_t M, N, K;  // ocpg, N*OH*OW, cpg*KH*KW
  const float* x;
  const float* w;
  const float* bias;  // or null
  float* y;
  static constexpr bool kBKFast = false;

  DK_HOST_DEVICE float a(int64_t g, int64_t m, int64_t k) const { return w[(g * ocpg + m) * K + k]; }
  DK_HOST_DEVICE float b(int64_t g, int64_t k, int64_t n) const {
    return im2col_at(p, x, cpg, g, k, n);
  }
  DK_HOST_DEVICE void store(int64_t g, int64_t /*split*/, int64_t m, int64_t n, float v) const {
    const int64_t P = p.OH * p.OW, img = n / P, pix = n % P, oc = g * ocpg + m;
    y[(img * p.OC + oc) * P + pix] = bias ? v + bias[oc] : v;
  }
};

struct BackwardInputOp {
  Conv2dParams p;
  int64_t cpg, ocpg;
  int64_t M, N, K;  // cpg, N*H*W, ocpg*KH*KW
  const float* dy;
  const float* w;
  float* dx;
  static constexpr bool kBKFast = false;

  DK_HOST_DEVICE float a(int64_t g, int64_t m, int64_t k) const {
    const int64_t KK = p.KH * p.KW, o = k / KK, r = k % KK;
    return w[((g * ocpg + o) * cpg + m) * KK + r];
  }
  DK_HOST_DEVICE float b(int64_t g, int64_t k, int64_t n) const {
    const int64_t kw = k % p.KW, kt = k / p.KW, kh = kt % p.KH, o = kt / p.KH;
    const int64_t iw = n % p.W, nt = n / p.W, ih = nt % p.H, img = nt / p.H;
    // Invert ih = oh*sh - ph + kh*dh: which output row reads input row ih through tap kh?
    const int64_t th = ih + p.ph - kh * p.dh, tw = iw + p.pw - kw * p.dw;
    if (th < 0 || tw < 0 || th % p.sh != 0 || tw % p.sw != 0) return 0.0f;
    const int64_t oh = th / p.sh, ow = tw / p.sw;
    if (oh >= p.OH || ow >= p.OW) return 0.0f;
    return dy[((img * p.OC + g * ocpg + o) * p.OH + oh) * p.OW + ow];
  }
  DK_HOST_DEVICE void store(int64_t g, int64_t /*split*/, int64_t m, int64_t n, float v) const {
    const int64_t HW = p.H * p.W, img = n / HW, pix = n % HW;
    dx[(img * p.C + g * cpg + m) * HW + pix] = v;
  }
};

struct BackwardWeightOp {
  Conv2dParams p;
  int64_t cpg, ocpg;
  int64_t M, N, K;  // ocpg, cpg*KH*KW, N*OH*OW
  const float* dy;
  const float* x;
  float* out;  // dw (one split) or the partials [splits][OC][cpg*KH*KW]
  static constexpr bool kBKFast = true;  // k = (img, oh, ow): consecutive k walk along a row

  DK_HOST_DEVICE float a(int64_t g, int64_t m, int64_t k) const {
    const int64_t P = p.OH * p.OW, img = k / P, pix = k % P;
    return dy[(img * p.OC + g * ocpg + m) * P + pix];
  }
  DK_HOST_DEVICE float b(int64_t g, int64_t k, int64_t n) const {
    return im2col_at(p, x, cpg, g, n, k);  // the forward's B, transposed
  }
  DK_HOST_DEVICE void store(int64_t g, int64_t split, int64_t m, int64_t n, float v) const {
    out[(split * p.OC + g * ocpg + m) * N + n] = v;
  }
};

inline ForwardOp make_forward(const Conv2dParams& p, float* y, const float* x, const float* w,
                              const float* b) {
  const int64_t cpg = p.C / p.G, ocpg = p.OC / p.G;
  return ForwardOp{p, cpg, ocpg, ocpg, p.N * p.OH * p.OW, cpg * p.KH * p.KW, x, w, b, y};
}
inline BackwardInputOp make_backward_input(const Conv2dParams& p, float* dx, const float* dy,
                                           const float* w) {
  const int64_t cpg = p.C / p.G, ocpg = p.OC / p.G;
  return BackwardInputOp{p, cpg, ocpg, cpg, p.N * p.H * p.W, ocpg * p.KH * p.KW, dy, w, dx};
}
inline BackwardWeightOp make_backward_weight(const Conv2dParams& p, float* out, const float* dy,
                                             const float* x) {
  const int64_t cpg = p.C / p.G, ocpg = p.OC / p.G;
  return BackwardWeightOp{p, cpg, ocpg, ocpg, cpg * p.KH * p.KW, p.N * p.OH * p.OW, dy, x, out};
}

// How the weight gradient's reduction (K = N*OH*OW) is split: enough blocks to fill a large
// GPU (about 1024 with the output tiles), each chunk at least 512 long. A function of the
// problem size only (never of the device), so the bits of dw are too.
struct SplitPlan {
  int64_t chunk;   // k values per chunk, a multiple of BK
  int64_t splits;  // ceil(K / chunk) >= 1
};

inline SplitPlan weight_grad_plan(const BackwardWeightOp& op) {
  const int64_t tiles = (op.M + BM - 1) / BM * ((op.N + BN - 1) / BN) * op.p.G;
  if (op.K <= 0) return {BK, 1};
  int64_t splits = std::max<int64_t>(1, 1024 / std::max<int64_t>(tiles, 1));
  splits = std::min(splits, std::max<int64_t>(1, op.K / 512));
  int64_t chunk = (op.K + splits - 1) / splits;
  chunk = (chunk + BK - 1) / BK * BK;
  return {chunk, (op.K + chunk - 1) / chunk};
}

// ---------------------------------------------------------------- the tile steps

// Thread `tid` loads its share of the k slice [k0, min(k0 + BK, k1)) of A rows [m0, m0+BM)
// and B columns [n0, n0+BN) into shared memory; anything outside the matrices is 0.
template <class Op>
DK_HOST_DEVICE void load_tile(const Op& op, Tile& t, int tid, int64_t g, int64_t m0, int64_t n0,
                              int64_t k0, int64_t k1) {
  // A: consecutive threads take consecutive k (A rows are contiguous in k in all three ops)
  for (int r = 0; r < BM * BK / NT; ++r) {
    const int e = tid + r * NT, kk = e % BK, mm = e / BK;
    const int64_t m = m0 + mm, k = k0 + kk;
    t.a[kk][mm] = (m < op.M && k < k1) ? op.a(g, m, k) : 0.0f;
  }
  for (int r = 0; r < BK * BN / NT; ++r) {
    const int e = tid + r * NT;
    const int kk = Op::kBKFast ? e % BK : e / BN;
    const int nn = Op::kBKFast ? e / BK : e % BN;
    const int64_t n = n0 + nn, k = k0 + kk;
    t.b[kk][nn] = (n < op.N && k < k1) ? op.b(g, k, n) : 0.0f;
  }
}

// Thread `tid` adds the slice's contribution to its 4 x 4 outputs, k in ascending order.
DK_HOST_DEVICE void mma_tile(const Tile& t, int tid, float (&acc)[TM][TN]) {
  const int tx = tid % 16, ty = tid / 16;
  for (int kk = 0; kk < BK; ++kk) {
    float av[TM], bv[TN];
    for (int i = 0; i < TM; ++i) av[i] = t.a[kk][ty + 16 * i];
    for (int j = 0; j < TN; ++j) bv[j] = t.b[kk][tx + 16 * j];
    for (int i = 0; i < TM; ++i)
      for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
  }
}

// Thread `tid` writes its outputs that fall inside the matrix. Consecutive threads (tx) write
// consecutive n: contiguous pixels for the forward and backward-input stores.
template <class Op>
DK_HOST_DEVICE void store_tile(const Op& op, int tid, int64_t g, int64_t split, int64_t m0,
                               int64_t n0, const float (&acc)[TM][TN]) {
  const int tx = tid % 16, ty = tid / 16;
  for (int i = 0; i < TM; ++i) {
    const int64_t m = m0 + ty + 16 * i;
    if (m >= op.M) continue;
    for (int j = 0; j < TN; ++j) {
      const int64_t n = n0 + tx + 16 * j;
      if (n < op.N) op.store(g, split, m, n, acc[i][j]);
    }
  }
}

// dw[i] = sum over s of partial[s][i], s ascending (the split-K fold).
DK_HOST_DEVICE void fold_partials(float* dw, const float* partial, int64_t total, int64_t splits,
                                  int64_t i) {
  float s = 0.0f;
  for (int64_t k = 0; k < splits; ++k) s += partial[k * total + i];
  dw[i] = s;
}

}  // namespace dk::cuda::conv

// ==================================================================== kernels (nvcc only)
#if defined(__CUDACC__)
#include "cuda/cuda_common.cuh"
#include "cuda/kernels_cuda.h"
#include "cuda/reduce.cuh"

namespace dk::cuda {

namespace conv {

// Block (x, y, z) computes the output tile (column tile x, row tile y) of group/split z; the
// y and z loops cover grids larger than CUDA's 65535 limit on those dimensions.
template <class Op>
__global__ void __launch_bounds__(NT) igemm_kernel(const Op op, int64_t groups, int64_t splits,
                                                   int64_t k_chunk) {
  __shared__ Tile tile;
  const int tid = threadIdx.x;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * BN;
  const int64_t mtiles = (op.M + BM - 1) / BM;
  for (int64_t mt = blockIdx.y; mt < mtiles; mt += gridDim.y) {
    for (int64_t z = blockIdx.z; z < groups * splits; z += gridDim.z) {
      const int64_t g = z / splits, s = z % splits;
      const int64_t kb = s * k_chunk, ke = min(op.K, kb + k_chunk);
      float acc[TM][TN] = {};
      for (int64_t k0 = kb; k0 < ke; k0 += BK) {
        load_tile(op, tile, tid, g, mt * BM, n0, k0, ke);
        __syncthreads();
        mma_tile(tile, tid, acc);
        __syncthreads();  // before the next slice overwrites the tile
      }
      store_tile(op, tid, g, s, mt * BM, n0, acc);
    }
  }
}

__global__ void fold_partials_kernel(float* dw, const float* partial, int64_t total,
                                     int64_t splits) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x)
    fold_partials(dw, partial, total, splits, i);
}

// db[oc] = sum over (img, pix) of dy[img, oc, pix]: block oc, thread t sums the elements
// t, t + 256, ... of the channel in order, then the block adds the 256 sums in a fixed tree.
__global__ void __launch_bounds__(kThreads) bias_grad_kernel(float* db, const float* dy,
                                                             int64_t N, int64_t OC, int64_t P) {
  __shared__ float smem[kThreads];
  for (int64_t oc = blockIdx.x; oc < OC; oc += gridDim.x) {
    float s = 0.0f;
    for (int64_t r = threadIdx.x; r < N * P; r += kThreads) {
      const int64_t img = r / P, pix = r % P;
      s += dy[(img * OC + oc) * P + pix];
    }
    s = block_sum<kThreads>(s, smem);
    if (threadIdx.x == 0) db[oc] = s;
  }
}

template <class Op>
void launch_igemm(const Op& op, int64_t groups, int64_t splits, int64_t k_chunk,
                  cudaStream_t stream) {
  if (op.M == 0 || op.N == 0 || groups == 0) return;
  const int64_t xt = ceil_div(op.N, BN);
  if (xt > 0x7fffffff)
    throw std::invalid_argument("conv2d: the problem is too large for the CUDA kernels");
  const dim3 grid(static_cast<unsigned>(xt),
                  static_cast<unsigned>(std::min<int64_t>(ceil_div(op.M, BM), 65535)),
                  static_cast<unsigned>(std::min<int64_t>(groups * splits, 65535)));
  igemm_kernel<Op><<<grid, NT, 0, stream>>>(op, groups, splits, k_chunk);
  DK_CUDA_CHECK_LAUNCH();
}

}  // namespace conv

void conv2d_forward(float* y, const float* x, const float* w, const float* b,
                    const Conv2dParams& p, cudaStream_t stream) {
  const conv::ForwardOp op = conv::make_forward(p, y, x, w, b);
  conv::launch_igemm(op, p.G, 1, op.K, stream);
}

void conv2d_backward_input(float* dx, const float* dy, const float* w, const Conv2dParams& p,
                           cudaStream_t stream) {
  const conv::BackwardInputOp op = conv::make_backward_input(p, dx, dy, w);
  conv::launch_igemm(op, p.G, 1, op.K, stream);
}

void conv2d_backward_weight(float* dw, float* db, const float* dy, const float* x,
                            const Conv2dParams& p, cudaStream_t stream) {
  conv::BackwardWeightOp op = conv::make_backward_weight(p, dw, dy, x);
  const conv::SplitPlan plan = conv::weight_grad_plan(op);
  const int64_t total = p.OC * op.N;  // elements of dw
  if (plan.splits == 1) {
    conv::launch_igemm(op, p.G, 1, plan.chunk, stream);  // N = 0 too: the tiles store zeros
  } else {
    Scratch partial(sizeof(float) * static_cast<size_t>(plan.splits * total), stream);
    op.out = partial.as<float>();
    conv::launch_igemm(op, p.G, plan.splits, plan.chunk, stream);
    conv::fold_partials_kernel<<<grid_for(total), kThreads, 0, stream>>>(dw, op.out, total,
                                                                         plan.splits);
    DK_CUDA_CHECK_LAUNCH();
  }
  if (db && p.OC > 0) {
    conv::bias_grad_kernel<<<static_cast<unsigned>(std::min<int64_t>(p.OC, 1 << 20)), kThreads, 0,
                             stream>>>(db, dy, p.N, p.OC, p.OH * p.OW);
    DK_CUDA_CHECK_LAUNCH();
  }
}

}  // namespace dk::cuda
#endif  // __CUDACC__
