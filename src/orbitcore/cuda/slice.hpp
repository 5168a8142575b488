// CUDA drivers of the slice family. Same contracts as ../cpu/slice.hpp (device pointers,
// contiguous, interleaved complex); every launch goes to `stream`.
#pragma once

#include "../common.hpp"
#include "runtime.hpp"

namespace orbitcore {
namespace cuda {

template <typename T>
void slice_forward(const T* vol, index_t V, int D, bool half, const T* rot, index_t B, int n, T radius2,
                   bool hermitian, T* out, stream_t stream);

template <typename T>
void slice_backward(const T* g, const T* w, const T* vol, index_t V, index_t Vg, int D, bool half,
                    const T* rot, index_t B, int n, T radius2, bool hermitian, T* grad_vol, T* wvol,
                    T* grad_rot, stream_t stream);

template <typename T>
void sample_forward(const T* vol, index_t V, int D, const T* coords, index_t P, T* out,
                    stream_t stream);

template <typename T>
void sample_backward(const T* g, const T* vol, index_t V, int D, const T* coords, index_t P,
                     T* grad_vol, T* grad_coords, stream_t stream);

}  // namespace cuda
}  // namespace orbitcore
