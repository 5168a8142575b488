// CPU drivers of the PSWF family: loops over the element math in ../pswf.hpp, and the blocked
// dense product the benchmark measures against BLAS.
#include "pswf.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "../pswf.hpp"
#include "parallel.hpp"

namespace orbitcore {
namespace cpu {

template <typename T>
void pswf_eval_points(const T* points, index_t P, const int* gN, const int* gK, const int* goff, int G,
                      const int* item_group, const int* item_row, index_t per_point, const T* d,
                      index_t ld, const int* col_cos, const int* col_sin, T* out, index_t M,
                      int num_threads) {
  const int nt = resolve_threads(num_threads);
  const index_t items = P * per_point;
#pragma omp parallel for schedule(static) num_threads(nt)
  for (index_t it = 0; it < items; ++it) {
    const index_t p = it / per_point;
    const index_t q = it % per_point;
    const int g = item_group[q];
    const index_t row0 = item_row[q];
    const int nn = static_cast<int>(std::min<index_t>(pswf::kChunk, goff[g + 1] - row0));
    const double x = static_cast<double>(points[2 * p]), y = static_cast<double>(points[2 * p + 1]);
    const double r = std::sqrt(x * x + y * y);
    T* o = out + p * M;
    if (r > 1.0) {
      for (int i = 0; i < nn; ++i) {
        if (col_cos[row0 + i] >= 0) o[col_cos[row0 + i]] = T(0);
        if (col_sin[row0 + i] >= 0) o[col_sin[row0 + i]] = T(0);
      }
      continue;
    }
    T rad[pswf::kChunk];
    pswf::radial_chunk<T>(gN[g], r, gK[g], d + row0 * ld, ld, nn, rad);
    double c, s;
    pswf::angular(gN[g], x, y, c, s);
    for (int i = 0; i < nn; ++i) {
      if (col_cos[row0 + i] >= 0) o[col_cos[row0 + i]] = static_cast<T>(rad[i] * c);
      if (col_sin[row0 + i] >= 0) o[col_sin[row0 + i]] = static_cast<T>(rad[i] * s);
    }
  }
}

template <typename T>
void pswf_fold(const T* img, index_t B, index_t npix, const int* pix, const T* Q, const int* size,
               const int* feat, index_t O, T* y, index_t F, int num_threads) {
  const int nt = resolve_threads(num_threads);
#pragma omp parallel for schedule(static) num_threads(nt)
  for (index_t b = 0; b < B; ++b) {
    const T* im = img + b * npix;
    T* yb = y + b * F;
    for (index_t o = 0; o < O; ++o)
      pswf::fold_orbit(im, pix + pswf::kOrbit * o, Q + pswf::kOrbit * pswf::kOrbit * o, size[o], yb,
                       feat + pswf::kOrbit * o);
  }
}

template <typename T>
void pswf_unfold(const T* y, index_t B, index_t F, const int* pix, const T* Q, const int* size,
                 const int* feat, index_t O, T* img, index_t npix, int num_threads) {
  const int nt = resolve_threads(num_threads);
#pragma omp parallel for schedule(static) num_threads(nt)
  for (index_t b = 0; b < B; ++b) {
    T* im = img + b * npix;
    std::fill(im, im + npix, T(0));
    const T* yb = y + b * F;
    for (index_t o = 0; o < O; ++o)
      pswf::unfold_orbit(yb, feat + pswf::kOrbit * o, Q + pswf::kOrbit * pswf::kOrbit * o, size[o], im,
                         pix + pswf::kOrbit * o);
  }
}

// ---------------------------------------------------------------------------------------------
// Blocked GEMM. B is packed once into NR-column panels; each thread packs MC x KC blocks of A
// into MR-row panels and runs an MR x NR register-tile micro-kernel written so that the compiler
// vectorises the NR loop. The micro-kernel is compiled for AVX-512, AVX2 and the baseline ISA
// and chosen at run time (the wheel is built without -march).
// ---------------------------------------------------------------------------------------------
namespace {

template <typename T>
struct Tile;
template <>
struct Tile<float> {
  static constexpr int MR = 8, NR = 32;
};
template <>
struct Tile<double> {
  static constexpr int MR = 8, NR = 16;
};
constexpr index_t KC = 256, MC = 128;

template <typename T>
inline __attribute__((always_inline)) void micro_body(index_t kc, const T* __restrict__ a,
                                                      const T* __restrict__ b, T* __restrict__ c,
                                                      index_t ldc, int mr, int nr, bool accumulate) {
  constexpr int MR = Tile<T>::MR, NR = Tile<T>::NR;
  T acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = T(0);
  for (index_t p = 0; p < kc; ++p) {
    const T* bp = b + p * NR;
    const T* ap = a + p * MR;
    for (int i = 0; i < MR; ++i) {
      const T ai = ap[i];
      for (int j = 0; j < NR; ++j) acc[i][j] += ai * bp[j];
    }
  }
  if (mr == MR && nr == NR) {
    for (int i = 0; i < MR; ++i) {
      T* ci = c + i * ldc;
      if (accumulate)
        for (int j = 0; j < NR; ++j) ci[j] += acc[i][j];
      else
        for (int j = 0; j < NR; ++j) ci[j] = acc[i][j];
    }
  } else {
    for (int i = 0; i < mr; ++i) {
      T* ci = c + i * ldc;
      for (int j = 0; j < nr; ++j) ci[j] = accumulate ? ci[j] + acc[i][j] : acc[i][j];
    }
  }
}

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define ORBITCORE_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define ORBITCORE_CLONES
#endif

ORBITCORE_CLONES void micro_f32(index_t kc, const float* a, const float* b, float* c, index_t ldc, int mr,
                                int nr, bool accumulate) {
  micro_body<float>(kc, a, b, c, ldc, mr, nr, accumulate);
}
ORBITCORE_CLONES void micro_f64(index_t kc, const double* a, const double* b, double* c, index_t ldc,
                                int mr, int nr, bool accumulate) {
  micro_body<double>(kc, a, b, c, ldc, mr, nr, accumulate);
}
inline void micro(index_t kc, const float* a, const float* b, float* c, index_t ldc, int mr, int nr,
                  bool acc) {
  micro_f32(kc, a, b, c, ldc, mr, nr, acc);
}
inline void micro(index_t kc, const double* a, const double* b, double* c, index_t ldc, int mr, int nr,
                  bool acc) {
  micro_f64(kc, a, b, c, ldc, mr, nr, acc);
}

}  // namespace

template <typename T>
void pswf_gemm(const T* A, const T* B, T* C, index_t m, index_t k, index_t n, int num_threads) {
  constexpr int MR = Tile<T>::MR, NR = Tile<T>::NR;
  const int nt = resolve_threads(num_threads);
  if (m == 0 || n == 0) return;
  if (k == 0) {
    std::fill(C, C + m * n, T(0));
    return;
  }
  // Pack B: panel q holds columns [q NR, q NR + NR) as k rows of NR (zero-padded).
  const index_t npan = (n + NR - 1) / NR;
  std::vector<T> Bp(static_cast<std::size_t>(npan * k * NR));
#pragma omp parallel for schedule(static) num_threads(nt)
  for (index_t q = 0; q < npan; ++q) {
    T* dst = Bp.data() + q * k * NR;
    const index_t j0 = q * NR, w = std::min<index_t>(NR, n - j0);
    for (index_t p = 0; p < k; ++p) {
      const T* src = B + p * n + j0;
      T* d = dst + p * NR;
      for (index_t j = 0; j < w; ++j) d[j] = src[j];
      for (index_t j = w; j < NR; ++j) d[j] = T(0);
    }
  }
  const index_t mblocks = (m + MC - 1) / MC;
#pragma omp parallel num_threads(nt)
  {
    std::vector<T> Ap(static_cast<std::size_t>(MC * KC));
#pragma omp for schedule(dynamic, 1)
    for (index_t mb = 0; mb < mblocks; ++mb) {
      const index_t i0 = mb * MC, mc = std::min<index_t>(MC, m - i0);
      for (index_t p0 = 0; p0 < k; p0 += KC) {
        const index_t kc = std::min<index_t>(KC, k - p0);
        // Pack A rows [i0, i0 + mc) x cols [p0, p0 + kc) into MR-row panels (zero-padded).
        for (index_t r0 = 0; r0 < mc; r0 += MR) {
          T* d = Ap.data() + r0 * kc;
          const index_t h = std::min<index_t>(MR, mc - r0);
          for (index_t p = 0; p < kc; ++p) {
            for (index_t i = 0; i < h; ++i) d[p * MR + i] = A[(i0 + r0 + i) * k + p0 + p];
            for (index_t i = h; i < MR; ++i) d[p * MR + i] = T(0);
          }
        }
        for (index_t q = 0; q < npan; ++q) {
          const index_t j0 = q * NR;
          const int nr = static_cast<int>(std::min<index_t>(NR, n - j0));
          const T* bq = Bp.data() + q * k * NR + p0 * NR;
          for (index_t r0 = 0; r0 < mc; r0 += MR) {
            const int mr = static_cast<int>(std::min<index_t>(MR, mc - r0));
            micro(kc, Ap.data() + r0 * kc, bq, C + (i0 + r0) * n + j0, n, mr, nr, p0 > 0);
          }
        }
      }
    }
  }
}

#define ORBITCORE_INSTANTIATE(T)                                                                      \
  template void pswf_eval_points<T>(const T*, index_t, const int*, const int*, const int*, int,         \
                                    const int*, const int*, index_t, const T*, index_t, const int*,     \
                                    const int*, T*, index_t, int);                                      \
  template void pswf_fold<T>(const T*, index_t, index_t, const int*, const T*, const int*, const int*,  \
                             index_t, T*, index_t, int);                                               \
  template void pswf_unfold<T>(const T*, index_t, index_t, const int*, const T*, const int*, const int*, \
                               index_t, T*, index_t, int);                                             \
  template void pswf_gemm<T>(const T*, const T*, T*, index_t, index_t, index_t, int);
ORBITCORE_INSTANTIATE(float)
ORBITCORE_INSTANTIATE(double)
#undef ORBITCORE_INSTANTIATE

}  // namespace cpu
}  // namespace orbitcore
