// AVX2 + FMA variant of the moments SYRK (CMake compiles this file with -mavx2 -mfma on x86-64;
// the dispatcher calls it only when the CPU reports AVX2 and FMA). 16 ymm registers:
// 12 accumulators (3 x 4) + 3 row vectors + 1 broadcast.
#include "moments_simd.hpp"

#if defined(ORBITCORE_X86_SIMD)
#define ORBITCORE_SIMD_NS simd_avx2
#define VL_F 8
#define MV_F 2
#define NR_F 6
#define VL_D 4
#define MV_D 2
#define NR_D 6
#include "moments_syrk.inl"
#endif
