// Portable variant of the EM E-step: 16-byte vectors (SSE2 on x86-64, NEON on ARM, scalar code
// elsewhere), compiled with the library's default flags.
#include "em_simd.hpp"

#define ORBITCORE_SIMD_NS em_generic
#define VL_F 4
#define VL_D 2
#define MV_EM 2
#define PT_EM 4
#define MH_EM 1
#include "em_estep.inl"
