// CPU drivers of the norm family (batch normalisation fused with ReLU, optionally with 2×2 max
// pooling; OpenMP over rows). Torch-free; raw pointers to contiguous row-major arrays. Element
// math: ../norm.hpp. `level` picks the instruction-set variant (see simd.hpp; norm_impl.inl).
#pragma once

#include "../norm.hpp"
#include "simd.hpp"

namespace orbitcore {
namespace cpu {

// Training-mode forward: batch statistics of x (M, C) per channel, y = max(0, γ x̂ + β).
//   gamma, beta (C,); y (M, C), mean (C,), var (C,) (biased) are written. M >= 1.
//   With `pool`, y is the pooled (N, H/2, W/2, C) array instead.
template <typename T>
void batch_norm_relu_forward(const T* x, index_t M, index_t C, const T* gamma, const T* beta, double eps, T* y,
                             T* mean, T* var, int num_threads, const norm::Pool2* pool, SimdLevel level);

// Its backward from dy (M, C) (with `pool`: the pooled (N, H/2, W/2, C)), recomputing x̂, the
// ReLU gate and the pooling's choice from x and the statistics:
//   dx (M, C) (may be null), dgamma (C,), dbeta (C,) are written.
template <typename T>
void batch_norm_relu_backward(const T* dy, const T* x, index_t M, index_t C, const T* gamma, const T* beta,
                              const T* mean, const T* var, double eps, T* dx, T* dgamma, T* dbeta,
                              int num_threads, const norm::Pool2* pool, SimdLevel level);

}  // namespace cpu
}  // namespace orbitcore
