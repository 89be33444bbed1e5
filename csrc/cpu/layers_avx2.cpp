// layers_avx2.cpp: layers_fast.h compiled for AVX2 + FMA (called only on CPUs that have them).
#define DK_ISA_NS avx2
#include "cpu/layers_fast.h"
