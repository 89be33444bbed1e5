// optim_avx2.cpp: optim_impl.h compiled with -mavx2 -mfma (called only on CPUs that have them).
#define DK_OPTIM_NS avx2
#include "cpu/optim_impl.h"
