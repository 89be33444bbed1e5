// conv2d_avx512.cpp: the float32 convolution kernels compiled for AVX-512 (called only on CPUs that have it).
#define DK_ISA_NS avx512
#include "cpu/conv2d_entry.h"
