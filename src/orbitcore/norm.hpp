// orbitcore/norm.hpp — batch normalisation fused with ReLU (training statistics), element math
// shared by the CPU and CUDA drivers.
//
// The activations are an (M, C) row-major array: M = N·H·W positions, C channels (a channels-
// last (N, C, H, W) tensor is this array without a copy). Per channel c, with the batch
// statistics over the M rows,
//     mean_c = (1/M) Σ_m x_mc,   var_c = (1/M) Σ_m (x_mc − mean_c)²   (biased, as in training)
//     y_mc   = max(0, γ_c (x_mc − mean_c) / sqrt(var_c + eps) + β_c) = max(0, a_c x_mc + b_c)
// with a_c = γ_c s_c, b_c = β_c − a_c mean_c, s_c = 1/sqrt(var_c + eps). The backward pass, with
// z = a x + b the pre-activation, x̂ = (x − mean) s and dz = dy · [z > 0] (the ReLU gate,
// recomputed from x, so y need not be kept):
//     dβ_c = Σ_m dz_mc,   dγ_c = Σ_m dz_mc x̂_mc,
//     dx_mc = γ_c s_c (dz_mc − dβ_c / M − x̂_mc dγ_c / M).
// Unfused, the same layer is a batch norm and a ReLU: two passes more over the activations
// forward and backward, and on a CPU the activations dominate a small network's memory traffic.
//
// With 2×2 max pooling after the ReLU (stride 2, no padding, odd edges dropped, as
// max_pool2d(·, 2)): the rows are (n, h, w) positions of an (N, H, W, C) array, and each output
// is the maximum over a window of four rows, max_k relu(z_k) = relu(max_k z_k). The pooling
// routes its gradient to the window's first maximum in row-major order (k = 0: (0, 0),
// 1: (0, 1), 2: (1, 0), 3: (1, 1)), which is max_pool2d's choice; so dz is the pooled gradient at
// that element when its z > 0, and 0 at the other three and at the dropped edge rows. The
// statistics still run over all M = N·H·W rows. Fused, the full-size y, the pooling indices and
// the full-size gradient are never written.
//
// The sums are accumulated about a per-channel shift K_c (the first row's value):
// S1 = Σ (x − K), S2 = Σ (x − K)², mean = K + S1/M, var = S2/M − (S1/M)², which keeps the
// one-pass variance accurate when |mean| ≫ std; the drivers add short partial sums (a few rows,
// in the input's precision) into double totals.
#pragma once

#include "common.hpp"

namespace orbitcore {
namespace norm {

// 2×2 max pooling after the ReLU: the M rows are an (N, H, W) grid, H, W >= 2; the pooled
// array is (N, H/2, W/2, C) (integer division: an odd last row or column is dropped).
struct Pool2 {
  index_t N, H, W;
};

// Per-channel coefficients of the forward map, from the statistics.
struct ChannelCoef {
  double a, b, s;  // y = max(0, a x + b); s = 1/sqrt(var + eps)
};

ORBITCORE_HD ORBITCORE_FORCEINLINE double inv_std(double var, double eps) { return 1.0 / sqrt(var + eps); }

ORBITCORE_HD ORBITCORE_FORCEINLINE ChannelCoef channel_coef(double mean, double var, double gamma, double beta,
                                                            double eps) {
  ChannelCoef k;
  k.s = inv_std(var, eps);
  k.a = gamma * k.s;
  k.b = beta - k.a * mean;
  return k;
}

// Mean and biased variance of a channel from its shifted sums over M rows.
ORBITCORE_HD ORBITCORE_FORCEINLINE void finish_stats(double shift, double s1, double s2, double M, double* mean,
                                                     double* var) {
  const double d = s1 / M;
  double v = s2 / M - d * d;
  *mean = shift + d;
  *var = v > 0.0 ? v : 0.0;
}

// Forward value of one element.
template <typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE T forward_value(T x, T a, T b) {
  const T z = a * x + b;
  return z > T(0) ? z : T(0);
}

// The upstream gradient behind the ReLU gate: dz = dy where a x + b > 0, else 0.
template <typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE T gated_grad(T dy, T x, T a, T b) {
  return a * x + b > T(0) ? dy : T(0);
}

// The gradient of one input element: k (dz − m1 − x̂ m2), with k = γ s, m1 = dβ/M, m2 = dγ/M.
template <typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE T input_grad(T dz, T xhat, T k, T m1, T m2) {
  return k * (dz - m1 - xhat * m2);
}

// A 2×2 window's pre-activations z0..z3: their maximum; relu of it is the pooled output.
template <typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE T window_max(T z0, T z1, T z2, T z3) {
  const T m01 = z1 > z0 ? z1 : z0, m23 = z3 > z2 ? z3 : z2;
  return m23 > m01 ? m23 : m01;
}

template <typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE T pooled_value(T z0, T z1, T z2, T z3) {
  const T m = window_max(z0, z1, z2, z3);
  return m > T(0) ? m : T(0);
}

// The gradients dz_k of the window's four elements from the pooled gradient g: g at the first
// maximum when it passes the ReLU, 0 elsewhere. Comparisons and selects only (the CPU loops over
// channels vectorise).
template <typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE void pooled_gated_grads(T g, T z0, T z1, T z2, T z3, T* d0, T* d1, T* d2, T* d3) {
  const T m = window_max(z0, z1, z2, z3);
  const T gp = m > T(0) ? g : T(0);
  const bool w0 = z0 == m, w1 = !w0 && z1 == m, w2 = !w0 && !w1 && z2 == m;
  *d0 = w0 ? gp : T(0);
  *d1 = w1 ? gp : T(0);
  *d2 = w2 ? gp : T(0);
  *d3 = (w0 || w1 || w2) ? T(0) : gp;
}

// The first input row of pooled row p (image n = p / Ho, window row i = p % Ho); window j's
// four rows are then that + 2j + {0, 1, W, W + 1}.
ORBITCORE_HD ORBITCORE_FORCEINLINE index_t window_first_row(index_t p, const Pool2& g) {
  const index_t Ho = g.H / 2, n = p / Ho, i = p - n * Ho;
  return (n * g.H + 2 * i) * g.W;
}

}  // namespace norm
}  // namespace orbitcore
