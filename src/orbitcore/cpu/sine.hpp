// CPU drivers of the sine family: the SIREN activation y = sin(w0 · a) and its backward
// da = dy · w0 · cos(w0 · a) over n contiguous elements (element math: ../sine.hpp). Threads:
// num_threads <= 0 means OpenMP's default. `level` picks the instruction-set variant (simd.hpp).
#pragma once

#include "../sine.hpp"
#include "simd.hpp"

namespace orbitcore {
namespace cpu {

template <typename T>
void sine_forward(const T* a, index_t n, double w0, T* y, int num_threads, SimdLevel level);

template <typename T>
void sine_backward(const T* dy, const T* a, index_t n, double w0, T* da, int num_threads, SimdLevel level);

}  // namespace cpu
}  // namespace orbitcore
