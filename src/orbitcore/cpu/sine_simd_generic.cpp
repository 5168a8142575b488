// Baseline-ISA variant of the sine drivers (every CPU).
#define ORBITCORE_SIMD_NS sine_generic
#include "sine_impl.inl"
