"""Special functions for the bases, in float64: Gauss–Legendre rules, zeros of spherical Bessel
functions, complex spherical harmonics (Condon–Shortley phase), and the tridiagonal operator
whose eigenvectors are the PSWF radial functions.

Host-side (plan time) helpers; the per-pixel evaluation of the PSWFs is the kernel
``orbitcore._C.pswf_eval_points`` (element math in ``src/orbitcore/pswf.hpp``).
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch
from scipy.optimize import brentq
from scipy.special import spherical_jn

__all__ = ["single_thread", "gauss_legendre", "spherical_bessel_zeros", "spherical_harmonics", "sh_index",
           "zernike_recurrence", "prolate_operator"]


class single_thread:
    """Run a block with one torch thread (plan-time linear algebra): the factorisations here are
    small (<= ~1000^2) and multi-threaded LAPACK on a shared, loaded machine can be 20x slower
    than one thread. Restores the previous setting on exit."""

    def __enter__(self):
        self.n = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.n)


@functools.lru_cache(maxsize=64)
def _gl(n: int) -> tuple[np.ndarray, np.ndarray]:
    x, w = np.polynomial.legendre.leggauss(n)
    return x, w


def gauss_legendre(n: int, a: float = 0.0, b: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """``n``-point Gauss–Legendre nodes and weights on ``[a, b]`` (exact for degree ``2n - 1``)."""
    x, w = _gl(int(n))
    h = 0.5 * (b - a)
    return a + h * (x + 1.0), h * w


@functools.lru_cache(maxsize=4096)
def spherical_bessel_zeros(ell: int, upper: float) -> tuple[float, ...]:
    """Positive zeros ``u`` of the spherical Bessel function ``j_ell`` with ``u < upper`` (strict),
    ascending. ``j_0`` has the exact zeros ``s·pi``; other orders are bracketed on a grid finer
    than the zero spacing (which is at least pi) and refined by Brent's method."""
    if ell == 0:
        out = []
        s = 1
        while s * math.pi < upper and not math.isclose(s * math.pi, upper, rel_tol=1e-13):
            out.append(s * math.pi)
            s += 1
        return tuple(out)
    grid = np.arange(ell * 0.5 + 1e-3, upper + 0.5, 0.25)
    vals = spherical_jn(ell, grid)
    out = []
    for i in range(len(grid) - 1):
        if vals[i] == 0.0:
            z = grid[i]
        elif vals[i] * vals[i + 1] < 0:
            z = brentq(lambda t: spherical_jn(ell, t), grid[i], grid[i + 1], xtol=1e-15, rtol=1e-15, maxiter=200)
        else:
            continue
        if z < upper:
            out.append(float(z))
    return tuple(out)


def sh_index(ell: int, m: int) -> int:
    """Column of ``Y_ell^m`` in :func:`spherical_harmonics` (order ell, then m = -ell..ell)."""
    return ell * ell + ell + m


def spherical_harmonics(ell_max: int, xyz: torch.Tensor) -> torch.Tensor:
    """Complex spherical harmonics ``Y_ell^m(direction of xyz)`` with the Condon–Shortley phase,

    ``Y_ell^m(theta, phi) = sqrt((2 ell + 1)/(4 pi) (ell - m)!/(ell + m)!) P_ell^m(cos theta) e^{i m phi}``,

    orthonormal on the sphere. ``xyz`` is ``(..., 3)`` (need not be unit; the origin is taken as
    the north pole). Returns ``(..., (ell_max + 1)^2)`` complex128, columns ordered by ell, then
    m = -ell..ell (:func:`sh_index`). Computed from ``cos theta = z/r`` and
    ``sin theta e^{i phi} = (x + i y)/r`` by the standard stable recurrences of the normalised
    associated Legendre functions (no angles, so the poles are not special).
    """
    xyz = xyz.to(torch.float64)
    r = xyz.norm(dim=-1)
    safe = torch.where(r > 0, r, torch.ones_like(r))
    x = torch.where(r > 0, xyz[..., 0] / safe, torch.zeros_like(r))
    y = torch.where(r > 0, xyz[..., 1] / safe, torch.zeros_like(r))
    z = torch.where(r > 0, xyz[..., 2] / safe, torch.ones_like(r))
    w = torch.complex(x, y)  # sin(theta) e^{i phi}
    L = int(ell_max)
    out = torch.zeros(xyz.shape[:-1] + ((L + 1) ** 2,), dtype=torch.complex128, device=xyz.device)
    qmm = torch.full_like(z, 1.0 / math.sqrt(4.0 * math.pi))  # q_m^m (polynomial part)
    wm = torch.ones_like(w)                                      # w^m
    for m in range(L + 1):
        if m > 0:
            qmm = -math.sqrt((2.0 * m + 1.0) / (2.0 * m)) * qmm
            wm = wm * w
        q_lm2 = q_lm1 = None  # q_{ell-2}^m, q_{ell-1}^m
        for ell in range(m, L + 1):
            if ell == m:
                q = qmm
            elif ell == m + 1:
                q = math.sqrt(2.0 * m + 3.0) * z * qmm
            else:
                a = math.sqrt((4.0 * ell * ell - 1.0) / (ell * ell - m * m))
                b = math.sqrt(((ell - 1.0) ** 2 - m * m) / (4.0 * (ell - 1.0) ** 2 - 1.0))
                q = a * (z * q_lm1 - b * q_lm2)
            q_lm2, q_lm1 = q_lm1, q
            Y = q * wm
            out[..., sh_index(ell, m)] = Y
            if m > 0:
                out[..., sh_index(ell, -m)] = (-1) ** m * Y.conj()
    return out


def zernike_recurrence(N: int, K: int) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients ``(a_j, b_j)`` of ``x p_j = a_{j+1} p_{j+1} + b_j p_j + a_j p_{j-1}`` for the
    orthonormal Jacobi polynomials of the weight ``(1 - x)^N`` on ``[-1, 1]`` (the recurrence the
    kernel runs for ``T_{N,j}``); ``a`` has ``K + 1`` entries (``a[0] = 0``), ``b`` has ``K``."""
    j = np.arange(K + 1, dtype=np.float64)
    t = 2.0 * j + N
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(j > 0, 2.0 * j * (j + N) / (t * np.sqrt((t - 1.0) * (t + 1.0))), 0.0)
        b = np.where(N == 0, 0.0, -float(N) ** 2 / (t * (t + 2.0)))
    return a, b[:K]


def prolate_operator(N: int, c: float, K: int) -> tuple[np.ndarray, np.ndarray]:
    """The differential operator commuting with the disk's truncated Fourier transform,

    ``L_N = -(1/r) d/dr (r (1 - r^2) d/dr) + N^2/r^2 + c^2 r^2``,

    in the orthonormal basis ``T_{N,j}`` (j < K): ``L_N T_j = (N + 2j)(N + 2j + 2) T_j + c^2 r^2 T_j``
    (the generalised Zernike polynomials are the eigenfunctions of the first part), and
    multiplication by ``r^2 = (1 - x)/2`` is tridiagonal through the Jacobi recurrence. Returns the
    (diagonal, off-diagonal) of this symmetric tridiagonal matrix."""
    a, b = zernike_recurrence(N, K)
    j = np.arange(K, dtype=np.float64)
    diag = (N + 2.0 * j) * (N + 2.0 * j + 2.0) + c * c * 0.5 * (1.0 - b)
    off = -c * c * 0.5 * a[1:K]
    return diag, off
