// CPU drivers of the norm family: each pass over the (M, C) activations splits the rows between
// the threads; the per-channel sums are private to a thread and added in thread order, so the
// result does not depend on scheduling. Element math: ../norm.hpp.
#include "norm.hpp"

#include <vector>

#include "../norm.hpp"
#include "parallel.hpp"

namespace orbitcore {
namespace cpu {
namespace {

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

// Rows [lo, hi) of a pass through `row(m, p1, p2)`, which adds row m's per-channel terms to the
// partial sums p1, p2 (T, C each); these are added into the thread's double totals tot (S1 in
// [0, C), S2 in [C, 2C)) every kBlock rows.
template <typename T, typename Row>
void blocked_sums(index_t lo, index_t hi, index_t C, double* tot, Row row) {
  std::vector<T> part(static_cast<std::size_t>(2 * C), T(0));
  for (index_t m0 = lo; m0 < hi; m0 += kBlock) {
    const index_t m1 = m0 + kBlock < hi ? m0 + kBlock : hi;
    for (index_t m = m0; m < m1; ++m) row(m, part.data(), part.data() + C);
    flush(part.data(), tot, 2 * C);
  }
}

// Channel c's two sums over the threads' totals (added in thread order: deterministic).
inline void thread_totals(const std::vector<double>& sums, index_t C, int nt, index_t c, double* u1, double* u2) {
  *u1 = 0.0;
  *u2 = 0.0;
  for (int t = 0; t < nt; ++t) {
    *u1 += sums[static_cast<std::size_t>(2 * C * t + c)];
    *u2 += sums[static_cast<std::size_t>(2 * C * t + C + c)];
  }
}

}  // namespace

template <typename T>
void batch_norm_relu_forward(const T* x, index_t M, index_t C, const T* gamma, const T* beta, double eps, T* y,
                             T* mean, T* var, int num_threads) {
  check(M >= 1 && C >= 1, "batch_norm_relu_forward: empty input");
  const int nt = threads_for(num_threads, static_cast<long long>(M * C));
  std::vector<T> shift(x, x + C);  // the first row
  std::vector<double> sums(static_cast<std::size_t>(2 * C * nt), 0.0);
  std::vector<T> a(static_cast<std::size_t>(C)), b(static_cast<std::size_t>(C));
#pragma omp parallel num_threads(nt)
  {
    const int tid = nt > 1 ? omp_get_thread_num() : 0;
    index_t lo, hi;
    row_range(M, tid, nt, &lo, &hi);
    const T* K = shift.data();
    blocked_sums<T>(lo, hi, C, sums.data() + 2 * C * tid,
                    [&](index_t m, T* p1, T* p2) { stats_row(x + m * C, K, p1, p2, C); });
#pragma omp barrier
#pragma omp single
    {
      for (index_t c = 0; c < C; ++c) {
        double t1, t2;
        thread_totals(sums, C, nt, c, &t1, &t2);
        double mu, v;
        norm::finish_stats(static_cast<double>(K[c]), t1, t2, static_cast<double>(M), &mu, &v);
        const norm::ChannelCoef k = norm::channel_coef(mu, v, static_cast<double>(gamma[c]),
                                                       static_cast<double>(beta[c]), eps);
        mean[c] = static_cast<T>(mu);
        var[c] = static_cast<T>(v);
        a[static_cast<std::size_t>(c)] = static_cast<T>(k.a);
        b[static_cast<std::size_t>(c)] = static_cast<T>(k.b);
      }
    }  // implicit barrier
    const T* A = a.data();
    const T* Bc = b.data();
    for (index_t m = lo; m < hi; ++m) forward_row(x + m * C, A, Bc, y + m * C, C);
  }
}

template <typename T>
void batch_norm_relu_backward(const T* dy, const T* x, index_t M, index_t C, const T* gamma, const T* beta,
                              const T* mean, const T* var, double eps, T* dx, T* dgamma, T* dbeta,
                              int num_threads) {
  check(M >= 1 && C >= 1, "batch_norm_relu_backward: empty input");
  const int nt = threads_for(num_threads, static_cast<long long>(M * C));
  const std::size_t Cs = static_cast<std::size_t>(C);
  std::vector<T> a(Cs), b(Cs), s(Cs), k(Cs), m1(Cs), m2(Cs);
  for (index_t c = 0; c < C; ++c) {
    const norm::ChannelCoef q = norm::channel_coef(static_cast<double>(mean[c]), static_cast<double>(var[c]),
                                                   static_cast<double>(gamma[c]), static_cast<double>(beta[c]), eps);
    a[c] = static_cast<T>(q.a);
    b[c] = static_cast<T>(q.b);
    s[c] = static_cast<T>(q.s);
    k[c] = static_cast<T>(static_cast<double>(gamma[c]) * q.s);
  }
  std::vector<double> sums(2 * Cs * static_cast<std::size_t>(nt), 0.0);
#pragma omp parallel num_threads(nt)
  {
    const int tid = nt > 1 ? omp_get_thread_num() : 0;
    index_t lo, hi;
    row_range(M, tid, nt, &lo, &hi);
    const T *A = a.data(), *Bc = b.data(), *Mu = mean, *S = s.data();
    blocked_sums<T>(lo, hi, C, sums.data() + 2 * C * tid, [&](index_t m, T* p1, T* p2) {  // Σ dz, Σ dz x̂
      grad_sums_row(dy + m * C, x + m * C, A, Bc, Mu, S, p1, p2, C);
    });
#pragma omp barrier
#pragma omp single
    {
      for (index_t c = 0; c < C; ++c) {
        double u1, u2;
        thread_totals(sums, C, nt, c, &u1, &u2);
        dbeta[c] = static_cast<T>(u1);
        dgamma[c] = static_cast<T>(u2);
        m1[c] = static_cast<T>(u1 / static_cast<double>(M));
        m2[c] = static_cast<T>(u2 / static_cast<double>(M));
      }
    }  // implicit barrier
    if (dx != nullptr) {
      const T *K = k.data(), *M1 = m1.data(), *M2 = m2.data();
      for (index_t m = lo; m < hi; ++m)
        input_grad_row(dy + m * C, x + m * C, A, Bc, Mu, S, K, M1, M2, dx + m * C, C);
    }
  }
}

#define ORBITCORE_INSTANTIATE(T)                                                                          \
  template void batch_norm_relu_forward<T>(const T*, index_t, index_t, const T*, const T*, double, T*, T*, \
                                           T*, int);                                                      \
  template void batch_norm_relu_backward<T>(const T*, const T*, index_t, index_t, const T*, const T*,      \
                                            const T*, const T*, double, T*, T*, T*, int);
ORBITCORE_INSTANTIATE(float)
ORBITCORE_INSTANTIATE(double)
#undef ORBITCORE_INSTANTIATE

}  // namespace cpu
}  // namespace orbitcore
