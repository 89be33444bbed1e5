// gemm.cpp: the portable build of gemm_impl.h and the run-time choice among ISA variants.
#include "cpu/gemm.h"

#include "common/cpu_features.h"

#define DK_GEMM_NS portable
#include "cpu/gemm_impl.h"
#undef DK_GEMM_NS

namespace dk::cpu {

#define DK_GEMM_DECL(ns, name)                                                               \
  namespace ns {                                                                             \
  template <class T>                                                                         \
  void name(int64_t, int64_t, int64_t, const T*, int64_t, const T*, int64_t, T*, int64_t, bool); \
  }
#ifdef DK_HAVE_X86_VARIANTS
DK_GEMM_DECL(avx2, gemm_nn)
DK_GEMM_DECL(avx2, gemm_tn)
DK_GEMM_DECL(avx2, gemm_nt)
DK_GEMM_DECL(avx512, gemm_nn)
DK_GEMM_DECL(avx512, gemm_tn)
DK_GEMM_DECL(avx512, gemm_nt)
#endif

// float: the best variant for this CPU; double: the portable loops (correct, not tuned).
#ifdef DK_HAVE_X86_VARIANTS
#define DK_GEMM_DISPATCH(name)                                                          \
  template <>                                                                           \
  void name<float>(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,        \
                   const float* B, int64_t ldb, float* C, int64_t ldc, bool acc) {      \
    switch (active_isa()) {                                                             \
      case Isa::avx512: return avx512::name<float>(M, N, K, A, lda, B, ldb, C, ldc, acc); \
      case Isa::avx2: return avx2::name<float>(M, N, K, A, lda, B, ldb, C, ldc, acc);   \
      default: return portable::name<float>(M, N, K, A, lda, B, ldb, C, ldc, acc);      \
    }                                                                                   \
  }
#else
#define DK_GEMM_DISPATCH(name)                                                          \
  template <>                                                                           \
  void name<float>(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,        \
                   const float* B, int64_t ldb, float* C, int64_t ldc, bool acc) {      \
    portable::name<float>(M, N, K, A, lda, B, ldb, C, ldc, acc);                        \
  }
#endif
#define DK_GEMM_DOUBLE(name)                                                            \
  template <>                                                                           \
  void name<double>(int64_t M, int64_t N, int64_t K, const double* A, int64_t lda,      \
                    const double* B, int64_t ldb, double* C, int64_t ldc, bool acc) {   \
    portable::name<double>(M, N, K, A, lda, B, ldb, C, ldc, acc);                       \
  }

DK_GEMM_DISPATCH(gemm_nn)
DK_GEMM_DISPATCH(gemm_tn)
DK_GEMM_DISPATCH(gemm_nt)
DK_GEMM_DOUBLE(gemm_nn)
DK_GEMM_DOUBLE(gemm_tn)
DK_GEMM_DOUBLE(gemm_nt)

}  // namespace dk::cpu
