// CUDA drivers of the moments family. Same contracts as ../cpu/moments.hpp (device pointers,
// contiguous, interleaved complex); every launch goes to `stream`.
#pragma once

#include <cstdint>

#include "../common.hpp"
#include "runtime.hpp"

namespace orbitcore {
namespace cuda {

// G (lower triangle) += Y^T Y, s += sum of rows of Y, Y[b, i] = X[b * L + cols[i]].
template <typename T, typename Tacc>
void moments_accumulate(const T* X, index_t B, index_t L, const std::int64_t* cols, index_t p, Tacc* G,
                        Tacc* s, stream_t stream);

template <typename T>
void moments_finalize(T* G, const T* s, index_t p, const std::int32_t* slots, const T* phase,
                      index_t m, double count, double noise, T* M1, T* M2, stream_t stream);

template <typename T>
void moments_real_target(const T* A, index_t m, const std::int64_t* idx, const T* coef, index_t p, T* out,
                         stream_t stream);

}  // namespace cuda
}  // namespace orbitcore
