// AVX-512F variant of the moments SYRK (CMake compiles this file with -mavx512f -mfma on
// x86-64; the dispatcher calls it only when the CPU reports AVX-512F). 32 zmm registers:
// 16 accumulators (2 x 8) + 2 row vectors; the broadcasts fold into the FMAs.
#include "moments_simd.hpp"

#if defined(ORBITCORE_X86_SIMD)
#define ORBITCORE_SIMD_NS simd_avx512
#define VL_F 16
#define MV_F 2
#define NR_F 12
#define VL_D 8
#define MV_D 2
#define NR_D 12
#include "moments_syrk.inl"
#endif
