// Host-side helpers shared by the CPU drivers: thread counts, adders for scatter loops, and
// per-thread private accumulators (deterministic, race-free scatter-add without atomics).
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <vector>

#include "../common.hpp"

namespace orbitcore {
namespace cpu {

inline int resolve_threads(int requested) {
  return requested > 0 ? requested : omp_get_max_threads();
}

// Below this many element operations a parallel region costs more than it saves (waking
// threads takes milliseconds on shared cores): run on the calling thread.
constexpr long long kMinParallelWork = 1 << 15;

inline int threads_for(int requested, long long work) {
  return work < kMinParallelWork ? 1 : resolve_threads(requested);
}

template <typename T>
struct PlainAdd {
  void operator()(T* p, T v) const { *p += v; }
};

template <typename T>
struct AtomicAdd {
  void operator()(T* p, T v) const {
#pragma omp atomic
    *p += v;
  }
};

// Bytes of private scatter buffers a driver may allocate before it falls back to atomics.
constexpr std::size_t kPrivateBufferBudget = std::size_t(2) << 30;

// A set of scatter targets, each `count` elements: thread 0 writes straight into the output,
// threads 1..nt-1 into their own zeroed buffers, summed into the output by reduce() in a fixed
// order (results do not depend on scheduling).
template <typename T>
class PrivateAccumulators {
 public:
  PrivateAccumulators(T* out, std::size_t count, int nthreads)
      : out_(out), count_(count), nthreads_(nthreads) {
    if (out_ == nullptr || nthreads_ <= 1) return;
    bufs_.resize(static_cast<std::size_t>(nthreads_ - 1));
  }
  // Each thread calls this once inside the parallel region (first touch by its owner).
  T* local(int tid) {
    if (out_ == nullptr) return nullptr;
    if (tid == 0) return out_;
    std::vector<T>& b = bufs_[static_cast<std::size_t>(tid - 1)];
    b.assign(count_, T(0));
    return b.data();
  }
  void reduce(int nthreads) {
    if (out_ == nullptr || bufs_.empty()) return;
    const std::ptrdiff_t n = static_cast<std::ptrdiff_t>(count_);
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (std::ptrdiff_t i = 0; i < n; ++i) {
      T acc = out_[i];
      for (const std::vector<T>& b : bufs_)
        if (!b.empty()) acc += b[static_cast<std::size_t>(i)];
      out_[i] = acc;
    }
  }

 private:
  T* out_;
  std::size_t count_;
  int nthreads_;
  std::vector<std::vector<T>> bufs_;
};

}  // namespace cpu
}  // namespace orbitcore
