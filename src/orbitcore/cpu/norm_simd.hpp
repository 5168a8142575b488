// Instruction-set variants of the norm family's CPU drivers (norm_impl.inl), one namespace each;
// norm.cpp picks one at run time, checks the arguments and resolves num_threads (the variants
// take it as the team size to use). Private to the CPU drivers.
#pragma once

#include "norm.hpp"

#define NORM_FORWARD_ARGS(T)                                                                          \
  const T *x, index_t M, index_t C, const T *gamma, const T *beta, double eps, T *y, T *mean, T *var, \
      int num_threads, const norm::Pool2 *pool
#define NORM_BACKWARD_ARGS(T)                                                                          \
  const T *dy, const T *x, index_t M, index_t C, const T *gamma, const T *beta, const T *mean,          \
      const T *var, double eps, T *dx, T *dgamma, T *dbeta, int num_threads, const norm::Pool2 *pool

namespace orbitcore {
namespace cpu {

#define ORBITCORE_DECLARE_NORM_VARIANT(NS)                        \
  namespace NS {                                                  \
  template <typename T>                                           \
  void batch_norm_relu_forward(NORM_FORWARD_ARGS(T));             \
  template <typename T>                                           \
  void batch_norm_relu_backward(NORM_BACKWARD_ARGS(T));           \
  }

ORBITCORE_DECLARE_NORM_VARIANT(norm_generic)
#if defined(ORBITCORE_X86_SIMD)
ORBITCORE_DECLARE_NORM_VARIANT(norm_avx2)
ORBITCORE_DECLARE_NORM_VARIANT(norm_avx512)
#endif
#undef ORBITCORE_DECLARE_NORM_VARIANT

}  // namespace cpu
}  // namespace orbitcore
