// conv2d_avx2.cpp: conv2d_fast.h compiled for AVX2 + FMA (called only on CPUs that have them).
#define DK_ISA_NS avx2
#include "cpu/conv2d_fast.h"
