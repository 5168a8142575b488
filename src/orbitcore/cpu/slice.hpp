// CPU drivers of the slice family (OpenMP over the batch). Torch-free; raw pointers to
// contiguous arrays; complex arrays are interleaved (re, im). Element math: ../slice.hpp.
#pragma once

#include "../common.hpp"

namespace orbitcore {
namespace cpu {

// Central slices S[b] = V_b(R_b · (kx, ky, 0)).
//   vol  (V, D, D, D) complex, V == 1 (shared by every rotation) or V == B;
//   rot  (B, 3, 3) row-major;  out (B, n, n) complex;
//   radius2 < 0: no disk mask, else points with kx² + ky² > radius2 are 0;
//   hermitian: compute half the plane, fill the rest by S(-k) = conj(S(k));
//   half: vol is a half volume (V, D, D, D/2 + 1) (even D; ../slice.hpp, "Half volumes").
template <typename T>
void slice_forward(const T* vol, index_t V, int D, bool half, const T* rot, index_t B, int n, T radius2,
                   bool hermitian, T* out, int num_threads);

// Adjoint of slice_forward and the rotation gradient, in one pass over the plane.
//   g        (B, n, n) complex: upstream gradient (or slices to insert);
//   w        (B, n, n) real or nullptr: weights scattered into wvol (back-projection weights);
//   vol      (V, D, D, D) complex: needed only when grad_rot is requested;
//   grad_vol (Vg, D, D, D) complex or nullptr, Vg == 1 (sum over the batch) or Vg == B;
//   wvol     (D, D, D) real or nullptr (requires Vg == 1 semantics: summed over the batch);
//   grad_rot (B, 3, 3) or nullptr: dL/dR (third column is 0: the plane has kz = 0);
//   half: vol and grad_vol are half volumes (.., D, D, D/2 + 1); then w and wvol must be nullptr.
// Outputs are overwritten (not accumulated into).
template <typename T>
void slice_backward(const T* g, const T* w, const T* vol, index_t V, index_t Vg, int D, bool half,
                    const T* rot, index_t B, int n, T radius2, bool hermitian, T* grad_vol, T* wvol,
                    T* grad_rot, int num_threads);

// Trilinear samples at arbitrary points.
//   vol (V, D, D, D) complex; coords (V, P, 3) as (x, y, z) in Fourier pixels relative to DC
//   (for V == 1, (P, 3)); out (V, P) complex.
template <typename T>
void sample_forward(const T* vol, index_t V, int D, const T* coords, index_t P, T* out,
                    int num_threads);

// Adjoint of sample_forward and the coordinate gradient. grad_vol (V, D, D, D) complex or
// nullptr; grad_coords (V, P, 3) or nullptr. Outputs are overwritten.
template <typename T>
void sample_backward(const T* g, const T* vol, index_t V, int D, const T* coords, index_t P,
                     T* grad_vol, T* grad_coords, int num_threads);

}  // namespace cpu
}  // namespace orbitcore
