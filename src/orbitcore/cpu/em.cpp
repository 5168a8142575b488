// CPU drivers of the EM family: run-time choice of the E-step variant (em_estep.inl).
#include "em.hpp"

#include <type_traits>

#include "em_simd.hpp"
#include "parallel.hpp"

namespace orbitcore {
namespace cpu {

template <typename T>
void em_estep(const EStepArgs<T>& args, int num_threads, SimdLevel level) {
  // The thread count is chosen here, not in the wide-ISA units (docs/DEVELOPING.md: they hold
  // internal-linkage code only, so no plain inline helper such as threads_for is used there).
  const long long work = static_cast<long long>(args.P) * static_cast<long long>(args.K) *
                         static_cast<long long>(args.kstart[em::shift_count(args.L)]);
  const int nt = threads_for(num_threads, work);
  auto run = [&](auto f, auto d) {
    if constexpr (std::is_same<T, float>::value)
      f(args, nt);
    else
      d(args, nt);
  };
#if defined(ORBITCORE_X86_SIMD)
  if (level == SimdLevel::avx512) return run(em_avx512::estep_f, em_avx512::estep_d);
  if (level == SimdLevel::avx2) return run(em_avx2::estep_f, em_avx2::estep_d);
#endif
  (void)level;
  run(em_generic::estep_f, em_generic::estep_d);
}

template void em_estep<float>(const EStepArgs<float>&, int, SimdLevel);
template void em_estep<double>(const EStepArgs<double>&, int, SimdLevel);

}  // namespace cpu
}  // namespace orbitcore
