// optim_vec.h: the few vector operations the optimizer kernels need, for one ISA.
//
// Vec<T> wraps one SIMD register of T (float or double) for the instruction set this
// translation unit is compiled for: AVX-512 (16 floats / 8 doubles), AVX2+FMA (8 / 4), or a
// plain scalar (1). The kernels in optim_impl.h are written once against this interface.
//
// Rounding is explicit: fmadd(a, b, c) is one fused multiply-add (a*b + c rounded once) on
// AVX2/AVX-512 and a multiply then an add on the scalar build, and these files are compiled
// with -ffp-contract=off so the compiler never fuses anything we wrote as two operations.
// Every element therefore rounds the same way in the vector body and in the tail.
#pragma once
#include <cstdint>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

namespace dk::cpu::DK_OPTIM_NS {

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
// One register of W_ lanes; PFX is the intrinsic family (_mm512 / _mm256), SFX the type (ps / pd).
#define DK_VEC_DEF(T, R, W_, PFX, SFX)                                                        \
  template <>                                                                             \
  struct Vec<T> {                                                                         \
    static constexpr int W = W_;                                                          \
    R r;                                                                                  \
    static Vec set1(T x) { return {PFX##_set1_##SFX(x)}; }                                \
    static Vec load(const T* p) { return {PFX##_loadu_##SFX(p)}; }                        \
    void store(T* p) const { PFX##_storeu_##SFX(p, r); }                                  \
    friend Vec operator+(Vec a, Vec b) { return {PFX##_add_##SFX(a.r, b.r)}; }            \
    friend Vec operator-(Vec a, Vec b) { return {PFX##_sub_##SFX(a.r, b.r)}; }            \
    friend Vec operator*(Vec a, Vec b) { return {PFX##_mul_##SFX(a.r, b.r)}; }            \
    friend Vec operator/(Vec a, Vec b) { return {PFX##_div_##SFX(a.r, b.r)}; }            \
    friend Vec sqrt(Vec a) { return {PFX##_sqrt_##SFX(a.r)}; }                            \
    friend Vec fmadd(Vec a, Vec b, Vec c) { return {PFX##_fmadd_##SFX(a.r, b.r, c.r)}; }  \
    /* max(a, b) = a > b ? a : b, so b (a NaN in b included) when unordered */            \
    friend Vec vmax(Vec a, Vec b) { return {PFX##_max_##SFX(a.r, b.r)}; }                 \
  };
template <class T>
struct Vec;
#if defined(__AVX512F__)
DK_VEC_DEF(float, __m512, 16, _mm512, ps)
DK_VEC_DEF(double, __m512d, 8, _mm512, pd)
#else
DK_VEC_DEF(float, __m256, 8, _mm256, ps)
DK_VEC_DEF(double, __m256d, 4, _mm256, pd)
#endif
#undef DK_VEC_DEF

#else
// Portable: one element per "vector"; fmadd is two roundings (no FMA in baseline x86-64).
template <class T>
struct Vec {
  static constexpr int W = 1;
  T r;
  static Vec set1(T x) { return {x}; }
  static Vec load(const T* p) { return {*p}; }
  void store(T* p) const { *p = r; }
  friend Vec operator+(Vec a, Vec b) { return {a.r + b.r}; }
  friend Vec operator-(Vec a, Vec b) { return {a.r - b.r}; }
  friend Vec operator*(Vec a, Vec b) { return {a.r * b.r}; }
  friend Vec operator/(Vec a, Vec b) { return {a.r / b.r}; }
  friend Vec sqrt(Vec a) { return {sqrt_of(a.r)}; }
  friend Vec fmadd(Vec a, Vec b, Vec c) { return {a.r * b.r + c.r}; }
  friend Vec vmax(Vec a, Vec b) { return {a.r > b.r ? a.r : b.r}; }

 private:
  static float sqrt_of(float x) { return __builtin_sqrtf(x); }
  static double sqrt_of(double x) { return __builtin_sqrt(x); }
};
#endif

}  // namespace dk::cpu::DK_OPTIM_NS
