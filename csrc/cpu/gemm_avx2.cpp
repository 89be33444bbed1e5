// gemm_avx2.cpp: gemm_impl.h compiled with -mavx2 -mfma (called only on CPUs that have them).
#define DK_GEMM_NS avx2
#include "cpu/gemm_impl.h"

namespace dk::cpu::avx2 {
template void gemm_nn<float>(int64_t, int64_t, int64_t, const float*, int64_t, const float*, int64_t, float*, int64_t, bool);
template void gemm_tn<float>(int64_t, int64_t, int64_t, const float*, int64_t, const float*, int64_t, float*, int64_t, bool);
template void gemm_nt<float>(int64_t, int64_t, int64_t, const float*, int64_t, const float*, int64_t, float*, int64_t, bool);
}  // namespace dk::cpu::avx2
