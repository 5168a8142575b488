// Instruction-set variants of the moments SYRK (moments_syrk.inl), one namespace each; the
// dispatcher in moments.cpp picks one at run time. Private to the CPU drivers.
#pragma once

#include <cstddef>
#include <cstdint>

#include "../common.hpp"

namespace orbitcore {
namespace cpu {

#define ORBITCORE_DECLARE_SIMD_VARIANT(NS)                                                        \
  namespace NS {                                                                                  \
  std::size_t workspace_bytes_f(index_t B, index_t p);                                            \
  std::size_t workspace_bytes_d(index_t B, index_t p);                                            \
  void accumulate_ff(const float* X, index_t B, index_t L, const std::int64_t* cols, index_t p,   \
                     float* G, float* s, int nt, void* work);                                     \
  void accumulate_fd(const float* X, index_t B, index_t L, const std::int64_t* cols, index_t p,   \
                     double* G, double* s, int nt, void* work);                                   \
  void accumulate_dd(const double* X, index_t B, index_t L, const std::int64_t* cols, index_t p,  \
                     double* G, double* s, int nt, void* work);                                   \
  }

ORBITCORE_DECLARE_SIMD_VARIANT(simd_generic)
#if defined(ORBITCORE_X86_SIMD)
ORBITCORE_DECLARE_SIMD_VARIANT(simd_avx2)
ORBITCORE_DECLARE_SIMD_VARIANT(simd_avx512)
#endif
#undef ORBITCORE_DECLARE_SIMD_VARIANT

}  // namespace cpu
}  // namespace orbitcore
