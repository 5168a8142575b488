// AVX2 + FMA variant of the EM E-step (compiled with -mavx2 -mfma on x86-64). 16 ymm registers:
// a tile of 4 patches x 16 rotations is 8 accumulators, + 2 projection vectors and a broadcast.
#include "em_simd.hpp"

#if defined(ORBITCORE_X86_SIMD)
#define ORBITCORE_SIMD_NS em_avx2
#define VL_F 8
#define VL_D 4
#define MV_EM 2
#define PT_EM 4
#define MH_EM 1
#include "em_estep.inl"
#endif
