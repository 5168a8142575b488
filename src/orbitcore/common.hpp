// orbitcore/common.hpp — shared by the CPU and CUDA drivers of every kernel family.
//
// Everything marked ORBITCORE_HD is element math: no allocation, no I/O, no globals, so the
// same code runs inside an OpenMP loop on the host and inside a CUDA kernel on the device.
// Complex numbers are stored interleaved (re, im), the layout of std::complex, float2/double2,
// torch.complex64/128 and numpy.complex64/128.
#pragma once

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#if defined(__CUDACC__)
#define ORBITCORE_HD __host__ __device__
#define ORBITCORE_FORCEINLINE __forceinline__
#define ORBITCORE_UNROLL _Pragma("unroll")
#else
#define ORBITCORE_UNROLL
#define ORBITCORE_HD
#if defined(__GNUC__)
#define ORBITCORE_FORCEINLINE inline __attribute__((always_inline))
#else
#define ORBITCORE_FORCEINLINE inline
#endif
#endif

namespace orbitcore {

using index_t = std::int64_t;

// ---------------------------------------------------------------------------------------------
// Complex arithmetic on interleaved storage.
// ---------------------------------------------------------------------------------------------
template <typename T>
struct cplx {
  T re, im;
};

template <typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE cplx<T> make_cplx(T re, T im) {
  cplx<T> z;
  z.re = re;
  z.im = im;
  return z;
}
template <typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE cplx<T> operator+(cplx<T> a, cplx<T> b) {
  return make_cplx(a.re + b.re, a.im + b.im);
}
template <typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE cplx<T> operator-(cplx<T> a, cplx<T> b) {
  return make_cplx(a.re - b.re, a.im - b.im);
}
template <typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE cplx<T> operator*(cplx<T> a, cplx<T> b) {
  return make_cplx(a.re * b.re - a.im * b.im, a.re * b.im + a.im * b.re);
}
template <typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE cplx<T> operator*(T s, cplx<T> a) {
  return make_cplx(s * a.re, s * a.im);
}
template <typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE cplx<T> conj(cplx<T> a) {
  return make_cplx(a.re, -a.im);
}
// Re(conj(a) * b): the real inner product of two complex numbers seen as 2-vectors.
template <typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE T real_dot(cplx<T> a, cplx<T> b) {
  return a.re * b.re + a.im * b.im;
}
template <typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE cplx<T> load_cplx(const T* p) {
  return make_cplx(p[0], p[1]);
}
template <typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE void store_cplx(T* p, cplx<T> z) {
  p[0] = z.re;
  p[1] = z.im;
}

// ---------------------------------------------------------------------------------------------
// The centred Fourier grid (ARCHITECTURE.md): for a length n, DC sits at index n / 2 and the
// integer frequencies run over [-(n / 2), (n - 1) / 2].
// ---------------------------------------------------------------------------------------------
ORBITCORE_HD ORBITCORE_FORCEINLINE int grid_center(int n) { return n / 2; }
ORBITCORE_HD ORBITCORE_FORCEINLINE int freq_min(int n) { return -(n / 2); }
ORBITCORE_HD ORBITCORE_FORCEINLINE int freq_max(int n) { return (n - 1) / 2; }

// floor(x) as an int, for |x| well inside the int range (grid coordinates).
template <typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE int floor_int(T x) {
  const int i = static_cast<int>(x);
  return i - (x < static_cast<T>(i) ? 1 : 0);
}

// ---------------------------------------------------------------------------------------------
// Host-side argument checks used by the drivers (the bindings check more, with tensor names).
// ---------------------------------------------------------------------------------------------
#if !defined(__CUDA_ARCH__)
inline void check(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument(what);
}
#endif

}  // namespace orbitcore
