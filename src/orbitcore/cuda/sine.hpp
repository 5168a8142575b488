// CUDA drivers of the sine family (the SIREN activation). Same contracts as ../cpu/sine.hpp
// (device pointers, contiguous, n elements); every launch goes to `stream`.
#pragma once

#include "../sine.hpp"
#include "runtime.hpp"

namespace orbitcore {
namespace cuda {

template <typename T>
void sine_forward(const T* a, index_t n, double w0, T* y, stream_t stream);

template <typename T>
void sine_backward(const T* dy, const T* a, index_t n, double w0, T* da, stream_t stream);

}  // namespace cuda
}  // namespace orbitcore
