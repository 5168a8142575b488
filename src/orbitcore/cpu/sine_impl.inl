// The sine drivers' loops, compiled once per instruction set (sine_simd_*.cpp define
// ORBITCORE_SIMD_NS and their own target flags). The elements are taken in blocks: a
// branch-free pass over the block (it vectorises; ../sine.hpp) that also notes whether any
// |w0 · a| is beyond the fast reduction's range, then, only if one is, a scalar pass over the
// same (cached) block that recomputes those elements with the C library.
#include <algorithm>

#include "parallel.hpp"
#include "sine_simd.hpp"

namespace orbitcore {
namespace cpu {
namespace ORBITCORE_SIMD_NS {

namespace {
constexpr index_t kBlock = 4096;

// Calls body(lo, hi) for each block of [0, n), in parallel.
template <typename F>
void for_blocks(index_t n, int num_threads, F body) {
  const index_t nblocks = (n + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) num_threads(num_threads) if (num_threads > 1)
  for (index_t b = 0; b < nblocks; ++b) body(b * kBlock, std::min(n, (b + 1) * kBlock));
}
}  // namespace

template <typename T>
void sine_forward(const T* a, index_t n, double w0, T* y, int num_threads) {
  const T w = static_cast<T>(w0);
  for_blocks(n, num_threads, [&](index_t lo, index_t hi) {
    int wide = 0;
    for (index_t i = lo; i < hi; ++i) {
      const T ai = a[i];
      wide |= sine::out_of_range(ai, w) ? 1 : 0;
      y[i] = sine::forward(ai, w);
    }
    if (wide)
      for (index_t i = lo; i < hi; ++i)
        if (sine::out_of_range(a[i], w)) y[i] = sine::forward_wide(a[i], w);
  });
}

template <typename T>
void sine_backward(const T* dy, const T* a, index_t n, double w0, T* da, int num_threads) {
  const T w = static_cast<T>(w0);
  for_blocks(n, num_threads, [&](index_t lo, index_t hi) {
    int wide = 0;
    for (index_t i = lo; i < hi; ++i) {
      const T ai = a[i];
      wide |= sine::out_of_range(ai, w) ? 1 : 0;
      da[i] = sine::backward(dy[i], ai, w);
    }
    if (wide)
      for (index_t i = lo; i < hi; ++i)
        if (sine::out_of_range(a[i], w)) da[i] = sine::backward_wide(dy[i], a[i], w);
  });
}

template void sine_forward<float>(const float*, index_t, double, float*, int);
template void sine_forward<double>(const double*, index_t, double, double*, int);
template void sine_backward<float>(const float*, const float*, index_t, double, float*, int);
template void sine_backward<double>(const double*, const double*, index_t, double, double*, int);

}  // namespace ORBITCORE_SIMD_NS
}  // namespace cpu
}  // namespace orbitcore
