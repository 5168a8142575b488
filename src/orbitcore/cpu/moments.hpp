// CPU drivers of the moments family. Torch-free; raw pointers to contiguous arrays; complex
// arrays interleaved (re, im). Element math and the real-basis contract: ../moments.hpp.
#pragma once

#include <cstdint>
#include <string>

#include "../common.hpp"
#include "simd.hpp"  // SimdLevel: instruction-set variants of the blocked SYRK kernel

namespace orbitcore {
namespace cpu {

// Gathered symmetric rank-B update (accumulates, does not overwrite):
//   y_b[i] = X[b * L + cols[i]]                     (b < B, i < p; 0 <= cols[i] < L)
//   G[r * p + c] += sum_b y_b[r] y_b[c]   for r >= c  (lower triangle; see ../moments.hpp)
//   s[i]         += sum_b y_b[i]
// T is the compute precision (float or double); Tacc the accumulator precision (float or
// double, Tacc at least as wide as T). With T = float and Tacc = double the products of each
// block of at most 384 samples are summed in float registers and each block's sum is added
// in double, so the accumulation error does not grow with the number of blocks.
template <typename T, typename Tacc>
void moments_accumulate(const T* X, index_t B, index_t L, const std::int64_t* cols, index_t p,
                        Tacc* G, Tacc* s, int num_threads, SimdLevel level);

// Fourier moments from the accumulated sums (../moments.hpp):
//   slots (m, 3) int32, phase (m, 2), G (p, p), s (p);
//   M1 (m) complex, M2 (m, m) complex: overwritten; M2 is Hermitian by construction (the
//   upper triangle is computed, the lower one mirrored, the diagonal real).
// G's upper triangle (free storage) is overwritten with the mirror of its lower triangle.
template <typename T>
void moments_finalize(T* G, const T* s, index_t p, const std::int32_t* slots, const T* phase,
                      index_t m, double count, double noise, T* M1, T* M2, int num_threads);

// The data matrix in the real basis of Hermitian-symmetric slices (../moments.hpp):
//   A (m, m) complex, idx (p, 2) int64, coef (p, 2, 2) -> out (p, p) real symmetric (overwritten).
template <typename T>
void moments_real_target(const T* A, index_t m, const std::int64_t* idx, const T* coef, index_t p, T* out,
                         int num_threads);

}  // namespace cpu
}  // namespace orbitcore
