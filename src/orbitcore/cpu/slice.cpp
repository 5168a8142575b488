// CPU drivers of the slice family: loops over the element math in ../slice.hpp.
#include "slice.hpp"

#include <cmath>
#include <vector>

#include "../slice.hpp"
#include "parallel.hpp"

namespace orbitcore {
namespace cpu {
namespace {

using slice::kMirror;
using slice::kSkip;

// kx range of row ky inside the disk (same predicate as slice::in_disk); lo > hi when empty.
template <typename T>
void disk_row_range(int ky, int n, T radius2, int& lo, int& hi) {
  lo = freq_min(n);
  hi = freq_max(n);
  if (radius2 < T(0)) return;
  const double rem = static_cast<double>(radius2) - static_cast<double>(ky) * ky;
  if (rem < 0) {
    lo = 1;
    hi = 0;
    return;
  }
  int k = static_cast<int>(std::sqrt(rem));
  while (slice::in_disk(k + 1, ky, radius2)) ++k;
  while (k >= 0 && !slice::in_disk(k, ky, radius2)) --k;
  if (k < 0) {
    lo = 1;
    hi = 0;
    return;
  }
  lo = std::max(lo, -k);
  hi = std::min(hi, k);
}

// Forward work of one plane row: samples of the disk part, zeros outside it, mirrors.
template <typename T>
__attribute__((noinline)) void forward_row(const T* v, int D, bool half, const T* R, int n, int ky,
                                           T radius2, bool hermitian, T* plane) {
  const int c = grid_center(n), lo = freq_min(n), hi = freq_max(n);
  T* row = plane + 2 * index_t(ky + c) * n;
  int a, e;
  disk_row_range(ky, n, radius2, a, e);
  // Outside the disk: zeros, written by the row's owner (their mirrors are outside too).
  for (int kx = lo; kx <= hi; ++kx) {
    if (kx >= a && kx <= e) {
      kx = e;
      continue;
    }
    store_cplx(row + 2 * (kx + c), make_cplx(T(0), T(0)));
  }
  const T r0 = R[0], r1 = R[1], r3 = R[3], r4 = R[4], r6 = R[6], r7 = R[7];
  const T fy = static_cast<T>(ky);
  for (int kx = a; kx <= e; ++kx) {
    const int role = slice::point_role(kx, ky, n, hermitian);
    if (role == kSkip) continue;
    const T fx = static_cast<T>(kx);
    const cplx<T> val = slice::sample_any(v, D, half, r0 * fx + r1 * fy, r3 * fx + r4 * fy, r6 * fx + r7 * fy);
    store_cplx(row + 2 * (kx + c), val);
    if (role == kMirror) store_cplx(plane + 2 * (index_t(-ky + c) * n + (-kx + c)), conj(val));
  }
}

// Scatter (and rotation-gradient) work of one plane row.
template <typename T, typename Add>
__attribute__((noinline)) void backward_row(const T* g_plane, const T* w_plane, const T* v, int D,
                                            bool half, const T* R, int n, int ky, T radius2,
                                            bool hermitian, T* gv, T* wv, double* rpart, const Add& add) {
  int a, e;
  disk_row_range(ky, n, radius2, a, e);
  const T r0 = R[0], r1 = R[1], r3 = R[3], r4 = R[4], r6 = R[6], r7 = R[7];
  const T fy = static_cast<T>(ky);
  double acc[6] = {0, 0, 0, 0, 0, 0};
  for (int kx = a; kx <= e; ++kx) {
    const int role = slice::point_role(kx, ky, n, hermitian);
    if (role == kSkip) continue;
    const T fx = static_cast<T>(kx);
    const T x = r0 * fx + r1 * fy, y = r3 * fx + r4 * fy, z = r6 * fx + r7 * fy;
    const cplx<T> geff = slice::effective_grad(g_plane, n, kx, ky, role);
    if (wv) slice::scatter_real_point(wv, D, x, y, z, slice::effective_weight(w_plane, n, kx, ky, role), add);
    if (!rpart) {
      if (gv) slice::scatter_any(gv, D, half, x, y, z, geff, add);
    } else {
      cplx<T> dval[3];
      if (gv)
        slice::scatter_grad_any(v, gv, D, half, x, y, z, geff, add, dval);
      else
        slice::sample_grad_any(v, D, half, x, y, z, dval);
      T dp[3];
      slice::point_grad(geff, dval, dp);
      for (int i = 0; i < 3; ++i) {
        acc[2 * i] += static_cast<double>(dp[i]) * kx;
        acc[2 * i + 1] += static_cast<double>(dp[i]) * ky;
      }
    }
  }
  if (rpart)
    for (int k = 0; k < 6; ++k) rpart[k] += acc[k];
}

}  // namespace

template <typename T>
void slice_forward(const T* vol, index_t V, int D, bool half, const T* rot, index_t B, int n, T radius2,
                   bool hermitian, T* out, int num_threads) {
  const int nt = threads_for(num_threads, B * n * n);
  const index_t vs = index_t(D) * D * (half ? slice::half_width(D) : D);
  const int lo = freq_min(n);
  const index_t items = B * n;
#pragma omp parallel for schedule(static) num_threads(nt)
  for (index_t it = 0; it < items; ++it) {
    const index_t b = it / n;
    forward_row(vol + 2 * vs * (V == 1 ? 0 : b), D, half, rot + 9 * b, n, static_cast<int>(it % n) + lo,
                radius2, hermitian, out + 2 * index_t(n) * n * b);
  }
}

template <typename T>
void slice_backward(const T* g, const T* w, const T* vol, index_t V, index_t Vg, int D, bool half,
                    const T* rot, index_t B, int n, T radius2, bool hermitian, T* grad_vol, T* wvol,
                    T* grad_rot, int num_threads) {
  int nt = threads_for(num_threads, B * n * n);
  const index_t vs = index_t(D) * D * (half ? slice::half_width(D) : D);
  const index_t plane = index_t(n) * n;
  const int lo = freq_min(n);
  if (grad_vol) std::fill(grad_vol, grad_vol + 2 * vs * Vg, T(0));
  if (wvol) std::fill(wvol, wvol + vs, T(0));  // full volumes only (the binding checks)
  std::vector<double> part;
  if (grad_rot) part.assign(static_cast<std::size_t>(B * n * 6), 0.0);
  auto vol_of = [&](index_t b) { return vol ? vol + 2 * vs * (V == 1 ? 0 : b) : nullptr; };

  if (grad_vol && Vg == B && B > 1) {
    // One gradient volume per rotation: rotations are independent, no write conflicts.
#pragma omp parallel for schedule(static) num_threads(nt)
    for (index_t b = 0; b < B; ++b) {
      const PlainAdd<T> add;
      for (int r = 0; r < n; ++r)
        backward_row(g + 2 * plane * b, w ? w + plane * b : nullptr, vol_of(b), D, half, rot + 9 * b, n,
                     r + lo, radius2, hermitian, grad_vol + 2 * vs * b, static_cast<T*>(nullptr),
                     grad_rot ? &part[static_cast<std::size_t>((b * n + r) * 6)] : nullptr, add);
    }
  } else {
    // Everything scatters into one volume. Few points relative to the volume: one thread
    // (buffers would cost more than the work). Otherwise per-thread private accumulators, or
    // atomics when those would not fit the memory budget.
    if ((grad_vol || wvol) && B * plane * 4 < vs) nt = 1;
    const std::size_t per_thread =
        (grad_vol ? 2 * vs : 0) * sizeof(T) + (wvol ? vs : 0) * sizeof(T);
    const bool use_private = nt > 1 && per_thread * std::size_t(nt - 1) <= kPrivateBufferBudget;
    PrivateAccumulators<T> acc_g(use_private ? grad_vol : nullptr, std::size_t(2 * vs), nt);
    PrivateAccumulators<T> acc_w(use_private ? wvol : nullptr, std::size_t(vs), nt);
    const index_t items = B * n;
#pragma omp parallel num_threads(nt)
    {
      const int tid = omp_get_thread_num();
      T* gv = use_private ? acc_g.local(tid) : grad_vol;
      T* wv = use_private ? acc_w.local(tid) : wvol;
#pragma omp for schedule(static)
      for (index_t it = 0; it < items; ++it) {
        const index_t b = it / n;
        const int r = static_cast<int>(it % n);
        double* rp = grad_rot ? &part[static_cast<std::size_t>(it * 6)] : nullptr;
        if (use_private || nt == 1) {
          backward_row(g + 2 * plane * b, w ? w + plane * b : nullptr, vol_of(b), D, half, rot + 9 * b, n,
                       r + lo, radius2, hermitian, gv, wv, rp, PlainAdd<T>());
        } else {
          backward_row(g + 2 * plane * b, w ? w + plane * b : nullptr, vol_of(b), D, half, rot + 9 * b, n,
                       r + lo, radius2, hermitian, gv, wv, rp, AtomicAdd<T>());
        }
      }
    }
    acc_g.reduce(nt);
    acc_w.reduce(nt);
  }

  if (grad_rot) {
    for (index_t b = 0; b < B; ++b) {
      double s[6] = {0, 0, 0, 0, 0, 0};
      for (int r = 0; r < n; ++r)
        for (int k = 0; k < 6; ++k) s[k] += part[static_cast<std::size_t>((b * n + r) * 6 + k)];
      T* G = grad_rot + 9 * b;
      for (int i = 0; i < 3; ++i) {
        G[3 * i + 0] = static_cast<T>(s[2 * i]);
        G[3 * i + 1] = static_cast<T>(s[2 * i + 1]);
        G[3 * i + 2] = T(0);
      }
    }
  }
}

template <typename T>
void sample_forward(const T* vol, index_t V, int D, const T* coords, index_t P, T* out,
                    int num_threads) {
  const int nt = threads_for(num_threads, V * P);
  const index_t vs = index_t(D) * D * D;
  const index_t total = V * P;
#pragma omp parallel for schedule(static) num_threads(nt)
  for (index_t i = 0; i < total; ++i) {
    const T* p = coords + 3 * i;
    store_cplx(out + 2 * i, slice::sample_point(vol + 2 * vs * (i / P), D, p[0], p[1], p[2]));
  }
}

template <typename T>
void sample_backward(const T* g, const T* vol, index_t V, int D, const T* coords, index_t P,
                     T* grad_vol, T* grad_coords, int num_threads) {
  int nt = threads_for(num_threads, V * P);
  const index_t vs = index_t(D) * D * D;
  if (grad_vol) std::fill(grad_vol, grad_vol + 2 * vs * V, T(0));

  auto point = [&](index_t i, T* gv, const auto& add) {
    const T* v = vol + 2 * vs * (i / P);
    const T* p = coords + 3 * i;
    const cplx<T> gi = load_cplx(g + 2 * i);
    if (gv) slice::scatter_point(gv, D, p[0], p[1], p[2], gi, add);
    if (grad_coords) {
      cplx<T> dval[3];
      slice::sample_grad_point(v, D, p[0], p[1], p[2], dval);
      slice::point_grad(gi, dval, grad_coords + 3 * i);
    }
  };

  if (V > 1 || grad_vol == nullptr) {
    // Volumes are independent: parallel over volumes, then over points when only coordinate
    // gradients are needed.
    if (grad_vol == nullptr) {
#pragma omp parallel for schedule(static) num_threads(nt)
      for (index_t i = 0; i < V * P; ++i) point(i, nullptr, PlainAdd<T>());
    } else {
#pragma omp parallel for schedule(static) num_threads(nt)
      for (index_t vi = 0; vi < V; ++vi)
        for (index_t j = 0; j < P; ++j) point(vi * P + j, grad_vol + 2 * vs * vi, PlainAdd<T>());
    }
    return;
  }
  if (P * 4 < vs) nt = 1;
  const bool use_private = nt > 1 && 2 * vs * sizeof(T) * std::size_t(nt - 1) <= kPrivateBufferBudget;
  PrivateAccumulators<T> acc(use_private ? grad_vol : nullptr, std::size_t(2 * vs), nt);
#pragma omp parallel num_threads(nt)
  {
    T* gv = use_private ? acc.local(omp_get_thread_num()) : grad_vol;
#pragma omp for schedule(static)
    for (index_t i = 0; i < P; ++i) {
      if (use_private || nt == 1)
        point(i, gv, PlainAdd<T>());
      else
        point(i, gv, AtomicAdd<T>());
    }
  }
  acc.reduce(nt);
}

#define ORBITCORE_INSTANTIATE(T)                                                                 \
  template void slice_forward<T>(const T*, index_t, int, bool, const T*, index_t, int, T, bool, T*, \
                                 int);                                                             \
  template void slice_backward<T>(const T*, const T*, const T*, index_t, index_t, int, bool,       \
                                  const T*, index_t, int, T, bool, T*, T*, T*, int);               \
  template void sample_forward<T>(const T*, index_t, int, const T*, index_t, T*, int);          \
  template void sample_backward<T>(const T*, const T*, index_t, int, const T*, index_t, T*, T*, \
                                   int);
ORBITCORE_INSTANTIATE(float)
ORBITCORE_INSTANTIATE(double)
#undef ORBITCORE_INSTANTIATE

}  // namespace cpu
}  // namespace orbitcore
