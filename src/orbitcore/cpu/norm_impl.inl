// The norm family's CPU drivers (see norm.hpp for the contract, ../norm.hpp for the math). This
// file is included by one translation unit per instruction set (norm_simd_*.cpp), each compiled
// with its own target flags, and defines the drivers in namespace ORBITCORE_SIMD_NS; norm.cpp
// chooses one at run time. The pooled passes do ~12 operations per element and gain from wide
// vectors; the plain ones are bound by memory traffic.
//
// Each pass over the (M, C) activations splits the rows (with pooling: the pooled rows) between
// the `nt` threads; the per-channel sums are private to a thread and added in thread order, so
// the result does not depend on scheduling.
//
// Like every unit compiled with wide-ISA flags, this code has internal linkage or is always
// inlined (no std::vector, no plain `inline` helpers): the linker must never pick a wide-ISA copy
// of a shared function for the other units. The argument checks and the thread count are the
// dispatcher's (norm.cpp).
#include <omp.h>

#include <cstdlib>
#include <new>

#include "../norm.hpp"
#include "norm_simd.hpp"

namespace orbitcore {
namespace cpu {
namespace ORBITCORE_SIMD_NS {
namespace {

// A zero-initialised heap array (internal linkage: see the top of the file).
template <typename U>
class Buffer {
 public:
  explicit Buffer(index_t n) : p_(static_cast<U*>(std::calloc(static_cast<std::size_t>(n > 0 ? n : 1), sizeof(U)))) {
    if (p_ == nullptr) throw std::bad_alloc();
  }
  ~Buffer() { std::free(p_); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  U* data() const { return p_; }
  U& operator[](index_t i) const { return p_[i]; }

 private:
  U* p_;
};

// Rows [lo, hi) of thread `tid` among `nt`.
inline void row_range(index_t M, int tid, int nt, index_t* lo, index_t* hi) {
  *lo = M * tid / nt;
  *hi = M * (tid + 1) / nt;
}

// One row of each pass, as functions of restrict pointers so that the compiler vectorises the
// channel loop (inside the OpenMP regions it would not: it cannot rule out aliasing there).
// The per-channel sums of a pass run in T over blocks of kBlock rows (vector-wide, no
// conversions in the loop) and are added to the double totals after each block.
constexpr index_t kBlock = 16;

template <typename T>
void stats_row(const T* __restrict x, const T* __restrict K, T* __restrict s1, T* __restrict s2, index_t C) {
  for (index_t c = 0; c < C; ++c) {
    const T d = x[c] - K[c];
    s1[c] += d;
    s2[c] += d * d;
  }
}

template <typename T>
void flush(T* __restrict part, double* __restrict total, index_t n) {
  for (index_t i = 0; i < n; ++i) {
    total[i] += static_cast<double>(part[i]);
    part[i] = T(0);
  }
}

template <typename T>
void forward_row(const T* __restrict x, const T* __restrict A, const T* __restrict B, T* __restrict y, index_t C) {
  for (index_t c = 0; c < C; ++c) y[c] = norm::forward_value(x[c], A[c], B[c]);
}

template <typename T>
void grad_sums_row(const T* __restrict dy, const T* __restrict x, const T* __restrict A, const T* __restrict B,
                   const T* __restrict Mu, const T* __restrict S, T* __restrict t1, T* __restrict t2, index_t C) {
  for (index_t c = 0; c < C; ++c) {
    const T dz = norm::gated_grad(dy[c], x[c], A[c], B[c]);
    t1[c] += dz;
    t2[c] += dz * ((x[c] - Mu[c]) * S[c]);
  }
}

template <typename T>
void input_grad_row(const T* __restrict dy, const T* __restrict x, const T* __restrict A, const T* __restrict B,
                    const T* __restrict Mu, const T* __restrict S, const T* __restrict K, const T* __restrict M1,
                    const T* __restrict M2, T* __restrict dx, index_t C) {
  for (index_t c = 0; c < C; ++c) {
    const T dz = norm::gated_grad(dy[c], x[c], A[c], B[c]);
    dx[c] = norm::input_grad(dz, (x[c] - Mu[c]) * S[c], K[c], M1[c], M2[c]);
  }
}

// Channel c's four pre-activations z_k = a x_k + b of the window.
#define ORBITCORE_WINDOW_Z(c) A[c] * x0[c] + B[c], A[c] * x1[c] + B[c], A[c] * x2[c] + B[c], A[c] * x3[c] + B[c]

template <typename T>
void pooled_forward_window(const T* __restrict x0, const T* __restrict x1, const T* __restrict x2,
                           const T* __restrict x3, const T* __restrict A, const T* __restrict B, T* __restrict y,
                           index_t C) {
  for (index_t c = 0; c < C; ++c) y[c] = norm::pooled_value(ORBITCORE_WINDOW_Z(c));
}

template <typename T>
void pooled_grad_sums_window(const T* __restrict g, const T* __restrict x0, const T* __restrict x1,
                             const T* __restrict x2, const T* __restrict x3, const T* __restrict A,
                             const T* __restrict B, const T* __restrict Mu, const T* __restrict S, T* __restrict t1,
                             T* __restrict t2, index_t C) {
  for (index_t c = 0; c < C; ++c) {
    T d0, d1, d2, d3;  // one of them at most is non-zero
    norm::pooled_gated_grads(g[c], ORBITCORE_WINDOW_Z(c), &d0, &d1, &d2, &d3);
    const T mu = Mu[c];
    t1[c] += (d0 + d1) + (d2 + d3);
    t2[c] += (d0 * (x0[c] - mu) + d1 * (x1[c] - mu) + d2 * (x2[c] - mu) + d3 * (x3[c] - mu)) * S[c];
  }
}

template <typename T>
void pooled_input_grad_window(const T* __restrict g, const T* __restrict x0, const T* __restrict x1,
                              const T* __restrict x2, const T* __restrict x3, const T* __restrict A,
                              const T* __restrict B, const T* __restrict Mu, const T* __restrict S,
                              const T* __restrict K, const T* __restrict M1, const T* __restrict M2, T* __restrict d0,
                              T* __restrict d1, T* __restrict d2, T* __restrict d3, index_t C) {
  for (index_t c = 0; c < C; ++c) {
    T z0, z1, z2, z3;
    norm::pooled_gated_grads(g[c], ORBITCORE_WINDOW_Z(c), &z0, &z1, &z2, &z3);
    const T mu = Mu[c], s = S[c], k = K[c], m1 = M1[c], m2 = M2[c];
    d0[c] = norm::input_grad(z0, (x0[c] - mu) * s, k, m1, m2);
    d1[c] = norm::input_grad(z1, (x1[c] - mu) * s, k, m1, m2);
    d2[c] = norm::input_grad(z2, (x2[c] - mu) * s, k, m1, m2);
    d3[c] = norm::input_grad(z3, (x3[c] - mu) * s, k, m1, m2);
  }
}
#undef ORBITCORE_WINDOW_Z

// A row outside every window (an odd last row or column): its dz is 0.
template <typename T>
void ungated_input_grad_row(const T* __restrict x, const T* __restrict Mu, const T* __restrict S,
                            const T* __restrict K, const T* __restrict M1, const T* __restrict M2, T* __restrict dx,
                            index_t C) {
  for (index_t c = 0; c < C; ++c) dx[c] = norm::input_grad(T(0), (x[c] - Mu[c]) * S[c], K[c], M1[c], M2[c]);
}

// Per-channel partial sums (T, 2C: S1 then S2) added into the thread's double totals every
// kBlock rows (or windows): short runs in the input's precision, long ones in double.
template <typename T>
class BlockedSums {
 public:
  BlockedSums(index_t C, double* total) : C_(C), total_(total), part_(2 * C) {}
  T* s1() { return part_.data(); }
  T* s2() { return part_.data() + C_; }
  // Call after each row; flushes every kBlock rows.
  void tick() {
    if (++count_ == kBlock) flush_now();
  }
  void flush_now() {
    flush(part_.data(), total_, 2 * C_);
    count_ = 0;
  }
  ~BlockedSums() { flush_now(); }

 private:
  index_t C_;
  double* total_;
  Buffer<T> part_;
  index_t count_ = 0;
};

// Rows [lo, hi) of a pass through `row(m, p1, p2)`, which adds row m's per-channel terms to the
// partial sums p1, p2; `tot` (2C doubles: S1 in [0, C), S2 in [C, 2C)) receives them.
template <typename T, typename Row>
void blocked_sums(index_t lo, index_t hi, index_t C, double* tot, Row row) {
  BlockedSums<T> acc(C, tot);
  for (index_t m = lo; m < hi; ++m) {
    row(m, acc.s1(), acc.s2());
    acc.tick();
  }
}

// Channel c's two sums over the threads' totals (added in thread order: deterministic).
void thread_totals(const Buffer<double>& sums, index_t C, int nt, index_t c, double* u1, double* u2) {
  *u1 = 0.0;
  *u2 = 0.0;
  for (int t = 0; t < nt; ++t) {
    *u1 += sums[2 * C * t + c];
    *u2 += sums[2 * C * t + C + c];
  }
}

}  // namespace

template <typename T>
void batch_norm_relu_forward(const T* x, index_t M, index_t C, const T* gamma, const T* beta, double eps, T* y,
                             T* mean, T* var, int num_threads, const norm::Pool2* pool) {
  const int nt = num_threads;
  Buffer<T> shift(C), a(C), b(C);
  for (index_t c = 0; c < C; ++c) shift[c] = x[c];  // the first row
  Buffer<double> sums(2 * C * nt);
  // the output pass runs over rows, or with pooling over pooled rows (Wo windows each)
  const index_t Ho = pool ? pool->H / 2 : 0, Wo = pool ? pool->W / 2 : 0;
  const index_t rows_out = pool ? pool->N * Ho : M;
#pragma omp parallel num_threads(nt)
  {
    // the team OpenMP really gave (at most nt): the rows are split between its members
    const int team = nt > 1 ? omp_get_num_threads() : 1, tid = nt > 1 ? omp_get_thread_num() : 0;
    index_t lo, hi;
    row_range(M, tid, team, &lo, &hi);
    const T* K = shift.data();
    blocked_sums<T>(lo, hi, C, sums.data() + 2 * C * tid,
                    [&](index_t m, T* p1, T* p2) { stats_row(x + m * C, K, p1, p2, C); });
#pragma omp barrier
#pragma omp single
    {
      for (index_t c = 0; c < C; ++c) {
        double t1, t2;
        thread_totals(sums, C, team, c, &t1, &t2);
        double mu, v;
        norm::finish_stats(static_cast<double>(K[c]), t1, t2, static_cast<double>(M), &mu, &v);
        const norm::ChannelCoef k = norm::channel_coef(mu, v, static_cast<double>(gamma[c]),
                                                       static_cast<double>(beta[c]), eps);
        mean[c] = static_cast<T>(mu);
        var[c] = static_cast<T>(v);
        a[c] = static_cast<T>(k.a);
        b[c] = static_cast<T>(k.b);
      }
    }  // implicit barrier
    const T* A = a.data();
    const T* Bc = b.data();
    row_range(rows_out, tid, team, &lo, &hi);
    if (pool == nullptr) {
      for (index_t m = lo; m < hi; ++m) forward_row(x + m * C, A, Bc, y + m * C, C);
    } else {
      const index_t WC = pool->W * C;
      for (index_t p = lo; p < hi; ++p) {
        const T* xr = x + norm::window_first_row(p, *pool) * C;
        for (index_t j = 0; j < Wo; ++j) {
          const T* x0 = xr + 2 * j * C;
          pooled_forward_window(x0, x0 + C, x0 + WC, x0 + WC + C, A, Bc, y + (p * Wo + j) * C, C);
        }
      }
    }
  }
}

template <typename T>
void batch_norm_relu_backward(const T* dy, const T* x, index_t M, index_t C, const T* gamma, const T* beta,
                              const T* mean, const T* var, double eps, T* dx, T* dgamma, T* dbeta,
                              int num_threads, const norm::Pool2* pool) {
  const int nt = num_threads;
  Buffer<T> a(C), b(C), s(C), k(C), m1(C), m2(C);
  for (index_t c = 0; c < C; ++c) {
    const norm::ChannelCoef q = norm::channel_coef(static_cast<double>(mean[c]), static_cast<double>(var[c]),
                                                   static_cast<double>(gamma[c]), static_cast<double>(beta[c]), eps);
    a[c] = static_cast<T>(q.a);
    b[c] = static_cast<T>(q.b);
    s[c] = static_cast<T>(q.s);
    k[c] = static_cast<T>(static_cast<double>(gamma[c]) * q.s);
  }
  const index_t H = pool ? pool->H : 0, W = pool ? pool->W : 0, Ho = H / 2, Wo = W / 2;
  const index_t rows = pool ? pool->N * Ho : M;  // both passes run over rows, or pooled rows
  const index_t WC = W * C;
  Buffer<double> sums(2 * C * nt);
#pragma omp parallel num_threads(nt)
  {
    // the team OpenMP really gave (at most nt): the rows are split between its members
    const int team = nt > 1 ? omp_get_num_threads() : 1, tid = nt > 1 ? omp_get_thread_num() : 0;
    index_t lo, hi;
    row_range(rows, tid, team, &lo, &hi);
    const T *A = a.data(), *Bc = b.data(), *Mu = mean, *S = s.data();
    double* tot = sums.data() + 2 * C * tid;
    if (pool == nullptr) {
      blocked_sums<T>(lo, hi, C, tot, [&](index_t m, T* p1, T* p2) {  // Σ dz, Σ dz x̂
        grad_sums_row(dy + m * C, x + m * C, A, Bc, Mu, S, p1, p2, C);
      });
    } else {  // only each window's winner has dz != 0
      BlockedSums<T> acc(C, tot);
      for (index_t p = lo; p < hi; ++p) {
        const T* xr = x + norm::window_first_row(p, *pool) * C;
        for (index_t j = 0; j < Wo; ++j) {
          const T* x0 = xr + 2 * j * C;
          pooled_grad_sums_window(dy + (p * Wo + j) * C, x0, x0 + C, x0 + WC, x0 + WC + C, A, Bc, Mu, S, acc.s1(),
                                  acc.s2(), C);
          acc.tick();
        }
      }
    }
#pragma omp barrier
#pragma omp single
    {
      for (index_t c = 0; c < C; ++c) {
        double u1, u2;
        thread_totals(sums, C, team, c, &u1, &u2);
        dbeta[c] = static_cast<T>(u1);
        dgamma[c] = static_cast<T>(u2);
        m1[c] = static_cast<T>(u1 / static_cast<double>(M));
        m2[c] = static_cast<T>(u2 / static_cast<double>(M));
      }
    }  // implicit barrier
    if (dx != nullptr) {
      const T *K = k.data(), *M1 = m1.data(), *M2 = m2.data();
      if (pool == nullptr) {
        for (index_t m = lo; m < hi; ++m)
          input_grad_row(dy + m * C, x + m * C, A, Bc, Mu, S, K, M1, M2, dx + m * C, C);
      } else {
        for (index_t p = lo; p < hi; ++p) {
          const index_t n = p / Ho, i = p - n * Ho;
          const index_t r0 = norm::window_first_row(p, *pool);
          for (index_t j = 0; j < Wo; ++j) {
            const index_t o = (r0 + 2 * j) * C;
            pooled_input_grad_window(dy + (p * Wo + j) * C, x + o, x + o + C, x + o + WC, x + o + WC + C, A, Bc, Mu,
                                     S, K, M1, M2, dx + o, dx + o + C, dx + o + WC, dx + o + WC + C, C);
          }
          if (W % 2) {  // the dropped last column of both input rows
            const index_t o = (r0 + W - 1) * C;
            ungated_input_grad_row(x + o, Mu, S, K, M1, M2, dx + o, C);
            ungated_input_grad_row(x + o + WC, Mu, S, K, M1, M2, dx + o + WC, C);
          }
          if (H % 2 && i == Ho - 1) {  // the dropped last row of image n
            const index_t o = (n * H + H - 1) * W * C;
            for (index_t w = 0; w < W; ++w) ungated_input_grad_row(x + o + w * C, Mu, S, K, M1, M2, dx + o + w * C, C);
          }
        }
      }
    }
  }
}

template void batch_norm_relu_forward<float>(NORM_FORWARD_ARGS(float));
template void batch_norm_relu_forward<double>(NORM_FORWARD_ARGS(double));
template void batch_norm_relu_backward<float>(NORM_BACKWARD_ARGS(float));
template void batch_norm_relu_backward<double>(NORM_BACKWARD_ARGS(double));

}  // namespace ORBITCORE_SIMD_NS
}  // namespace cpu
}  // namespace orbitcore
