// conv2d_avx2.cpp: the float32 convolution kernels compiled for AVX2 + FMA (called only on CPUs that have them).
#define DK_ISA_NS avx2
#include "cpu/conv2d_entry.h"
