// AVX-512F variant of the sine drivers (CMake compiles this file with -mavx512f -mfma on
// x86-64; the dispatcher calls it only when the CPU reports AVX-512F).
#include "sine_simd.hpp"

#if defined(ORBITCORE_X86_SIMD)
#define ORBITCORE_SIMD_NS sine_avx512
#include "sine_impl.inl"
#endif
