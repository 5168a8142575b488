// Portable variant of the norm drivers: the library's default flags (SSE2 on x86-64).
#define ORBITCORE_SIMD_NS norm_generic
#include "norm_impl.inl"
