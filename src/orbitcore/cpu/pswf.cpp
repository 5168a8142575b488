// CPU drivers of the PSWF family: loops over the element math in ../pswf.hpp, and the blocked
// dense product the benchmark measures against BLAS.
#include "pswf.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "../pswf.hpp"
#include "parallel.hpp"

// Hot loops compiled for AVX-512, AVX2 and the baseline ISA, chosen at run time (the wheel is
// built without -march).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define ORBITCORE_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define ORBITCORE_CLONES
#endif

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
    pswf::eval_point_item<T>(static_cast<double>(points[2 * p]), static_cast<double>(points[2 * p + 1]), gN[g],
                             gK[g], d + row0 * ld, ld, nn, col_cos + row0, col_sin + row0, out + p * M);
  }
}

// Images per orbit pass. A tile of kRows images is transposed to pixel-major order (so pixel p
// of the tile is kRows contiguous values), folded with the orbit products vectorised over the
// images, and the features transposed back; the transposes move 16 x 16 blocks so every cache line
// read or written is used whole (rows of an image batch are 4 KiB-aliased).
constexpr int kRows = 16;

template <typename T>
void to_pixel_major(const T* rows, index_t ld, index_t n, int nb, T* tile) {
  for (index_t p0 = 0; p0 < n; p0 += kRows) {
    const int w = static_cast<int>(std::min<index_t>(kRows, n - p0));
    for (int r = 0; r < kRows; ++r) {
      if (r < nb) {
        const T* src = rows + r * ld + p0;
        for (int c = 0; c < w; ++c) tile[(p0 + c) * kRows + r] = src[c];
      } else {
        for (int c = 0; c < w; ++c) tile[(p0 + c) * kRows + r] = T(0);
      }
    }
  }
}

template <typename T>
void from_pixel_major(const T* tile, index_t n, int nb, T* rows, index_t ld) {
  for (index_t p0 = 0; p0 < n; p0 += kRows) {
    const int w = static_cast<int>(std::min<index_t>(kRows, n - p0));
    for (int r = 0; r < nb; ++r) {
      T* dst = rows + r * ld + p0;
      for (int c = 0; c < w; ++c) dst[c] = tile[(p0 + c) * kRows + r];
    }
  }
}

// One tile of kRows images: to pixel-major, orbit products, back to rows.
template <typename T>
inline __attribute__((always_inline)) void fold_tile(const T* img, index_t npix, int nb, const int* pix,
                                                     const T* Q, const int* size, const int* feat, index_t O,
                                                     T* y, index_t F, T* xt, T* yt) {
  to_pixel_major(img, npix, npix, nb, xt);
  // The orbits' pixels are scattered over the tile (L2): prefetch a few orbits ahead.
  constexpr index_t kAhead = 4;
  for (index_t o = 0; o < O; ++o) {
    if (o + kAhead < O) {
      const int* pa = pix + pswf::kOrbit * (o + kAhead);
      for (int j = 0; j < size[o + kAhead]; ++j) __builtin_prefetch(xt + index_t(pa[j]) * kRows);
    }
    pswf::fold_orbit<kRows>(xt, index_t(1), index_t(kRows), kRows, pix + pswf::kOrbit * o,
                            Q + pswf::kOrbit * pswf::kOrbit * o, size[o], yt, index_t(1), index_t(kRows),
                            feat + pswf::kOrbit * o);
  }
  from_pixel_major(yt, F, nb, y, F);
}

template <typename T>
inline __attribute__((always_inline)) void unfold_tile(const T* y, index_t F, int nb, const int* pix,
                                                       const T* Q, const int* size, const int* feat,
                                                       index_t O, T* img, index_t npix, T* xt, T* yt) {
  to_pixel_major(y, F, F, nb, yt);
  std::fill(xt, xt + npix * kRows, T(0));  // pixels of no orbit
  for (index_t o = 0; o < O; ++o)
    pswf::unfold_orbit<kRows>(yt, index_t(1), index_t(kRows), kRows, feat + pswf::kOrbit * o,
                              Q + pswf::kOrbit * pswf::kOrbit * o, size[o], xt, index_t(1), index_t(kRows),
                              pix + pswf::kOrbit * o);
  from_pixel_major(xt, npix, nb, img, npix);
}

#define ORBITCORE_TILE_FNS(T, SUF)                                                                      \
  ORBITCORE_CLONES void fold_tile_##SUF(const T* img, index_t npix, int nb, const int* pix, const T* Q,   \
                                        const int* size, const int* feat, index_t O, T* y, index_t F,      \
                                        T* xt, T* yt) {                                                    \
    fold_tile<T>(img, npix, nb, pix, Q, size, feat, O, y, F, xt, yt);                                     \
  }                                                                                                        \
  ORBITCORE_CLONES void unfold_tile_##SUF(const T* y, index_t F, int nb, const int* pix, const T* Q,      \
                                          const int* size, const int* feat, index_t O, T* img,             \
                                          index_t npix, T* xt, T* yt) {                                    \
    unfold_tile<T>(y, F, nb, pix, Q, size, feat, O, img, npix, xt, yt);                                   \
  }                                                                                                        \
  inline void fold_tile_any(const T* img, index_t npix, int nb, const int* pix, const T* Q, const int* size, \
                            const int* feat, index_t O, T* y, index_t F, T* xt, T* yt) {                    \
    fold_tile_##SUF(img, npix, nb, pix, Q, size, feat, O, y, F, xt, yt);                                  \
  }                                                                                                        \
  inline void unfold_tile_any(const T* y, index_t F, int nb, const int* pix, const T* Q, const int* size,   \
                              const int* feat, index_t O, T* img, index_t npix, T* xt, T* yt) {             \
    unfold_tile_##SUF(y, F, nb, pix, Q, size, feat, O, img, npix, xt, yt);                                \
  }
ORBITCORE_TILE_FNS(float, f32)
ORBITCORE_TILE_FNS(double, f64)
#undef ORBITCORE_TILE_FNS

// Rows in blocks of kRows over the threads, each thread with its own tile buffers:
// tile(b0, nb, xt, yt) handles rows [b0, b0 + nb).
template <typename T, typename Tile>
void for_each_row_block(index_t B, index_t npix, index_t F, int num_threads, Tile tile) {
  const int nt = resolve_threads(num_threads);
  const index_t blocks = (B + kRows - 1) / kRows;
#pragma omp parallel num_threads(nt)
  {
    std::vector<T> xt(static_cast<std::size_t>(npix * kRows)), yt(static_cast<std::size_t>(F * kRows));
#pragma omp for schedule(static)
    for (index_t blk = 0; blk < blocks; ++blk) {
      const index_t b0 = blk * kRows;
      tile(b0, static_cast<int>(std::min<index_t>(kRows, B - b0)), xt.data(), yt.data());
    }
  }
}

template <typename T>
void pswf_fold(const T* img, index_t B, index_t npix, const int* pix, const T* Q, const int* size,
               const int* feat, index_t O, T* y, index_t F, int num_threads) {
  for_each_row_block<T>(B, npix, F, num_threads, [&](index_t b0, int nb, T* xt, T* yt) {
    fold_tile_any(img + b0 * npix, npix, nb, pix, Q, size, feat, O, y + b0 * F, F, xt, yt);
  });
}

template <typename T>
void pswf_unfold(const T* y, index_t B, index_t F, const int* pix, const T* Q, const int* size,
                 const int* feat, index_t O, T* img, index_t npix, int num_threads) {
  for_each_row_block<T>(B, npix, F, num_threads, [&](index_t b0, int nb, T* xt, T* yt) {
    unfold_tile_any(y + b0 * F, F, nb, pix, Q, size, feat, O, img + b0 * npix, npix, xt, yt);
  });
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
