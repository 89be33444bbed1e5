// gemm_avx512.cpp: gemm_impl.h compiled with -mavx512f -mavx512bw -mavx512dq -mavx512vl -mfma (called only on CPUs that have them).
#define DK_GEMM_NS avx512
#include "cpu/gemm_impl.h"

namespace dk::cpu::avx512 {
template void gemm_nn<float>(int64_t, int64_t, int64_t, const float*, int64_t, const float*, int64_t, float*, int64_t, bool);
template void gemm_tn<float>(int64_t, int64_t, int64_t, const float*, int64_t, const float*, int64_t, float*, int64_t, bool);
template void gemm_nt<float>(int64_t, int64_t, int64_t, const float*, int64_t, const float*, int64_t, float*, int64_t, bool);
}  // namespace dk::cpu::avx512
