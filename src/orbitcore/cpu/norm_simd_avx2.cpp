// AVX2 + FMA variant of the norm drivers (CMake compiles this file with -mavx2 -mfma on x86-64;
// the dispatcher calls it only when the CPU reports AVX2 and FMA).
#include "norm_simd.hpp"

#if defined(ORBITCORE_X86_SIMD)
#define ORBITCORE_SIMD_NS norm_avx2
#include "norm_impl.inl"
#endif
