// The EM E-step on the CPU (see em.hpp for the contract, ../em.hpp for the math). This file is
// included by one translation unit per instruction set (em_simd_*.cpp), each compiled with its
// own target flags; it must only contain internal-linkage code and the always-inline element
// math of ../em.hpp.
//
// The including file defines ORBITCORE_SIMD_NS and the register geometry: VL_F / VL_D lanes per
// vector, MV vectors of rotations per tile, PT patches per tile.
//
// Scheme. The projections are packed pixel-major (G[q][w], rotations padded to a multiple of the
// tile width W = VL * MV), and the score offsets bias[k][w] = -|C T_k Z g_w|^2 / (2 s^2) +
// log rho[k] - log K once per call. Each thread owns a contiguous range of patch tiles (static
// partition: results do not depend on scheduling) and, per tile of PT patches:
//   pass 1  for every displacement k and rotation block, the correlation tile (PT x W) over the
//           k-list, turned into scores and stored in the tile's score buffer S[p][k][w]
//           (PT * D * Kpad values, ~4 MB for L = 11, K = 552), with running lane-wise maxima;
//   pass 2  per patch, e = exp(s - max) in place and its sum: the log-sum-exp (eq. 23), the
//           log-evidence, the empty-state posterior, and 1 / Z;
//   pass 3  weights w = e c_p / Z per rotation block; blocks whose weights all underflowed to 0
//           are skipped (exactly: they add nothing); the rest add into the shift weights (float64)
//           and back-project the tile's patches into H[q][w] (float32 within the tile, then added
//           into the thread's float64 accumulator).
// No (patches x shifts x rotations) array exists beyond one tile's S. The thread accumulators
// are summed in thread order at the end.
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <new>

#include "../em.hpp"

namespace orbitcore {
namespace cpu {
namespace ORBITCORE_SIMD_NS {
namespace {

template <typename T, int VL>
struct Vec {
  typedef T type __attribute__((vector_size(VL * sizeof(T))));
};
template <typename T>
struct IntLane;
template <>
struct IntLane<float> {
  using type = std::int32_t;
};
template <>
struct IntLane<double> {
  using type = std::int64_t;
};

// 64-byte aligned, zero-initialised scratch array.
template <typename T>
class Scratch {
 public:
  explicit Scratch(std::size_t n) : n_(n) {
    p_ = static_cast<T*>(::operator new(sizeof(T) * (n ? n : 1), std::align_val_t(64)));
    std::memset(static_cast<void*>(p_), 0, sizeof(T) * n);
  }
  ~Scratch() { ::operator delete(p_, std::align_val_t(64)); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  T* data() { return p_; }
  const T* data() const { return p_; }
  std::size_t size() const { return n_; }

 private:
  T* p_;
  std::size_t n_;
};

template <typename T, int VL>
ORBITCORE_FORCEINLINE T hsum(const typename Vec<T, VL>::type& v) {
  T a[VL];
  std::memcpy(a, &v, sizeof(a));
  T s = T(0);
  for (int i = 0; i < VL; ++i) s += a[i];
  return s;
}
template <typename T, int VL>
ORBITCORE_FORCEINLINE T hmax(const typename Vec<T, VL>::type& v) {
  T a[VL];
  std::memcpy(a, &v, sizeof(a));
  T s = a[0];
  for (int i = 1; i < VL; ++i) s = a[i] > s ? a[i] : s;
  return s;
}

// The underflow threshold of exp_nonpositive (exp(x) is exactly 0 for x < lo).
template <typename T>
struct ExpLo {
  static constexpr T value = em::ExpConst<T>::lo;
};

// dst[0..VL) += v, widened to double.
template <typename T, int VL>
ORBITCORE_FORCEINLINE void add_widened(double* dst, const typename Vec<T, VL>::type& v) {
  if constexpr (sizeof(T) == sizeof(double)) {
    typename Vec<double, VL>::type d;
    em::vload(d, dst);
    em::vstore(dst, d + v);
  } else {
    using VH = typename Vec<T, VL / 2>::type;
    using VD = typename Vec<double, VL / 2>::type;
    VH h[2];
    std::memcpy(h, &v, sizeof(h));
    for (int i = 0; i < 2; ++i) {
      VD d;
      em::vload(d, dst + i * (VL / 2));
      em::vstore(dst + i * (VL / 2), d + __builtin_convertvector(h[i], VD));
    }
  }
}

template <typename T, int VL, int MV, int PT, int MH>
void estep(const EStepArgs<T>& a, int threads) {
  using V = typename Vec<T, VL>::type;
  using VI = typename Vec<typename IntLane<T>::type, VL>::type;
  constexpr int W = VL * MV;
  const int L = a.L, LL = L * L, D = em::shift_count(L);
  const index_t P = a.P, K = a.K;
  const index_t Kp = ((K + W - 1) / W) * W, NB = Kp / W;
  const T c2 = static_cast<T>(2.0 * a.inv2s2);
  const double logK = std::log(static_cast<double>(K));
  const double s_empty = static_cast<double>(a.log_prior[D]);
  const T pad_score = static_cast<T>(-1e30);

  std::memset(a.shift_weights, 0, sizeof(double) * static_cast<std::size_t>(K * D));
  std::memset(a.backprojection, 0, sizeof(double) * static_cast<std::size_t>(K * LL));
  if (P == 0) return;

  // Shared, read-only, by rotation block b of W lanes: projections pixel-major Gb[b][q][W] (one
  // block is L^2 W values, L1-resident while its shifts are swept) and score offsets
  // bias[b][k][W] (rotation padding: a score far below any real one).
  Scratch<T> Gb(static_cast<std::size_t>(NB) * LL * W);
  Scratch<T> bias(static_cast<std::size_t>(NB) * D * W);
  for (index_t w = 0; w < K; ++w)
    for (int q = 0; q < LL; ++q) Gb.data()[((w / W) * LL + q) * W + w % W] = a.projections[w * LL + q];
  for (int k = 0; k < D; ++k) {
    const double lp = static_cast<double>(a.log_prior[k]) - logK;
    for (index_t w = 0; w < Kp; ++w)
      bias.data()[((w / W) * D + k) * W + w % W] =
          w < K ? static_cast<T>(-static_cast<double>(a.norms[w * D + k]) * a.inv2s2 + lp) : pad_score;
  }

  const index_t ntiles = (P + PT - 1) / PT;
  // `threads` comes from the dispatcher (cpu/em.cpp), which sizes it to the work.
  int nt = threads;
  if (nt > ntiles) nt = static_cast<int>(ntiles);
  if (nt < 1) nt = 1;
  Scratch<double*> Wacc(static_cast<std::size_t>(nt)), Hacc(static_cast<std::size_t>(nt));
  const T lo = ExpLo<T>::value;

#pragma omp parallel num_threads(nt)
  {
    const int tid = omp_get_thread_num(), nth = omp_get_num_threads();
    const index_t t_begin = ntiles * tid / nth, t_end = ntiles * (tid + 1) / nth;
    // Per thread: the tile's scores S[p][b][k][W] and block maxima bmax[p][b][k]; the tile's
    // back-projection H[b][q][W] (T) and the thread's float64 accumulators W64[b][k][W] and
    // H64[b][q][W]; per-shift sums of weights zacc[k][VL].
    Scratch<T> S(static_cast<std::size_t>(PT) * NB * D * W);
    Scratch<T> bmax(static_cast<std::size_t>(PT) * NB * D);
    Scratch<T> H(static_cast<std::size_t>(NB) * LL * W);
    Scratch<T> Ipm(static_cast<std::size_t>(LL) * PT);
    Scratch<T> zacc(static_cast<std::size_t>(D) * VL);
    Scratch<double> W64(static_cast<std::size_t>(NB) * D * W);
    Scratch<double> H64(static_cast<std::size_t>(NB) * LL * W);
    Wacc.data()[tid] = W64.data();
    Hacc.data()[tid] = H64.data();
    const V ninf = V{} + (-std::numeric_limits<T>::infinity());
    auto Sblk = [&](int p, index_t b, int k) { return S.data() + ((static_cast<index_t>(p) * NB + b) * D + k) * W; };
    auto Bmax = [&](int p, index_t b, int k) -> T& { return bmax.data()[(static_cast<index_t>(p) * NB + b) * D + k]; };

    for (index_t tile = t_begin; tile < t_end; ++tile) {
      const index_t p0 = tile * PT;
      const int np = static_cast<int>(P - p0 < PT ? P - p0 : PT);
      // Pack the tile's patches pixel-major (absent patches are zeros) and their energies.
      double energy[PT];
      for (int p = 0; p < PT; ++p) {
        energy[p] = 0.0;
        for (int q = 0; q < LL; ++q) {
          const T v = p < np ? a.patches[(p0 + p) * LL + q] : T(0);
          Ipm.data()[q * PT + p] = v;
          energy[p] += static_cast<double>(v) * static_cast<double>(v);
        }
      }

      // Pass 1: scores (eq. 24), lane-wise maxima and block maxima.
      V vm[PT][MV];
      for (int p = 0; p < PT; ++p)
        for (int v = 0; v < MV; ++v) vm[p][v] = ninf;
      for (index_t b = 0; b < NB; ++b) {
        const T* Gblk = Gb.data() + b * LL * W;
        const T* bb = bias.data() + b * D * W;
        for (int k = 0; k < D; ++k) {
          const int* list = a.klist + a.kstart[k];
          const int n = a.kstart[k + 1] - a.kstart[k];
          int d0, d1;
          em::displacement(k, L, d0, d1);
          const int off = em::pixel_offset(d0, d1, L);
          V acc[PT][MV];
          for (int p = 0; p < PT; ++p)
            for (int v = 0; v < MV; ++v) acc[p][v] = V{};
#ifndef EM_SKIP_FWD
          em::correlate_tile<T, V, PT, MV, VL>(acc, Ipm.data(), Gblk, W, list, n, off);
#endif
          V bv[MV];
          for (int v = 0; v < MV; ++v) em::vload(bv[v], bb + k * W + v * VL);
          for (int p = 0; p < PT; ++p) {
            T* srow = Sblk(p, b, k);
            V bm = ninf;
            for (int v = 0; v < MV; ++v) {
              const V s = em::score(acc[p][v], c2, bv[v]);
              em::vstore(srow + v * VL, s);
              bm = em::vmax(bm, s);
            }
            for (int v = 0; v < MV; ++v) vm[p][v] = em::vmax(vm[p][v], bm);
            Bmax(p, b, k) = hmax<T, VL>(bm);
          }
        }
      }

      // Pass 2: log-sum-exp per patch (eq. 23); weights e = exp(s - max) in place. Blocks whose
      // maximum is below the underflow threshold are exactly zero: not computed.
      T scale[PT], mt[PT];
      for (int p = 0; p < PT; ++p) {
        scale[p] = T(0);
        mt[p] = T(0);
        if (p >= np) continue;
        V mv = vm[p][0];
        for (int v = 1; v < MV; ++v) mv = em::vmax(mv, vm[p][v]);
        double m = static_cast<double>(hmax<T, VL>(mv));
        if (s_empty > m) m = s_empty;
        mt[p] = static_cast<T>(m);
        const V mvec = V{} + mt[p];
        std::memset(static_cast<void*>(zacc.data()), 0, sizeof(T) * static_cast<std::size_t>(D) * VL);
        for (index_t b = 0; b < NB; ++b) {
          for (int k = 0; k < D; ++k) {
            if (Bmax(p, b, k) - mt[p] < lo) continue;
            T* srow = Sblk(p, b, k);
            V zs;
            em::vload(zs, zacc.data() + k * VL);
            for (int v = 0; v < MV; ++v) {
              V s;
              em::vload(s, srow + v * VL);
#ifndef EM_SKIP_EXP
              const V e = em::exp_nonpositive<T, V, VI>(s - mvec);
#else
              const V e = s - mvec;
#endif
              em::vstore(srow + v * VL, e);
              zs += e;
            }
            em::vstore(zacc.data() + k * VL, zs);
          }
        }
        double Z = 0.0;
        const index_t pg = p0 + p;
        for (int k = 0; k < D; ++k) {
          V zs;
          em::vload(zs, zacc.data() + k * VL);
          const double zk = static_cast<double>(hsum<T, VL>(zs));
          if (a.shift_posterior) a.shift_posterior[pg * D + k] = zk;
          Z += zk;
        }
        // the scores were shifted by the float max mt: the empty state's weight likewise
        const double e_empty = std::exp(s_empty - static_cast<double>(mt[p]));
        Z += e_empty;
        const double lse = static_cast<double>(mt[p]) + std::log(Z);
        const double cp = a.patch_weights ? static_cast<double>(a.patch_weights[pg]) : 1.0;
        scale[p] = static_cast<T>(cp / Z);
        a.log_evidence[pg] = em::log_evidence(lse, energy[p], a.inv2s2, L);
        a.empty_posterior[pg] = e_empty / Z;
        if (a.shift_posterior)
          for (int k = 0; k < D; ++k) a.shift_posterior[pg * D + k] /= Z;
      }

      // Pass 3: statistics (eq. 30-37): per rotation block, per shift, the weights c_p e / Z of the
      // significant patches; the back-projection runs in sub-blocks of MH vectors, so that the
      // sub-block of H it updates (L^2 MH VL values) stays in L1 while the shifts are swept.
      for (index_t b = 0; b < NB; ++b) {
        double* Wblk = W64.data() + b * D * W;
        for (int k = 0; k < D; ++k) {
          bool sig[PT], any = false;
          for (int p = 0; p < PT; ++p) {
            sig[p] = p < np && Bmax(p, b, k) - mt[p] >= lo;
            any = any || sig[p];
          }
          if (!any) continue;
          V tot[MV];
          for (int v = 0; v < MV; ++v) tot[v] = V{};
          for (int p = 0; p < PT; ++p) {
            if (!sig[p]) continue;
            T* srow = Sblk(p, b, k);
            for (int v = 0; v < MV; ++v) {
              V w;
              em::vload(w, srow + v * VL);
              w *= scale[p];
              em::vstore(srow + v * VL, w);
              tot[v] += w;
            }
          }
          for (int v = 0; v < MV; ++v) add_widened<T, VL>(Wblk + k * W + v * VL, tot[v]);
        }
        for (int h = 0; h < MV; h += MH) {
          T* Hblk = H.data() + b * LL * W + h * VL;
          for (int k = 0; k < D; ++k) {
            bool sig[PT], any = false;
            for (int p = 0; p < PT; ++p) {
              sig[p] = p < np && Bmax(p, b, k) - mt[p] >= lo;
              any = any || sig[p];
            }
            const int n = a.kstart[k + 1] - a.kstart[k];
            if (!any || n == 0) continue;
            V w[PT][MH];
            for (int p = 0; p < PT; ++p) {
              const T* srow = Sblk(p, b, k) + h * VL;
              for (int v = 0; v < MH; ++v) {
                if (sig[p])
                  em::vload(w[p][v], srow + v * VL);
                else
                  w[p][v] = V{};
              }
            }
            int d0, d1;
            em::displacement(k, L, d0, d1);
            const int off = em::pixel_offset(d0, d1, L);
#ifndef EM_SKIP_BP
            em::backproject_tile<T, V, PT, MH, VL>(w, Ipm.data(), Hblk, W, a.klist + a.kstart[k], n, off);
#endif
          }
        }
      }
      // The tile's back-projection into the float64 accumulator.
      for (index_t i = 0; i < NB * LL * W; i += VL) {
        V h;
        em::vload(h, H.data() + i);
        add_widened<T, VL>(H64.data() + i, h);
      }
      std::memset(static_cast<void*>(H.data()), 0, sizeof(T) * static_cast<std::size_t>(NB) * LL * W);
    }
#pragma omp barrier
    // Sum the threads' accumulators in thread order, parallel over rotations.
#pragma omp for schedule(static)
    for (index_t w = 0; w < K; ++w) {
      const index_t b = w / W, lane = w % W;
      for (int k = 0; k < D; ++k) {
        double s = 0.0;
        for (int t = 0; t < nth; ++t) s += Wacc.data()[t][(b * D + k) * W + lane];
        a.shift_weights[w * D + k] = s;
      }
      for (int q = 0; q < LL; ++q) {
        double s = 0.0;
        for (int t = 0; t < nth; ++t) s += Hacc.data()[t][(b * LL + q) * W + lane];
        a.backprojection[w * LL + q] = s;
      }
    }
  }  // the thread scratch (and the accumulators) are released after the region's last barrier
}

}  // namespace

void estep_f(const EStepArgs<float>& args, int nt) { estep<float, VL_F, MV_EM, PT_EM, MH_EM>(args, nt); }
void estep_d(const EStepArgs<double>& args, int nt) { estep<double, VL_D, MV_EM, PT_EM, MH_EM>(args, nt); }

}  // namespace ORBITCORE_SIMD_NS
}  // namespace cpu
}  // namespace orbitcore
