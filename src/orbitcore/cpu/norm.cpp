// CPU drivers of the norm family: run-time choice of the instruction-set variant (norm_impl.inl).
#include "norm.hpp"

#include <string>

#include "norm_simd.hpp"
#include "parallel.hpp"
#include "simd.hpp"

namespace orbitcore {
namespace cpu {
namespace {

// The checks the variants leave to the dispatcher, and the thread count.
int prepare(index_t M, index_t C, const norm::Pool2* pool, int num_threads, const char* fn) {
  check(M >= 1 && C >= 1, std::string(fn) + ": empty input");
  if (pool != nullptr)
    check(pool->H >= 2 && pool->W >= 2 && pool->N >= 1 && pool->N * pool->H * pool->W == M,
          std::string(fn) + ": pooling needs M = N H W rows with H, W >= 2");
  return threads_for(num_threads, static_cast<long long>(M * C));
}

}  // namespace

template <typename T>
void batch_norm_relu_forward(NORM_FORWARD_ARGS(T), SimdLevel level) {
  num_threads = prepare(M, C, pool, num_threads, "batch_norm_relu_forward");
#if defined(ORBITCORE_X86_SIMD)
  if (level == SimdLevel::avx512)
    return norm_avx512::batch_norm_relu_forward<T>(x, M, C, gamma, beta, eps, y, mean, var, num_threads, pool);
  if (level == SimdLevel::avx2)
    return norm_avx2::batch_norm_relu_forward<T>(x, M, C, gamma, beta, eps, y, mean, var, num_threads, pool);
#endif
  (void)level;
  norm_generic::batch_norm_relu_forward<T>(x, M, C, gamma, beta, eps, y, mean, var, num_threads, pool);
}

template <typename T>
void batch_norm_relu_backward(NORM_BACKWARD_ARGS(T), SimdLevel level) {
  num_threads = prepare(M, C, pool, num_threads, "batch_norm_relu_backward");
#if defined(ORBITCORE_X86_SIMD)
  if (level == SimdLevel::avx512)
    return norm_avx512::batch_norm_relu_backward<T>(dy, x, M, C, gamma, beta, mean, var, eps, dx, dgamma, dbeta,
                                                    num_threads, pool);
  if (level == SimdLevel::avx2)
    return norm_avx2::batch_norm_relu_backward<T>(dy, x, M, C, gamma, beta, mean, var, eps, dx, dgamma, dbeta,
                                                  num_threads, pool);
#endif
  (void)level;
  norm_generic::batch_norm_relu_backward<T>(dy, x, M, C, gamma, beta, mean, var, eps, dx, dgamma, dbeta, num_threads,
                                            pool);
}

template void batch_norm_relu_forward<float>(NORM_FORWARD_ARGS(float), SimdLevel);
template void batch_norm_relu_forward<double>(NORM_FORWARD_ARGS(double), SimdLevel);
template void batch_norm_relu_backward<float>(NORM_BACKWARD_ARGS(float), SimdLevel);
template void batch_norm_relu_backward<double>(NORM_BACKWARD_ARGS(double), SimdLevel);

}  // namespace cpu
}  // namespace orbitcore
