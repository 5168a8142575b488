// Instruction-set variants of the EM E-step (em_estep.inl), one namespace each; the dispatcher
// in em.cpp picks one at run time. Private to the CPU drivers.
#pragma once

#include "em.hpp"

namespace orbitcore {
namespace cpu {

#define ORBITCORE_DECLARE_EM_VARIANT(NS)                 \
  namespace NS {                                         \
  void estep_f(const EStepArgs<float>& args, int nt);    \
  void estep_d(const EStepArgs<double>& args, int nt);   \
  }

ORBITCORE_DECLARE_EM_VARIANT(em_generic)
#if defined(ORBITCORE_X86_SIMD)
ORBITCORE_DECLARE_EM_VARIANT(em_avx2)
ORBITCORE_DECLARE_EM_VARIANT(em_avx512)
#endif
#undef ORBITCORE_DECLARE_EM_VARIANT

}  // namespace cpu
}  // namespace orbitcore
