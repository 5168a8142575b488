// CPU drivers of the PSWF family (OpenMP). Torch-free; raw pointers to contiguous arrays.
// Element math: ../pswf.hpp.
#pragma once

#include <cstdint>

#include "../common.hpp"

namespace orbitcore {
namespace cpu {

// Basis values at arbitrary points of the plane (unit-disk coordinates; 0 outside the disk).
//   points (P, 2) as (x, y);
//   G groups of radial functions sharing an angular index: group g has angular index
//     gN[g] >= 0, uses gK[g] Zernike terms and owns the function rows [goff[g], goff[g+1]);
//   work items per point: item q evaluates the rows [item_row[q], min(item_row[q] + kChunk,
//     goff[g + 1])) of group g = item_group[q] (one Zernike recurrence per item);
//   d (F, ld) coefficient rows (the radial normalisation is folded in);
//   col_cos (F,), col_sin (F,): output columns of Phi(r) cos(N phi) and Phi(r) sin(N phi)
//     (-1: not wanted);
//   out (P, M) overwritten (columns not named by any row are left untouched).
template <typename T>
void pswf_eval_points(const T* points, index_t P, const int* gN, const int* gK, const int* goff, int G,
                      const int* item_group, const int* item_row, index_t items_per_point, const T* d,
                      index_t ld, const int* col_cos, const int* col_sin, T* out, index_t M,
                      int num_threads);

// Orbit fold: y[b, feat[o, i]] = sum_j Q[o, i, j] img[b, pix[o, j]] (i, j < size[o]).
//   img (B, npix), y (B, F); pix, feat (O, 8) int32; Q (O, 8, 8); size (O,) int32.
template <typename T>
void pswf_fold(const T* img, index_t B, index_t npix, const int* pix, const T* Q, const int* size,
               const int* feat, index_t O, T* y, index_t F, int num_threads);

// Its adjoint: img[b, pix[o, j]] = sum_i Q[o, i, j] y[b, feat[o, i]]; pixels of no orbit are 0.
template <typename T>
void pswf_unfold(const T* y, index_t B, index_t F, const int* pix, const T* Q, const int* size,
                 const int* feat, index_t O, T* img, index_t npix, int num_threads);

// Dense product C (m, n) = A (m, k) B (k, n), all row-major contiguous: the blocked CPU kernel
// the benchmark compares with torch.matmul (BLAS).
template <typename T>
void pswf_gemm(const T* A, const T* B, T* C, index_t m, index_t k, index_t n, int num_threads);

}  // namespace cpu
}  // namespace orbitcore
