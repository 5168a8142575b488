// CUDA drivers of the norm family. The per-channel sums run on (32 channels) x (8 rows) blocks:
// each thread walks a strided set of rows of one channel, the block adds its 8 rows in shared
// memory and one atomicAdd per channel and block goes to the double sums in `ws`. Per-channel
// coefficients are then formed by one thread per channel, and the elementwise passes run one
// thread per element (with pooling: per pooled output forward, per input element backward, each
// recomputing its window's maximum). Element math: ../norm.hpp.
#include "norm.hpp"

#include "../norm.hpp"
#include "common.cuh"

namespace orbitcore {
namespace cuda {
namespace {

constexpr unsigned kCh = 32, kRows = 8, kThreads = 256;

inline unsigned row_blocks(index_t M) {
  const index_t b = (M + 8 * kRows - 1) / (8 * kRows);  // about 8 rows per thread
  return static_cast<unsigned>(b < 1024 ? (b < 1 ? 1 : b) : 1024);
}

// The block's kRows partial sums (s1, s2) of channel c added up, then atomically into out1[c],
// out2[c] (all threads of the block must call).
__device__ ORBITCORE_FORCEINLINE void add_block_rows(double s1, double s2, index_t c, index_t C, double* out1,
                                                     double* out2) {
  __shared__ double sh1[kRows][kCh], sh2[kRows][kCh];
  sh1[threadIdx.y][threadIdx.x] = s1;
  sh2[threadIdx.y][threadIdx.x] = s2;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    for (unsigned r = 1; r < kRows; ++r) {
      s1 += sh1[r][threadIdx.x];
      s2 += sh2[r][threadIdx.x];
    }
    atomicAdd(out1 + c, s1);
    atomicAdd(out2 + c, s2);
  }
}

// Shifted sums S1 = Σ (x − x[0, c]), S2 = Σ (x − x[0, c])² into out[c], out[C + c].
template <typename T>
__global__ void stats_kernel(const T* __restrict__ x, index_t M, index_t C, double* __restrict__ out) {
  const index_t c = index_t(blockIdx.x) * kCh + threadIdx.x;
  double s1 = 0.0, s2 = 0.0;
  if (c < C) {
    const double K = static_cast<double>(x[c]);
    for (index_t m = index_t(blockIdx.y) * kRows + threadIdx.y; m < M; m += index_t(gridDim.y) * kRows) {
      const double d = static_cast<double>(x[m * C + c]) - K;
      s1 += d;
      s2 += d * d;
    }
  }
  add_block_rows(s1, s2, c, C, out, out + C);
}

// ws: [0, 2C) sums; writes mean, var and the coefficients a, b to ws[2C, 4C).
template <typename T>
__global__ void forward_coef_kernel(const T* __restrict__ x, index_t M, index_t C, const T* __restrict__ gamma,
                                    const T* __restrict__ beta, double eps, T* __restrict__ mean,
                                    T* __restrict__ var, double* __restrict__ ws) {
  const index_t c = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  double mu, v;
  norm::finish_stats(static_cast<double>(x[c]), ws[c], ws[C + c], static_cast<double>(M), &mu, &v);
  const norm::ChannelCoef k = norm::channel_coef(mu, v, static_cast<double>(gamma[c]), static_cast<double>(beta[c]), eps);
  mean[c] = static_cast<T>(mu);
  var[c] = static_cast<T>(v);
  ws[2 * C + c] = k.a;
  ws[3 * C + c] = k.b;
}

template <typename T>
__global__ void forward_apply_kernel(const T* __restrict__ x, index_t M, index_t C, const double* __restrict__ ab,
                                     T* __restrict__ y) {
  const index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= M * C) return;
  const index_t c = i % C;
  y[i] = norm::forward_value(x[i], static_cast<T>(ab[c]), static_cast<T>(ab[C + c]));
}

// ws: [0, C) a, [C, 2C) b, [2C, 3C) s, [3C, 4C) γ s; [4C, 6C) zeroed for the sums.
template <typename T>
__global__ void backward_coef_kernel(index_t C, const T* __restrict__ gamma, const T* __restrict__ beta,
                                     const T* __restrict__ mean, const T* __restrict__ var, double eps,
                                     double* __restrict__ ws) {
  const index_t c = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const norm::ChannelCoef k = norm::channel_coef(static_cast<double>(mean[c]), static_cast<double>(var[c]),
                                                 static_cast<double>(gamma[c]), static_cast<double>(beta[c]), eps);
  ws[c] = k.a;
  ws[C + c] = k.b;
  ws[2 * C + c] = k.s;
  ws[3 * C + c] = static_cast<double>(gamma[c]) * k.s;
  ws[4 * C + c] = 0.0;
  ws[5 * C + c] = 0.0;
}

// Σ dz and Σ dz x̂ per channel into ws[4C, 6C).
template <typename T>
__global__ void backward_sums_kernel(const T* __restrict__ dy, const T* __restrict__ x, index_t M, index_t C,
                                     const T* __restrict__ mean, double* __restrict__ ws) {
  const index_t c = index_t(blockIdx.x) * kCh + threadIdx.x;
  double t1 = 0.0, t2 = 0.0;
  if (c < C) {
    const T a = static_cast<T>(ws[c]), b = static_cast<T>(ws[C + c]), s = static_cast<T>(ws[2 * C + c]);
    const T mu = mean[c];
    for (index_t m = index_t(blockIdx.y) * kRows + threadIdx.y; m < M; m += index_t(gridDim.y) * kRows) {
      const T xv = x[m * C + c];
      const T dz = norm::gated_grad(dy[m * C + c], xv, a, b);
      t1 += static_cast<double>(dz);
      t2 += static_cast<double>(dz * ((xv - mu) * s));
    }
  }
  add_block_rows(t1, t2, c, C, ws + 4 * C, ws + 5 * C);
}

// dβ, dγ, and the means m1 = dβ/M, m2 = dγ/M into ws[6C, 8C).
template <typename T>
__global__ void backward_finish_kernel(index_t M, index_t C, T* __restrict__ dgamma, T* __restrict__ dbeta,
                                       double* __restrict__ ws) {
  const index_t c = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const double u1 = ws[4 * C + c], u2 = ws[5 * C + c];
  dbeta[c] = static_cast<T>(u1);
  dgamma[c] = static_cast<T>(u2);
  ws[6 * C + c] = u1 / static_cast<double>(M);
  ws[7 * C + c] = u2 / static_cast<double>(M);
}

template <typename T>
__global__ void backward_apply_kernel(const T* __restrict__ dy, const T* __restrict__ x, index_t M, index_t C,
                                      const T* __restrict__ mean, const double* __restrict__ ws,
                                      T* __restrict__ dx) {
  const index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= M * C) return;
  const index_t c = i % C;
  const T a = static_cast<T>(ws[c]), b = static_cast<T>(ws[C + c]), s = static_cast<T>(ws[2 * C + c]);
  const T dz = norm::gated_grad(dy[i], x[i], a, b);
  dx[i] = norm::input_grad(dz, (x[i] - mean[c]) * s, static_cast<T>(ws[3 * C + c]), static_cast<T>(ws[6 * C + c]),
                           static_cast<T>(ws[7 * C + c]));
}

// Pooled forward: one thread per pooled output (N, H/2, W/2, C).
template <typename T>
__global__ void forward_pool_apply_kernel(const T* __restrict__ x, norm::Pool2 g, index_t C,
                                          const double* __restrict__ ab, T* __restrict__ y) {
  const index_t Wo = g.W / 2, count = g.N * (g.H / 2) * Wo * C;
  const index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= count) return;
  const index_t c = i % C, q = i / C, j = q % Wo;
  const T* x0 = x + (norm::window_first_row(q / Wo, g) + 2 * j) * C + c;
  const index_t WC = g.W * C;
  const T a = static_cast<T>(ab[c]), b = static_cast<T>(ab[C + c]);
  y[i] = norm::pooled_value(a * x0[0] + b, a * x0[C] + b, a * x0[WC] + b, a * x0[WC + C] + b);
}

// Pooled Σ dz, Σ dz x̂ into ws[4C, 6C): only each window's winner has dz != 0.
template <typename T>
__global__ void backward_pool_sums_kernel(const T* __restrict__ dy, const T* __restrict__ x, norm::Pool2 g, index_t C,
                                          const T* __restrict__ mean, double* __restrict__ ws) {
  const index_t c = index_t(blockIdx.x) * kCh + threadIdx.x;
  const index_t Wo = g.W / 2, windows = g.N * (g.H / 2) * Wo, WC = g.W * C;
  double t1 = 0.0, t2 = 0.0;
  if (c < C) {
    const T a = static_cast<T>(ws[c]), b = static_cast<T>(ws[C + c]), s = static_cast<T>(ws[2 * C + c]);
    const T mu = mean[c];
    for (index_t q = index_t(blockIdx.y) * kRows + threadIdx.y; q < windows; q += index_t(gridDim.y) * kRows) {
      const T* x0 = x + (norm::window_first_row(q / Wo, g) + 2 * (q % Wo)) * C + c;
      const T v0 = x0[0], v1 = x0[C], v2 = x0[WC], v3 = x0[WC + C];
      T d0, d1, d2, d3;  // one of them at most is non-zero
      norm::pooled_gated_grads(dy[q * C + c], a * v0 + b, a * v1 + b, a * v2 + b, a * v3 + b, &d0, &d1, &d2, &d3);
      t1 += static_cast<double>((d0 + d1) + (d2 + d3));
      t2 += static_cast<double>((d0 * (v0 - mu) + d1 * (v1 - mu) + d2 * (v2 - mu) + d3 * (v3 - mu)) * s);
    }
  }
  add_block_rows(t1, t2, c, C, ws + 4 * C, ws + 5 * C);
}

// Pooled input gradient: one thread per input element; rows outside every window get dz = 0.
template <typename T>
__global__ void backward_pool_apply_kernel(const T* __restrict__ dy, const T* __restrict__ x, norm::Pool2 g,
                                           index_t C, const T* __restrict__ mean, const double* __restrict__ ws,
                                           T* __restrict__ dx) {
  const index_t M = g.N * g.H * g.W, Ho = g.H / 2, Wo = g.W / 2, WC = g.W * C;
  const index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= M * C) return;
  const index_t c = i % C, r = i / C, w = r % g.W, h = (r / g.W) % g.H, n = r / (g.W * g.H);
  const T a = static_cast<T>(ws[c]), b = static_cast<T>(ws[C + c]), s = static_cast<T>(ws[2 * C + c]);
  T dz = T(0);
  if (h / 2 < Ho && w / 2 < Wo) {
    const index_t q = (n * Ho + h / 2) * Wo + w / 2;  // the window, and this element's place in it
    const T* x0 = x + ((n * g.H + (h & ~index_t(1))) * g.W + (w & ~index_t(1))) * C + c;
    T d[4];
    norm::pooled_gated_grads(dy[q * C + c], a * x0[0] + b, a * x0[C] + b, a * x0[WC] + b, a * x0[WC + C] + b, d,
                             d + 1, d + 2, d + 3);
    dz = d[2 * (h % 2) + w % 2];
  }
  dx[i] = norm::input_grad(dz, (x[i] - mean[c]) * s, static_cast<T>(ws[3 * C + c]), static_cast<T>(ws[6 * C + c]),
                           static_cast<T>(ws[7 * C + c]));
}

}  // namespace

template <typename T>
void batch_norm_relu_forward(const T* x, index_t M, index_t C, const T* gamma, const T* beta, double eps, T* y,
                             T* mean, T* var, double* ws, stream_t stream, const norm::Pool2* pool) {
  if (M * C == 0) return;
  check_cuda(cudaMemsetAsync(ws, 0, sizeof(double) * 2 * C, stream), "batch_norm_relu_forward");
  const dim3 sblock(kCh, kRows), sgrid(static_cast<unsigned>((C + kCh - 1) / kCh), row_blocks(M));
  stats_kernel<T><<<sgrid, sblock, 0, stream>>>(x, M, C, ws);
  check_launch("batch_norm_relu_forward (statistics)");
  forward_coef_kernel<T><<<blocks_for(C, kThreads), kThreads, 0, stream>>>(x, M, C, gamma, beta, eps, mean, var, ws);
  check_launch("batch_norm_relu_forward (coefficients)");
  if (pool == nullptr) {
    forward_apply_kernel<T><<<blocks_for(M * C, kThreads), kThreads, 0, stream>>>(x, M, C, ws + 2 * C, y);
  } else {
    const index_t count = pool->N * (pool->H / 2) * (pool->W / 2) * C;
    forward_pool_apply_kernel<T><<<blocks_for(count, kThreads), kThreads, 0, stream>>>(x, *pool, C, ws + 2 * C, y);
  }
  check_launch("batch_norm_relu_forward");
}

template <typename T>
void batch_norm_relu_backward(const T* dy, const T* x, index_t M, index_t C, const T* gamma, const T* beta,
                              const T* mean, const T* var, double eps, T* dx, T* dgamma, T* dbeta, double* ws,
                              stream_t stream, const norm::Pool2* pool) {
  if (M * C == 0) return;
  backward_coef_kernel<T><<<blocks_for(C, kThreads), kThreads, 0, stream>>>(C, gamma, beta, mean, var, eps, ws);
  check_launch("batch_norm_relu_backward (coefficients)");
  const index_t rows = pool ? pool->N * (pool->H / 2) * (pool->W / 2) : M;  // rows of dy
  const dim3 sblock(kCh, kRows), sgrid(static_cast<unsigned>((C + kCh - 1) / kCh), row_blocks(rows));
  if (pool == nullptr)
    backward_sums_kernel<T><<<sgrid, sblock, 0, stream>>>(dy, x, M, C, mean, ws);
  else
    backward_pool_sums_kernel<T><<<sgrid, sblock, 0, stream>>>(dy, x, *pool, C, mean, ws);
  check_launch("batch_norm_relu_backward (sums)");
  backward_finish_kernel<T><<<blocks_for(C, kThreads), kThreads, 0, stream>>>(M, C, dgamma, dbeta, ws);
  check_launch("batch_norm_relu_backward (parameter gradients)");
  if (dx == nullptr) return;
  if (pool == nullptr)
    backward_apply_kernel<T><<<blocks_for(M * C, kThreads), kThreads, 0, stream>>>(dy, x, M, C, mean, ws, dx);
  else
    backward_pool_apply_kernel<T><<<blocks_for(M * C, kThreads), kThreads, 0, stream>>>(dy, x, *pool, C, mean, ws, dx);
  check_launch("batch_norm_relu_backward");
}

#define ORBITCORE_INSTANTIATE(T)                                                                          \
  template void batch_norm_relu_forward<T>(const T*, index_t, index_t, const T*, const T*, double, T*, T*, \
                                           T*, double*, stream_t, const norm::Pool2*);                    \
  template void batch_norm_relu_backward<T>(const T*, const T*, index_t, index_t, const T*, const T*,      \
                                            const T*, const T*, double, T*, T*, T*, double*, stream_t,     \
                                            const norm::Pool2*);
ORBITCORE_INSTANTIATE(float)
ORBITCORE_INSTANTIATE(double)
#undef ORBITCORE_INSTANTIATE

}  // namespace cuda
}  // namespace orbitcore
