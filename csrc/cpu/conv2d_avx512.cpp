// conv2d_avx512.cpp: conv2d_fast.h compiled for AVX-512 (called only on CPUs that have it).
#define DK_ISA_NS avx512
#include "cpu/conv2d_fast.h"
