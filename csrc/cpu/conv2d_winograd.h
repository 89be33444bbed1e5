// conv2d_winograd.h: Winograd F(2x2, 3x3) for 3x3 stride-1 layers, all three directions.
//
// Part of the float32 convolution kernels for one SIMD level: included after conv2d_fast.h
// by conv2d_avx512.cpp and conv2d_avx2.cpp (see conv2d_fast.h for the conventions).
#pragma once
#include "cpu/conv2d_fast.h"

namespace dk::cpu::DK_ISA_NS {

// ---------------------------------------------------------------------------------------------
// Winograd F(2x2, 3x3) for 3x3 stride-1 convolutions (Lavin & Gray, "Fast Algorithms for
// Convolutional Neural Networks", 2016).
//
// Each 2x2 output tile is computed from a 4x4 input tile d as
//     Y = A^T [ sum_c (G g_c G^T) .* (B^T d_c B) ] A
// with the 3x3 filter g, elementwise product .*, and the constant matrices
//     B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]   G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1]
//     A^T = [1 1 1 0; 0 1 -1 -1]
// The sum over input channels is, for each of the 16 positions xi of the 4x4 transformed
// tile, a matrix product  M_xi[oc, tile] = U_xi[oc, c] . V_xi[c, tile]:  16 products of the
// same size as the direct convolution's but with 4 tiles x 16 = 64 multiplies per 4 outputs
// per channel pair instead of 4 x 9 = 36... per output: 16/4 = 4 instead of 9, 2.25x fewer.
// The transforms are additions only (and halvings for the weights), done once per tile and
// channel: a few percent of the work when C and OC are >= 32.
//
// Layout: lanes = tiles. The 4x4 input tiles at stride 2 are exactly the taps of a stride-2
// 4x4 "convolution", so the phase-split flat geometry above gives every tile element d[r][s]
// of L tiles as one masked vector load. Tiles are numbered per sample (t = i*tw + j); a block
// is NV "slots" of L tiles each (a slot = one vector of one sample's tiles). Per block:
//   1. input transform  V[xi][c][slot lanes]      (16 B panels, c rows)
//   2. for a chunk of output channels: 16 micro-kernel GEMMs M[xi] = U[xi] . V[xi]
//   3. output transform Y = A^T M A (+ bias, ReLU) -> the 4 phase planes of the output,
//      interleaved into y.
constexpr int kWinoXi = 16;

// U[xi][oc][c] = G g G^T for w (OC, C, 3, 3), written straight into A panels (16 "groups" of
// OC rows, K = C).
inline PackedA winograd_weights(const float* w, int64_t OC, int64_t C, float* storage) {
  PackedA U(kWinoXi, OC, C, storage);
  parallel_for(OC, 1, [&](int64_t o0, int64_t o1) {
    for (int64_t oc = o0; oc < o1; ++oc) {
      const int64_t ob = oc / kMR, i = oc % kMR;
      const int mr = U.mr(ob);
      for (int64_t c = 0; c < C; ++c) {
        const float* g = w + (oc * C + c) * 9;
        float t[4][3];  // G g
        for (int k = 0; k < 3; ++k) {
          t[0][k] = g[k];
          t[1][k] = 0.5f * (g[k] + g[3 + k] + g[6 + k]);
          t[2][k] = 0.5f * (g[k] - g[3 + k] + g[6 + k]);
          t[3][k] = g[6 + k];
        }
        for (int r = 0; r < 4; ++r) {  // (G g) G^T
          const float u[4] = {t[r][0], 0.5f * (t[r][0] + t[r][1] + t[r][2]),
                              0.5f * (t[r][0] - t[r][1] + t[r][2]), t[r][2]};
          for (int q = 0; q < 4; ++q) U.panel(r * 4 + q, ob)[c * mr + i] = u[q];
        }
      }
    }
  });
  return U;
}

// The geometry of the 4x4 input tiles: a stride-2, 4x4-kernel convolution with the same
// padding, on the tile grid th x tw.
inline Conv2dParams winograd_tile_params(const Conv2dParams& p) {
  Conv2dParams t = p;
  t.KH = t.KW = 4;
  t.sh = t.sw = 2;
  t.dh = t.dw = 1;
  t.OH = (p.OH + 1) / 2;
  t.OW = (p.OW + 1) / 2;
  return t;
}

// B^T d B for 4 x 4 vectors (in place, d[r*4 + s]).
inline void winograd_input_transform(Simd::V d[16]) {
  using S = Simd;
  for (int s = 0; s < 4; ++s) {  // B^T d: rows
    const Simd::V d0 = d[s], d1 = d[4 + s], d2 = d[8 + s], d3 = d[12 + s];
    d[s] = S::sub(d0, d2);
    d[4 + s] = S::add(d1, d2);
    d[8 + s] = S::sub(d2, d1);
    d[12 + s] = S::sub(d1, d3);
  }
  for (int r = 0; r < 4; ++r) {  // (B^T d) B: columns
    Simd::V* x = d + 4 * r;
    const Simd::V d0 = x[0], d1 = x[1], d2 = x[2], d3 = x[3];
    x[0] = S::sub(d0, d2);
    x[1] = S::add(d1, d2);
    x[2] = S::sub(d2, d1);
    x[3] = S::sub(d1, d3);
  }
}

// V = B^T d B of the tiles of vector v (L tiles) for all C channels of a phase-split sample
// z: position xi of channel c goes to dst[xi * xstride + c * cstride] (L floats).
inline void winograd_transform_tiles(float* dst, int64_t xstride, int64_t cstride, const float* z,
                                     int64_t cs, int64_t C, int64_t v, const FlatSpec& f) {
  using S = Simd;
  constexpr int L = S::L;
  const uint32_t* mbits = f.bits.data() + v * 16;
  for (int64_t c = 0; c < C; ++c) {
    const float* src = z + c * cs + v * L;
    S::V d[16];
    for (int t = 0; t < 16; ++t) d[t] = S::loadm(src + f.off[t], S::mask(mbits[t]));
    winograd_input_transform(d);
    for (int xi = 0; xi < 16; ++xi) S::store(dst + xi * xstride + c * cstride, d[xi]);
  }
}

// A^T m A for 4 x 4 vectors -> y[a*2 + b], the 2 x 2 outputs.
inline void winograd_output_transform(const Simd::V m[16], Simd::V y[4]) {
  using S = Simd;
  Simd::V t[2][4];  // A^T m
  for (int s = 0; s < 4; ++s) {
    t[0][s] = S::add(S::add(m[s], m[4 + s]), m[8 + s]);
    t[1][s] = S::sub(S::sub(m[4 + s], m[8 + s]), m[12 + s]);
  }
  for (int a = 0; a < 2; ++a) {  // (A^T m) A
    y[a * 2 + 0] = S::add(S::add(t[a][0], t[a][1]), t[a][2]);
    y[a * 2 + 1] = S::sub(S::sub(t[a][1], t[a][2]), t[a][3]);
  }
}

// Write the 2x2 outputs of L tiles (t0.. of a sample, tw tiles per row) into one output
// plane: output row 2i + a gets the interleaved pair (y[a][0], y[a][1]) of each tile.
inline void winograd_store_tiles(float* yp, int64_t OH, int64_t OW, int64_t tw, int64_t t0,
                                 int64_t ntiles, const Simd::V y[4]) {
  using S = Simd;
  constexpr int L = S::L;
  // per a: the tiles' pixel pairs in tile order (2L used; 3L so the vector reads of the runs
  // below, which start anywhere in the first 2L, stay inside the array)
  alignas(64) float pairs[2][3 * L];
  for (int a = 0; a < 2; ++a) {
    alignas(64) float e[L], o[L];
    S::store(e, y[a * 2]);
    S::store(o, y[a * 2 + 1]);
#if defined(__AVX512F__)
    const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i hi = _mm512_add_epi32(lo, _mm512_set1_epi32(8));
    _mm512_store_ps(pairs[a], _mm512_permutex2var_ps(y[a * 2], lo, y[a * 2 + 1]));
    _mm512_store_ps(pairs[a] + L, _mm512_permutex2var_ps(y[a * 2], hi, y[a * 2 + 1]));
    (void)e; (void)o;
#else
    for (int l = 0; l < L; ++l) {
      pairs[a][2 * l] = e[l];
      pairs[a][2 * l + 1] = o[l];
    }
#endif
  }
  // runs of tiles in one tile row: one masked store per output row
  for (int64_t l = 0; l < ntiles;) {
    const int64_t t = t0 + l, i = t / tw, j = t % tw;
    const int64_t len = std::min(ntiles - l, tw - j);
    const int64_t npix = std::min(2 * len, OW - 2 * j);  // the last column may be outside
    for (int a = 0; a < 2; ++a) {
      const int64_t row = 2 * i + a;
      if (row >= OH) continue;
      float* dst = yp + row * OW + 2 * j;
      const float* src = pairs[a] + 2 * l;
      for (int64_t k = 0; k < npix; k += L)
        S::storem(dst + k, S::mask(low_bits(npix - k)), S::load(src + k));
    }
    l += len;
  }
}

// y = conv(x, w) + b (then ReLU): Winograd F(2x2, 3x3) forward, for winograd_ok(p).
inline void forward_winograd(float* y, const float* x, const float* w, const float* b,
                             const Conv2dParams& p, bool relu) {
  using S = Simd;
  using V = S::V;
  constexpr int L = S::L;
  const int64_t C = p.C, OC = p.OC, HW = p.H * p.W, OHW = p.OH * p.OW;
  const Conv2dParams tp = winograd_tile_params(p);
  const FlatInput in = flat_input(tp);
  const FlatSpec f = forward_spec(tp, in);  // 16 taps = the tile elements d[r][s]
  const int64_t tw = tp.OW, ntiles = tp.OH * tp.OW;  // tiles per sample
  const int64_t nvt = (ntiles + L - 1) / L;            // vectors (slots) per sample
  const int64_t NB = kNR;                              // lanes of a block (kNV slots)
  const PackedA U = winograd_weights(w, OC, C, scratch(7, kWinoXi * OC * C));
  // output channels per chunk: the chunk's 16 M panels (16 x OCc x NB) in a quarter of L2
  const int64_t l2 = std::max<int64_t>(cpu_info().l2, 256 * 1024);
  int64_t occ = std::max<int64_t>(kMR, l2 / 4 / (kWinoXi * NB * int64_t(sizeof(float))));
  occ = std::min(OC, occ / kMR * kMR);
  const int64_t nslots = p.N * nvt, nblocks = (nslots + kNV - 1) / kNV;
  parallel_range(nblocks, 1, [&](int64_t b0, int64_t b1) {
    // the 16 panels of V (and of M) are written together: their strides are padded by one
    // cache line so they do not all fall into the same L1 set (the unpadded strides are
    // multiples of 4 KB)
    const int64_t vstride = C * NB + 16, mstride = occ * NB + 16;
    float* z = scratch(1, C * in.cs);
    float* vb = scratch(4, kWinoXi * vstride);
    float* mb = scratch(5, kWinoXi * mstride);
    int64_t zn = -1;  // the sample whose phase split is in z
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t s0 = blk * kNV;
      const int nv = static_cast<int>(std::min<int64_t>(kNV, nslots - s0));
      const int64_t ldb = nv * L;  // B panel rows: the block's lanes
      // 1. input transform of the block's slots
      for (int j = 0; j < nv; ++j) {
        const int64_t n = (s0 + j) / nvt, v = (s0 + j) % nvt;
        if (n != zn) {
          const float* xn = x + n * C * HW;
          if (n + 1 < p.N) prefetch_l2(xn + C * HW, C * HW * sizeof(float));
          make_flat_input(z, xn, C, tp, in);
          zn = n;
        }
        winograd_transform_tiles(vb + j * L, vstride, ldb, z, in.cs, C, v, f);
      }
      // 2. + 3. per chunk of output channels: 16 GEMMs, then the output transform
      for (int64_t oc0 = 0; oc0 < OC; oc0 += occ) {
        const int64_t oc1 = std::min(OC, oc0 + occ);
        Epilogue e;
        for (int xi = 0; xi < 16; ++xi)
          for (int64_t ob = oc0 / kMR; ob * kMR < oc1; ++ob)
            ukernel_for(U.mr(ob), nv)(C, U.panel(xi, ob), vb + xi * vstride,
                                      mb + xi * mstride + (ob * kMR - oc0) * NB, NB, e);
        for (int64_t oc = oc0; oc < oc1; ++oc) {
          const V bias = S::set1(b ? b[oc] : 0.f);
          for (int j = 0; j < nv; ++j) {
            const int64_t n = (s0 + j) / nvt, v = (s0 + j) % nvt;
            V m[16], yv[4];
            for (int xi = 0; xi < 16; ++xi) m[xi] = S::load(mb + xi * mstride + (oc - oc0) * NB + j * L);
            winograd_output_transform(m, yv);
            for (int k = 0; k < 4; ++k) {
              yv[k] = S::add(yv[k], bias);
              if (relu) yv[k] = S::max(S::zero(), yv[k]);  // keeps NaN, as relu does
            }
            winograd_store_tiles(y + (n * OC + oc) * OHW, p.OH, p.OW, tw, v * L,
                                 std::min<int64_t>(L, ntiles - v * L), yv);
          }
        }
      }
    }
  });
}

// Backward w.r.t. the weights with the same transforms. With V the transformed input tiles
// and dM = A dY A^T the adjoint of the output transform applied to the dy tiles,
//     dU_xi[oc, c] = sum_tiles dM_xi[oc, tile] * V_xi[c, tile]        dw[oc, c] = G^T dU G
// As in backward_weight_direct, the transpose dU^T[c][oc] is computed, oc vectorized: the
// V rows are broadcast, dM^T[tile][oc lanes] is the B panel (built from the transposed dy).
// Work items are (chunk of samples, up to 64 output channels); partial dU per chunk, folded
// in chunk order.

// dM = A dY A^T for 2 x 2 vectors dy[a*2 + b] -> 16 vectors m[r*4 + s].
inline void winograd_output_adjoint(const Simd::V dy[4], Simd::V m[16]) {
  using S = Simd;
  Simd::V t[4][2];  // A dY: t[r][b]
  for (int b = 0; b < 2; ++b) {
    t[0][b] = dy[b];
    t[1][b] = S::add(dy[b], dy[2 + b]);
    t[2][b] = S::sub(dy[b], dy[2 + b]);
    t[3][b] = S::sub(S::zero(), dy[2 + b]);
  }
  for (int r = 0; r < 4; ++r) {  // (A dY) A^T
    m[r * 4 + 0] = t[r][0];
    m[r * 4 + 1] = S::add(t[r][0], t[r][1]);
    m[r * 4 + 2] = S::sub(t[r][0], t[r][1]);
    m[r * 4 + 3] = S::sub(S::zero(), t[r][1]);
  }
}

inline void backward_weight_winograd(float* dw, float* db, const float* dy, const float* x,
                                     const Conv2dParams& p) {
  using S = Simd;
  using V = S::V;
  constexpr int L = S::L;
  const int64_t C = p.C, OC = p.OC, HW = p.H * p.W, OHW = p.OH * p.OW;
  if (p.N == 0) {
    std::fill(dw, dw + OC * C * 9, 0.f);
    if (db) std::fill(db, db + OC, 0.f);
    return;
  }
  const Conv2dParams tp = winograd_tile_params(p);
  const FlatInput in = flat_input(tp);
  const FlatSpec f = forward_spec(tp, in);
  const int64_t tw = tp.OW, ntiles = tp.OH * tp.OW, nvt = (ntiles + L - 1) / L;
  const int64_t tpad = nvt * L;  // tiles of a sample, rounded up to whole vectors
  const int64_t noct = (OC + kNR - 1) / kNR, ocpad = noct * kNR;
  // a work item takes up to 64 output channels (4 tiles of 16 with AVX2, 1 of 64 with
  // AVX-512): the input transform, shared by its tiles, is computed once per item
  const int64_t tiles_per_item = std::max<int64_t>(1, 64 / kNR);
  const int64_t nitems_oc = (noct + tiles_per_item - 1) / tiles_per_item;
  const int64_t want_items = 8;
  const int64_t want_chunks = std::min<int64_t>(p.N, std::max<int64_t>(1, want_items / nitems_oc));
  const int64_t per = (p.N + want_chunks - 1) / want_chunks;
  const int64_t nchunks = (p.N + per - 1) / per;
  // samples per group: V (16 x C x tiles) and dM^T (16 x tiles x NR) in half of L2
  const int64_t l2 = std::max<int64_t>(cpu_info().l2, 256 * 1024);
  const int64_t per_sample = kWinoXi * tpad * (C + kNR) * int64_t(sizeof(float));
  const int64_t S_ = kc_override() ? 1 : std::clamp<int64_t>(l2 / 2 / per_sample, 1, per);
  const int64_t pstride = kWinoXi * C * ocpad + ocpad;  // one chunk's dU^T and db
  float* partial = scratch(3, nchunks * pstride);
  parallel_for(nchunks * nitems_oc, 1, [&](int64_t i0, int64_t i1) {
    const int64_t gt = S_ * tpad;  // tile lanes of a group
    // per-xi strides padded by a cache line (see forward_winograd)
    const int64_t vstride = C * gt + 16, mstride = gt * kNR + 16;
    float* z = scratch(1, C * in.cs);
    float* vb = scratch(4, kWinoXi * vstride);
    float* mt = scratch(5, kWinoXi * mstride);
    float* dyT = scratch(6, OHW * kNR);
    for (int64_t it = i0; it < i1; ++it) {
      const int64_t ch = it / nitems_oc, ot0 = (it % nitems_oc) * tiles_per_item;
      const int64_t ot1 = std::min(noct, ot0 + tiles_per_item);
      float* pu = partial + ch * pstride;
      for (int64_t j = ot0 * kNR; j < ot1 * kNR; ++j) pu[kWinoXi * C * ocpad + j] = 0.f;
      const int64_t n_first = ch * per, n_end = std::min(p.N, (ch + 1) * per);
      for (int64_t n0 = n_first; n0 < n_end; n0 += S_) {
        const int64_t ns = std::min<int64_t>(S_, n_end - n0), nt = ns * tpad;
        for (int64_t s = 0; s < ns; ++s) {  // V of the samples: lanes = tiles (as the forward)
          make_flat_input(z, x + (n0 + s) * C * HW, C, tp, in);
          for (int64_t v = 0; v < nvt; ++v)
            winograd_transform_tiles(vb + s * tpad + v * L, vstride, gt, z, in.cs, C, v, f);
        }
        for (int64_t ot = ot0; ot < ot1; ++ot) {
          const int64_t oc0 = ot * kNR;
          const int nr = static_cast<int>(std::min<int64_t>(kNR, OC - oc0));
          const int nv = (nr + L - 1) / L, nrl = nv * L;
          float* pb = pu + kWinoXi * C * ocpad + oc0;
          for (int64_t s = 0; s < ns; ++s) {  // dM^T: lanes = output channels, from dy^T
            pack_dy_transposed(dyT, nrl, dy + (n0 + s) * OC * OHW, oc0, OC, OHW, pb);
            for (int64_t t = 0; t < tpad; ++t) {
              float* mrow = mt + (s * tpad + t) * nrl;
              if (t >= ntiles) {  // padding lanes of the last vector: no contribution
                for (int xi = 0; xi < 16; ++xi)
                  for (int k = 0; k < nv; ++k) S::store(mrow + xi * mstride + k * L, S::zero());
                continue;
              }
              const int64_t i = t / tw, j = t % tw;
              for (int k = 0; k < nv; ++k) {
                V dyv[4], m[16];
                for (int a = 0; a < 2; ++a)
                  for (int b = 0; b < 2; ++b) {
                    const int64_t oh = 2 * i + a, ow = 2 * j + b;
                    dyv[a * 2 + b] = oh < p.OH && ow < p.OW
                                         ? S::load(dyT + (oh * p.OW + ow) * nrl + k * L)
                                         : S::zero();
                  }
                winograd_output_adjoint(dyv, m);
                for (int xi = 0; xi < 16; ++xi) S::store(mrow + xi * mstride + k * L, m[xi]);
              }
            }
          }
          // 16 products over the group's tiles, accumulated into the chunk's dU^T
          DwRows r;
          r.arow = 0;
          r.acol = 1;
          r.OH = 1;
          r.OW = nt;
          for (int xi = 0; xi < 16; ++xi) {
            const float* vx = vb + xi * vstride;
            const float* mx = mt + xi * mstride;
            for (int64_t c0 = 0; c0 < C; c0 += kMR) {
              const int mr = static_cast<int>(std::min<int64_t>(kMR, C - c0));
              for (int i = 0; i < mr; ++i) r.off[i] = (c0 + i) * gt;
              ukernel_dw_for(mr, nv)(1, &vx, &mx, r, pu + (xi * C + c0) * ocpad + oc0, ocpad,
                                     n0 != n_first);
            }
          }
        }
      }
    }
  });
  // fold the chunks in order, then dw = G^T dU G per (oc, c), L output channels at a time
  // (lanes = oc: the partial rows are read contiguously)
  const int64_t nvo = (OC + L - 1) / L;
  parallel_for(nvo, 1, [&](int64_t v0, int64_t v1) {
    for (int64_t vo = v0; vo < v1; ++vo) {
      const int64_t oc0 = vo * L, nl = std::min<int64_t>(L, OC - oc0);
      const typename S::M lanes = S::mask(low_bits(nl));
      if (db) {
        V bsum = S::zero();
        for (int64_t ch = 0; ch < nchunks; ++ch)
          bsum = S::add(bsum, S::load(partial + ch * pstride + kWinoXi * C * ocpad + oc0));
        S::storem(db + oc0, lanes, bsum);
      }
      for (int64_t c = 0; c < C; ++c) {
        V u[16];
        for (int xi = 0; xi < 16; ++xi) {
          u[xi] = S::zero();
          for (int64_t ch = 0; ch < nchunks; ++ch)
            u[xi] = S::add(u[xi], S::load(partial + ch * pstride + (xi * C + c) * ocpad + oc0));
        }
        const V h = S::set1(0.5f);
        V t[3][4];  // G^T dU
        for (int s2 = 0; s2 < 4; ++s2) {
          t[0][s2] = S::fma(h, S::add(u[4 + s2], u[8 + s2]), u[s2]);
          t[1][s2] = S::mul(h, S::sub(u[4 + s2], u[8 + s2]));
          t[2][s2] = S::fma(h, S::add(u[4 + s2], u[8 + s2]), u[12 + s2]);
        }
        alignas(64) float g[9][L];
        for (int k = 0; k < 3; ++k) {  // (G^T dU) G
          S::store(g[k * 3 + 0], S::fma(h, S::add(t[k][1], t[k][2]), t[k][0]));
          S::store(g[k * 3 + 1], S::mul(h, S::sub(t[k][1], t[k][2])));
          S::store(g[k * 3 + 2], S::fma(h, S::add(t[k][1], t[k][2]), t[k][3]));
        }
        for (int64_t l = 0; l < nl; ++l)
          for (int k = 0; k < 9; ++k) dw[((oc0 + l) * C + c) * 9 + k] = g[k][l];
      }
    }
  });
}

inline void backward_input_winograd(float* dx, const float* dy, const float* w,
                                    const Conv2dParams& p) {
  float* wt = scratch(6, p.OC * p.C * 9);  // forward_winograd does not use slot 6
  transpose_flip_weights(wt, w, p);
  forward_winograd(dx, dy, wt, nullptr, transposed_params(p), false);
}

}  // namespace dk::cpu::DK_ISA_NS
