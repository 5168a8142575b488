"""The volume basis of seeds/002 eq. (6)–(8): spherical Bessel functions times complex spherical
harmonics, describing the Fourier transform of a volume inside the Nyquist ball.

Definitions (our normalisation):

* A volume of side ``L`` (pixels, origin at index ``L // 2``) has the continuous Fourier transform
  ``V(nu) = int v(r) e^{-2 pi i <nu, r>} dr`` (``nu`` in cycles per pixel); on the centred grid,
  ``fft3c(v)[k] ~ V(k / L)`` (ARCHITECTURE.md). The radial variable of the basis is
  ``kappa = 2 |nu|`` (so ``kappa = 1`` is Nyquist, ``|k| = L / 2`` grid frequencies; this is the
  ``c k`` of eq. 6 with ``c = 1/2``).
* ``V(nu) = sum_{ell=0}^{ell_max} sum_{m=-ell}^{ell} sum_{s=1}^{S(ell)} x_{ell,m,s} Y_ell^m(nu / |nu|)
  F_{ell,s}(kappa)`` for ``kappa <= 1`` and 0 outside the ball, with ``Y_ell^m`` the complex
  spherical harmonics with the Condon–Shortley phase (eq. 8, orthonormal on the sphere) and
  ``F_{ell,s}(kappa) = sqrt(2) / |j_{ell+1}(u_{ell,s})| j_ell(u_{ell,s} kappa)``, ``u_{ell,s}`` the s-th
  positive zero of the spherical Bessel function ``j_ell``; ``int_0^1 F_{ell,s} F_{ell,s'} kappa^2
  dkappa = delta``, so the basis functions are orthonormal on the unit ball in ``(kappa, angles)``.
  The paper's eq. (7) normalises with ``4 / |j_{ell+1}(u)|`` instead: its coefficients are ours
  divided by ``2 sqrt(2)``.
* ``S(ell)`` (Nyquist rule): the number of zeros of ``j_ell`` (= of ``J_{ell+1/2}``) strictly below
  ``pi * (L // 2)``; e.g. ``L = 11, ell_max = 10``: ``S = [4, 4, 4, 3, 3, 2, 2, 2, 1, 1, 1]``,
  219 coefficients. ``ell_max`` must satisfy ``S(ell_max) >= 1``.
* Coefficient order (:attr:`VolumeBasis.indices`): ``ell`` ascending, then ``m = -ell..ell``, then
  ``s = 1..S(ell)`` (so the block of one ``ell`` reshapes to ``(2 ell + 1, S(ell))``).
* A real volume has ``x_{ell,-m,s} = (-1)^{ell+m} conj(x_{ell,m,s})`` (:meth:`VolumeBasis.symmetrize`).

The real-space volume of coefficients ``x`` is ``ifft3c`` of the Fourier-grid samples
(:meth:`VolumeBasis.evaluate`), and :meth:`VolumeBasis.expand` is the least-squares fit of
``fft3c(volume)`` on the grid points of the ball, so ``expand(evaluate(x)) == x``.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch
from scipy.special import spherical_jn

from .. import _validate as V
from .. import fourier
from .._validate import fail, from_tensor, to_tensor
from ._special import single_thread, spherical_bessel_zeros, spherical_harmonics

__all__ = ["VolumeBasis", "nyquist_radial_counts"]

_FN = "VolumeBasis"
_MAX_DENSE_BYTES = 2 << 30  # memory budget of the least-squares factorisation


def nyquist_radial_counts(L: int, ell_max: int) -> list[int]:
    """``S(ell)`` for ``ell = 0..ell_max``: zeros of ``j_ell`` strictly below ``pi * (L // 2)``."""
    L = V.check_int("nyquist_radial_counts", "L", L, minimum=1)
    ell_max = V.check_int("nyquist_radial_counts", "ell_max", ell_max, minimum=0)
    upper = math.pi * (L // 2)
    return [len(spherical_bessel_zeros(ell, upper)) for ell in range(ell_max + 1)]


def max_ell(L: int) -> int:
    """The largest ``ell`` with ``S(ell) >= 1`` for side ``L``."""
    L = V.check_int("max_ell", "L", L, minimum=1)
    upper = math.pi * (L // 2)
    ell = 0
    while spherical_bessel_zeros(ell + 1, upper):
        ell += 1
    return ell


@functools.lru_cache(maxsize=16)
def _radial_tables(L: int, ell_max: int):
    upper = math.pi * (L // 2)
    zeros = [np.array(spherical_bessel_zeros(ell, upper)) for ell in range(ell_max + 1)]
    norms = [math.sqrt(2.0) / np.abs(spherical_jn(ell + 1, z)) for ell, z in enumerate(zeros)]
    return zeros, norms


class VolumeBasis:
    """Spherical-Bessel x spherical-harmonic basis of volumes of side ``L`` up to degree ``ell_max``
    (seeds/002 eq. 6; conventions in the module docstring).

    Args:
        L: volume side (>= 3); the real-space support radius is ``L // 2`` pixels.
        ell_max: highest spherical-harmonic degree; at most :func:`max_ell` ``(L)`` (``S(ell) >= 1``).

    Attributes:
        L, ell_max, count (M);
        S: list ``S(ell)``; zeros: per ell the ``u_{ell,s}``;
        indices: ``{"ell", "m", "s"}`` int64 ``(M,)`` (``s`` 1-based as in eq. 6);
        offsets: start of each ``ell`` block in the coefficient vector.
    """

    def __init__(self, L: int, ell_max: int):
        L = V.check_int(_FN, "L", L)
        if L < 3:
            fail(_FN, f"L must be >= 3, got {L}")
        ell_max = V.check_int(_FN, "ell_max", ell_max, minimum=0)
        S = nyquist_radial_counts(L, ell_max)
        if S[-1] < 1:
            fail(_FN, f"ell_max = {ell_max} is too large for L = {L}: j_ell has no zero below "
                      f"pi * (L // 2) = {math.pi * (L // 2):.4g} for ell > {max_ell(L)} "
                      f"(S({ell_max}) = 0); use ell_max <= {max_ell(L)}")
        self.L, self.ell_max, self.S = L, ell_max, S
        self.zeros, self._norms = _radial_tables(L, ell_max)
        ell, m, s, off = [], [], [], [0]
        for e in range(ell_max + 1):
            for mm in range(-e, e + 1):
                for ss in range(1, S[e] + 1):
                    ell.append(e)
                    m.append(mm)
                    s.append(ss)
            off.append(len(ell))
        self.count = len(ell)
        self.indices = {"ell": torch.tensor(ell), "m": torch.tensor(m), "s": torch.tensor(s)}
        self.offsets = off
        self._cache = {}

    # ------------------------------------------------------------------------------------------
    # radial parts and sampling
    # ------------------------------------------------------------------------------------------
    def radial(self, ell: int, kappa) -> torch.Tensor:
        """``F_{ell,s}(kappa)`` for ``s = 1..S(ell)``: float64 ``(..., S(ell))`` (0 for kappa > 1)."""
        k = torch.as_tensor(kappa, dtype=torch.float64)
        z = self.zeros[ell]
        vals = spherical_jn(ell, np.multiply.outer(k.cpu().numpy(), z)) * self._norms[ell]
        out = torch.from_numpy(np.asarray(vals, dtype=np.float64)).to(k.device)
        return torch.where((k <= 1.0)[..., None], out, torch.zeros_like(out))

    def _design(self, freqs: torch.Tensor) -> torch.Tensor:
        """Dense ``(P, M)`` complex128 basis values at frequencies ``(P, 3)`` (grid units of L)."""
        kappa = 2.0 * freqs.norm(dim=-1) / self.L
        Y = spherical_harmonics(self.ell_max, freqs)
        cols = []
        for e in range(self.ell_max + 1):
            F = self.radial(e, kappa)  # (P, S)
            Ye = Y[:, e * e:(e + 1) ** 2]  # (P, 2e+1)
            cols.append((Ye[:, :, None] * F[:, None, :]).reshape(freqs.shape[0], -1))
        return torch.cat(cols, 1)

    def _coef(self, fn: str, x) -> tuple[torch.Tensor, str]:
        t, kind = to_tensor(x, fn, "x")
        if t.dim() < 1 or t.shape[-1] != self.count:
            fail(fn, f"x must have shape (..., M) with M = {self.count} (this basis), got {tuple(t.shape)}")
        if not (t.is_complex() or t.is_floating_point()):
            fail(fn, f"x must be complex coefficients, got {t.dtype}", TypeError)
        return t.to(torch.complex128), kind

    def evaluate_at(self, x, freqs):
        """``V(k)`` at arbitrary frequencies ``freqs (P, 3)`` as ``(kx, ky, kz)`` in grid units of the
        ``L`` grid (``nu = k / L`` cycles per pixel), for coefficients ``x (..., M)``. Returns complex128
        ``(..., P)``; 0 outside the ball ``|k| <= L / 2``."""
        fn = "VolumeBasis.evaluate_at"
        t, kind = self._coef(fn, x)
        f, _ = to_tensor(freqs, fn, "freqs")
        V.check_floating(fn, "freqs", f)
        if f.dim() != 2 or f.shape[-1] != 3:
            fail(fn, f"freqs must have shape (P, 3), got {tuple(f.shape)}")
        f = f.to(device=t.device, dtype=torch.float64)
        out = t @ self._design(f).T
        return from_tensor(out, kind)

    def _grid(self, n: int, device) -> torch.Tensor:
        k = (torch.arange(n, dtype=torch.float64, device=device) - n // 2) * (self.L / n)
        kz, ky, kx = torch.meshgrid(k, k, k, indexing="ij")
        return torch.stack([kx, ky, kz], -1).reshape(-1, 3)

    def _ball(self, device):
        key = ("ball", device)
        if key not in self._cache:
            g = self._grid(self.L, device)
            inside = (2.0 * g.norm(dim=-1) / self.L) <= 1.0
            idx = torch.nonzero(inside).squeeze(1)
            self._cache[key] = (idx, g[idx])
        return self._cache[key]

    def evaluate_fourier(self, x, size: int | None = None):
        """Samples of ``V`` on a centred grid of side ``size`` (default ``L``): ``(..., n, n, n)``
        complex128 indexed ``[kz, ky, kx]``, at ``nu = i / size`` cycles per pixel for the integer
        index offsets ``i`` from ``size // 2`` — i.e. ``fft3c`` of the volume zero-padded to
        ``size`` (oversampling for ``size > L``)."""
        fn = "VolumeBasis.evaluate_fourier"
        t, kind = self._coef(fn, x)
        n = self.L if size is None else V.check_int(fn, "size", size, minimum=1)
        lead = t.shape[:-1]
        flat = t.reshape(-1, self.count)
        g = self._grid(n, t.device)
        inside = torch.nonzero((2.0 * g.norm(dim=-1) / self.L) <= 1.0).squeeze(1)
        out = torch.zeros(flat.shape[0], n ** 3, dtype=torch.complex128, device=t.device)
        chunk = max(1, (1 << 24) // max(1, self.count))
        for i in range(0, inside.numel(), chunk):
            idx = inside[i:i + chunk]
            out[:, idx] = flat @ self._design(g[idx]).T
        return from_tensor(out.reshape(lead + (n, n, n)), kind)

    def evaluate(self, x, *, real: bool = True):
        """The real-space volume ``ifft3c(evaluate_fourier(x))``: ``(..., L, L, L)`` indexed
        ``[z, y, x]``, origin at ``L // 2``. ``real=True`` returns the real part (exact for
        coefficients with the real-volume symmetry); ``real=False`` the complex volume."""
        t, kind = self._coef("VolumeBasis.evaluate", x)
        vol = fourier.ifft3c(self.evaluate_fourier(t))
        return from_tensor(vol.real if real else vol, kind)

    # ------------------------------------------------------------------------------------------
    # expansion
    # ------------------------------------------------------------------------------------------
    def _pinv(self, device):
        key = ("pinv", device)
        if key not in self._cache:
            idx, g = self._ball(device)
            nbytes = idx.numel() * self.count * 16
            if nbytes > _MAX_DENSE_BYTES:
                fail("VolumeBasis.expand", f"the dense least-squares factorisation for L = {self.L}, "
                     f"ell_max = {self.ell_max} needs {nbytes / 2**30:.1f} GiB (> 2 GiB); "
                     "use a smaller L or ell_max", MemoryError)
            B = self._design(g)
            if idx.numel() < self.count:
                fail("VolumeBasis.expand", f"fewer grid points in the ball ({idx.numel()}) than coefficients "
                     f"({self.count})")
            with single_thread():
                U, S, Vh = torch.linalg.svd(B, full_matrices=False)
            self.condition_number = float(S[0] / S[-1])
            self._cache[key] = Vh.conj().T @ (U.conj().T / S[:, None])  # (M, P)
        return self._cache[key]

    def expand_fourier(self, volume_ft):
        """Least-squares coefficients ``x`` of a centred Fourier volume ``(..., L, L, L)`` (``fft3c`` of
        a real-space volume) over the grid points with ``|k| <= L / 2`` (points outside the ball are
        ignored). Returns complex128 ``(..., M)``."""
        fn = "VolumeBasis.expand_fourier"
        t, kind = to_tensor(volume_ft, fn, "volume_ft")
        if t.dim() < 3 or tuple(t.shape[-3:]) != (self.L,) * 3:
            fail(fn, f"volume_ft must have shape (..., L, L, L) with L = {self.L}, got {tuple(t.shape)}")
        idx, _ = self._ball(t.device)
        lead = t.shape[:-3]
        vals = t.reshape(-1, self.L ** 3).to(torch.complex128)[:, idx]
        out = vals @ self._pinv(t.device).T
        return from_tensor(out.reshape(lead + (self.count,)), kind)

    def expand(self, volume):
        """Coefficients of a real-space volume ``(..., L, L, L)`` (indexed ``[z, y, x]``, origin at
        ``L // 2``): :meth:`expand_fourier` of its ``fft3c``. complex128 ``(..., M)``."""
        fn = "VolumeBasis.expand"
        t, kind = to_tensor(volume, fn, "volume")
        if t.dim() < 3 or tuple(t.shape[-3:]) != (self.L,) * 3:
            fail(fn, f"volume must have shape (..., L, L, L) with L = {self.L}, got {tuple(t.shape)}")
        if not (t.is_floating_point() or t.is_complex()):
            fail(fn, f"volume must be a floating-point or complex array, got {t.dtype}", TypeError)
        return from_tensor(self.expand_fourier(fourier.fft3c(t.to(torch.float64) if t.is_floating_point()
                                                             else t.to(torch.complex128))), kind)

    # ------------------------------------------------------------------------------------------
    # symmetry and sampling of coefficients
    # ------------------------------------------------------------------------------------------
    def _mirror(self, device):
        key = ("mirror", device)
        if key not in self._cache:
            ell, m, s = (self.indices[k].tolist() for k in ("ell", "m", "s"))
            pos = {(a, b, c): i for i, (a, b, c) in enumerate(zip(ell, m, s))}
            idx = torch.tensor([pos[(a, -b, c)] for a, b, c in zip(ell, m, s)], device=device)
            sign = torch.tensor([(-1.0) ** (a + b) for a, b in zip(ell, m)], dtype=torch.float64, device=device)
            self._cache[key] = (idx, sign)
        return self._cache[key]

    def conjugate_mirror(self, x):
        """``x'_{ell,m,s} = (-1)^{ell+m} conj(x_{ell,-m,s})``: the coefficients of ``conj(v)`` for the volume
        ``v`` of ``x``; real volumes are the fixed points."""
        t, kind = self._coef("VolumeBasis.conjugate_mirror", x)
        idx, sign = self._mirror(t.device)
        return from_tensor(sign * t.index_select(-1, idx).conj(), kind)

    def symmetrize(self, x):
        """Projection onto the coefficients of real volumes: ``(x + conjugate_mirror(x)) / 2``."""
        t, kind = self._coef("VolumeBasis.symmetrize", x)
        return from_tensor(0.5 * (t + self.conjugate_mirror(t)), kind)

    def random(self, *shape, generator: torch.Generator | None = None, real: bool = True) -> torch.Tensor:
        """Random coefficients ``shape + (M,)``, standard complex normal entries (symmetrised for a
        real volume when ``real``)."""
        z = torch.randn(shape + (self.count, 2), generator=generator, dtype=torch.float64)
        x = torch.view_as_complex(z) / math.sqrt(2.0)
        return self.symmetrize(x) if real else x

    def rotate(self, x, rotations):
        """Coefficients of the volume rotated actively by ``R``, ``v_R(r) = v(R^T r)``: ``x_ell -> D^ell(R) x_ell``
        per ``ell`` and ``s`` (:func:`orbitcore.basis.wigner_d`). ``x (..., M)``, ``rotations (3, 3)``
        or ``(B, 3, 3)`` (then the output is ``(B, ..., M)``)."""
        from .wigner import wigner_d  # noqa: PLC0415

        t, kind = self._coef("VolumeBasis.rotate", x)
        R, _ = to_tensor(rotations, "VolumeBasis.rotate", "rotations")
        single = R.dim() == 2
        D = wigner_d(self.ell_max, R.reshape(-1, 3, 3))
        outs = []
        for e in range(self.ell_max + 1):
            blk = t[..., self.offsets[e]:self.offsets[e + 1]].reshape(t.shape[:-1] + (2 * e + 1, self.S[e]))
            rot = torch.einsum("bnm,...ms->b...ns", D[e].to(t.device), blk)
            outs.append(rot.reshape(rot.shape[:-2] + (-1,)))
        out = torch.cat(outs, -1)
        return from_tensor(out[0] if single else out, kind)

    def __repr__(self) -> str:
        return f"VolumeBasis(L={self.L}, ell_max={self.ell_max}, count={self.count}, S={self.S})"
