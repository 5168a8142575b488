"""Wigner-D matrices of a batch of rotations, consistent with orbitcore's rotation convention.

Convention. For a rotation ``Q`` (a ``(3, 3)`` matrix acting on column vectors), ``D^ell(Q)`` is the
matrix of the operator ``f -> f(Q^T .)`` (``f`` rotated actively by ``Q``) on the complex
spherical harmonics with the Condon–Shortley phase:

    Y_ell^m(Q^T n) = sum_{m'} Y_ell^{m'}(n) D^ell_{m', m}(Q).

So ``D`` is a representation, ``D(Q1 Q2) = D(Q1) D(Q2)``, unitary, and rotating a function's
spherical-harmonic coefficients by ``D(Q)`` rotates the function: if ``f = sum x_m Y^m`` then
``f(Q^T .) = sum (D(Q) x)_{m'} Y^{m'}``. With the ZYZ Euler angles ``Q = Rz(a) Ry(b) Rz(g)``,
``D_{m', m} = e^{-i m' a} d_{m', m}(b) e^{-i m g}`` (the standard active convention).

Image formation (ARCHITECTURE.md): ``image(x, y) = sum_z v(R (x, y, z))`` is the top view of the
volume rotated actively by ``R^T``; its coefficients are therefore rotated by ``D(R^T) =
D(R)^H`` (this is what :func:`orbitcore.basis.project_coefficients` uses; the ``omega`` of
seeds/002 eq. 9 and 14 is ``R^T``).

Computation: Euler angles are extracted through ``a + g`` and ``a - g`` (each from a
well-conditioned 2 x 2 sub-block, so rotations near the poles keep full accuracy), and the small
``d^ell_{m', m}(b)`` come from the three-term recurrence of the Jacobi polynomials
``P_k^{(|m-m'|, |m+m'|)}(cos b)`` in the degree ``k = ell - max(|m|, |m'|)`` (the forward
recurrence, stable on [-1, 1]), with exactly computed normalisations. float64; unitarity and the
group law hold to ~1e-14 up to ell = 30 (tests/basis/test_wigner.py).
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch

from .. import _validate as V
from .._validate import fail, from_tensor, real_array, to_tensor

__all__ = ["wigner_d", "euler_zyz", "wigner_d_small"]


def euler_zyz(rotations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ZYZ Euler angles ``(a, b, g)`` with ``R = Rz(a) Ry(b) Rz(g)``, ``b`` in [0, pi] (float64).

    ``Rz(t) = [[cos t, -sin t, 0], [sin t, cos t, 0], [0, 0, 1]]``, ``Ry(t) = [[cos t, 0, sin t],
    [0, 1, 0], [-sin t, 0, cos t]]`` (active, column vectors). At ``b = 0`` or ``pi`` only ``a + g``
    or ``a - g`` is defined; the split is arbitrary but the Wigner matrices do not depend on it.
    """
    R = real_array("euler_zyz", "rotations", rotations)
    if R.dim() < 2 or tuple(R.shape[-2:]) != (3, 3):
        fail("euler_zyz", f"rotations must have shape (..., 3, 3), got {tuple(R.shape)}")
    R = R.to(torch.float64)
    r = lambda i, j: R[..., i, j] + 0.0  # noqa: E731  (+0.0 turns -0.0 into +0.0 for atan2)
    sb = 0.5 * (torch.hypot(r(0, 2), r(1, 2)) + torch.hypot(r(2, 0), r(2, 1)))
    b = torch.atan2(sb, r(2, 2))
    # a + g and a - g: from the third row/column (R02, R12 = sin b (cos a, sin a); R20, R21 =
    # sin b (-cos g, sin g)), accurate to eps / sin b, and from the upper-left 2 x 2 block,
    # (1 + cos b) e^{i(a+g)} and (cos b - 1) e^{i(a-g)}, accurate to eps / (1 +- cos b). Each sum
    # is taken where it is accurate; where it is not, D depends on it only through terms of
    # size sin(b/2) or cos(b/2) powers that scale the error back to eps.
    a1 = torch.atan2(r(1, 2), r(0, 2))
    g1 = torch.atan2(r(2, 1), -r(2, 0) + 0.0)
    sigma_blk = torch.atan2(r(1, 0) - r(0, 1) + 0.0, r(0, 0) + r(1, 1) + 0.0)
    delta_blk = torch.atan2(-(r(1, 0) + r(0, 1)) + 0.0, -(r(0, 0) - r(1, 1)) + 0.0)
    north = r(2, 2) >= 0
    sigma = torch.where(north, sigma_blk, a1 + g1)
    delta = torch.where(north, a1 - g1, delta_blk)
    a = 0.5 * (sigma + delta)
    g = 0.5 * (sigma - delta)
    # (a, g) and (a + pi, g + pi) give the same sums; pick the one with cos(a) R02 + sin(a) R12 >= 0
    flip = (torch.cos(a) * r(0, 2) + torch.sin(a) * r(1, 2)) < 0
    a = torch.where(flip, a + math.pi, a)
    g = torch.where(flip, g + math.pi, g)
    return a, b, g


@functools.lru_cache(maxsize=8)
def _pair_tables(ell_max: int):
    """Per (m', m) pair (|m'|, |m| <= ell_max), sorted by M = max(|m|, |m'|) so that the pairs of
    degree <= ell are the prefix of length (2 ell + 1)^2: a = |m - m'|, b = |m + m'|, M, the sign
    (-1)^lambda, the normalisation per ell, sqrt(binom(ell + M, ell - M + a) / binom(ell - M + b, b))
    (0 where ell < M), and per ell the prefix position of each entry of the (2 ell + 1)^2 matrix."""
    ms = np.arange(-ell_max, ell_max + 1)
    mp, m = np.meshgrid(ms, ms, indexing="ij")
    mp, m = mp.ravel(), m.ravel()
    M = np.maximum(np.abs(m), np.abs(mp))
    order = np.lexsort((m, mp, M))
    mp, m, M = mp[order], m[order], M[order]
    a = np.abs(m - mp)
    b = np.abs(m + mp)
    lam = np.where((m == -M) | ((m != M) & (mp != -M)), mp - m, 0)
    sign = np.where(lam % 2 == 0, 1.0, -1.0)
    # norm^2 = binom(ell + M, k + a) / binom(k + b, b), k = ell - M: binom(2M, a) at ell = M, then
    # multiplied by (ell + M)(ell - M) / ((ell - M + a)(ell - M + b)) per step in ell.
    norm2 = np.zeros((ell_max + 1, len(m)))
    start = np.array([math.comb(2 * int(Mi), int(ai)) for Mi, ai in zip(M, a)], dtype=np.float64)
    cur = start.copy()
    for ell in range(ell_max + 1):
        k = ell - M
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(k > 0, (ell + M) * k / ((k + a) * (k + b)).astype(np.float64), 1.0)
        cur = np.where(k == 0, start, cur * ratio)
        norm2[ell] = np.where(k >= 0, cur, 0.0)
    places = []
    for ell in range(ell_max + 1):
        n = (2 * ell + 1) ** 2
        flat = (mp[:n] + ell) * (2 * ell + 1) + (m[:n] + ell)
        places.append(torch.from_numpy(np.argsort(flat)))
    t = lambda x: torch.as_tensor(x, dtype=torch.float64)  # noqa: E731
    return t(M), t(a), t(b), t(sign), t(np.sqrt(norm2)), places


def wigner_d_small(ell_max: int, beta: torch.Tensor) -> list[torch.Tensor]:
    """Real ``d^ell_{m', m}(beta)`` for ``ell = 0..ell_max``: list of float64 ``(B, 2 ell + 1, 2 ell + 1)``
    indexed ``[b, m' + ell, m + ell]``."""
    ell_max = V.check_int("wigner_d_small", "ell_max", ell_max, minimum=0)
    beta = real_array("wigner_d_small", "beta", beta).to(torch.float64).reshape(-1)
    M, a, b, sign, norm, places = _pair_tables(ell_max)
    dev = beta.device
    M, a, b, sign, norm = (t.to(dev) for t in (M, a, b, sign, norm))
    x = torch.cos(beta)[:, None]
    s, c = torch.sin(0.5 * beta)[:, None], torch.cos(0.5 * beta)[:, None]
    pre = torch.pow(s, a) * torch.pow(c, b) * sign  # (B, pairs); 0^0 = 1
    apb = a + b
    p_prev = torch.zeros_like(pre)
    p_cur = torch.zeros_like(pre)
    out = []
    for ell in range(ell_max + 1):
        n = (2 * ell + 1) ** 2
        k = ell - M[:n]
        aa, bb, ab = a[:n], b[:n], apb[:n]
        # P_k^{(a,b)}(x) at each active pair's degree k = ell - M (forward recurrence in k)
        nn = k.clamp(min=2.0)
        t = 2.0 * nn + ab
        c1 = (t - 1.0) * (t * (t - 2.0) * x + aa * aa - bb * bb)
        c2 = 2.0 * (nn + aa - 1.0) * (nn + bb - 1.0) * t
        pk = (c1 * p_cur[:, :n] - c2 * p_prev[:, :n]) / (2.0 * nn * (nn + ab) * (t - 2.0))
        p1 = (aa + 1.0) + (ab + 2.0) * (x - 1.0) * 0.5
        new = torch.where(k == 0, torch.ones_like(pk), torch.where(k == 1, p1, pk))
        p_prev[:, :n] = p_cur[:, :n]
        p_cur[:, :n] = new
        d = pre[:, :n] * norm[ell, :n] * new
        out.append(d.index_select(1, places[ell].to(dev)).reshape(-1, 2 * ell + 1, 2 * ell + 1))
    return out


def wigner_d(ell_max: int, rotations):
    """Wigner-D matrices ``D^ell(R)`` for ``ell = 0..ell_max`` of a batch of rotations.

    Args:
        ell_max: highest degree (>= 0).
        rotations: ``(B, 3, 3)`` or ``(3, 3)`` rotation matrices (orbitcore convention: column
            vectors; see the module docstring for how ``D`` relates to image formation).

    Returns:
        list of ``ell_max + 1`` complex128 tensors ``(B, 2 ell + 1, 2 ell + 1)`` (or
        ``(2 ell + 1, 2 ell + 1)`` for one rotation), entry ``[b, m' + ell, m + ell] = D^ell_{m', m}(R_b)``,
        with ``Y_ell^m(R^T n) = sum_{m'} Y_ell^{m'}(n) D^ell_{m', m}(R)``; same array kind as
        ``rotations``.
    """
    fn = "wigner_d"
    ell_max = V.check_int(fn, "ell_max", ell_max, minimum=0)
    R, kind = to_tensor(rotations, fn, "rotations")
    V.check_floating(fn, "rotations", R)
    if R.dim() not in (2, 3) or tuple(R.shape[-2:]) != (3, 3):
        fail(fn, f"rotations must have shape (B, 3, 3) or (3, 3), got {tuple(R.shape)}")
    V.check_rotations(fn, "rotations", R)
    single = R.dim() == 2
    R = R.reshape(-1, 3, 3).to(torch.float64)
    al, be, ga = euler_zyz(R)
    small = wigner_d_small(ell_max, be)
    out = []
    for ell, d in enumerate(small):
        mm = torch.arange(-ell, ell + 1, dtype=torch.float64, device=R.device)
        ea = torch.polar(torch.ones_like(mm), -mm[None, :] * al[:, None])  # e^{-i m' a}
        eg = torch.polar(torch.ones_like(mm), -mm[None, :] * ga[:, None])  # e^{-i m g}
        D = ea[:, :, None] * d.to(torch.complex128) * eg[:, None, :]
        out.append(from_tensor(D[0] if single else D, kind))
    return out
