// AVX2 + FMA variant of the sine drivers (CMake compiles this file with -mavx2 -mfma on x86-64;
// the dispatcher calls it only when the CPU reports AVX2 and FMA).
#include "sine_simd.hpp"

#if defined(ORBITCORE_X86_SIMD)
#define ORBITCORE_SIMD_NS sine_avx2
#include "sine_impl.inl"
#endif
