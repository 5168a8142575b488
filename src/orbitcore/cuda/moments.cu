// CUDA drivers of the moments family: a tiled SYRK over the lower block triangle (shared-memory
// panels, per-thread register tiles through moments::rank1_tile), and one thread per output
// entry for finalize / the real-basis target, all on the element math of ../moments.hpp.
#include "moments.hpp"

#include <cmath>

#include "../moments.hpp"
#include "common.cuh"

namespace orbitcore {
namespace cuda {
namespace {

constexpr int kTile = 64;    // G tile side
constexpr int kSub = 4;      // per-thread register tile side (16 x 16 threads)
constexpr int kKB = 16;      // samples per shared-memory step
constexpr int kFlush = 256;  // samples summed in registers before adding into G

// Lower-triangle tile k -> (row block bi, column block bj), bi >= bj.
__device__ ORBITCORE_FORCEINLINE void tile_of(long long k, int& bi, int& bj) {
  long long i = static_cast<long long>((sqrt(8.0 * static_cast<double>(k) + 1.0) - 1.0) * 0.5);
  while (i * (i + 1) / 2 > k) --i;
  while ((i + 1) * (i + 2) / 2 <= k) ++i;
  bi = static_cast<int>(i);
  bj = static_cast<int>(k - i * (i + 1) / 2);
}

__device__ ORBITCORE_FORCEINLINE long long clamp_col(long long c, long long L) {
  return c < 0 ? 0 : (c >= L ? L - 1 : c);  // the binding validates; never read out of bounds
}

template <typename T, typename Tacc>
__global__ void __launch_bounds__(256) syrk_kernel(const T* __restrict__ X, index_t B, index_t L,
                                                   const std::int64_t* __restrict__ cols, index_t p,
                                                   Tacc* __restrict__ G) {
  __shared__ T As[kKB][kTile];  // rows of the tile (G row index r)
  __shared__ T Bs[kKB][kTile];  // columns of the tile (G column index c)
  int bi, bj;
  tile_of(blockIdx.x, bi, bj);
  const index_t R0 = index_t(bi) * kTile, C0 = index_t(bj) * kTile;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  T acc[kSub][kSub];
  for (int i = 0; i < kSub; ++i)
    for (int j = 0; j < kSub; ++j) acc[i][j] = T(0);
  auto flush = [&]() {
    for (int i = 0; i < kSub; ++i) {
      const index_t r = R0 + ty + 16 * i;
      for (int j = 0; j < kSub; ++j) {
        const index_t c = C0 + tx + 16 * j;
        if (r < p && c < p) G[r * p + c] += static_cast<Tacc>(acc[i][j]);
        acc[i][j] = T(0);
      }
    }
  };
  int since_flush = 0;
  for (index_t b0 = 0; b0 < B; b0 += kKB) {
    // Load kKB samples x 64 gathered columns for the rows and the columns (4 + 4 per thread).
    for (int e = threadIdx.x; e < kKB * kTile; e += blockDim.x) {
      const int kk = e / kTile, cc = e % kTile;
      const index_t b = b0 + kk;
      const index_t ra = R0 + cc, cb = C0 + cc;
      const T* row = X + b * L;
      As[kk][cc] = (b < B && ra < p) ? row[clamp_col(cols[ra], L)] : T(0);
      Bs[kk][cc] = (b < B && cb < p) ? row[clamp_col(cols[cb], L)] : T(0);
    }
    __syncthreads();
    ORBITCORE_UNROLL
    for (int kk = 0; kk < kKB; ++kk) {
      T a[kSub], bv[kSub];
      ORBITCORE_UNROLL
      for (int i = 0; i < kSub; ++i) a[i] = As[kk][ty + 16 * i];
      ORBITCORE_UNROLL
      for (int j = 0; j < kSub; ++j) bv[j] = Bs[kk][tx + 16 * j];
      moments::rank1_tile<T, T, kSub, kSub>(acc, a, bv);
    }
    __syncthreads();
    since_flush += kKB;
    if (since_flush >= kFlush) {
      flush();
      since_flush = 0;
    }
  }
  flush();
}

template <typename T, typename Tacc>
__global__ void colsum_kernel(const T* __restrict__ X, index_t B, index_t L, const std::int64_t* __restrict__ cols,
                              index_t p, Tacc* __restrict__ s) {
  const index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= p) return;
  const index_t c = clamp_col(cols[i], L);
  Tacc total = Tacc(0);
  T part = T(0);
  for (index_t b = 0; b < B; ++b) {
    part += X[b * L + c];
    if ((b + 1) % kFlush == 0) {
      total += static_cast<Tacc>(part);
      part = T(0);
    }
  }
  s[i] += total + static_cast<Tacc>(part);
}

template <typename T>
__global__ void mirror_kernel(T* __restrict__ G, index_t p) {
  const index_t c = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const index_t r = blockIdx.y;
  if (c < r) moments::mirror_entry(G, p, r, c);
}

template <typename T>
__global__ void finalize_m2_kernel(const T* __restrict__ G, index_t p, const int* __restrict__ slots,
                                   const T* __restrict__ phase, index_t m, T inv, T noise, T* __restrict__ M2) {
  const index_t v = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const index_t u = blockIdx.y;
  if (v >= m || v < u) return;
  const cplx<T> e = moments::second_moment_entry(G, p, slots, phase, u, v, inv, noise);
  store_cplx(M2 + 2 * (u * m + v), e);
  if (v != u) store_cplx(M2 + 2 * (v * m + u), conj(e));
}

template <typename T>
__global__ void finalize_m1_kernel(const T* __restrict__ s, const int* __restrict__ slots,
                                   const T* __restrict__ phase, index_t m, T inv, T* __restrict__ M1) {
  const index_t u = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (u < m) store_cplx(M1 + 2 * u, moments::first_moment_entry(s, slots, phase, u, inv));
}

template <typename T>
__global__ void real_basis_kernel(const T* __restrict__ A, index_t m, const std::int64_t* __restrict__ idx,
                                  const T* __restrict__ coef, index_t p, T* __restrict__ out) {
  const index_t t = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const index_t r = blockIdx.y;
  if (t >= p) return;
  // B[r, t] = Re(c1[t] v_r[i1[t]] + c2[t] v_r[i2[t]]) with v_r = row r of U^* A.
  T v[4];
  const cplx<T> v1 = moments::real_basis_row(A, m, idx, coef, r, idx[2 * t]);
  const cplx<T> v2 = moments::real_basis_row(A, m, idx, coef, r, idx[2 * t + 1]);
  v[0] = v1.re;
  v[1] = v1.im;
  v[2] = v2.re;
  v[3] = v2.im;
  const std::int64_t local[4] = {0, 1, 0, 1};  // v holds v_r at i1[t] (slot 0) and i2[t] (slot 1)
  out[r * p + t] = moments::real_basis_col(v, local, coef + 4 * t, 0);
}

template <typename T>
__global__ void symmetrize_kernel(T* __restrict__ out, index_t p) {
  const index_t t = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const index_t r = blockIdx.y;
  if (t >= p || t <= r) return;
  const T v = T(0.5) * (out[r * p + t] + out[t * p + r]);
  out[r * p + t] = v;
  out[t * p + r] = v;
}

constexpr unsigned kThreads = 256;
constexpr unsigned kMaxGridY = 65535;

void check_rows(index_t rows, const char* what) {
  if (rows > kMaxGridY)
    throw std::runtime_error(std::string(what) + ": more than 65535 rows is not supported by the CUDA driver");
}

}  // namespace

template <typename T, typename Tacc>
void moments_accumulate(const T* X, index_t B, index_t L, const std::int64_t* cols, index_t p, Tacc* G,
                        Tacc* s, stream_t stream) {
  if (B <= 0 || p <= 0) return;
  const long long nt = (p + kTile - 1) / kTile;
  const long long tiles = nt * (nt + 1) / 2;
  syrk_kernel<T, Tacc><<<static_cast<unsigned>(tiles), 256, 0, stream>>>(X, B, L, cols, p, G);
  check_launch("moments_accumulate");
  colsum_kernel<T, Tacc><<<blocks_for(p, kThreads), kThreads, 0, stream>>>(X, B, L, cols, p, s);
  check_launch("moments_accumulate");
}

template <typename T>
void moments_finalize(T* G, const T* s, index_t p, const std::int32_t* slots, const T* phase,
                      index_t m, double count, double noise, T* M1, T* M2, stream_t stream) {
  if (m <= 0) return;
  check_rows(m, "moments_finalize");
  check_rows(p, "moments_finalize");
  mirror_kernel<T><<<dim3(blocks_for(p, kThreads), static_cast<unsigned>(p)), kThreads, 0, stream>>>(G, p);
  check_launch("moments_finalize");
  const T inv = count > 0 ? static_cast<T>(1.0 / count) : T(0);
  const int* sl = reinterpret_cast<const int*>(slots);
  finalize_m1_kernel<T><<<blocks_for(m, kThreads), kThreads, 0, stream>>>(s, sl, phase, m, inv, M1);
  check_launch("moments_finalize");
  const dim3 grid(blocks_for(m, kThreads), static_cast<unsigned>(m));
  finalize_m2_kernel<T><<<grid, kThreads, 0, stream>>>(G, p, sl, phase, m, inv, static_cast<T>(noise), M2);
  check_launch("moments_finalize");
}

template <typename T>
void moments_real_target(const T* A, index_t m, const std::int64_t* idx, const T* coef, index_t p, T* out,
                         stream_t stream) {
  if (p <= 0) return;
  check_rows(p, "moments_real_target");
  const dim3 grid(blocks_for(p, kThreads), static_cast<unsigned>(p));
  real_basis_kernel<T><<<grid, kThreads, 0, stream>>>(A, m, idx, coef, p, out);
  check_launch("moments_real_target");
  symmetrize_kernel<T><<<grid, kThreads, 0, stream>>>(out, p);
  check_launch("moments_real_target");
}

template void moments_accumulate<float, float>(const float*, index_t, index_t, const std::int64_t*, index_t,
                                               float*, float*, stream_t);
template void moments_accumulate<float, double>(const float*, index_t, index_t, const std::int64_t*, index_t,
                                                double*, double*, stream_t);
template void moments_accumulate<double, double>(const double*, index_t, index_t, const std::int64_t*,
                                                 index_t, double*, double*, stream_t);
template void moments_finalize<float>(float*, const float*, index_t, const std::int32_t*, const float*,
                                      index_t, double, double, float*, float*, stream_t);
template void moments_finalize<double>(double*, const double*, index_t, const std::int32_t*,
                                       const double*, index_t, double, double, double*, double*, stream_t);
template void moments_real_target<float>(const float*, index_t, const std::int64_t*, const float*, index_t,
                                         float*, stream_t);
template void moments_real_target<double>(const double*, index_t, const std::int64_t*, const double*, index_t,
                                          double*, stream_t);

}  // namespace cuda
}  // namespace orbitcore
