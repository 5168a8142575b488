// CUDA drivers of the EM family: the E-step in five launches per chunk of patches, on the element
// math of ../em.hpp. Scores of the chunk are kept in the workspace (chunk x D x K); every output
// element is written by one thread (no atomics: results do not depend on scheduling).
//   scores       block (k, p), threads over rotations: correlate_tile over the k-list, score;
//                block maximum per (p, k);
//   normalise    block p: maximum, e = exp(s - max) in place, Z (float64), log-evidence, empty
//                posterior, c_p / Z and 1 / Z;
//   weights      thread (w, k): shift_weights[w, k] += sum_p e c_p / Z;
//   backproject  thread (w, q) for q in the support: the gather form of backproject_tile,
//                H[w, q] += sum_p c_p / Z sum_{k: q - d_k in the patch} e[p, k, w] I_p[q - d_k];
//   posterior    block (k, p): sum_w e / Z (on request).
#include "em.hpp"

#include <cfloat>
#include <cmath>

#include "common.cuh"

namespace orbitcore {
namespace cuda {
namespace {

constexpr unsigned kThreads = 128;
constexpr unsigned kNormThreads = 256;

template <typename T>
struct IntLane;
template <>
struct IntLane<float> {
  using type = int;
};
template <>
struct IntLane<double> {
  using type = long long;
};

template <typename T>
__device__ ORBITCORE_FORCEINLINE T block_max(T v, T* shared /* >= 32 */) {
  const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
  for (int o = 16; o > 0; o >>= 1) {
    const T u = __shfl_down_sync(0xffffffffu, v, o);
    v = u > v ? u : v;
  }
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  const unsigned nwarps = (blockDim.x + 31u) >> 5;
  v = threadIdx.x < nwarps ? shared[threadIdx.x] : -INFINITY;
  if (warp == 0)
    for (int o = 16; o > 0; o >>= 1) {
      const T u = __shfl_down_sync(0xffffffffu, v, o);
      v = u > v ? u : v;
    }
  return v;
}

template <typename T>
__global__ void scores_kernel(const em::EStepArgs<T> a, index_t p0, T* __restrict__ S, T* __restrict__ bmax) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* patch = reinterpret_cast<T*>(smem_raw);
  __shared__ T red[32];
  const int L = a.L, LL = L * L, D = em::shift_count(L);
  const int k = blockIdx.x;
  const index_t p = blockIdx.y, pg = p0 + p;
  for (int q = threadIdx.x; q < LL; q += blockDim.x) patch[q] = a.patches[pg * LL + q];
  __syncthreads();
  int d0, d1;
  em::displacement(k, L, d0, d1);
  const int off = em::pixel_offset(d0, d1, L);
  const int* list = a.klist + a.kstart[k];
  const int n = a.kstart[k + 1] - a.kstart[k];
  const T c2 = static_cast<T>(2.0 * a.inv2s2);
  const double lp = static_cast<double>(a.log_prior[k]) - log(static_cast<double>(a.K));
  T m = -INFINITY;
  for (index_t w = threadIdx.x; w < a.K; w += blockDim.x) {
    T acc[1][1] = {{T(0)}};
    em::correlate_tile<T, T, 1, 1, 1>(acc, patch, a.projections + w * LL, index_t(1), list, n, off);
    const T bias = static_cast<T>(-static_cast<double>(a.norms[w * D + k]) * a.inv2s2 + lp);
    const T s = em::score(acc[0][0], c2, bias);
    S[(p * D + k) * a.K + w] = s;
    m = s > m ? s : m;
  }
  m = block_max(m, red);
  if (threadIdx.x == 0) bmax[p * D + k] = m;
}

template <typename T>
__global__ void normalise_kernel(const em::EStepArgs<T> a, index_t p0, T* __restrict__ S,
                                 const T* __restrict__ bmax, double* __restrict__ scale) {
  __shared__ T redT[32];
  __shared__ double redD[32];
  const int L = a.L, LL = L * L, D = em::shift_count(L);
  const index_t p = blockIdx.x, pg = p0 + p;
  const double s_empty = static_cast<double>(a.log_prior[D]);
  T m = -INFINITY;
  for (int k = threadIdx.x; k < D; k += blockDim.x) m = bmax[p * D + k] > m ? bmax[p * D + k] : m;
  m = block_max(m, redT);
  __shared__ T mshared;
  if (threadIdx.x == 0) mshared = static_cast<double>(m) > s_empty ? m : static_cast<T>(s_empty);
  __syncthreads();
  const T mt = mshared;
  double z = 0.0, energy = 0.0;
  T* Sp = S + p * D * a.K;
  const index_t n = index_t(D) * a.K;
  for (index_t i = threadIdx.x; i < n; i += blockDim.x) {
    const T e = em::exp_nonpositive<T, T, typename IntLane<T>::type>(Sp[i] - mt);
    Sp[i] = e;
    z += static_cast<double>(e);
  }
  for (int q = threadIdx.x; q < LL; q += blockDim.x) {
    const double v = static_cast<double>(a.patches[pg * LL + q]);
    energy += v * v;
  }
  z = block_sum(z, redD);
  __syncthreads();
  energy = block_sum(energy, redD);
  if (threadIdx.x == 0) {
    const double e_empty = exp(s_empty - static_cast<double>(mt));
    const double Z = z + e_empty;
    const double lse = static_cast<double>(mt) + log(Z);
    const double cp = a.patch_weights ? static_cast<double>(a.patch_weights[pg]) : 1.0;
    scale[2 * p] = cp / Z;
    scale[2 * p + 1] = 1.0 / Z;
    a.log_evidence[pg] = em::log_evidence(lse, energy, a.inv2s2, L);
    a.empty_posterior[pg] = e_empty / Z;
  }
}

template <typename T>
__global__ void weights_kernel(const em::EStepArgs<T> a, index_t np, const T* __restrict__ S,
                               const double* __restrict__ scale) {
  const int D = em::shift_count(a.L);
  const index_t w = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int k = blockIdx.y;
  if (w >= a.K) return;
  double acc = 0.0;
  for (index_t p = 0; p < np; ++p) acc += scale[2 * p] * static_cast<double>(S[(p * D + k) * a.K + w]);
  a.shift_weights[w * D + k] += acc;
}

template <typename T>
__global__ void backproject_kernel(const em::EStepArgs<T> a, index_t p0, index_t np, const T* __restrict__ S,
                                   const double* __restrict__ scale, const unsigned char* __restrict__ support) {
  const int L = a.L, LL = L * L, D = em::shift_count(L), n1 = em::shift_side(L);
  const index_t w = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int q = blockIdx.y;
  if (w >= a.K || !support[q]) return;
  const int q0 = q / L, q1 = q % L;
  double acc = 0.0;
  for (index_t p = 0; p < np; ++p) {
    const T* I = a.patches + (p0 + p) * LL;
    const T* Sp = S + p * D * a.K + w;
    T part = T(0);
    // the patch pixels (i, j) = q - d that meet projection pixel q: d0 = q0 - i, d1 = q1 - j
    for (int i = 0; i < L; ++i) {
      const int k0 = (q0 - i + L - 1) * n1;
      for (int j = 0; j < L; ++j) part += Sp[index_t(k0 + q1 - j + L - 1) * a.K] * I[i * L + j];
    }
    acc += scale[2 * p] * static_cast<double>(part);
  }
  a.backprojection[w * LL + q] += acc;
}

template <typename T>
__global__ void posterior_kernel(const em::EStepArgs<T> a, index_t p0, const T* __restrict__ S,
                                 const double* __restrict__ scale) {
  __shared__ double red[32];
  const int D = em::shift_count(a.L);
  const int k = blockIdx.x;
  const index_t p = blockIdx.y;
  double s = 0.0;
  for (index_t w = threadIdx.x; w < a.K; w += blockDim.x) s += static_cast<double>(S[(p * D + k) * a.K + w]);
  s = block_sum(s, red);
  if (threadIdx.x == 0) a.shift_posterior[(p0 + p) * D + k] = s * scale[2 * p + 1];
}

// support[q] = 1 where q + 0 is the image of a listed patch pixel (the k-list of displacement 0
// lists exactly the support).
__global__ void support_kernel(const int* __restrict__ klist, const int* __restrict__ kstart, int L,
                               unsigned char* __restrict__ support) {
  const int D = em::shift_count(L), k0 = (D - 1) / 2;
  const int LL = L * L;
  for (int q = threadIdx.x; q < LL; q += blockDim.x) support[q] = 0;
  __syncthreads();
  for (int t = kstart[k0] + threadIdx.x; t < kstart[k0 + 1]; t += blockDim.x) support[klist[t]] = 1;
}

}  // namespace

template <typename T>
void em_estep(const em::EStepArgs<T>& a, T* ws, index_t chunk, double* ws64, stream_t stream) {
  const int L = a.L, LL = L * L, D = em::shift_count(L);
  check_cuda(cudaMemsetAsync(a.shift_weights, 0, sizeof(double) * a.K * D, stream), "em_estep memset");
  check_cuda(cudaMemsetAsync(a.backprojection, 0, sizeof(double) * a.K * LL, stream), "em_estep memset");
  if (a.P == 0) return;
  T* S = ws;
  T* bmax = ws + chunk * D * a.K;
  // the support flags sit after the block maxima (LL bytes, rounded up to whole T values)
  unsigned char* support = reinterpret_cast<unsigned char*>(bmax + chunk * D);
  support_kernel<<<1, kThreads, 0, stream>>>(a.klist, a.kstart, L, support);
  check_launch("em_estep support");
  for (index_t p0 = 0; p0 < a.P; p0 += chunk) {
    const index_t np = a.P - p0 < chunk ? a.P - p0 : chunk;
    scores_kernel<T><<<dim3(D, static_cast<unsigned>(np)), kThreads, sizeof(T) * LL, stream>>>(a, p0, S, bmax);
    check_launch("em_estep scores");
    normalise_kernel<T><<<static_cast<unsigned>(np), kNormThreads, 0, stream>>>(a, p0, S, bmax, ws64);
    check_launch("em_estep normalise");
    const unsigned wb = blocks_for(a.K, kThreads);
    weights_kernel<T><<<dim3(wb, D), kThreads, 0, stream>>>(a, np, S, ws64);
    check_launch("em_estep weights");
    backproject_kernel<T><<<dim3(wb, LL), kThreads, 0, stream>>>(a, p0, np, S, ws64, support);
    check_launch("em_estep backproject");
    if (a.shift_posterior) {
      posterior_kernel<T><<<dim3(D, static_cast<unsigned>(np)), kThreads, 0, stream>>>(a, p0, S, ws64);
      check_launch("em_estep posterior");
    }
  }
}

template void em_estep<float>(const em::EStepArgs<float>&, float*, index_t, double*, stream_t);
template void em_estep<double>(const em::EStepArgs<double>&, double*, index_t, double*, stream_t);

}  // namespace cuda
}  // namespace orbitcore
