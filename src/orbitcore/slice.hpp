// orbitcore/slice.hpp — Fourier-slice element math: trilinear gather on the DC-centred grid,
// its derivative with respect to the sample point, and its adjoint (scatter-add).
//
// Conventions (ARCHITECTURE.md):
//  * a volume is a contiguous complex array [z][y][x] of side D, DC at index D / 2 on each axis;
//  * a point p = (x, y, z) is in Fourier-pixel units relative to DC, so its grid position along
//    x is x + D / 2 (likewise y, z);
//  * trilinear interpolation; a corner outside the grid contributes 0 (as if the volume were
//    zero-padded), so points more than one voxel outside sample exactly 0;
//  * central slice of a rotation R (row-major 3 x 3, acting on column vectors):
//    S[ky][kx] = V(R · (kx, ky, 0)), kx, ky over the centred grid of the slice side n.
#pragma once

#include "common.hpp"

namespace orbitcore {
namespace slice {

// The 2 x 2 x 2 stencil of a point. Out-of-grid corners get weight 0 and a clamped (valid)
// index, so loads are always in bounds and the math below is branch-free.
template <typename T>
struct Stencil {
  index_t z0, z1, y0, y1, x0, x1;  // clamped voxel indices, already multiplied by the strides
  T wx[2], wy[2], wz[2];            // per-axis weights (0 for an out-of-grid corner)
  T dx[2], dy[2], dz[2];            // per-axis weight derivatives (-1, +1, or 0 if out of grid)
};

template <typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE void axis_stencil(T coord, int D, index_t stride, index_t& i0,
                                                     index_t& i1, T* w, T* d) {
  const T g = coord + static_cast<T>(grid_center(D));
  const int f = floor_int(g);
  const T t = g - static_cast<T>(f);
  const bool v0 = (f >= 0) && (f < D);
  const bool v1 = (f + 1 >= 0) && (f + 1 < D);
  const int c0 = f < 0 ? 0 : (f > D - 1 ? D - 1 : f);
  const int c1 = f + 1 < 0 ? 0 : (f + 1 > D - 1 ? D - 1 : f + 1);
  i0 = static_cast<index_t>(c0) * stride;
  i1 = static_cast<index_t>(c1) * stride;
  w[0] = v0 ? T(1) - t : T(0);
  w[1] = v1 ? t : T(0);
  d[0] = v0 ? T(-1) : T(0);
  d[1] = v1 ? T(1) : T(0);
}

// True when the point touches the grid at all (some corner has non-zero weight support).
template <typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE bool touches_grid(T x, T y, T z, int D) {
  const T lo = static_cast<T>(-1 - grid_center(D));
  const T hi = static_cast<T>(D - grid_center(D));
  return x > lo && x < hi && y > lo && y < hi && z > lo && z < hi;
}

template <typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE void make_stencil(T x, T y, T z, int D, Stencil<T>& s) {
  axis_stencil(x, D, index_t(1), s.x0, s.x1, s.wx, s.dx);
  axis_stencil(y, D, index_t(D), s.y0, s.y1, s.wy, s.dy);
  axis_stencil(z, D, index_t(D) * D, s.z0, s.z1, s.wz, s.dz);
}

// True when all eight corners of the point are inside the grid (the common case: any point of
// a slice with radius < D/2 - 1). Then the fast paths below apply.
template <typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE bool interior(T x, T y, T z, int D) {
  const T c = static_cast<T>(grid_center(D));
  const T hi = static_cast<T>(D - 1);
  return x + c >= T(0) && x + c < hi && y + c >= T(0) && y + c < hi && z + c >= T(0) && z + c < hi;
}

// Corner (0,0,0) offset (in complex elements) and fractional parts of an interior point.
// W is the length of an x row: D for a full volume (x centred like y and z), D / 2 + 1 for a
// half volume (below: x index = kx, and only points with x >= 0 come here).
template <typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE index_t interior_base(T x, T y, T z, int D, int W, T& tx, T& ty, T& tz) {
  const T c = static_cast<T>(grid_center(D));
  const T gx = x + (W == D ? c : T(0)), gy = y + c, gz = z + c;
  const int ix = floor_int(gx), iy = floor_int(gy), iz = floor_int(gz);
  tx = gx - static_cast<T>(ix);
  ty = gy - static_cast<T>(iy);
  tz = gz - static_cast<T>(iz);
  return (static_cast<index_t>(iz) * D + iy) * W + ix;
}

// Trilinear value of an interior point (same result as gather(make_stencil(...))).
template <typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE cplx<T> gather_interior(const T* vol, int D, int W, T x, T y, T z) {
  T tx, ty, tz;
  const T* p = vol + 2 * interior_base(x, y, z, D, W, tx, ty, tz);
  const index_t sy = 2 * index_t(W), sz = 2 * index_t(D) * W;
  const T ux = T(1) - tx, uy = T(1) - ty, uz = T(1) - tz;
  // Each x-pair (x0, x1) is 4 contiguous reals: re0 im0 re1 im1.
  const T* r00 = p;
  const T* r01 = p + sy;
  const T* r10 = p + sz;
  const T* r11 = p + sz + sy;
  const T w00 = uz * uy, w01 = uz * ty, w10 = tz * uy, w11 = tz * ty;
  const T re = ux * (w00 * r00[0] + w01 * r01[0] + w10 * r10[0] + w11 * r11[0]) +
               tx * (w00 * r00[2] + w01 * r01[2] + w10 * r10[2] + w11 * r11[2]);
  const T im = ux * (w00 * r00[1] + w01 * r01[1] + w10 * r10[1] + w11 * r11[1]) +
               tx * (w00 * r00[3] + w01 * r01[3] + w10 * r10[3] + w11 * r11[3]);
  return make_cplx(re, im);
}

// Value and coordinate derivatives of an interior point.
template <typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE cplx<T> gather_grad_interior(const T* vol, int D, int W, T x, T y, T z,
                                                                cplx<T>* dval) {
  T tx, ty, tz;
  const T* p = vol + 2 * interior_base(x, y, z, D, W, tx, ty, tz);
  const index_t sy = 2 * index_t(W), sz = 2 * index_t(D) * W;
  const T ux = T(1) - tx, uy = T(1) - ty, uz = T(1) - tz;
  const T* r[4] = {p, p + sy, p + sz, p + sz + sy};  // (z0,y0), (z0,y1), (z1,y0), (z1,y1)
  cplx<T> X[4], dX[4];
  ORBITCORE_UNROLL
  for (int k = 0; k < 4; ++k) {
    const cplx<T> v0 = load_cplx(r[k]), v1 = load_cplx(r[k] + 2);
    X[k] = ux * v0 + tx * v1;
    dX[k] = v1 - v0;
  }
  const cplx<T> Y0 = uy * X[0] + ty * X[1], Y1 = uy * X[2] + ty * X[3];
  dval[0] = uz * (uy * dX[0] + ty * dX[1]) + tz * (uy * dX[2] + ty * dX[3]);
  dval[1] = uz * (X[1] - X[0]) + tz * (X[3] - X[2]);
  dval[2] = Y1 - Y0;
  return uz * Y0 + tz * Y1;
}

// Scatter of an interior point (same result as scatter(make_stencil(...))).
template <typename T, typename Add>
ORBITCORE_HD ORBITCORE_FORCEINLINE void scatter_interior(T* vol, int D, int W, T x, T y, T z, cplx<T> value,
                                                         const Add& add) {
  T tx, ty, tz;
  T* p = vol + 2 * interior_base(x, y, z, D, W, tx, ty, tz);
  const index_t sy = 2 * index_t(W), sz = 2 * index_t(D) * W;
  const T ux = T(1) - tx, uy = T(1) - ty, uz = T(1) - tz;
  T* r[4] = {p, p + sy, p + sz, p + sz + sy};
  const T wr[4] = {uz * uy, uz * ty, tz * uy, tz * ty};
  ORBITCORE_UNROLL
  for (int k = 0; k < 4; ++k) {
    const T w0 = wr[k] * ux, w1 = wr[k] * tx;
    add(r[k], w0 * value.re);
    add(r[k] + 1, w0 * value.im);
    add(r[k] + 2, w1 * value.re);
    add(r[k] + 3, w1 * value.im);
  }
}

// Fused backward of an interior point: scatter `value` into `gvol` and return the value and
// coordinate derivatives of `vol` at the same point (one stencil for both).
template <typename T, typename Add>
ORBITCORE_HD ORBITCORE_FORCEINLINE void scatter_grad_interior(const T* vol, T* gvol, int D, int W, T x,
                                                              T y, T z, cplx<T> value, const Add& add,
                                                              cplx<T>* dval) {
  T tx, ty, tz;
  const index_t base = 2 * interior_base(x, y, z, D, W, tx, ty, tz);
  const index_t sy = 2 * index_t(W), sz = 2 * index_t(D) * W;
  const T ux = T(1) - tx, uy = T(1) - ty, uz = T(1) - tz;
  const index_t off[4] = {base, base + sy, base + sz, base + sz + sy};
  const T wr[4] = {uz * uy, uz * ty, tz * uy, tz * ty};
  cplx<T> X[4], dX[4];
  ORBITCORE_UNROLL
  for (int k = 0; k < 4; ++k) {
    const cplx<T> v0 = load_cplx(vol + off[k]), v1 = load_cplx(vol + off[k] + 2);
    X[k] = ux * v0 + tx * v1;
    dX[k] = v1 - v0;
    const T w0 = wr[k] * ux, w1 = wr[k] * tx;
    T* r = gvol + off[k];
    add(r, w0 * value.re);
    add(r + 1, w0 * value.im);
    add(r + 2, w1 * value.re);
    add(r + 3, w1 * value.im);
  }
  const cplx<T> Y0 = uy * X[0] + ty * X[1], Y1 = uy * X[2] + ty * X[3];
  dval[0] = uz * (uy * dX[0] + ty * dX[1]) + tz * (uy * dX[2] + ty * dX[3]);
  dval[1] = uz * (X[1] - X[0]) + tz * (X[3] - X[2]);
  dval[2] = Y1 - Y0;
}

// Real-channel scatter of an interior point.
template <typename T, typename Add>
ORBITCORE_HD ORBITCORE_FORCEINLINE void scatter_real_interior(T* wvol, int D, T x, T y, T z, T value,
                                                              const Add& add) {
  T tx, ty, tz;
  T* p = wvol + interior_base(x, y, z, D, D, tx, ty, tz);
  const index_t sy = index_t(D), sz = index_t(D) * D;
  const T ux = T(1) - tx, uy = T(1) - ty, uz = T(1) - tz;
  T* r[4] = {p, p + sy, p + sz, p + sz + sy};
  const T wr[4] = {uz * uy, uz * ty, tz * uy, tz * ty};
  ORBITCORE_UNROLL
  for (int k = 0; k < 4; ++k) {
    add(r[k], wr[k] * ux * value);
    add(r[k] + 1, wr[k] * tx * value);
  }
}

// Interpolated value at the stencil. `vol` is interleaved complex.
template <typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE cplx<T> gather(const T* vol, const Stencil<T>& s) {
  const index_t zo[2] = {s.z0, s.z1};
  const index_t yo[2] = {s.y0, s.y1};
  cplx<T> acc = make_cplx(T(0), T(0));
ORBITCORE_UNROLL
  for (int a = 0; a < 2; ++a) {
    cplx<T> ya = make_cplx(T(0), T(0));
ORBITCORE_UNROLL
    for (int b = 0; b < 2; ++b) {
      const T* row = vol + 2 * (zo[a] + yo[b]);
      const cplx<T> xr = s.wx[0] * load_cplx(row + 2 * s.x0) + s.wx[1] * load_cplx(row + 2 * s.x1);
      ya = ya + s.wy[b] * xr;
    }
    acc = acc + s.wz[a] * ya;
  }
  return acc;
}

// Interpolated value and its derivatives with respect to the point coordinates (x, y, z).
template <typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE cplx<T> gather_grad(const T* vol, const Stencil<T>& s,
                                                       cplx<T>* dval /* [3]: d/dx, d/dy, d/dz */) {
  const index_t zo[2] = {s.z0, s.z1};
  const index_t yo[2] = {s.y0, s.y1};
  cplx<T> val = make_cplx(T(0), T(0));
  cplx<T> ddx = val, ddy = val, ddz = val;
ORBITCORE_UNROLL
  for (int a = 0; a < 2; ++a) {
    cplx<T> ya = make_cplx(T(0), T(0)), ya_dx = ya, ya_dy = ya;
ORBITCORE_UNROLL
    for (int b = 0; b < 2; ++b) {
      const T* row = vol + 2 * (zo[a] + yo[b]);
      const cplx<T> v0 = load_cplx(row + 2 * s.x0);
      const cplx<T> v1 = load_cplx(row + 2 * s.x1);
      const cplx<T> xr = s.wx[0] * v0 + s.wx[1] * v1;
      const cplx<T> xr_dx = s.dx[0] * v0 + s.dx[1] * v1;
      ya = ya + s.wy[b] * xr;
      ya_dx = ya_dx + s.wy[b] * xr_dx;
      ya_dy = ya_dy + s.dy[b] * xr;
    }
    val = val + s.wz[a] * ya;
    ddx = ddx + s.wz[a] * ya_dx;
    ddy = ddy + s.wz[a] * ya_dy;
    ddz = ddz + s.dz[a] * ya;
  }
  dval[0] = ddx;
  dval[1] = ddy;
  dval[2] = ddz;
  return val;
}

// Adjoint of `gather`: vol[corner] += weight(corner) * value. `Add` is the driver's adder
// (a plain += into a private buffer, an OpenMP atomic, or CUDA atomicAdd).
template <typename T, typename Add>
ORBITCORE_HD ORBITCORE_FORCEINLINE void scatter(T* vol, const Stencil<T>& s, cplx<T> value,
                                                const Add& add) {
  const index_t zo[2] = {s.z0, s.z1};
  const index_t yo[2] = {s.y0, s.y1};
  const index_t xo[2] = {s.x0, s.x1};
ORBITCORE_UNROLL
  for (int a = 0; a < 2; ++a) {
ORBITCORE_UNROLL
    for (int b = 0; b < 2; ++b) {
      const T wab = s.wz[a] * s.wy[b];
      if (wab == T(0)) continue;
      T* row = vol + 2 * (zo[a] + yo[b]);
ORBITCORE_UNROLL
      for (int c = 0; c < 2; ++c) {
        const T w = wab * s.wx[c];
        if (w == T(0)) continue;
        add(row + 2 * xo[c], w * value.re);
        add(row + 2 * xo[c] + 1, w * value.im);
      }
    }
  }
}

// Same stencil, a real channel (the back-projection weights): wvol[corner] += weight * value.
template <typename T, typename Add>
ORBITCORE_HD ORBITCORE_FORCEINLINE void scatter_real(T* wvol, const Stencil<T>& s, T value,
                                                     const Add& add) {
  const index_t zo[2] = {s.z0, s.z1};
  const index_t yo[2] = {s.y0, s.y1};
  const index_t xo[2] = {s.x0, s.x1};
ORBITCORE_UNROLL
  for (int a = 0; a < 2; ++a) {
ORBITCORE_UNROLL
    for (int b = 0; b < 2; ++b) {
      const T wab = s.wz[a] * s.wy[b];
      if (wab == T(0)) continue;
ORBITCORE_UNROLL
      for (int c = 0; c < 2; ++c) {
        const T w = wab * s.wx[c];
        if (w == T(0)) continue;
        add(wvol + zo[a] + yo[b] + xo[c], w * value);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Point operations: the interior fast path, else the general (boundary) stencil. These are what
// the drivers call.
// ---------------------------------------------------------------------------------------------
template <typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE cplx<T> sample_point(const T* vol, int D, T x, T y, T z) {
  if (interior(x, y, z, D)) return gather_interior(vol, D, D, x, y, z);
  if (!touches_grid(x, y, z, D)) return make_cplx(T(0), T(0));
  Stencil<T> s;
  make_stencil(x, y, z, D, s);
  return gather(vol, s);
}

// Value and d/d(x, y, z); outside the grid both are 0.
template <typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE cplx<T> sample_grad_point(const T* vol, int D, T x, T y, T z,
                                                             cplx<T>* dval) {
  if (interior(x, y, z, D)) return gather_grad_interior(vol, D, D, x, y, z, dval);
  if (!touches_grid(x, y, z, D)) {
    dval[0] = dval[1] = dval[2] = make_cplx(T(0), T(0));
    return make_cplx(T(0), T(0));
  }
  Stencil<T> s;
  make_stencil(x, y, z, D, s);
  return gather_grad(vol, s, dval);
}

template <typename T, typename Add>
ORBITCORE_HD ORBITCORE_FORCEINLINE void scatter_point(T* vol, int D, T x, T y, T z, cplx<T> value,
                                                      const Add& add) {
  if (interior(x, y, z, D)) return scatter_interior(vol, D, D, x, y, z, value, add);
  if (!touches_grid(x, y, z, D)) return;
  Stencil<T> s;
  make_stencil(x, y, z, D, s);
  scatter(vol, s, value, add);
}

// Both halves of the backward at one point: scatter `value` into gvol, derivatives of vol.
template <typename T, typename Add>
ORBITCORE_HD ORBITCORE_FORCEINLINE void scatter_grad_point(const T* vol, T* gvol, int D, T x, T y, T z,
                                                           cplx<T> value, const Add& add, cplx<T>* dval) {
  if (interior(x, y, z, D)) return scatter_grad_interior(vol, gvol, D, D, x, y, z, value, add, dval);
  if (!touches_grid(x, y, z, D)) {
    dval[0] = dval[1] = dval[2] = make_cplx(T(0), T(0));
    return;
  }
  Stencil<T> s;
  make_stencil(x, y, z, D, s);
  scatter(gvol, s, value, add);
  gather_grad(vol, s, dval);
}

template <typename T, typename Add>
ORBITCORE_HD ORBITCORE_FORCEINLINE void scatter_real_point(T* wvol, int D, T x, T y, T z, T value,
                                                           const Add& add) {
  if (interior(x, y, z, D)) return scatter_real_interior(wvol, D, x, y, z, value, add);
  if (!touches_grid(x, y, z, D)) return;
  Stencil<T> s;
  make_stencil(x, y, z, D, s);
  scatter_real(wvol, s, value, add);
}

// ---------------------------------------------------------------------------------------------
// Half volumes. The centred FT V of a real volume of even side D obeys V(-k) = conj V(k)
// (indices taken modulo D: the grid runs from -D/2 to D/2 - 1 on each axis). A half volume
// stores only kx = 0 .. D/2: [z][y][x] with z, y centred as above and x = kx, so rows of
// W = D/2 + 1 (torch.fft.rfft's layout along x, centred along z and y). A corner with kx < 0
// is read as conj V(-k), -D/2 mapping to itself. The same corners are valid as for the full
// volume (each of kz, ky, kx in [-D/2, D/2 - 1]), so every sample, and every gradient, equals
// that of the full volume, rim included. Interior points take the fast paths above (a point
// with x < 0 as the conjugate of -p, whose stencil is the mirror image of p's; that reads the
// kx = 0 plane at -k where the rim path reads it at k, the same value because that plane of a
// real volume's FT is itself Hermitian). D >= 4 even, so W = D/2 + 1 < D (interior_base).
// ---------------------------------------------------------------------------------------------
ORBITCORE_HD ORBITCORE_FORCEINLINE int half_width(int D) { return D / 2 + 1; }

// Complex-element offset in the half volume of the (valid) full-grid corner (cz, cy, cx),
// relative to DC; `mirrored` tells whether the stored value is conj of the corner's.
ORBITCORE_HD ORBITCORE_FORCEINLINE index_t half_offset(int D, int cz, int cy, int cx, bool& mirrored) {
  const int h = D / 2;
  mirrored = cx < 0;
  if (mirrored) {
    cx = -cx;
    cy = cy == -h ? -h : -cy;
    cz = cz == -h ? -h : -cz;
  }
  return (static_cast<index_t>(cz + h) * D + (cy + h)) * (h + 1) + cx;
}

// Per-axis stencil of the general (rim) path: first corner relative to DC, weights and weight
// derivatives (0 for a corner outside [-D/2, D/2 - 1], as axis_stencil).
template <typename T>
struct HalfAxis {
  int c0;
  T w[2], d[2];
};

template <typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE void half_axis(T coord, int D, HalfAxis<T>& a) {
  const T g = coord + static_cast<T>(grid_center(D));
  const int f = floor_int(g);
  const T t = g - static_cast<T>(f);
  const bool v0 = (f >= 0) && (f < D), v1 = (f + 1 >= 0) && (f + 1 < D);
  a.c0 = f - grid_center(D);
  a.w[0] = v0 ? T(1) - t : T(0);
  a.w[1] = v1 ? t : T(0);
  a.d[0] = v0 ? T(-1) : T(0);
  a.d[1] = v1 ? T(1) : T(0);
}

// The valid corners of a rim point of a half volume: offsets, whether each is read conjugated,
// and the trilinear weight and its x, y, z derivatives (products of the per-axis factors).
template <typename T>
struct HalfRim {
  int count;
  index_t off[8];
  bool mirrored[8];
  T w[8], wx[8], wy[8], wz[8];
};

template <typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE void half_rim_corners(int D, T x, T y, T z, HalfRim<T>& r) {
  HalfAxis<T> ax, ay, az;
  half_axis(x, D, ax);
  half_axis(y, D, ay);
  half_axis(z, D, az);
  r.count = 0;
ORBITCORE_UNROLL
  for (int a = 0; a < 2; ++a) {
ORBITCORE_UNROLL
    for (int b = 0; b < 2; ++b) {
ORBITCORE_UNROLL
      for (int c = 0; c < 2; ++c) {
        if (az.d[a] == T(0) || ay.d[b] == T(0) || ax.d[c] == T(0)) continue;  // outside the grid
        const int k = r.count++;
        r.off[k] = half_offset(D, az.c0 + a, ay.c0 + b, ax.c0 + c, r.mirrored[k]);
        r.w[k] = az.w[a] * ay.w[b] * ax.w[c];
        r.wx[k] = az.w[a] * ay.w[b] * ax.d[c];
        r.wy[k] = az.w[a] * ay.d[b] * ax.w[c];
        r.wz[k] = az.d[a] * ay.w[b] * ax.w[c];
      }
    }
  }
}

// Value (and, with dval, d/d(x, y, z)) at a rim point of a half volume, corner by corner.
template <typename T>
ORBITCORE_HD cplx<T> gather_half_rim(const T* vol, int D, T x, T y, T z, cplx<T>* dval) {
  HalfRim<T> r;
  half_rim_corners(D, x, y, z, r);
  const cplx<T> zero = make_cplx(T(0), T(0));
  cplx<T> val = zero, ddx = zero, ddy = zero, ddz = zero;
  for (int k = 0; k < r.count; ++k) {
    cplx<T> v = load_cplx(vol + 2 * r.off[k]);
    if (r.mirrored[k]) v = conj(v);
    val = val + r.w[k] * v;
    ddx = ddx + r.wx[k] * v;
    ddy = ddy + r.wy[k] * v;
    ddz = ddz + r.wz[k] * v;
  }
  if (dval) {
    dval[0] = ddx;
    dval[1] = ddy;
    dval[2] = ddz;
  }
  return val;
}

// Adjoint of gather_half_rim: the corner read as conj(v) receives conj of its share.
template <typename T, typename Add>
ORBITCORE_HD void scatter_half_rim(T* gvol, int D, T x, T y, T z, cplx<T> value, const Add& add) {
  HalfRim<T> r;
  half_rim_corners(D, x, y, z, r);
  for (int k = 0; k < r.count; ++k) {
    const cplx<T> v = r.mirrored[k] ? conj(value) : value;
    add(gvol + 2 * r.off[k], r.w[k] * v.re);
    add(gvol + 2 * r.off[k] + 1, r.w[k] * v.im);
  }
}

// Which path a point of a half volume takes: 1 the direct fast path (x >= 0, all corners
// inside), -1 the mirrored one (x < 0, and -p's corners inside too, so no index wraps), 0 the
// rim (or outside the grid).
template <typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE int half_path(T x, T y, T z, int D) {
  if (!interior(x, y, z, D)) return 0;
  if (x >= T(0)) return 1;
  return interior(-x, -y, -z, D) ? -1 : 0;
}

template <typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE cplx<T> sample_point_half(const T* vol, int D, T x, T y, T z) {
  const int path = half_path(x, y, z, D);
  if (path == 1) return gather_interior(vol, D, half_width(D), x, y, z);
  if (path == -1) return conj(gather_interior(vol, D, half_width(D), -x, -y, -z));
  if (!touches_grid(x, y, z, D)) return make_cplx(T(0), T(0));
  return gather_half_rim(vol, D, x, y, z, static_cast<cplx<T>*>(nullptr));
}

// d/dp of conj V(-p) is -conj(V'(-p)).
template <typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE void mirror_dval(cplx<T>* dval) {
  for (int i = 0; i < 3; ++i) dval[i] = make_cplx(-dval[i].re, dval[i].im);
}

template <typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE cplx<T> sample_grad_point_half(const T* vol, int D, T x, T y, T z,
                                                                  cplx<T>* dval) {
  const int path = half_path(x, y, z, D);
  if (path == 1) return gather_grad_interior(vol, D, half_width(D), x, y, z, dval);
  if (path == -1) {
    const cplx<T> v = gather_grad_interior(vol, D, half_width(D), -x, -y, -z, dval);
    mirror_dval(dval);
    return conj(v);
  }
  if (!touches_grid(x, y, z, D)) {
    dval[0] = dval[1] = dval[2] = make_cplx(T(0), T(0));
    return make_cplx(T(0), T(0));
  }
  return gather_half_rim(vol, D, x, y, z, dval);
}

template <typename T, typename Add>
ORBITCORE_HD ORBITCORE_FORCEINLINE void scatter_point_half(T* gvol, int D, T x, T y, T z, cplx<T> value,
                                                           const Add& add) {
  const int path = half_path(x, y, z, D);
  if (path == 1) return scatter_interior(gvol, D, half_width(D), x, y, z, value, add);
  if (path == -1) return scatter_interior(gvol, D, half_width(D), -x, -y, -z, conj(value), add);
  if (!touches_grid(x, y, z, D)) return;
  scatter_half_rim(gvol, D, x, y, z, value, add);
}

template <typename T, typename Add>
ORBITCORE_HD ORBITCORE_FORCEINLINE void scatter_grad_point_half(const T* vol, T* gvol, int D, T x, T y,
                                                                T z, cplx<T> value, const Add& add,
                                                                cplx<T>* dval) {
  const int path = half_path(x, y, z, D);
  if (path == 1) return scatter_grad_interior(vol, gvol, D, half_width(D), x, y, z, value, add, dval);
  if (path == -1) {
    scatter_grad_interior(vol, gvol, D, half_width(D), -x, -y, -z, conj(value), add, dval);
    mirror_dval(dval);
    return;
  }
  if (!touches_grid(x, y, z, D)) {
    dval[0] = dval[1] = dval[2] = make_cplx(T(0), T(0));
    return;
  }
  scatter_half_rim(gvol, D, x, y, z, value, add);
  gather_half_rim(vol, D, x, y, z, dval);
}

// Dispatch on the layout (the drivers' entry points): `half` selects the half volume.
template <typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE cplx<T> sample_any(const T* vol, int D, bool half, T x, T y, T z) {
  return half ? sample_point_half(vol, D, x, y, z) : sample_point(vol, D, x, y, z);
}

template <typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE cplx<T> sample_grad_any(const T* vol, int D, bool half, T x, T y, T z,
                                                           cplx<T>* dval) {
  return half ? sample_grad_point_half(vol, D, x, y, z, dval) : sample_grad_point(vol, D, x, y, z, dval);
}

template <typename T, typename Add>
ORBITCORE_HD ORBITCORE_FORCEINLINE void scatter_any(T* gvol, int D, bool half, T x, T y, T z, cplx<T> value,
                                                    const Add& add) {
  if (half)
    scatter_point_half(gvol, D, x, y, z, value, add);
  else
    scatter_point(gvol, D, x, y, z, value, add);
}

template <typename T, typename Add>
ORBITCORE_HD ORBITCORE_FORCEINLINE void scatter_grad_any(const T* vol, T* gvol, int D, bool half, T x, T y,
                                                         T z, cplx<T> value, const Add& add, cplx<T>* dval) {
  if (half)
    scatter_grad_point_half(vol, gvol, D, x, y, z, value, add, dval);
  else
    scatter_grad_point(vol, gvol, D, x, y, z, value, add, dval);
}

// ---------------------------------------------------------------------------------------------
// The slice plane.
// ---------------------------------------------------------------------------------------------

// Point R · (kx, ky, 0) for a row-major 3 x 3 rotation R.
template <typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE void plane_point(const T* R, T kx, T ky, T& x, T& y, T& z) {
  x = R[0] * kx + R[1] * ky;
  y = R[3] * kx + R[4] * ky;
  z = R[6] * kx + R[7] * ky;
}

// Disk mask: r2 < 0 means no mask.
template <typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE bool in_disk(int kx, int ky, T r2) {
  return r2 < T(0) || static_cast<T>(kx * kx + ky * ky) <= r2;
}

// Role of a plane point under Hermitian symmetry S(-k) = conj(S(k)):
//   kSkip   — filled by its mirror (it is in the negative half and its mirror is in the plane);
//   kSelf   — computed, written once (DC, or its mirror falls outside the plane: for even n the
//             row ky = -n/2 and the column kx = -n/2 have no partner);
//   kMirror — computed, written at k and (conjugated) at -k.
// Without Hermitian symmetry every point is kSelf.
enum PointRole : int { kSkip = 0, kSelf = 1, kMirror = 2 };

ORBITCORE_HD ORBITCORE_FORCEINLINE int point_role(int kx, int ky, int n, bool hermitian) {
  if (!hermitian) return kSelf;
  const int lo = freq_min(n), hi = freq_max(n);
  const bool mirror_in = (-kx >= lo) && (-kx <= hi) && (-ky >= lo) && (-ky <= hi);
  if (!mirror_in) return kSelf;
  if (kx == 0 && ky == 0) return kSelf;
  const bool negative = (ky < 0) || (ky == 0 && kx < 0);
  return negative ? kSkip : kMirror;
}

// Effective upstream gradient of a computed point: under Hermitian symmetry the value v at k
// also appears as conj(v) at -k, so dL/dv collects g(k) + conj(g(-k)).
template <typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE cplx<T> effective_grad(const T* g_plane, int n, int kx, int ky,
                                                          int role) {
  const int c = grid_center(n);
  cplx<T> g = load_cplx(g_plane + 2 * (static_cast<index_t>(ky + c) * n + (kx + c)));
  if (role == kMirror) {
    g = g + conj(load_cplx(g_plane + 2 * (static_cast<index_t>(-ky + c) * n + (-kx + c))));
  }
  return g;
}

// Real counterpart for the weight channel.
template <typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE T effective_weight(const T* w_plane, int n, int kx, int ky,
                                                      int role) {
  const int c = grid_center(n);
  T w = w_plane[static_cast<index_t>(ky + c) * n + (kx + c)];
  if (role == kMirror) w += w_plane[static_cast<index_t>(-ky + c) * n + (-kx + c)];
  return w;
}

// dL/dp (real) of a sampled value with upstream gradient g and derivative dval (PyTorch's
// convention for a real input of a complex output: Re(conj(g) * dval)).
template <typename T>
ORBITCORE_HD ORBITCORE_FORCEINLINE void point_grad(cplx<T> g, const cplx<T>* dval, T* dp) {
  dp[0] = real_dot(g, dval[0]);
  dp[1] = real_dot(g, dval[1]);
  dp[2] = real_dot(g, dval[2]);
}

}  // namespace slice
}  // namespace orbitcore
