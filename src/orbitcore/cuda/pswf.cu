// CUDA drivers of the PSWF family: one thread per (point, group chunk) for the basis values, one
// thread per (image, orbit) for the orbit transforms; the element math of ../pswf.hpp.
#include "pswf.hpp"

#include "../pswf.hpp"
#include "common.cuh"

namespace orbitcore {
namespace cuda {
namespace {

constexpr unsigned kThreads = 128;

// item_group / item_row (items_per_point,): the group and first function row of each work item
// (a chunk of at most kChunk rows of one group), prepared on the host.
template <typename T>
__global__ void eval_points_kernel(const T* __restrict__ points, index_t P, const int* __restrict__ gN,
                                   const int* __restrict__ gK, const int* __restrict__ goff,
                                   const int* __restrict__ item_group, const int* __restrict__ item_row,
                                   index_t per_point, const T* __restrict__ d, index_t ld,
                                   const int* __restrict__ col_cos, const int* __restrict__ col_sin,
                                   T* __restrict__ out, index_t M) {
  const index_t it = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (it >= P * per_point) return;
  const index_t p = it / per_point, q = it % per_point;
  const int g = item_group[q];
  const index_t row0 = item_row[q];
  const index_t left = goff[g + 1] - row0;
  const int nn = static_cast<int>(left < pswf::kChunk ? left : pswf::kChunk);
  pswf::eval_point_item<T>(static_cast<double>(points[2 * p]), static_cast<double>(points[2 * p + 1]), gN[g],
                           gK[g], d + row0 * ld, ld, nn, col_cos + row0, col_sin + row0, out + p * M);
}

template <typename T>
__global__ void fold_kernel(const T* __restrict__ img, index_t B, index_t npix, const int* __restrict__ pix,
                            const T* __restrict__ Q, const int* __restrict__ size,
                            const int* __restrict__ feat, index_t O, T* __restrict__ y, index_t F) {
  const index_t it = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (it >= B * O) return;
  const index_t b = it / O, o = it % O;
  pswf::fold_orbit<1>(img + b * npix, npix, index_t(1), 1, pix + pswf::kOrbit * o,
                      Q + pswf::kOrbit * pswf::kOrbit * o, size[o], y + b * F, F, index_t(1),
                      feat + pswf::kOrbit * o);
}

template <typename T>
__global__ void unfold_kernel(const T* __restrict__ y, index_t B, index_t F, const int* __restrict__ pix,
                              const T* __restrict__ Q, const int* __restrict__ size,
                              const int* __restrict__ feat, index_t O, T* __restrict__ img, index_t npix) {
  const index_t it = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (it >= B * O) return;
  const index_t b = it / O, o = it % O;
  pswf::unfold_orbit<1>(y + b * F, F, index_t(1), 1, feat + pswf::kOrbit * o,
                        Q + pswf::kOrbit * pswf::kOrbit * o, size[o], img + b * npix, npix, index_t(1),
                        pix + pswf::kOrbit * o);
}

}  // namespace

template <typename T>
void pswf_eval_points(const T* points, index_t P, const int* gN, const int* gK, const int* goff, int G,
                      const int* item_group, const int* item_row, index_t items_per_point, const T* d,
                      index_t ld, const int* col_cos, const int* col_sin, T* out, index_t M,
                      stream_t stream) {
  const index_t items = P * items_per_point;
  if (items == 0) return;
  eval_points_kernel<T><<<blocks_for(items, kThreads), kThreads, 0, stream>>>(
      points, P, gN, gK, goff, item_group, item_row, items_per_point, d, ld, col_cos, col_sin, out, M);
  check_launch("pswf_eval_points");
}

template <typename T>
void pswf_fold(const T* img, index_t B, index_t npix, const int* pix, const T* Q, const int* size,
               const int* feat, index_t O, T* y, index_t F, stream_t stream) {
  if (B * O == 0) return;
  fold_kernel<T><<<blocks_for(B * O, kThreads), kThreads, 0, stream>>>(img, B, npix, pix, Q, size, feat, O,
                                                                        y, F);
  check_launch("pswf_fold");
}

template <typename T>
void pswf_unfold(const T* y, index_t B, index_t F, const int* pix, const T* Q, const int* size,
                 const int* feat, index_t O, T* img, index_t npix, stream_t stream) {
  if (B * npix > 0)
    check_cuda(cudaMemsetAsync(img, 0, sizeof(T) * B * npix, stream), "pswf_unfold");
  if (B * O == 0) return;
  unfold_kernel<T><<<blocks_for(B * O, kThreads), kThreads, 0, stream>>>(y, B, F, pix, Q, size, feat, O,
                                                                          img, npix);
  check_launch("pswf_unfold");
}

#define ORBITCORE_INSTANTIATE(T)                                                                     \
  template void pswf_eval_points<T>(const T*, index_t, const int*, const int*, const int*, int,        \
                                    const int*, const int*, index_t, const T*, index_t, const int*,    \
                                    const int*, T*, index_t, stream_t);                                \
  template void pswf_fold<T>(const T*, index_t, index_t, const int*, const T*, const int*, const int*, \
                             index_t, T*, index_t, stream_t);                                          \
  template void pswf_unfold<T>(const T*, index_t, index_t, const int*, const T*, const int*,           \
                               const int*, index_t, T*, index_t, stream_t);
ORBITCORE_INSTANTIATE(float)
ORBITCORE_INSTANTIATE(double)
#undef ORBITCORE_INSTANTIATE

}  // namespace cuda
}  // namespace orbitcore
