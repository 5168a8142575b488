// CUDA drivers of the norm family (batch normalisation fused with ReLU). Same contracts as
// ../cpu/norm.hpp (device pointers, contiguous), plus `ws`: a device workspace of at least
// 8 * C doubles (per-channel sums and coefficients). Every launch goes to `stream`. With `pool`
// (2×2 max pooling after the ReLU, ../norm.hpp), y and dy are the pooled (N, H/2, W/2, C).
#pragma once

#include "../norm.hpp"
#include "runtime.hpp"

namespace orbitcore {
namespace cuda {

template <typename T>
void batch_norm_relu_forward(const T* x, index_t M, index_t C, const T* gamma, const T* beta, double eps, T* y,
                             T* mean, T* var, double* ws, stream_t stream, const norm::Pool2* pool = nullptr);

template <typename T>
void batch_norm_relu_backward(const T* dy, const T* x, index_t M, index_t C, const T* gamma, const T* beta,
                              const T* mean, const T* var, double eps, T* dx, T* dgamma, T* dbeta, double* ws,
                              stream_t stream, const norm::Pool2* pool = nullptr);

}  // namespace cuda
}  // namespace orbitcore
