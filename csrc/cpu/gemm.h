// gemm.h: the small dense matrix products under the convolutions.
//
// All matrices are row-major with explicit leading dimensions. Each function is serial:
// callers parallelize over independent products. `accumulate` adds into C instead of
// overwriting it. Float products dispatch at run time to the best ISA variant
// (gemm_avx512.cpp, gemm_avx2.cpp, or the portable build of the same code).
#pragma once
#include <cstdint>

namespace dk::cpu {

// C[M,N] (+)= A[M,K] . B[K,N]
template <class T>
void gemm_nn(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb,
             T* C, int64_t ldc, bool accumulate);
// C[M,N] (+)= A^T . B      with A stored as [K,M]
template <class T>
void gemm_tn(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb,
             T* C, int64_t ldc, bool accumulate);
// C[M,N] (+)= A . B^T      with B stored as [N,K]
template <class T>
void gemm_nt(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb,
             T* C, int64_t ldc, bool accumulate);

}  // namespace dk::cpu
