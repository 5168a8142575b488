// CUDA drivers of the slice family: one thread per plane point (or sample point), the element
// math of ../slice.hpp, atomics for the scatter, a block reduction for the rotation gradient.
#include "slice.hpp"

#include "../slice.hpp"
#include "common.cuh"

namespace orbitcore {
namespace cuda {
namespace {

constexpr unsigned kThreads = 256;
constexpr unsigned kMaxGridY = 65535;

template <typename T>
__global__ void slice_forward_kernel(const T* __restrict__ vol, index_t V, int D, bool half,
                                     const T* __restrict__ rot, index_t B, int n, T radius2,
                                     bool hermitian, T* __restrict__ out) {
  const index_t plane = index_t(n) * n;
  const index_t p = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= plane) return;
  const int c = grid_center(n);
  const int ky = static_cast<int>(p / n) - c, kx = static_cast<int>(p % n) - c;
  const index_t vs = index_t(D) * D * (half ? slice::half_width(D) : D);
  for (index_t b = blockIdx.y; b < B; b += gridDim.y) {
    T* o = out + 2 * plane * b;
    if (!slice::in_disk(kx, ky, radius2)) {
      store_cplx(o + 2 * p, make_cplx(T(0), T(0)));
      continue;
    }
    const int role = slice::point_role(kx, ky, n, hermitian);
    if (role == slice::kSkip) continue;
    const T* R = rot + 9 * b;
    T x, y, z;
    slice::plane_point(R, T(kx), T(ky), x, y, z);
    cplx<T> val = make_cplx(T(0), T(0));
    if (half) {
      val = slice::sample_point_half(vol + 2 * vs * (V == 1 ? 0 : b), D, x, y, z);
    } else if (slice::touches_grid(x, y, z, D)) {
      slice::Stencil<T> s;
      slice::make_stencil(x, y, z, D, s);
      val = slice::gather(vol + 2 * vs * (V == 1 ? 0 : b), s);
    }
    store_cplx(o + 2 * p, val);
    if (role == slice::kMirror) store_cplx(o + 2 * (index_t(-ky + c) * n + (-kx + c)), conj(val));
  }
}

template <typename T>
__global__ void slice_backward_kernel(const T* __restrict__ g, const T* __restrict__ w,
                                      const T* __restrict__ vol, index_t V, index_t Vg, int D,
                                      bool half, const T* __restrict__ rot, index_t B, int n,
                                      T radius2, bool hermitian, T* grad_vol, T* wvol, T* grad_rot) {
  __shared__ T red[32];
  const index_t plane = index_t(n) * n;
  const index_t p = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int c = grid_center(n);
  const int ky = static_cast<int>(p / n) - c, kx = static_cast<int>(p % n) - c;
  const index_t vs = index_t(D) * D * (half ? slice::half_width(D) : D);
  const AtomicAdd<T> add;
  for (index_t b = blockIdx.y; b < B; b += gridDim.y) {
    T dp[3] = {T(0), T(0), T(0)};
    // No early return: every thread takes part in the block reduction below.
    const bool active = p < plane && slice::in_disk(kx, ky, radius2);
    const int role = active ? slice::point_role(kx, ky, n, hermitian) : int(slice::kSkip);
    if (role != slice::kSkip) {
      T x, y, z;
      slice::plane_point(rot + 9 * b, T(kx), T(ky), x, y, z);
      if (half) {  // half volumes (no weights: the binding checks)
        const cplx<T> geff = slice::effective_grad(g + 2 * plane * b, n, kx, ky, role);
        T* gv = grad_vol ? grad_vol + 2 * vs * (Vg == 1 ? 0 : b) : nullptr;
        if (grad_rot) {
          cplx<T> dval[3];
          const T* v = vol + 2 * vs * (V == 1 ? 0 : b);
          if (gv)
            slice::scatter_grad_point_half(v, gv, D, x, y, z, geff, add, dval);
          else
            slice::sample_grad_point_half(v, D, x, y, z, dval);
          slice::point_grad(geff, dval, dp);
        } else if (gv) {
          slice::scatter_point_half(gv, D, x, y, z, geff, add);
        }
      } else if (slice::touches_grid(x, y, z, D)) {
        slice::Stencil<T> s;
        slice::make_stencil(x, y, z, D, s);
        const cplx<T> geff = slice::effective_grad(g + 2 * plane * b, n, kx, ky, role);
        if (grad_vol) slice::scatter(grad_vol + 2 * vs * (Vg == 1 ? 0 : b), s, geff, add);
        if (wvol) slice::scatter_real(wvol, s, slice::effective_weight(w + plane * b, n, kx, ky, role), add);
        if (grad_rot) {
          cplx<T> dval[3];
          slice::gather_grad(vol + 2 * vs * (V == 1 ? 0 : b), s, dval);
          slice::point_grad(geff, dval, dp);
        }
      }
    }
    if (grad_rot) {
      T* G = grad_rot + 9 * b;
      for (int i = 0; i < 3; ++i) {
        const T sx = block_sum(dp[i] * T(kx), red);
        const T sy = block_sum(dp[i] * T(ky), red);
        if (threadIdx.x == 0) {
          atomicAdd(G + 3 * i, sx);
          atomicAdd(G + 3 * i + 1, sy);
        }
      }
    }
  }
}

template <typename T>
__global__ void sample_forward_kernel(const T* __restrict__ vol, index_t V, int D,
                                      const T* __restrict__ coords, index_t P, T* __restrict__ out) {
  const index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= V * P) return;
  const index_t vs = index_t(D) * D * D;
  const T* q = coords + 3 * i;
  cplx<T> val = make_cplx(T(0), T(0));
  if (slice::touches_grid(q[0], q[1], q[2], D)) {
    slice::Stencil<T> s;
    slice::make_stencil(q[0], q[1], q[2], D, s);
    val = slice::gather(vol + 2 * vs * (i / P), s);
  }
  store_cplx(out + 2 * i, val);
}

template <typename T>
__global__ void sample_backward_kernel(const T* __restrict__ g, const T* __restrict__ vol, index_t V,
                                       int D, const T* __restrict__ coords, index_t P, T* grad_vol,
                                       T* grad_coords) {
  const index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= V * P) return;
  const index_t vs = index_t(D) * D * D;
  const T* q = coords + 3 * i;
  T* gc = grad_coords ? grad_coords + 3 * i : nullptr;
  if (!slice::touches_grid(q[0], q[1], q[2], D)) {
    if (gc) gc[0] = gc[1] = gc[2] = T(0);
    return;
  }
  slice::Stencil<T> s;
  slice::make_stencil(q[0], q[1], q[2], D, s);
  const cplx<T> gi = load_cplx(g + 2 * i);
  if (grad_vol) slice::scatter(grad_vol + 2 * vs * (i / P), s, gi, AtomicAdd<T>());
  if (gc) {
    cplx<T> dval[3];
    slice::gather_grad(vol + 2 * vs * (i / P), s, dval);
    slice::point_grad(gi, dval, gc);
  }
}

dim3 plane_grid(int n, index_t B) {
  const index_t plane = index_t(n) * n;
  return dim3(blocks_for(plane, kThreads), static_cast<unsigned>(B < kMaxGridY ? B : kMaxGridY));
}

}  // namespace

template <typename T>
void slice_forward(const T* vol, index_t V, int D, bool half, const T* rot, index_t B, int n, T radius2,
                   bool hermitian, T* out, stream_t stream) {
  if (B == 0 || n == 0) return;
  slice_forward_kernel<T><<<plane_grid(n, B), kThreads, 0, stream>>>(vol, V, D, half, rot, B, n, radius2,
                                                                     hermitian, out);
  check_launch("slice_forward");
}

template <typename T>
void slice_backward(const T* g, const T* w, const T* vol, index_t V, index_t Vg, int D, bool half,
                    const T* rot, index_t B, int n, T radius2, bool hermitian, T* grad_vol, T* wvol,
                    T* grad_rot, stream_t stream) {
  const index_t vs = index_t(D) * D * (half ? slice::half_width(D) : D);
  if (grad_vol) check_cuda(cudaMemsetAsync(grad_vol, 0, sizeof(T) * 2 * vs * Vg, stream), "slice_backward");
  if (wvol) check_cuda(cudaMemsetAsync(wvol, 0, sizeof(T) * vs, stream), "slice_backward");
  if (grad_rot) check_cuda(cudaMemsetAsync(grad_rot, 0, sizeof(T) * 9 * B, stream), "slice_backward");
  if (B == 0 || n == 0) return;
  slice_backward_kernel<T><<<plane_grid(n, B), kThreads, 0, stream>>>(
      g, w, vol, V, Vg, D, half, rot, B, n, radius2, hermitian, grad_vol, wvol, grad_rot);
  check_launch("slice_backward");
}

template <typename T>
void sample_forward(const T* vol, index_t V, int D, const T* coords, index_t P, T* out,
                    stream_t stream) {
  if (V * P == 0) return;
  sample_forward_kernel<T><<<blocks_for(V * P, kThreads), kThreads, 0, stream>>>(vol, V, D, coords, P, out);
  check_launch("sample_forward");
}

template <typename T>
void sample_backward(const T* g, const T* vol, index_t V, int D, const T* coords, index_t P,
                     T* grad_vol, T* grad_coords, stream_t stream) {
  const index_t vs = index_t(D) * D * D;
  if (grad_vol) check_cuda(cudaMemsetAsync(grad_vol, 0, sizeof(T) * 2 * vs * V, stream), "sample_backward");
  if (V * P == 0) return;
  sample_backward_kernel<T><<<blocks_for(V * P, kThreads), kThreads, 0, stream>>>(
      g, vol, V, D, coords, P, grad_vol, grad_coords);
  check_launch("sample_backward");
}

#define ORBITCORE_INSTANTIATE(T)                                                                  \
  template void slice_forward<T>(const T*, index_t, int, bool, const T*, index_t, int, T, bool, T*, \
                                 stream_t);                                                          \
  template void slice_backward<T>(const T*, const T*, const T*, index_t, index_t, int, bool,         \
                                  const T*, index_t, int, T, bool, T*, T*, T*, stream_t);            \
  template void sample_forward<T>(const T*, index_t, int, const T*, index_t, T*, stream_t);      \
  template void sample_backward<T>(const T*, const T*, index_t, int, const T*, index_t, T*, T*,  \
                                   stream_t);
ORBITCORE_INSTANTIATE(float)
ORBITCORE_INSTANTIATE(double)
#undef ORBITCORE_INSTANTIATE

}  // namespace cuda
}  // namespace orbitcore
