// CUDA drivers of the sine family: one grid-stride loop per direction over the element math of
// ../sine.hpp (the CPU drivers' fast path, and the C library's sin / cos beyond its range).
#include "common.cuh"
#include "sine.hpp"

namespace orbitcore {
namespace cuda {
namespace {

constexpr unsigned kThreads = 256;
constexpr unsigned kMaxBlocks = 65535u * 8u;

template <typename T>
__global__ void sine_forward_kernel(const T* __restrict__ a, index_t n, T w, T* __restrict__ y) {
  for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const T ai = a[i];
    y[i] = sine::out_of_range(ai, w) ? sine::forward_wide(ai, w) : sine::forward(ai, w);
  }
}

template <typename T>
__global__ void sine_backward_kernel(const T* __restrict__ dy, const T* __restrict__ a, index_t n, T w,
                                     T* __restrict__ da) {
  for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const T ai = a[i];
    da[i] = sine::out_of_range(ai, w) ? sine::backward_wide(dy[i], ai, w)
                                                            : sine::backward(dy[i], ai, w);
  }
}

unsigned grid_for(index_t n) {
  const long long blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < kMaxBlocks ? blocks : kMaxBlocks);
}

}  // namespace

template <typename T>
void sine_forward(const T* a, index_t n, double w0, T* y, stream_t stream) {
  if (n <= 0) return;
  sine_forward_kernel<T><<<grid_for(n), kThreads, 0, stream>>>(a, n, static_cast<T>(w0), y);
  check_launch("sine_forward");
}

template <typename T>
void sine_backward(const T* dy, const T* a, index_t n, double w0, T* da, stream_t stream) {
  if (n <= 0) return;
  sine_backward_kernel<T><<<grid_for(n), kThreads, 0, stream>>>(dy, a, n, static_cast<T>(w0), da);
  check_launch("sine_backward");
}

template void sine_forward<float>(const float*, index_t, double, float*, stream_t);
template void sine_forward<double>(const double*, index_t, double, double*, stream_t);
template void sine_backward<float>(const float*, const float*, index_t, double, float*, stream_t);
template void sine_backward<double>(const double*, const double*, index_t, double, double*, stream_t);

}  // namespace cuda
}  // namespace orbitcore
