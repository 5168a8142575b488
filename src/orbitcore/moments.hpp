// orbitcore/moments.hpp — second-moment element math, shared by the CPU and CUDA drivers.
//
// The data side accumulates, for real observations v_j (1-D signals or 2-D images), the
// empirical Fourier moments
//     M1 = (1/N) sum_j F v_j,      M2 = (1/N) sum_j (F v_j)(F v_j)^*  -  noise * I
// restricted to a set K of m frequencies (a disk mask, or all of them). F is the centred,
// unnormalised DFT of ARCHITECTURE.md.
//
// Why a real basis: v_j is real, so F v_j(-k) = conj(F v_j(k)) and every coefficient of K is
// a fixed linear function of the p real numbers y_j = (Re c, Im c) of the coefficients c of
// the *half* spectrum (numpy/torch rfft layout; one representative per pair {k, -k}, the
// imaginary part dropped where k == -k mod n, where c is real). For a mask closed under
// k -> -k (a disk always is), p == m. The drivers therefore accumulate the real symmetric
// rank-N update
//     G = sum_j y_j y_j^T   (p x p),     s = sum_j y_j   (p)
// — a real SYRK of size p, one triangle — and `finalize` turns (G, s) into the complex m x m
// Hermitian M2 (and M1) once, at the end:
//     z_u = a_u + i sign_u b_u           (a_u, b_u: real and imaginary coordinate of u's
//                                          representative; sign_u = -1 when u is the mirror)
//     E[z_u conj(z_v)] = G[a_u,a_v] + sign_u sign_v G[b_u,b_v]
//                        + i (sign_u G[b_u,a_v] - sign_v G[a_u,b_v])
// times the centring phase e^{i(theta_u - theta_v)} (the rfft is taken of the uncentred array:
// centred coefficient = e^{i theta_k} * uncentred coefficient, theta_k = 2 pi (k . c) / n with
// c = n // 2 on each axis) and 1/N. The per-batch work is one real SYRK of size p = m instead
// of a complex GEMM of size m (8x fewer flops).
//
// Storage of G: row-major p x p, the *lower* triangle is the contract: G[r * ld + c] holds
// sum_j y_r y_c for every r >= c. Entries above the diagonal are free storage: the SYRK may add
// into some of them and finalize overwrites all of them with the mirror of the lower triangle
// before reading G as a full symmetric matrix (so G is not const there).
#pragma once

#include "common.hpp"

namespace orbitcore {
namespace moments {

// Register tile of a rank-1 update: acc[v][j] += a[v] * b[j]. On the CPU `V` is a SIMD vector
// (GCC/Clang vector extension, a[v] holds VL consecutive rows) and `S` its scalar; on the GPU
// both are scalars (a per-thread register tile).
template <typename V, typename S, int MV, int NR>
ORBITCORE_HD ORBITCORE_FORCEINLINE void rank1_tile(V (&acc)[MV][NR], const V (&a)[MV], const S* b) {
  ORBITCORE_UNROLL
  for (int j = 0; j < NR; ++j) {
    const S bj = b[j];
    ORBITCORE_UNROLL
    for (int v = 0; v < MV; ++v) acc[v][j] += a[v] * bj;
  }
}

// Mirror of the lower triangle into the upper one (run before reading G as a full matrix;
// the upper triangle is free storage under the contract above).
template <typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE void mirror_entry(T* G, index_t ld, index_t r, index_t c) {
  if (r > c) G[c * ld + r] = G[r * ld + c];
}

// One frequency of the mask in the real basis, stored as three int32: (re, im, sign).
//   re:   index in y of the real part of its representative coefficient;
//   im:   index in y of the imaginary part, or -1 when the coefficient is real (k == -k mod n);
//   sign: +1 when the frequency is its own representative, -1 when it is the mirror
//         (then its coefficient is conj(representative)).
struct Slot {
  int re, im, sign;
};

ORBITCORE_HD ORBITCORE_FORCEINLINE Slot load_slot(const int* table, index_t u) {
  Slot s;
  s.re = table[3 * u];
  s.im = table[3 * u + 1];
  s.sign = table[3 * u + 2];
  return s;
}

// sum_j z_u conj(z_v) from the real Gram sums (no phase, no 1/N). G must be full (symmetric,
// after mirror_entry): row reads G[u.* * ld + v.*].
template <typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE cplx<T> coefficient_product(const T* G, index_t ld, Slot u, Slot v) {
  const T aa = G[index_t(u.re) * ld + v.re];
  const T bb = (u.im >= 0 && v.im >= 0) ? G[index_t(u.im) * ld + v.im] : T(0);
  const T ba = u.im >= 0 ? G[index_t(u.im) * ld + v.re] : T(0);
  const T ab = v.im >= 0 ? G[index_t(u.re) * ld + v.im] : T(0);
  const T su = static_cast<T>(u.sign), sv = static_cast<T>(v.sign);
  return make_cplx(aa + su * sv * bb, su * ba - sv * ab);
}

// M2[u, v] = e^{i(theta_u - theta_v)} * coefficient_product / N  -  noise * [u == v].
// `phase` is the (m, 2) table (cos theta, sin theta); `inv_count` = 1/N; `noise` is the
// per-frequency noise power to remove (n^d sigma^2 for the unnormalised DFT).
template <typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE cplx<T> second_moment_entry(const T* G, index_t ld, const int* slots,
                                                               const T* phase, index_t u, index_t v,
                                                               T inv_count, T noise) {
  const cplx<T> c = coefficient_product(G, ld, load_slot(slots, u), load_slot(slots, v));
  if (u == v) return make_cplx(c.re * inv_count - noise, T(0));  // |phase|^2 == 1
  const cplx<T> pu = load_cplx(phase + 2 * u), pv = load_cplx(phase + 2 * v);
  return inv_count * ((pu * conj(pv)) * c);
}

// M1[u] = e^{i theta_u} (s[re] + i sign s[im]) / N.
template <typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE cplx<T> first_moment_entry(const T* s, const int* slots, const T* phase,
                                                              index_t u, T inv_count) {
  const Slot k = load_slot(slots, u);
  const cplx<T> z = make_cplx(s[k.re], k.im >= 0 ? static_cast<T>(k.sign) * s[k.im] : T(0));
  return inv_count * (load_cplx(phase + 2 * u) * z);
}

// ---------------------------------------------------------------------------------------------
// Model side: the data matrix A (m x m complex) in the real basis of Hermitian-symmetric slices.
// A slice s with s(-k) = conj(s(k)) is s = U y for real y (p == m coordinates): column r of U is
// c1[r] e_{i1[r]} + c2[r] e_{i2[r]} (a pair's real part: e_u + e_ubar; its imaginary part:
// i e_u - i e_ubar; a self-conjugate frequency: e_z, c2 = 0). Then s^* A s = y^T At y with
//     B[r, t] = Re (U^* A U)[r, t] = Re sum_{alpha, beta} conj(c_alpha[r]) c_beta[t] A[i_alpha[r], i_beta[t]],
//     At = (B + B^T) / 2      (= Re U^* Ah U for the Hermitian part Ah of A),
// a real symmetric p x p matrix (moment_loss works with it in real arithmetic).
//   idx:  (p, 2) int64 (i1, i2);  coef: (p, 2, 2) reals ((c1.re, c1.im), (c2.re, c2.im)).
// A row r of B reads two rows of A (i1[r], i2[r]): drivers stream A row by row.
// ---------------------------------------------------------------------------------------------
// v_r[j] = conj(c1[r]) A[i1[r], j] + conj(c2[r]) A[i2[r], j]   (row r of U^* A)
template <typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE cplx<T> real_basis_row(const T* A, index_t m, const std::int64_t* idx,
                                                          const T* coef, index_t r, index_t j) {
  const cplx<T> c1 = conj(load_cplx(coef + 4 * r)), c2 = conj(load_cplx(coef + 4 * r + 2));
  return c1 * load_cplx(A + 2 * (idx[2 * r] * m + j)) + c2 * load_cplx(A + 2 * (idx[2 * r + 1] * m + j));
}

// B[r, t] = Re (v_r U)[t] = Re(c1[t] v_r[i1[t]] + c2[t] v_r[i2[t]]), v_r from real_basis_row.
template <typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE T real_basis_col(const T* v, const std::int64_t* idx, const T* coef,
                                                    index_t t) {
  const cplx<T> a = load_cplx(coef + 4 * t) * load_cplx(v + 2 * idx[2 * t]);
  const cplx<T> b = load_cplx(coef + 4 * t + 2) * load_cplx(v + 2 * idx[2 * t + 1]);
  return a.re + b.re;
}

}  // namespace moments
}  // namespace orbitcore
