// optim_avx512.cpp: optim_impl.h compiled with -mavx512f/bw/dq/vl -mfma (called only on CPUs that have them).
#define DK_OPTIM_NS avx512
#include "cpu/optim_impl.h"
