// Blocked gathered SYRK of the moments family (see moments.hpp for the contract). This file is
// included by one translation unit per instruction set (moments_simd_*.cpp), each compiled
// with its own target flags; it must only use internal-linkage code and the always-inline
// element math of ../moments.hpp, so that no code compiled for a wider ISA can be shared with
// (and run on behalf of) another translation unit.
//
// The including file defines ORBITCORE_SIMD_NS (a namespace name) and, for float and double,
// the register geometry: VL (lanes per vector), MV (vectors per tile row block), NR (columns
// broadcast per step). Tiles are W = VL * MV rows by NR columns.
//
// Scheme (Goto-style, specialised to a symmetric product of one gathered operand), by rounds
// of as many KC-sample chunks as fit the caller's workspace (two barriers per round):
//     pack      y_b (gathered through `cols`) twice, in parallel over samples: row tiles
//               apack[chunk][tile][b][W] and column micro-panels bpack[chunk][panel][b][NR]
//               (both zero-padded); column sums into s from the packed rows;
//     compute   in parallel over row blocks of MC tiles (dynamic: blocks near the top of the
//               triangle have more work; a block owns its rows of G across all chunks): per
//               chunk, for each NR-column micro-panel at or right of the
//               block's first row (it stays in L1), for each W-row tile of the block that
//               reaches the triangle (streamed from L2, prefetched), the micro-kernel keeps a
//               W x NR tile in registers over the KC samples (moments::rank1_tile: one vector
//               load per VL rows, one broadcast per column, MV x NR FMAs) and adds it once into
//               G, transposed (row j of G receives the tile's column j: contiguous vector
//               stores), widened to the accumulator precision; the tile's lines of G are
//               prefetched when the micro-kernel starts.
// Each entry of G is written by exactly one thread per block in a fixed order: results do not
// depend on scheduling. KC = 384 and the register shapes were tuned on a Cascade Lake core
// (AVX-512: ~75% of MKL's SGEMM flop rate per core, on half the flops of a full GEMM).
#include <omp.h>

#include <cstdint>
#include <cstring>

#include "../moments.hpp"

namespace orbitcore {
namespace cpu {
namespace ORBITCORE_SIMD_NS {
namespace {

constexpr index_t KC = 384;  // samples per block (A panel: KC x W, L1/L2 resident)
constexpr index_t MC = 4;    // tiles per row block (the block's panels stay in L2)

template <typename T, int VL>
struct Vec {
  typedef T type __attribute__((vector_size(VL * sizeof(T))));
};

// Unaligned vector load/store (by reference: no vector-typed return values crossing a
// function boundary, whose ABI would depend on the target flags).
template <typename V>
ORBITCORE_FORCEINLINE void vload(V& v, const void* p) {
  std::memcpy(&v, p, sizeof(V));
}
template <typename V>
ORBITCORE_FORCEINLINE void vstore(void* p, const V& v) {
  std::memcpy(p, &v, sizeof(V));
}

inline index_t imin(index_t a, index_t b) { return a < b ? a : b; }

// W x NR register tile over kc samples, added into G (transposed storage: row J + j of G
// receives the tile's column j, rows I..I+W, as contiguous vectors).
//   A: the rows' packed tile (kc x W); Bp: the columns' packed micro-panel (kc x NR).
// All register-array indices are compile-time constants (no spills to the stack).
template <typename T, typename Tacc, int VL, int MV, int NR>
ORBITCORE_FORCEINLINE void micro_kernel(const T* __restrict A, const T* __restrict Bp, index_t kc,
                                        Tacc* __restrict G, index_t ld, index_t I, index_t J,
                                        index_t p) {
  using V = typename Vec<T, VL>::type;
  constexpr int W = VL * MV;
  const bool full = I + W <= p && J + NR <= p;
  // The tile's lines of G are needed only at the end: request them now (G is far larger than
  // the caches), so that the misses overlap the register loop instead of stalling the flush.
  if (full) {
    constexpr int kLine = 64 / static_cast<int>(sizeof(Tacc));
    for (int j = 0; j < NR; ++j)
      for (int l = 0; l < W; l += kLine) __builtin_prefetch(G + (J + j) * ld + I + l, 1, 3);
  }
  V acc[MV][NR];
  for (int v = 0; v < MV; ++v)
    for (int j = 0; j < NR; ++j) acc[v][j] = V{};
  for (index_t r = 0; r < kc; ++r) {
    V a[MV];
    for (int v = 0; v < MV; ++v) vload(a[v], A + r * W + v * VL);
    // The rows' panel streams from L2: fetch a few rows ahead (every line of the row).
    for (int l = 0; l < W; l += 64 / static_cast<int>(sizeof(T))) __builtin_prefetch(A + (r + 8) * W + l, 0, 3);
    moments::rank1_tile<V, T, MV, NR>(acc, a, Bp + r * NR);
  }
  if (full) {
    for (int j = 0; j < NR; ++j) {
      Tacc* row = G + (J + j) * ld + I;
      for (int v = 0; v < MV; ++v) {
        if constexpr (sizeof(Tacc) == sizeof(T)) {
          V g;
          vload(g, row + v * VL);
          vstore(row + v * VL, g + acc[v][j]);
        } else {
          // Widen in halves: VL/2 floats -> VL/2 doubles fills exactly one native register.
          using VH = typename Vec<T, VL / 2>::type;
          using VD = typename Vec<Tacc, VL / 2>::type;
          VH h[2];
          std::memcpy(h, &acc[v][j], sizeof(h));
          for (int k = 0; k < 2; ++k) {
            VD g;
            vload(g, row + v * VL + k * (VL / 2));
            vstore(row + v * VL + k * (VL / 2), g + __builtin_convertvector(h[k], VD));
          }
        }
      }
    }
  } else {
    T tile[NR][W];
    for (int j = 0; j < NR; ++j)
      for (int v = 0; v < MV; ++v) vstore(&tile[j][v * VL], acc[v][j]);
    const index_t nj = imin(NR, p - J), ni = imin(W, p - I);
    for (index_t j = 0; j < nj; ++j) {
      Tacc* row = G + (J + j) * ld + I;
      for (index_t i = 0; i < ni; ++i) row[i] += static_cast<Tacc>(tile[j][i]);
    }
  }
}

// Packing geometry: one chunk = KC samples of every column in both layouts; a round packs as
// many chunks as fit kPackBudget (at least one), so one pass over a round needs two barriers
// (after the pack, after the compute) whatever the number of chunks in it.
constexpr std::size_t kPackBudget = std::size_t(32) << 20;

template <typename T, int VL, int MV, int NR>
struct Geometry {
  static constexpr index_t W = VL * MV;
  index_t ntiles, npanels, a_chunk, b_chunk, chunks_per_round;
  Geometry(index_t B, index_t p) {
    ntiles = (p + W - 1) / W;
    npanels = (p + NR - 1) / NR;
    a_chunk = KC * ntiles * W;
    b_chunk = KC * npanels * NR;
    const index_t per_chunk = static_cast<index_t>(sizeof(T)) * (a_chunk + b_chunk);
    const index_t need = (B + KC - 1) / KC;
    index_t fit = static_cast<index_t>(kPackBudget) / (per_chunk > 0 ? per_chunk : 1);
    if (fit < 1) fit = 1;
    chunks_per_round = need < fit ? (need > 0 ? need : 1) : fit;
  }
  std::size_t bytes() const {
    return sizeof(T) * static_cast<std::size_t>(chunks_per_round * (a_chunk + b_chunk));
  }
};

template <typename T, typename Tacc, int VL, int MV, int NR>
void accumulate(const T* X, index_t B, index_t L, const std::int64_t* cols, index_t p, Tacc* G,
                Tacc* s, int nt, void* work) {
  constexpr index_t W = VL * MV;
  if (B <= 0 || p <= 0) return;
  const Geometry<T, VL, MV, NR> geo(B, p);
  const index_t ntiles = geo.ntiles, npanels = geo.npanels;
  const index_t nblocks = (ntiles + MC - 1) / MC;
  T* apack = static_cast<T*>(work);  // [chunk][tile][r][W]
  T* bpack = apack + geo.chunks_per_round * geo.a_chunk;  // [chunk][panel][r][NR]
  const index_t round = geo.chunks_per_round * KC;
  if (nt < 1) nt = 1;

  for (index_t s0 = 0; s0 < B; s0 += round) {
    const index_t sB = imin(round, B - s0);
    const index_t nch = (sB + KC - 1) / KC;
#pragma omp parallel num_threads(nt)
    {
      // Pack both layouts, sample rows in parallel (each sample row of X is read once):
      //   apack: rows of the register tile, streamed from L2;
      //   bpack: broadcast columns, L1-resident while a row block runs.
#pragma omp for schedule(static)
      for (index_t rs = 0; rs < sB; ++rs) {
        const index_t c = rs / KC, r = rs % KC;
        const T* x = X + (s0 + rs) * L;
        T* ac = apack + c * geo.a_chunk;
        T* bc = bpack + c * geo.b_chunk;
        for (index_t t = 0; t < ntiles; ++t) {
          T* dst = ac + (t * KC + r) * W;
          const index_t c0 = t * W;
          for (index_t l = 0; l < W; ++l) dst[l] = c0 + l < p ? x[cols[c0 + l]] : T(0);
        }
        for (index_t q = 0; q < npanels; ++q) {
          T* dst = bc + (q * KC + r) * NR;
          const index_t c0 = q * NR;
          for (index_t l = 0; l < NR; ++l) dst[l] = c0 + l < p ? x[cols[c0 + l]] : T(0);
        }
      }
      // (implicit barrier) Column sums, one tile per thread; each chunk summed in T, chunks
      // added in Tacc, in sample order.
#pragma omp for schedule(static) nowait
      for (index_t t = 0; t < ntiles; ++t) {
        Tacc part[W];
        for (index_t l = 0; l < W; ++l) part[l] = Tacc(0);
        for (index_t c = 0; c < nch; ++c) {
          const index_t kc = imin(KC, sB - c * KC);
          const T* src = apack + c * geo.a_chunk + t * KC * W;
          T chunk[W];
          for (index_t l = 0; l < W; ++l) chunk[l] = T(0);
          for (index_t r = 0; r < kc; ++r)
            for (index_t l = 0; l < W; ++l) chunk[l] += src[r * W + l];
          for (index_t l = 0; l < W; ++l) part[l] += static_cast<Tacc>(chunk[l]);
        }
        for (index_t l = 0; l < W && t * W + l < p; ++l) s[t * W + l] += part[l];
      }
      // The triangle: row blocks of MC tiles, dynamically scheduled; a block owns its rows of
      // G, so it runs every chunk of the round without further synchronisation. Inside, each
      // column micro-panel at or right of the block's first row is swept over the block's
      // tiles (that reach the triangle) while it sits in L1.
#pragma omp for schedule(dynamic, 1)
      for (index_t blk = 0; blk < nblocks; ++blk) {
        const index_t t0 = blk * MC, t1 = imin(ntiles, t0 + MC);
        const index_t I0 = t0 * W;
        for (index_t c = 0; c < nch; ++c) {
          const index_t kc = imin(KC, sB - c * KC);
          const T* ac = apack + c * geo.a_chunk;
          const T* bc = bpack + c * geo.b_chunk;
          for (index_t q = I0 / NR; q < npanels; ++q) {
            const index_t J = q * NR;
            const T* Bp = bc + q * KC * NR;
            for (index_t t = t0; t < t1; ++t) {
              const index_t I = t * W;
              if (J + NR - 1 < I) break;  // tile entirely above the diagonal (later tiles too)
              micro_kernel<T, Tacc, VL, MV, NR>(ac + t * KC * W, Bp, kc, G, p, I, J, p);
            }
          }
        }
      }
    }  // (end of the region: the next round may overwrite the packs)
  }
}

}  // namespace

std::size_t workspace_bytes_f(index_t B, index_t p) { return Geometry<float, VL_F, MV_F, NR_F>(B, p).bytes(); }
std::size_t workspace_bytes_d(index_t B, index_t p) { return Geometry<double, VL_D, MV_D, NR_D>(B, p).bytes(); }

void accumulate_ff(const float* X, index_t B, index_t L, const std::int64_t* cols, index_t p,
                   float* G, float* s, int nt, void* work) {
  accumulate<float, float, VL_F, MV_F, NR_F>(X, B, L, cols, p, G, s, nt, work);
}
void accumulate_fd(const float* X, index_t B, index_t L, const std::int64_t* cols, index_t p,
                   double* G, double* s, int nt, void* work) {
  accumulate<float, double, VL_F, MV_F, NR_F>(X, B, L, cols, p, G, s, nt, work);
}
void accumulate_dd(const double* X, index_t B, index_t L, const std::int64_t* cols, index_t p,
                   double* G, double* s, int nt, void* work) {
  accumulate<double, double, VL_D, MV_D, NR_D>(X, B, L, cols, p, G, s, nt, work);
}

}  // namespace ORBITCORE_SIMD_NS
}  // namespace cpu
}  // namespace orbitcore
