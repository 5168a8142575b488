// orbitcore/em.hpp — element math of the EM patch-likelihood family (seeds/002 eq. 18–25),
// shared by the CPU and CUDA drivers.
//
// Model (eq. 18–19). A patch I_p (L x L) is C T_l Z g_w + noise, g_w the L x L projection at
// rotation w. Instead of the paper's circular shift l in {0..2L-1}^2 we index the shifts by the
// displacement d = (d0, d1) in [-(L-1), L-1]^2 (d_a = l_a for l_a < L, l_a - 2L for l_a > L):
//     (C T_l Z g)[i, j] = g[i + d0, j + d1]   (0 where the index leaves [0, L)),
// array axes 0 (rows) and 1 (columns). The 4L - 1 shifts with l_0 = L or l_1 = L show nothing of
// the projection: they are one "empty" state. Displacement index k in [0, D), D = (2L - 1)^2:
//     d0 = k / (2L - 1) - (L - 1),  d1 = k % (2L - 1) - (L - 1).
//
// Log-likelihood (eq. 24) up to the per-patch constant -|I_p|^2 / (2 s^2):
//     s[p, k, w] = (2 <I_p, C T_k Z g_w> - |C T_k Z g_w|^2) / (2 s^2) + log rho[k] - log K
// and for the empty state s_e = log rho_e. The data term is a correlation: patch pixel (i, j)
// meets projection pixel (i, j) + d, i.e. flat index pix + off(d) with off(d) = d0 L + d1; only
// projection pixels in the support of the projections contribute, so each shift has a list of
// the patch pixels that meet the support ("k-list", built by the caller).
//
// The drivers evaluate the correlation as a register tile of PT patches x (MV vectors of
// rotations) over the k-list (correlate_tile), turn it into scores (score), normalise per patch
// with a log-sum-exp (exp_nonpositive), and accumulate the sufficient statistics; the
// back-projection of the weighted patches uses the same tile shape (backproject_tile). On the CPU
// `V` is a SIMD vector of rotations (GCC/Clang vector extension), on the GPU a scalar.
#pragma once

#include <cstring>
#include <type_traits>

#include "common.hpp"

namespace orbitcore {
namespace em {

// ---------------------------------------------------------------------------------------------
// Shift geometry
// ---------------------------------------------------------------------------------------------
ORBITCORE_HD ORBITCORE_FORCEINLINE int shift_side(int L) { return 2 * L - 1; }
ORBITCORE_HD ORBITCORE_FORCEINLINE int shift_count(int L) { return (2 * L - 1) * (2 * L - 1); }

ORBITCORE_HD ORBITCORE_FORCEINLINE void displacement(int k, int L, int& d0, int& d1) {
  const int n = 2 * L - 1;
  d0 = k / n - (L - 1);
  d1 = k % n - (L - 1);
}

// Flat offset from a patch pixel to the projection pixel it meets under displacement (d0, d1).
ORBITCORE_HD ORBITCORE_FORCEINLINE int pixel_offset(int d0, int d1, int L) { return d0 * L + d1; }

// Patch rows (or columns) [lo, hi) that meet the projection under a displacement d along that axis.
ORBITCORE_HD ORBITCORE_FORCEINLINE void overlap(int d, int L, int& lo, int& hi) {
  lo = d < 0 ? -d : 0;
  hi = d > 0 ? L - d : L;
}

// ---------------------------------------------------------------------------------------------
// Vector helpers: V is T (GPU, scalar code) or a GCC/Clang vector of T (CPU). Loads and stores
// go through memcpy, which compiles to plain (unaligned) moves.
// ---------------------------------------------------------------------------------------------
template <typename V, typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE void vload(V& v, const T* p) {
  std::memcpy(&v, p, sizeof(V));
}
template <typename V, typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE void vstore(T* p, const V& v) {
  std::memcpy(p, &v, sizeof(V));
}
template <typename To, typename From>
ORBITCORE_HD ORBITCORE_FORCEINLINE To bit_cast(const From& f) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast: sizes differ");
  To t;
  std::memcpy(&t, &f, sizeof(To));
  return t;
}
// Lane-wise conversion (truncation toward zero for float -> int).
template <typename To, typename From>
ORBITCORE_HD ORBITCORE_FORCEINLINE To convert(const From& f) {
#if defined(__CUDACC__)
  return static_cast<To>(f);
#else
  if constexpr (std::is_arithmetic<From>::value)
    return static_cast<To>(f);
  else
    return __builtin_convertvector(f, To);
#endif
}
// Lane-wise maximum.
template <typename V>
ORBITCORE_HD ORBITCORE_FORCEINLINE V vmax(const V& a, const V& b) {
  return a > b ? a : b;
}

// ---------------------------------------------------------------------------------------------
// exp(x) for x <= 0 (the weights exp(s - max) of a log-sum-exp). Cody–Waite reduction
// x = n ln 2 + r, |r| <= ln 2 / 2, a polynomial for e^r (float: the Cephes minimax coefficients,
// ~1 ulp; double: Taylor to degree 12, ~1 ulp), and 2^n through the exponent bits. Positive x
// (rounding) is treated as 0; below `lo` (where the result would leave the normal range) the
// result is exactly 0, so weights never become subnormal. -inf gives 0; NaN is not expected
// (the bindings reject non-finite inputs).
// ---------------------------------------------------------------------------------------------
template <typename T>
struct ExpConst;
template <>
struct ExpConst<float> {
  static constexpr float lo = -86.0f;
  static constexpr float log2e = 1.44269504088896341f;
  static constexpr float ln2_hi = 0.693359375f;
  static constexpr float ln2_lo = -2.12194440e-4f;
  static constexpr int mantissa = 23;
  static constexpr int bias = 127;
};
template <>
struct ExpConst<double> {
  static constexpr double lo = -706.0;
  static constexpr double log2e = 1.4426950408889634074;
  static constexpr double ln2_hi = 6.93145751953125e-1;
  static constexpr double ln2_lo = 1.42860682030941723212e-6;
  static constexpr int mantissa = 52;
  static constexpr int bias = 1023;
};

template <typename T, typename V>
ORBITCORE_HD ORBITCORE_FORCEINLINE V exp_poly(const V& r) {
  if constexpr (sizeof(T) == 4) {
    V p = V{} + T(1.9875691500e-4);
    p = p * r + T(1.3981999507e-3);
    p = p * r + T(8.3334519073e-3);
    p = p * r + T(4.1665795894e-2);
    p = p * r + T(1.6666665459e-1);
    p = p * r + T(5.0000001201e-1);
    return p * r * r + r + T(1);
  } else {
    // Taylor series of e^r to degree 12 (Horner): |r| <= 0.347 gives a truncation error < 2e-17.
    V p = V{} + T(1.0 / 479001600.0);
    p = p * r + T(1.0 / 39916800.0);
    p = p * r + T(1.0 / 3628800.0);
    p = p * r + T(1.0 / 362880.0);
    p = p * r + T(1.0 / 40320.0);
    p = p * r + T(1.0 / 5040.0);
    p = p * r + T(1.0 / 720.0);
    p = p * r + T(1.0 / 120.0);
    p = p * r + T(1.0 / 24.0);
    p = p * r + T(1.0 / 6.0);
    p = p * r + T(0.5);
    p = p * r + T(1);
    return p * r + T(1);
  }
}

// VI: the integer type with the lane count and lane width of V (int32 lanes for float,
// int64 lanes for double; int / long long for scalars).
template <typename T, typename V, typename VI>
ORBITCORE_HD ORBITCORE_FORCEINLINE V exp_nonpositive(const V& x) {
  using C = ExpConst<T>;
  const V zero = V{};
  const V lo = zero + C::lo;
  V xc = x > zero ? zero : x;
  xc = xc < lo ? lo : xc;
  // round(xc log2 e) for xc <= 0: truncation of (t - 1/2) toward zero
  const VI n = convert<VI>(xc * C::log2e - T(0.5));
  const V fn = convert<V>(n);
  V r = xc - fn * C::ln2_hi;
  r = r - fn * C::ln2_lo;
  const V p = exp_poly<T, V>(r);
  const VI bits = bit_cast<VI>(p) + (n << C::mantissa);
  const V y = bit_cast<V>(bits);
  return x < lo ? zero : y;
}

// ---------------------------------------------------------------------------------------------
// Scores and tiles
// ---------------------------------------------------------------------------------------------
// s = 2 corr / (2 s^2) - |C T Z g|^2 / (2 s^2) + log rho - log K, with the second part
// precomputed per (shift, rotation) as `bias` and c2 = 2 / (2 s^2) = 1 / s^2.
template <typename V, typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE V score(const V& corr, T c2, const V& bias) {
  return corr * c2 + bias;
}

// Correlation register tile: acc[p][v] += sum_t I_p[pix_t] g[pix_t + off][lanes v], over the
// k-list pix_0..pix_{n-1} of one shift.
//   Ipm: the tile's patches pixel-major, Ipm[pix * PT + p];
//   G:   projections pixel-major, G[q * ldg + w] (rotation w of pixel q), already offset to the
//        tile's first rotation; lanes v cover rotations v*VL .. v*VL + VL - 1.
template <typename T, typename V, int PT, int MV, int VL>
ORBITCORE_HD ORBITCORE_FORCEINLINE void correlate_tile(V (&acc)[PT][MV], const T* Ipm, const T* G, index_t ldg,
                                                       const int* list, int n, int off) {
  for (int t = 0; t < n; ++t) {
    const int pix = list[t];
    const T* g = G + static_cast<index_t>(pix + off) * ldg;
    V gv[MV];
    ORBITCORE_UNROLL
    for (int v = 0; v < MV; ++v) vload(gv[v], g + v * VL);
    const T* a = Ipm + static_cast<index_t>(pix) * PT;
    ORBITCORE_UNROLL
    for (int p = 0; p < PT; ++p) {
      const T ap = a[p];
      ORBITCORE_UNROLL
      for (int v = 0; v < MV; ++v) acc[p][v] += ap * gv[v];
    }
  }
}

// Back-projection register tile (the adjoint of correlate_tile in G): over the k-list of one
// shift, H[pix_t + off][lanes v] += sum_p I_p[pix_t] w[p][v] — the posterior-weighted patches,
// shifted back into the frame of the projection.
template <typename T, typename V, int PT, int MV, int VL>
ORBITCORE_HD ORBITCORE_FORCEINLINE void backproject_tile(const V (&w)[PT][MV], const T* Ipm, T* H, index_t ldh,
                                                         const int* list, int n, int off) {
  for (int t = 0; t < n; ++t) {
    const int pix = list[t];
    T* h = H + static_cast<index_t>(pix + off) * ldh;
    V hv[MV];
    ORBITCORE_UNROLL
    for (int v = 0; v < MV; ++v) vload(hv[v], h + v * VL);
    const T* a = Ipm + static_cast<index_t>(pix) * PT;
    ORBITCORE_UNROLL
    for (int p = 0; p < PT; ++p) {
      const T ap = a[p];
      ORBITCORE_UNROLL
      for (int v = 0; v < MV; ++v) hv[v] += ap * w[p][v];
    }
    ORBITCORE_UNROLL
    for (int v = 0; v < MV; ++v) vstore(h + v * VL, hv[v]);
  }
}

// ---------------------------------------------------------------------------------------------
// Arguments of one E-step (the drivers' contract; host-side plumbing shared by CPU and CUDA).
//   patches (P, L, L), projections (K, L, L), norms (K, D) = |C T_k Z g_w|^2,
//   log_prior (D + 1): log rho of the D displacements and, last, of the empty state;
//   patch_weights (P) or null (all 1): c_p, multiplies patch p's contributions to the statistics;
//   inv2s2 = 1 / (2 sigma^2);
//   klist / kstart (D + 1): the k-lists: for displacement k the patch pixels
//     klist[kstart[k] .. kstart[k + 1]) (flat indices pix, with pix + off(k) a projection pixel of
//     the support; projections vanish outside the support);
// outputs (all overwritten; float64):
//   log_evidence (P): log p(I_p; x, rho) (the normaliser of eq. 23 with the Gaussian constants);
//   empty_posterior (P): posterior probability of the empty state;
//   shift_weights (K, D): sum_p c_p w[p, k, w];
//   backprojection (K, L, L): sum_p c_p sum_k w[p, k, w] (C T_k Z)^T I_p on the support, 0 off it;
//   shift_posterior (P, D) or null: sum_w w[p, k, w].
// ---------------------------------------------------------------------------------------------
template <typename T>
struct EStepArgs {
  const T* patches;
  index_t P;
  int L;
  const T* projections;
  index_t K;
  const T* norms;
  const T* log_prior;
  const T* patch_weights;
  double inv2s2;
  const int* klist;
  const int* kstart;
  double* log_evidence;
  double* empty_posterior;
  double* shift_weights;
  double* backprojection;
  double* shift_posterior;
};

// Log-evidence of a patch from the log-sum-exp of its scores, lse = log sum exp(s):
//     log p(I_p; x, rho) = lse - |I_p|^2 / (2 s^2) - (L^2 / 2) log(2 pi s^2),
// with 2 pi s^2 = pi / inv2s2.
ORBITCORE_HD ORBITCORE_FORCEINLINE double log_evidence(double lse, double energy, double inv2s2, int L) {
  const double kPi = 3.14159265358979323846;
  return lse - energy * inv2s2 - 0.5 * double(L) * double(L) * log(kPi / inv2s2);
}

}  // namespace em
}  // namespace orbitcore
