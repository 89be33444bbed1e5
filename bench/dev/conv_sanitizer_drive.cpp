// conv_sanitizer_drive.cpp: every fast kernel (conv2d in all directions and algorithms, pooling,
// batch norm, relu, dropout) on odd shapes, both SIMD levels, for an ASan + UBSan build:
//   S="-O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -std=c++17 -fopenmp \
//      -Icsrc -DDK_HAVE_X86_VARIANTS=1 -DDEEPKERN_HAS_OPENMP=1"
//   compile csrc/cpu/{activation,batch_norm,conv2d,dropout,gemm,pool2d}.cpp and
//   csrc/common/cpu_features.cpp with $S, csrc/cpu/*_avx512.cpp with $S and the AVX-512 flags
//   of CMakeLists.txt, csrc/cpu/*_avx2.cpp with $S -mavx2 -mfma; link with this file; run.
// (Masked-off lanes of masked loads may point past a buffer: ASan does not check those.)
#include <cstdio>
#include <random>
#include <vector>
#include "common/cpu_features.h"
#include "common/parallel.h"
#include "kernels.h"
using namespace dk;
static std::mt19937 g(1);
static std::vector<float> rnd(size_t n) { std::normal_distribution<float> d; std::vector<float> v(n); for (auto& e : v) e = d(g); return v; }
int main() {
  int cases = 0;
  for (Isa isa : {Isa::avx512, Isa::avx2}) {
    set_active_isa(isa);
    for (int64_t N : {1, 3}) for (int64_t C : {1, 3, 17}) for (int64_t OC : {1, 7, 33}) for (int64_t H : {1, 5, 9, 17}) for (int64_t W : {1, 8, 19, 33})
    for (int64_t k : {1, 3}) for (int64_t s : {1, 2}) for (int64_t pd : {0, 1}) for (int64_t G : {1, 0}) {
      Conv2dParams p{}; p.N = N; p.C = C; p.H = H; p.W = W; p.KH = p.KW = k; p.sh = p.sw = s; p.ph = p.pw = pd; p.dh = p.dw = 1;
      p.G = G ? 1 : C; p.OC = G ? OC : C * 2;
      p.OH = window_out_size(H, k, s, pd, 1, false); p.OW = window_out_size(W, k, s, pd, 1, false);
      if (p.OH <= 0 || p.OW <= 0) continue;
      auto x = rnd(N * C * H * W), w = rnd(p.OC * (C / p.G) * k * k), b = rnd(p.OC), dy = rnd(N * p.OC * p.OH * p.OW);
      std::vector<float> y(dy.size()), dx(x.size()), dw(w.size()), db(p.OC);
      cpu::conv2d_forward<float>(y.data(), x.data(), w.data(), b.data(), p);
      cpu::conv2d_relu_forward<float>(y.data(), x.data(), w.data(), b.data(), p);
      cpu::conv2d_backward_input<float>(dx.data(), dy.data(), w.data(), p);
      cpu::conv2d_backward_weight<float>(dw.data(), db.data(), dy.data(), x.data(), p);
      ++cases;
    }
    for (int64_t H : {2, 3, 8, 17, 33}) for (int64_t W : {2, 3, 16, 19, 34}) for (bool ceil : {false, true}) {
      Pool2dParams mp{2, 3, H, W, 0, 0, 2, 2, 2, 2, 0, 0, 1, 1, false};
      mp.OH = window_out_size(H, 2, 2, 0, 1, ceil); mp.OW = window_out_size(W, 2, 2, 0, 1, ceil);
      auto x = rnd(2 * 3 * H * W); std::vector<float> y(2 * 3 * mp.OH * mp.OW), dx(x.size()); std::vector<int64_t> idx(y.size());
      cpu::max_pool2d_forward<float>(y.data(), idx.data(), x.data(), mp);
      cpu::max_pool2d_backward<float>(dx.data(), y.data(), idx.data(), mp);
      for (int64_t kk : {1, 2, 3, 5}) {
        Pool2dParams ap{2, 3, H, W, 0, 0, kk, kk, 1, 1, kk / 2, kk / 2, 1, 1, ceil};
        ap.OH = window_out_size(H, kk, 1, kk / 2, 1, ceil); ap.OW = window_out_size(W, kk, 1, kk / 2, 1, ceil);
        if (ap.OH <= 0 || ap.OW <= 0) continue;
        std::vector<float> ay(2 * 3 * ap.OH * ap.OW), adx(x.size());
        cpu::avg_pool2d_forward<float>(ay.data(), x.data(), ap);
        cpu::avg_pool2d_backward<float>(adx.data(), ay.data(), ap);
      }
      BatchNormParams bp{2, 3, H * W, 0.1, 1e-5};
      std::vector<float> bn(x.size()), sm(3), si(3), ww(3, 1.f), bb(3, 0.f);
      cpu::batch_norm_forward_train<float>(bn.data(), sm.data(), si.data(), nullptr, nullptr, x.data(), ww.data(), bb.data(), bp);
      cpu::batch_norm_backward<float>(dx.data(), ww.data(), bb.data(), bn.data(), x.data(), ww.data(), sm.data(), si.data(), true, bp);
      ++cases;
    }
    for (int64_t n : {1, 3, 17, 63, 64, 65, 1000}) {
      auto x = rnd(n); std::vector<float> y(n), dx(n); std::vector<uint8_t> m(n);
      cpu::relu_forward<float>(y.data(), x.data(), n); cpu::relu_backward<float>(dx.data(), x.data(), y.data(), n);
      cpu::dropout_forward<float>(y.data(), m.data(), x.data(), n, 0.3, 5); cpu::dropout_backward<float>(dx.data(), y.data(), m.data(), n, 0.3);
      cpu::dropout_mask(m.data(), n, 0.3, 5);
    }
  }
  std::printf("asan drive: %d cases ok\n", cases);
}
