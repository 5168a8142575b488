// orbitcore/pswf.hpp — element math of the PSWF family (prolate spheroidal wave functions on the
// unit disk), shared by the CPU and CUDA drivers.
//
// Radial parts. For an angular index N >= 0 the radial functions are expanded in the
// generalised Zernike polynomials
//     T_{N,j}(r) = sqrt(2 (2j + N + 1)) r^N P_j^{(N,0)}(1 - 2 r^2),   j = 0, 1, ...,
// orthonormal on [0, 1] with the weight r dr. A radial function is Phi(r) = sum_j d_j T_{N,j}(r)
// with its coefficient row d (computed on the host, python/orbitcore/basis/pswf.py). T_{N,j} is
// evaluated by the three-term recurrence of the orthonormal Jacobi polynomials in x = 1 - 2 r^2
// (weight (1 - x)^N), which is stable on [-1, 1] and never forms the large unnormalised P_j.
//
// Angular parts: cos(N phi), sin(N phi) with phi = atan2(y, x).
//
// Orbit transforms. The disk pixels of a square grid fall into orbits of the dihedral group of
// the square (8 symmetries: 90-degree rotations and mirrors). An orbit of size s <= 8 is
// described by its pixel offsets pix[0..7] (in the flattened image), an 8 x 8 row-major matrix
// Q (only the leading s x s block is used; it is orthogonal) and the destinations feat[0..7] of
// its s symmetry-adapted features. fold computes features = Q * pixels, unfold its transpose
// pixels = Q^T * features; the two are exact adjoints. Both take a small batch of images with
// explicit strides (see fold_orbit_rows).
#pragma once

#include "common.hpp"

namespace orbitcore {
namespace pswf {

constexpr int kOrbit = 8;   // the largest orbit of the dihedral group of the square
constexpr int kChunk = 16;  // radial functions accumulated per recurrence pass

// Recurrence coefficients of the orthonormal Jacobi polynomials p_j for the weight (1 - x)^N on
// [-1, 1]:  x p_j = a_{j+1} p_{j+1} + b_j p_j + a_j p_{j-1}.
ORBITCORE_HD ORBITCORE_FORCEINLINE double jacobi_a(int N, int j) {  // j >= 1
  const double t = 2.0 * j + N;
  return 2.0 * j * (j + N) / (t * sqrt((t - 1.0) * (t + 1.0)));
}
ORBITCORE_HD ORBITCORE_FORCEINLINE double jacobi_b(int N, int j) {
  if (N == 0) return 0.0;
  const double t = 2.0 * j + N;
  return -static_cast<double>(N) * N / (t * (t + 2.0));
}

// r^N for r in [0, 1] (0^0 = 1), by squaring.
template <typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE T ipow(T r, int N) {
  T out = T(1), b = r;
  while (N > 0) {
    if (N & 1) out *= b;
    b *= b;
    N >>= 1;
  }
  return out;
}

// out[i] = sum_{j < K} d[i * ld + j] T_{N,j}(r) for i < nn (nn <= kChunk); the recurrence runs
// once for the whole chunk. The recurrence itself is carried in double (its coefficients are
// irrational and the cost is negligible next to the accumulation).
template <typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE void radial_chunk(int N, double r, int K, const T* d, index_t ld,
                                                      int nn, T* out) {
  double acc[kChunk];
  for (int i = 0; i < kChunk; ++i) acc[i] = 0.0;
  const double x = 1.0 - 2.0 * r * r;
  double prev = 0.0;
  double cur = sqrt(2.0 * (N + 1)) * ipow(r, N);  // T_{N,0}
  double a_cur = 0.0;                              // a_j of the current j (a_0 unused)
  for (int j = 0; j < K; ++j) {
    for (int i = 0; i < nn; ++i) acc[i] += static_cast<double>(d[i * ld + j]) * cur;
    const double a_next = jacobi_a(N, j + 1);
    const double next = ((x - jacobi_b(N, j)) * cur - a_cur * prev) / a_next;
    prev = cur;
    cur = next;
    a_cur = a_next;
  }
  for (int i = 0; i < nn; ++i) out[i] = static_cast<T>(acc[i]);
}

// cos(N phi) and sin(N phi) of the point (x, y) (phi = 0 at the origin).
ORBITCORE_HD ORBITCORE_FORCEINLINE void angular(int N, double x, double y, double& c, double& s) {
  const double phi = (x == 0.0 && y == 0.0) ? 0.0 : atan2(y, x);
  c = cos(N * phi);
  s = sin(N * phi);
}

// Basis functions at one point (x, y) (unit-disk coordinates) for one work item: the nn <= kChunk
// consecutive function rows from row0 of one angular group (N, K). Row i goes to out[col_cos[i]]
// (cos N phi part) and out[col_sin[i]] (sin part), a negative column meaning "not kept"; outside
// the disk every value is 0.
template <typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE void eval_point_item(double x, double y, int N, int K, const T* d, index_t ld,
                                                         int nn, const int* col_cos, const int* col_sin,
                                                         T* out) {
  const double r = sqrt(x * x + y * y);
  if (r > 1.0) {
    for (int i = 0; i < nn; ++i) {
      if (col_cos[i] >= 0) out[col_cos[i]] = T(0);
      if (col_sin[i] >= 0) out[col_sin[i]] = T(0);
    }
    return;
  }
  T rad[kChunk];
  radial_chunk<T>(N, r, K, d, ld, nn, rad);
  double c, s;
  angular(N, x, y, c, s);
  for (int i = 0; i < nn; ++i) {
    if (col_cos[i] >= 0) out[col_cos[i]] = static_cast<T>(rad[i] * c);
    if (col_sin[i] >= 0) out[col_sin[i]] = static_cast<T>(rad[i] * s);
  }
}

// Features of one orbit of S pixels (S a compile-time constant, so the S x S product unrolls),
// for a tile of ROWS images. Pixel j of image r is read at img[r * rs + pix[j] * ps] and feature i
// written to y[r * ys + feat[i] * fs]: with ROWS = 1 and (rs, ps) = (npix, 1) these are row-major
// images (the CUDA driver, one image per thread); the CPU driver passes a pixel-major tile of
// ROWS images ((rs, ps) = (1, ROWS)) so the products vectorise over the images. All ROWS rows are
// read (a tile is padded); only the first nb are written.
//   y[r][feat[i]] = sum_{j < S} Q[i][j] img[r][pix[j]],  i < S.
template <int S, int ROWS, typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE void fold_orbit_rows(const T* __restrict__ img, index_t rs, index_t ps,
                                                         int nb, const int* __restrict__ pix,
                                                         const T* __restrict__ Q, T* __restrict__ y,
                                                         index_t ys, index_t fs, const int* __restrict__ feat) {
  T acc[S][ROWS];
  ORBITCORE_UNROLL
  for (int i = 0; i < S; ++i)
    for (int r = 0; r < ROWS; ++r) acc[i][r] = T(0);
  ORBITCORE_UNROLL
  for (int j = 0; j < S; ++j) {
    const T* src = img + pix[j] * ps;
    ORBITCORE_UNROLL
    for (int i = 0; i < S; ++i) {
      const T q = Q[i * kOrbit + j];
      for (int r = 0; r < ROWS; ++r) acc[i][r] += q * src[r * rs];
    }
  }
  ORBITCORE_UNROLL
  for (int i = 0; i < S; ++i) {
    T* dst = y + feat[i] * fs;
    for (int r = 0; r < nb; ++r) dst[r * ys] = acc[i][r];
  }
}

// The transpose: img[r][pix[j]] = sum_{i < S} Q[i][j] y[r][feat[i]] (same addressing and tiles).
// (Loop orders in both functions keep the innermost unrolled loop on Q at stride kOrbit, which
// compilers turn into broadcasts; a unit-stride Q loop gets vectorised across Q instead, ~10x slower.)
template <int S, int ROWS, typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE void unfold_orbit_rows(const T* __restrict__ y, index_t ys, index_t fs,
                                                           int nb, const int* __restrict__ feat,
                                                           const T* __restrict__ Q, T* __restrict__ img,
                                                           index_t rs, index_t ps, const int* __restrict__ pix) {
  T v[S][ROWS];
  ORBITCORE_UNROLL
  for (int i = 0; i < S; ++i) {
    const T* src = y + feat[i] * fs;
    for (int r = 0; r < ROWS; ++r) v[i][r] = src[r * ys];
  }
  ORBITCORE_UNROLL
  for (int j = 0; j < S; ++j) {
    T acc[ROWS];
    for (int r = 0; r < ROWS; ++r) acc[r] = T(0);
    ORBITCORE_UNROLL
    for (int i = 0; i < S; ++i) {
      const T q = Q[i * kOrbit + j];
      for (int r = 0; r < ROWS; ++r) acc[r] += q * v[i][r];
    }
    T* dst = img + pix[j] * ps;
    for (int r = 0; r < nb; ++r) dst[r * rs] = acc[r];
  }
}

// Dispatch on the orbit size (8: generic position, 4: on an axis or a diagonal, 2, 1: the centre).
template <int ROWS, typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE void fold_orbit(const T* img, index_t rs, index_t ps, int nb, const int* pix,
                                                    const T* Q, int s, T* y, index_t ys, index_t fs,
                                                    const int* feat) {
  if (s == 8)
    fold_orbit_rows<8, ROWS>(img, rs, ps, nb, pix, Q, y, ys, fs, feat);
  else if (s == 4)
    fold_orbit_rows<4, ROWS>(img, rs, ps, nb, pix, Q, y, ys, fs, feat);
  else if (s == 2)
    fold_orbit_rows<2, ROWS>(img, rs, ps, nb, pix, Q, y, ys, fs, feat);
  else if (s == 1)
    fold_orbit_rows<1, ROWS>(img, rs, ps, nb, pix, Q, y, ys, fs, feat);
}

template <int ROWS, typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE void unfold_orbit(const T* y, index_t ys, index_t fs, int nb, const int* feat,
                                                      const T* Q, int s, T* img, index_t rs, index_t ps,
                                                      const int* pix) {
  if (s == 8)
    unfold_orbit_rows<8, ROWS>(y, ys, fs, nb, feat, Q, img, rs, ps, pix);
  else if (s == 4)
    unfold_orbit_rows<4, ROWS>(y, ys, fs, nb, feat, Q, img, rs, ps, pix);
  else if (s == 2)
    unfold_orbit_rows<2, ROWS>(y, ys, fs, nb, feat, Q, img, rs, ps, pix);
  else if (s == 1)
    unfold_orbit_rows<1, ROWS>(y, ys, fs, nb, feat, Q, img, rs, ps, pix);
}

}  // namespace pswf
}  // namespace orbitcore
