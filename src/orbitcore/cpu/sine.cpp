// CPU drivers of the sine family: run-time choice of the instruction-set variant (sine_impl.inl).
#include "sine.hpp"

#include "parallel.hpp"
#include "sine_simd.hpp"

namespace orbitcore {
namespace cpu {

template <typename T>
void sine_forward(const T* a, index_t n, double w0, T* y, int num_threads, SimdLevel level) {
  if (n <= 0) return;
  num_threads = threads_for(num_threads, 32LL * n);  // ~30 flops an element
#if defined(ORBITCORE_X86_SIMD)
  if (level == SimdLevel::avx512) return sine_avx512::sine_forward<T>(a, n, w0, y, num_threads);
  if (level == SimdLevel::avx2) return sine_avx2::sine_forward<T>(a, n, w0, y, num_threads);
#endif
  (void)level;
  sine_generic::sine_forward<T>(a, n, w0, y, num_threads);
}

template <typename T>
void sine_backward(const T* dy, const T* a, index_t n, double w0, T* da, int num_threads, SimdLevel level) {
  if (n <= 0) return;
  num_threads = threads_for(num_threads, 32LL * n);
#if defined(ORBITCORE_X86_SIMD)
  if (level == SimdLevel::avx512) return sine_avx512::sine_backward<T>(dy, a, n, w0, da, num_threads);
  if (level == SimdLevel::avx2) return sine_avx2::sine_backward<T>(dy, a, n, w0, da, num_threads);
#endif
  (void)level;
  sine_generic::sine_backward<T>(dy, a, n, w0, da, num_threads);
}

template void sine_forward<float>(const float*, index_t, double, float*, int, SimdLevel);
template void sine_forward<double>(const double*, index_t, double, double*, int, SimdLevel);
template void sine_backward<float>(const float*, const float*, index_t, double, float*, int, SimdLevel);
template void sine_backward<double>(const double*, const double*, index_t, double, double*, int, SimdLevel);

}  // namespace cpu
}  // namespace orbitcore
