// AVX-512F variant of the norm drivers (CMake compiles this file with -mavx512f -mfma on x86-64;
// the dispatcher calls it only when the CPU reports AVX-512F).
#include "norm_simd.hpp"

#if defined(ORBITCORE_X86_SIMD)
#define ORBITCORE_SIMD_NS norm_avx512
#include "norm_impl.inl"
#endif
