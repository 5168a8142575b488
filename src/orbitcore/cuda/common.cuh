// Device-side helpers shared by the CUDA drivers.
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "../common.hpp"
#include "runtime.hpp"

namespace orbitcore {
namespace cuda {

inline void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("orbitcore CUDA error in ") + what + ": " +
                             cudaGetErrorString(err));
}

inline void check_launch(const char* what) { check_cuda(cudaGetLastError(), what); }

template <typename T>
struct AtomicAdd {
  __device__ ORBITCORE_FORCEINLINE void operator()(T* p, T v) const { atomicAdd(p, v); }
};

// Sum of `v` over the block (all threads must call); result valid in thread 0.
template <typename T>
__device__ ORBITCORE_FORCEINLINE T block_sum(T v, T* shared /* >= 32 */) {
  const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  const unsigned nwarps = (blockDim.x + 31u) >> 5;
  v = threadIdx.x < nwarps ? shared[threadIdx.x] : T(0);
  if (warp == 0)
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}

inline unsigned blocks_for(long long n, unsigned threads) {
  return static_cast<unsigned>((n + threads - 1) / threads);
}

}  // namespace cuda
}  // namespace orbitcore
