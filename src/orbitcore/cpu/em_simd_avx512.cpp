// AVX-512F variant of the EM E-step (CMake compiles this file with -mavx512f -mfma on x86-64;
// the dispatcher calls it only when the CPU reports AVX-512F). 32 zmm registers: a tile of
// 4 patches x 64 rotations is 16 accumulators, + 4 projection vectors and a broadcast.
#include "em_simd.hpp"

#if defined(ORBITCORE_X86_SIMD)
#define ORBITCORE_SIMD_NS em_avx512
#define VL_F 16
#define VL_D 8
#define MV_EM 4
#define PT_EM 4
#define MH_EM 4
#include "em_estep.inl"
#endif
