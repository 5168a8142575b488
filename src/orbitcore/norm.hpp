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
// The sums are accumulated about a per-channel shift K_c (the first row's value):
// S1 = Σ (x − K), S2 = Σ (x − K)², mean = K + S1/M, var = S2/M − (S1/M)², which keeps the
// one-pass variance accurate when |mean| ≫ std; the drivers add short partial sums (a few rows,
// in the input's precision) into double totals.
#pragma once

#include "common.hpp"

namespace orbitcore {
namespace norm {

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

}  // namespace norm
}  // namespace orbitcore
