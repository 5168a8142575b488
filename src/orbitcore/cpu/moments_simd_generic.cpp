// Portable variant of the moments SYRK: 16-byte vectors (SSE2 on x86-64, NEON on ARM, scalar
// code elsewhere), compiled with the library's default flags.
#include "moments_simd.hpp"

#define ORBITCORE_SIMD_NS simd_generic
#define VL_F 4
#define MV_F 2
#define NR_F 6
#define VL_D 2
#define MV_D 2
#define NR_D 6
#include "moments_syrk.inl"
