// layers_avx512.cpp: layers_fast.h compiled for AVX-512 (called only on CPUs that have it).
#define DK_ISA_NS avx512
#include "cpu/layers_fast.h"
