// Instruction-set variants of the sine drivers (sine_impl.inl), one namespace each; sine.cpp
// picks one at run time and resolves num_threads. Private to the CPU drivers.
#pragma once

#include "sine.hpp"

namespace orbitcore {
namespace cpu {

#define ORBITCORE_DECLARE_SINE_VARIANT(NS)                                                  \
  namespace NS {                                                                            \
  template <typename T>                                                                     \
  void sine_forward(const T* a, index_t n, double w0, T* y, int num_threads);               \
  template <typename T>                                                                     \
  void sine_backward(const T* dy, const T* a, index_t n, double w0, T* da, int num_threads); \
  }

ORBITCORE_DECLARE_SINE_VARIANT(sine_generic)
#if defined(ORBITCORE_X86_SIMD)
ORBITCORE_DECLARE_SINE_VARIANT(sine_avx2)
ORBITCORE_DECLARE_SINE_VARIANT(sine_avx512)
#endif
#undef ORBITCORE_DECLARE_SINE_VARIANT

}  // namespace cpu
}  // namespace orbitcore
