// CUDA drivers of the PSWF family. Same contracts as ../cpu/pswf.hpp (device pointers,
// contiguous); every launch goes to `stream`. The dense products run through the caller's BLAS
// (torch.matmul -> cuBLAS), so there is no GEMM here.
#pragma once

#include "../common.hpp"
#include "runtime.hpp"

namespace orbitcore {
namespace cuda {

template <typename T>
void pswf_eval_points(const T* points, index_t P, const int* gN, const int* gK, const int* goff, int G,
                      const int* item_group, const int* item_row, index_t items_per_point, const T* d,
                      index_t ld, const int* col_cos, const int* col_sin, T* out, index_t M,
                      stream_t stream);

template <typename T>
void pswf_fold(const T* img, index_t B, index_t npix, const int* pix, const T* Q, const int* size,
               const int* feat, index_t O, T* y, index_t F, stream_t stream);

template <typename T>
void pswf_unfold(const T* y, index_t B, index_t F, const int* pix, const T* Q, const int* size,
                 const int* feat, index_t O, T* img, index_t npix, stream_t stream);

}  // namespace cuda
}  // namespace orbitcore
