// CPU drivers of the EM family (seeds/002 eq. 18–25). Torch-free; raw pointers to contiguous
// arrays. Element math and the shift convention: ../em.hpp.
#pragma once

#include <cstdint>

#include "../common.hpp"
#include "../em.hpp"
#include "simd.hpp"

namespace orbitcore {
namespace cpu {

// One E-step over a set of patches (contract: em::EStepArgs in ../em.hpp): log-likelihoods of
// eq. 24 for every (patch, displacement, rotation), per-patch log-sum-exp (eq. 23), and the
// sufficient statistics of the M-step, without materialising the (P, D, K) array.
template <typename T>
using EStepArgs = em::EStepArgs<T>;

template <typename T>
void em_estep(const EStepArgs<T>& args, int num_threads, SimdLevel level);

}  // namespace cpu
}  // namespace orbitcore
