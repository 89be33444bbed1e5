// gemm_impl.h: portable loop nests for the three products of gemm.h.
//
// Included once per ISA (gemm.cpp: baseline, gemm_avx2.cpp, gemm_avx512.cpp) inside a
// namespace named by DK_GEMM_NS, so each copy is compiled with its own -m flags and the
// linker never merges them. The loops are written so the compiler vectorizes the innermost
// one over contiguous memory; they are correct for any size and serve as the fallback for
// the tuned micro-kernels.
#ifndef DK_GEMM_NS
#error "define DK_GEMM_NS before including gemm_impl.h"
#endif
#include <algorithm>
#include <cstdint>
#include <cstring>

namespace dk::cpu::DK_GEMM_NS {

// C[M,N] (+)= A[M,K] . B[K,N]: four rows of C at a time share each row of B; blocked over K
// and N so the touched part of B stays in cache.
template <class T>
void gemm_nn(int64_t M, int64_t N, int64_t K, const T* __restrict A, int64_t lda,
             const T* __restrict B, int64_t ldb, T* __restrict C, int64_t ldc, bool accumulate) {
  if (!accumulate)
    for (int64_t i = 0; i < M; ++i) std::memset(C + i * ldc, 0, sizeof(T) * N);
  constexpr int64_t NB = 512, KB = 128;
  for (int64_t j0 = 0; j0 < N; j0 += NB) {
    const int64_t nb = std::min(NB, N - j0);
    for (int64_t k0 = 0; k0 < K; k0 += KB) {
      const int64_t kb = std::min(KB, K - k0);
      int64_t i = 0;
      for (; i + 4 <= M; i += 4) {
        T* __restrict c0 = C + (i + 0) * ldc + j0;
        T* __restrict c1 = C + (i + 1) * ldc + j0;
        T* __restrict c2 = C + (i + 2) * ldc + j0;
        T* __restrict c3 = C + (i + 3) * ldc + j0;
        for (int64_t k = k0; k < k0 + kb; ++k) {
          const T a0 = A[(i + 0) * lda + k], a1 = A[(i + 1) * lda + k];
          const T a2 = A[(i + 2) * lda + k], a3 = A[(i + 3) * lda + k];
          const T* __restrict b = B + k * ldb + j0;
#pragma omp simd
          for (int64_t j = 0; j < nb; ++j) {
            const T bj = b[j];
            c0[j] += a0 * bj;
            c1[j] += a1 * bj;
            c2[j] += a2 * bj;
            c3[j] += a3 * bj;
          }
        }
      }
      for (; i < M; ++i) {
        T* __restrict c = C + i * ldc + j0;
        for (int64_t k = k0; k < k0 + kb; ++k) {
          const T a = A[i * lda + k];
          const T* __restrict b = B + k * ldb + j0;
#pragma omp simd
          for (int64_t j = 0; j < nb; ++j) c[j] += a * b[j];
        }
      }
    }
  }
}

// C[M,N] (+)= A^T . B with A stored [K,M]: rank-1 updates, vectorized along the rows of B.
template <class T>
void gemm_tn(int64_t M, int64_t N, int64_t K, const T* __restrict A, int64_t lda,
             const T* __restrict B, int64_t ldb, T* __restrict C, int64_t ldc, bool accumulate) {
  if (!accumulate)
    for (int64_t i = 0; i < M; ++i) std::memset(C + i * ldc, 0, sizeof(T) * N);
  constexpr int64_t NB = 512;
  for (int64_t j0 = 0; j0 < N; j0 += NB) {
    const int64_t nb = std::min(NB, N - j0);
    for (int64_t i = 0; i < M; ++i) {
      T* __restrict c = C + i * ldc + j0;
      for (int64_t k = 0; k < K; ++k) {
        const T a = A[k * lda + i];
        const T* __restrict b = B + k * ldb + j0;
#pragma omp simd
        for (int64_t j = 0; j < nb; ++j) c[j] += a * b[j];
      }
    }
  }
}

// C[M,N] (+)= A . B^T with B stored [N,K]: dot products along K, four columns at a time.
template <class T>
void gemm_nt(int64_t M, int64_t N, int64_t K, const T* __restrict A, int64_t lda,
             const T* __restrict B, int64_t ldb, T* __restrict C, int64_t ldc, bool accumulate) {
  for (int64_t i = 0; i < M; ++i) {
    const T* __restrict a = A + i * lda;
    int64_t j = 0;
    for (; j + 4 <= N; j += 4) {
      const T* __restrict b0 = B + (j + 0) * ldb;
      const T* __restrict b1 = B + (j + 1) * ldb;
      const T* __restrict b2 = B + (j + 2) * ldb;
      const T* __restrict b3 = B + (j + 3) * ldb;
      T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
      for (int64_t k = 0; k < K; ++k) {
        const T ak = a[k];
        s0 += ak * b0[k];
        s1 += ak * b1[k];
        s2 += ak * b2[k];
        s3 += ak * b3[k];
      }
      T* c = C + i * ldc + j;
      if (accumulate) {
        c[0] += s0; c[1] += s1; c[2] += s2; c[3] += s3;
      } else {
        c[0] = s0; c[1] = s1; c[2] = s2; c[3] = s3;
      }
    }
    for (; j < N; ++j) {
      const T* __restrict b = B + j * ldb;
      T s = 0;
#pragma omp simd reduction(+ : s)
      for (int64_t k = 0; k < K; ++k) s += a[k] * b[k];
      C[i * ldc + j] = accumulate ? C[i * ldc + j] + s : s;
    }
  }
}

}  // namespace dk::cpu::DK_GEMM_NS
