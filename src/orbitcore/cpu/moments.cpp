// CPU drivers of the moments family: run-time choice of the SYRK variant, and the finalize
// loop over the element math of ../moments.hpp.
#include "moments.hpp"

#include <omp.h>

#include <mutex>
#include <new>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "../moments.hpp"
#include "moments_simd.hpp"
#include "parallel.hpp"

namespace orbitcore {
namespace cpu {

SimdLevel detect_simd() {
#if defined(ORBITCORE_X86_SIMD) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return SimdLevel::avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return SimdLevel::avx2;
#endif
  return SimdLevel::generic;
}

const char* simd_name(SimdLevel level) {
  switch (level) {
    case SimdLevel::avx512:
      return "avx512";
    case SimdLevel::avx2:
      return "avx2";
    default:
      return "generic";
  }
}

SimdLevel parse_simd(const std::string& name) {
  const SimdLevel best = detect_simd();
  if (name == "auto" || name.empty()) return best;
  SimdLevel want;
  if (name == "generic")
    want = SimdLevel::generic;
  else if (name == "avx2")
    want = SimdLevel::avx2;
  else if (name == "avx512")
    want = SimdLevel::avx512;
  else
    throw std::invalid_argument("unknown SIMD level '" + name +
                                "' (expected auto, generic, avx2 or avx512)");
  if (static_cast<int>(want) > static_cast<int>(best))
    throw std::invalid_argument("SIMD level '" + name + "' is not supported by this CPU or build "
                                "(best available: " + simd_name(best) + ")");
  return want;
}

namespace {
// Threads worth waking for `work` elementary operations: an OpenMP region costs microseconds on
// an idle machine but can cost a scheduler time slice (milliseconds) when the cores are shared,
// so small problems run on the calling thread (as at::parallel_for does below its grain size).
int threads_for(int requested, double work) {
  const int nt = resolve_threads(requested);
  return work < double(1 << 20) ? 1 : nt;
}
}  // namespace

namespace {
// Packing workspace of the SYRK, kept between calls (at most 32 MiB; re-touching the same
// pages avoids page faults on every batch). A call that finds it busy (another thread is
// accumulating) uses a buffer of its own.
class Workspace {
 public:
  ~Workspace() { release(); }
  std::mutex mu;
  void* get(std::size_t bytes) {
    if (bytes > bytes_) {
      release();
      ptr_ = ::operator new(bytes, std::align_val_t(64));
      bytes_ = bytes;
    }
    return ptr_;
  }

 private:
  void release() {
    if (ptr_) ::operator delete(ptr_, std::align_val_t(64));
    ptr_ = nullptr;
    bytes_ = 0;
  }
  void* ptr_ = nullptr;
  std::size_t bytes_ = 0;
};

Workspace& shared_workspace() {
  static Workspace ws;
  return ws;
}
}  // namespace

template <typename T, typename Tacc>
void moments_accumulate(const T* X, index_t B, index_t L, const std::int64_t* cols, index_t p,
                        Tacc* G, Tacc* s, int num_threads, SimdLevel level) {
  static_assert(sizeof(Tacc) >= sizeof(T), "the accumulator must be at least as wide as the data");
  if (B <= 0 || p <= 0) return;
  const int nt = threads_for(num_threads, double(B) * double(p) * double(p));
  auto run = [&](auto ws_f, auto ws_d, auto ff, auto fd, auto dd) {
    const std::size_t bytes = std::is_same<T, float>::value ? ws_f(B, p) : ws_d(B, p);
    Workspace& shared = shared_workspace();
    std::unique_lock<std::mutex> lock(shared.mu, std::try_to_lock);
    void* own = nullptr;
    void* work = lock.owns_lock() ? shared.get(bytes) : (own = ::operator new(bytes, std::align_val_t(64)));
    if constexpr (std::is_same<T, float>::value && std::is_same<Tacc, float>::value)
      ff(X, B, L, cols, p, G, s, nt, work);
    else if constexpr (std::is_same<T, float>::value)
      fd(X, B, L, cols, p, G, s, nt, work);
    else
      dd(X, B, L, cols, p, G, s, nt, work);
    if (own) ::operator delete(own, std::align_val_t(64));
  };
#if defined(ORBITCORE_X86_SIMD)
  if (level == SimdLevel::avx512) {
    run(simd_avx512::workspace_bytes_f, simd_avx512::workspace_bytes_d, simd_avx512::accumulate_ff,
        simd_avx512::accumulate_fd, simd_avx512::accumulate_dd);
    return;
  }
  if (level == SimdLevel::avx2) {
    run(simd_avx2::workspace_bytes_f, simd_avx2::workspace_bytes_d, simd_avx2::accumulate_ff,
        simd_avx2::accumulate_fd, simd_avx2::accumulate_dd);
    return;
  }
#endif
  run(simd_generic::workspace_bytes_f, simd_generic::workspace_bytes_d, simd_generic::accumulate_ff,
      simd_generic::accumulate_fd, simd_generic::accumulate_dd);
}

template <typename T>
void moments_finalize(T* G, const T* s, index_t p, const std::int32_t* slots, const T* phase,
                      index_t m, double count, double noise, T* M1, T* M2, int num_threads) {
  const int nt = threads_for(num_threads, 16.0 * double(m) * double(m));
  {  // mirror the lower triangle of G (square tiles)
    constexpr index_t TB = 32;
    const index_t nb = (p + TB - 1) / TB;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
    for (index_t br = 0; br < nb; ++br)
      for (index_t bc = 0; bc <= br; ++bc)
        for (index_t r = br * TB; r < (br + 1) * TB && r < p; ++r)
          for (index_t c = bc * TB; c < (bc + 1) * TB && c < r; ++c) moments::mirror_entry(G, p, r, c);
  }
  const T inv = count > 0 ? static_cast<T>(1.0 / count) : T(0);
  const T nz = static_cast<T>(noise);
  const int* sl = reinterpret_cast<const int*>(slots);
  for (index_t u = 0; u < m; ++u) store_cplx(M1 + 2 * u, moments::first_moment_entry(s, sl, phase, u, inv));
  // Upper triangle (v >= u) from the element math, mirrored into the lower one, in square
  // tiles so that both the rows and the mirrored columns stay in cache. Tile rows near the
  // top have more tiles: dynamic schedule.
  constexpr index_t TB = 32;
  const index_t nb = (m + TB - 1) / TB;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (index_t bu = 0; bu < nb; ++bu) {
    const index_t u0 = bu * TB, u1 = u0 + TB < m ? u0 + TB : m;
    for (index_t bv = bu; bv < nb; ++bv) {
      const index_t v0 = bv * TB, v1 = v0 + TB < m ? v0 + TB : m;
      for (index_t u = u0; u < u1; ++u)
        for (index_t v = (v0 > u ? v0 : u); v < v1; ++v)
          store_cplx(M2 + 2 * (u * m + v), moments::second_moment_entry(G, p, sl, phase, u, v, inv, nz));
      for (index_t v = v0; v < v1; ++v)
        for (index_t u = u0; u < u1 && u < v; ++u)
          store_cplx(M2 + 2 * (v * m + u), conj(load_cplx(M2 + 2 * (u * m + v))));
    }
  }
}

template <typename T>
void moments_real_target(const T* A, index_t m, const std::int64_t* idx, const T* coef, index_t p, T* out,
                         int num_threads) {
  const int nt = threads_for(num_threads, 16.0 * double(p) * double(p));
  // B row by row: v_r = row r of U^* A (two contiguous rows of A), then B[r, :] = Re(v_r U)...
#pragma omp parallel num_threads(nt)
  {
    std::vector<T> v(static_cast<std::size_t>(2 * m));
#pragma omp for schedule(static)
    for (index_t r = 0; r < p; ++r) {
      for (index_t j = 0; j < m; ++j) store_cplx(v.data() + 2 * j, moments::real_basis_row(A, m, idx, coef, r, j));
      for (index_t t = 0; t < p; ++t) out[r * p + t] = moments::real_basis_col(v.data(), idx, coef, t);
    }
  }
  // ... then At = (B + B^T) / 2 in place, by square tiles of the upper triangle.
  constexpr index_t TB = 32;
  const index_t nb = (p + TB - 1) / TB;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (index_t br = 0; br < nb; ++br) {
    const index_t r0 = br * TB, r1 = r0 + TB < p ? r0 + TB : p;
    for (index_t bt = br; bt < nb; ++bt) {
      const index_t t0 = bt * TB, t1 = t0 + TB < p ? t0 + TB : p;
      for (index_t r = r0; r < r1; ++r)
        for (index_t t = (t0 > r ? t0 : r); t < t1; ++t) {
          const T v = T(0.5) * (out[r * p + t] + out[t * p + r]);
          out[r * p + t] = v;
          out[t * p + r] = v;
        }
    }
  }
}

template void moments_real_target<float>(const float*, index_t, const std::int64_t*, const float*, index_t,
                                         float*, int);
template void moments_real_target<double>(const double*, index_t, const std::int64_t*, const double*,
                                          index_t, double*, int);
template void moments_accumulate<float, float>(const float*, index_t, index_t, const std::int64_t*,
                                               index_t, float*, float*, int, SimdLevel);
template void moments_accumulate<float, double>(const float*, index_t, index_t, const std::int64_t*,
                                                index_t, double*, double*, int, SimdLevel);
template void moments_accumulate<double, double>(const double*, index_t, index_t,
                                                 const std::int64_t*, index_t, double*, double*, int,
                                                 SimdLevel);
template void moments_finalize<float>(float*, const float*, index_t, const std::int32_t*,
                                      const float*, index_t, double, double, float*, float*, int);
template void moments_finalize<double>(double*, const double*, index_t, const std::int32_t*,
                                       const double*, index_t, double, double, double*, double*, int);

}  // namespace cpu
}  // namespace orbitcore
