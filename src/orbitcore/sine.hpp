// orbitcore/sine.hpp — the SIREN activation y = sin(w0 · a) and its derivative, element math
// shared by the CPU and CUDA drivers.
//
// A SIREN layer (orbitcore.nn.siren) is y = sin(w0 · (W x + b)). PyTorch runs the activation as
// three passes forward (scale, sin) and three backward (cos, two products), and its float sin
// costs ~4 ns an element on an AVX2 core; here the forward is one pass and the backward,
// da = dy · w0 · cos(w0 · a), one more (cos recomputed from a, so nothing but a is kept).
//
// sin and cos of z = w0 · a, in the storage type T (float or double):
//   1. Reduction: q = round(z · 2/π), r = z − q · π/2 with π/2 split in three parts
//      (Cody–Waite; q · p1 and q · p2 are exact while |q| < 2^12 (float) or 2^20 (double)),
//      so |r| ≤ π/4 (+ rounding).
//   2. Taylor polynomials on |r| ≤ π/4. float: sin to r^9, cos to r^10 (first omitted terms
//      below 1.9e-9 and 1.2e-10); double: sin to r^17, cos to r^16 (below 1e-19 and 3e-18). Both
//      are below half an ulp of the results, so the error is the arithmetic's: about an ulp.
//   3. Quadrant (q mod 4): sin z = (s, c, −s, −c), cos z = (c, −s, −c, s) for q mod 4 = 0, 1, 2, 3.
// Every step is branch-free, so the CPU loops vectorise (in float, eight lanes per AVX2
// register). The range is |z| ≤ Traits<T>::reduce_max (2^12 · π/2 ≈ 6434 for float, 2^20 · π/2
// for double; a SIREN's w0 · (W x + b) stays far inside it); the drivers recompute the (rare)
// elements beyond it, and non-finite ones, with the C library's sin / cos in double.
#pragma once

#include "common.hpp"

namespace orbitcore {
namespace sine {

template <typename T>
struct Traits;

template <>
struct Traits<float> {
  static constexpr float reduce_max = 6433.98175f;  // 2^12 · π/2
  static constexpr float two_over_pi = 0.636619772f;
  static constexpr float round_magic = 12582912.0f;  // 1.5 · 2^23: (x + m) − m rounds x to an integer
  // π/2 = p1 + p2 + p3, p1 and p2 of 12 significant bits each
  static constexpr float p1 = 1.5703125f;
  static constexpr float p2 = 4.837512969970703125e-4f;
  static constexpr float p3 = 7.549789954891882e-8f;
};

template <>
struct Traits<double> {
  static constexpr double reduce_max = 1647099.3291652855;  // 2^20 · π/2
  static constexpr double two_over_pi = 0.63661977236758134308;
  static constexpr double round_magic = 6755399441055744.0;  // 1.5 · 2^52
  // π/2 = p1 + p2 + p3, p1 and p2 of 33 significant bits each
  static constexpr double p1 = 1.57079632673412561417e+00;
  static constexpr double p2 = 6.07710050630396597660e-11;
  static constexpr double p3 = 2.02226624879595063154e-21;
};

// Taylor parts of step 2: sin r = r + r³ · sin_tail(r²), cos r = 1 + r² · cos_tail(r²), with the
// coefficients (−1)^k / (2k+1)! and (−1)^k / (2k)!.
ORBITCORE_HD ORBITCORE_FORCEINLINE float sin_tail(float r2) {
  return -1.0f / 6 + r2 * (1.0f / 120 + r2 * (-1.0f / 5040 + r2 * (1.0f / 362880)));
}
ORBITCORE_HD ORBITCORE_FORCEINLINE float cos_tail(float r2) {
  return -1.0f / 2 + r2 * (1.0f / 24 + r2 * (-1.0f / 720 + r2 * (1.0f / 40320 + r2 * (-1.0f / 3628800))));
}
ORBITCORE_HD ORBITCORE_FORCEINLINE double sin_tail(double r2) {
  return -1.0 / 6 +
         r2 * (1.0 / 120 +
               r2 * (-1.0 / 5040 +
                     r2 * (1.0 / 362880 +
                           r2 * (-1.0 / 39916800 +
                                 r2 * (1.0 / 6227020800.0 +
                                       r2 * (-1.0 / 1307674368000.0 + r2 * (1.0 / 355687428096000.0)))))));
}
ORBITCORE_HD ORBITCORE_FORCEINLINE double cos_tail(double r2) {
  return -1.0 / 2 +
         r2 * (1.0 / 24 +
               r2 * (-1.0 / 720 +
                     r2 * (1.0 / 40320 +
                           r2 * (-1.0 / 3628800 +
                                 r2 * (1.0 / 479001600.0 +
                                       r2 * (-1.0 / 87178291200.0 + r2 * (1.0 / 20922789888000.0)))))));
}

template <typename T>
struct SinCos {
  T s, c;
};

// sin and cos of z for |z| ≤ Traits<T>::reduce_max (steps 1–3 above).
template <typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE SinCos<T> sincos_reduced(T z) {
  using K = Traits<T>;
  T q = z * K::two_over_pi + K::round_magic;
  q = q - K::round_magic;
  const T r = ((z - q * K::p1) - q * K::p2) - q * K::p3;
  const T r2 = r * r;
  const T s = r + r * r2 * sin_tail(r2);
  const T c = T(1) + r2 * cos_tail(r2);
  // q mod 4 as m = q − 4 · round(q / 4) ∈ {−2, −1, 0, 1, 2} (−1 is 3 and −2 is 2 mod 4); the same
  // rounding as q, so no floor and no integer conversion (both would stop the CPU loops vectorising)
  T k = q * T(0.25) + K::round_magic;
  k = k - K::round_magic;
  const T m = q - T(4) * k;
  const bool odd = m == T(1) || m == T(-1);
  const bool half = m == T(2) || m == T(-2);
  const bool sin_neg = half || m == T(-1);  // q mod 4 = 2, 3
  const bool cos_neg = half || m == T(1);   // q mod 4 = 1, 2
  const T sv = odd ? c : s;
  const T cv = odd ? s : c;
  SinCos<T> out;
  out.s = sin_neg ? -sv : sv;
  out.c = cos_neg ? -cv : cv;
  return out;
}

// Forward element: y = sin(w0 · a) (valid while !out_of_range(a, w0)).
template <typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE T forward(T a, T w0) {
  return sincos_reduced(w0 * a).s;
}

// Backward element: da = dy · w0 · cos(w0 · a) (same range).
template <typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE T backward(T dy, T a, T w0) {
  return dy * w0 * sincos_reduced(w0 * a).c;
}

// The same two elements for any z, by the C library (the drivers' path for out_of_range(z)).
template <typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE T forward_wide(T a, T w0) {
  return static_cast<T>(sin(static_cast<double>(w0 * a)));
}
template <typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE T backward_wide(T dy, T a, T w0) {
  return static_cast<T>(static_cast<double>(dy) * static_cast<double>(w0) * cos(static_cast<double>(w0 * a)));
}

// Whether an element needs the slow path (the drivers' second pass): w0 · a beyond the
// reduction's range, or not finite (NaN compares false, so test the negation).
template <typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE bool out_of_range(T a, T w0) {
  const T z = w0 * a;
  return !(z <= Traits<T>::reduce_max && z >= -Traits<T>::reduce_max);
}

}  // namespace sine
}  // namespace orbitcore
