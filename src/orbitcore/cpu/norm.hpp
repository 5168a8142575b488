// CPU drivers of the norm family (batch normalisation fused with ReLU; OpenMP over rows).
// Torch-free; raw pointers to contiguous row-major arrays. Element math: ../norm.hpp.
#pragma once

#include "../common.hpp"

namespace orbitcore {
namespace cpu {

// Training-mode forward: batch statistics of x (M, C) per channel, y = max(0, γ x̂ + β).
//   gamma, beta (C,); y (M, C), mean (C,), var (C,) (biased) are written. M >= 1.
template <typename T>
void batch_norm_relu_forward(const T* x, index_t M, index_t C, const T* gamma, const T* beta, double eps, T* y,
                             T* mean, T* var, int num_threads);

// Its backward from dy (M, C), recomputing x̂ and the ReLU gate from x and the statistics:
//   dx (M, C), dgamma (C,), dbeta (C,) are written.
template <typename T>
void batch_norm_relu_backward(const T* dy, const T* x, index_t M, index_t C, const T* gamma, const T* beta,
                              const T* mean, const T* var, double eps, T* dx, T* dgamma, T* dbeta,
                              int num_threads);

}  // namespace cpu
}  // namespace orbitcore
