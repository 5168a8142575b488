"""Tomographic projections of a volume given in :class:`VolumeBasis`, expressed in
:class:`PSWF2D` coefficients: seeds/002 eq. (13)–(16).

For our rotation convention (``image(x, y) = sum_z v(R (x, y, z))``) the projection's Fourier
transform is ``G(nu) = V(R (nu, 0))``; writing ``G`` in polar coordinates ``(kappa = 2 |nu|, phi)``,

    G = sum_N e^{i N phi} h_N(kappa),  h_N = sum_{ell >= |N|, m, s} x_{ell,m,s} D^ell_{N,m}(R^T) Y_ell^N(pi/2, 0) F_{ell,s}(kappa)

(eq. 9, with ``omega = R^T``), and the PSWF coefficients of the band-limited image restricted to
the disk of radius ``R_px = L // 2`` (the orthogonal projection onto the kept PSWFs, which is what
least squares on a fine grid converges to) are, by the eigen-equation (10) with ``c = pi R_px``,

    b_{N,n} = sum_{ell >= |N|, s} beta_{ell,s;N,n} sum_m D^ell_{N,m}(R^T) x_{ell,m,s}     (eq. 14)
    beta_{ell,s;N,n} = R_px alpha_{N,n} (sqrt(2 pi) / 4) Y_ell^N(pi/2, 0) int_0^1 F_{ell,s}(k) Phi_{N,n}(k) k dk

(eq. 15 in our normalisations: pixel-normalised PSWFs, orthonormal ``F``; the paper's
``beta-hat`` of eq. 16 is this ``beta``). ``beta`` vanishes unless ``ell >= |N|`` and ``ell + N`` is
even; the radial integrals are computed once per projector by Gauss–Legendre quadrature (the
integrand is smooth; the rule is checked to converge to 1e-15). The contraction is organised as
one batched ``(2 ell + 1) x (2 ell + 1)`` product per ``ell`` (the Wigner rotation of the
coefficients) followed by one dense product per angular index ``N`` (rotations x (ell, s)) @
((ell, s) x n).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .. import _validate as V
from .._validate import fail, from_tensor, to_tensor
from ._special import gauss_legendre, sh_index, spherical_harmonics
from .pswf import PSWF2D
from .volume import VolumeBasis
from .wigner import wigner_d

__all__ = ["Projector", "project_coefficients", "project"]


class Projector:
    """Projection operator ``x -> b(R)`` from :class:`VolumeBasis` coefficients to :class:`PSWF2D`
    coefficients (complex convention) of the projection images, with ``beta`` precomputed.

    Args:
        volume_basis: the :class:`VolumeBasis` (side ``L``, ``ell_max``).
        pswf: a :class:`PSWF2D` of the same ``L`` with the Nyquist band limit ``pi (L // 2)``
            (default: ``PSWF2D(L)``).
        quadrature: Gauss–Legendre nodes for the radial integrals (default: enough for 1e-15).
    """

    def __init__(self, volume_basis: VolumeBasis, pswf: PSWF2D | None = None, *, quadrature: int | None = None):
        fn = "Projector"
        if not isinstance(volume_basis, VolumeBasis):
            fail(fn, f"volume_basis must be a VolumeBasis, got {type(volume_basis).__name__}", TypeError)
        L = volume_basis.L
        pswf = PSWF2D(L) if pswf is None else pswf
        if not isinstance(pswf, PSWF2D):
            fail(fn, f"pswf must be a PSWF2D, got {type(pswf).__name__}", TypeError)
        if pswf.L != L:
            fail(fn, f"pswf.L ({pswf.L}) must equal volume_basis.L ({L})")
        if not math.isclose(pswf.bandlimit, math.pi * (L // 2), rel_tol=1e-12):
            fail(fn, f"pswf must have the Nyquist band limit pi * (L // 2) = {math.pi * (L // 2):.6g}, "
                     f"got {pswf.bandlimit:.6g}")
        self.volume_basis, self.pswf = volume_basis, pswf
        ell_max = volume_basis.ell_max
        Nmax = min(ell_max, len(pswf.n_max) - 1)
        self.N_max = Nmax
        # radial integrals int_0^1 F_{ell,s} Phi_{N,n} k dk
        kmax = max(r.shape[1] for r in pswf.radial_coefficients)
        umax = max((z.max() for z in volume_basis.zeros if len(z)), default=1.0)
        nq = quadrature or int(Nmax + 2 * kmax + umax) // 2 + 60
        self.quadrature = nq
        kq, wq = gauss_legendre(nq, 0.0, 1.0)
        Phi = pswf.radial(kq)  # (nq, M_pswf), column (N, n) -> Phi_{|N|,n}
        Yeq = spherical_harmonics(ell_max, torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64))[0]
        Npsw = pswf.indices["N"]
        R_px = pswf.radius
        self._blocks = []  # per N: (N, rows [(ell, s-index)], pswf columns, beta (rows, n) complex)
        for N in range(-Nmax, Nmax + 1):
            cols = torch.nonzero(Npsw == N).squeeze(1)
            rows = []
            for ell in range(abs(N), ell_max + 1):
                if (ell + N) % 2:
                    continue  # Y_ell^N(pi/2, 0) = 0
                for s in range(volume_basis.S[ell]):
                    rows.append((ell, s))
            if not rows or cols.numel() == 0:
                continue
            beta = torch.zeros(len(rows), cols.numel(), dtype=torch.complex128)
            alpha = pswf.alpha[cols]
            for i, (ell, s) in enumerate(rows):
                F = volume_basis.radial(ell, torch.from_numpy(kq))[:, s]  # (nq,)
                integ = (wq * kq * F.numpy()) @ Phi[:, cols].numpy()  # (n,)
                y = Yeq[sh_index(ell, N)].real
                beta[i] = R_px * alpha * (math.sqrt(2 * math.pi) / 4.0) * float(y) * torch.from_numpy(integ)
            self._blocks.append((N, rows, cols, beta))
        # The per-N products batched into one: rows of every N block gathered from the
        # concatenation of the z_ell (per-ell blocks (2 ell + 1) x S(ell), row-major; padding points
        # at an appended zero column), beta zero-padded to (blocks, rows_max, n_max), outputs
        # scattered to the PSWF columns (padding to a dummy column that is dropped).
        zoff = np.cumsum([0] + [(2 * e + 1) * volume_basis.S[e] for e in range(ell_max + 1)])
        nz = int(zoff[-1])
        nb = len(self._blocks)
        rmax = max(len(r) for _, r, _, _ in self._blocks)
        cmax = max(int(c.numel()) for _, _, c, _ in self._blocks)
        gather = torch.full((nb, rmax), nz, dtype=torch.int64)
        scatter = torch.full((nb, cmax), pswf.count, dtype=torch.int64)
        beta_pad = torch.zeros(nb, rmax, cmax, dtype=torch.complex128)
        for i, (N, rows, cols, beta) in enumerate(self._blocks):
            gather[i, :len(rows)] = torch.tensor([int(zoff[e]) + (N + e) * volume_basis.S[e] + s for e, s in rows])
            scatter[i, :cols.numel()] = cols
            beta_pad[i, :len(rows), :cols.numel()] = beta
        self._gather, self._scatter, self._beta_pad = gather.reshape(-1), scatter.reshape(-1), beta_pad
        self._cache = {}

    # ------------------------------------------------------------------------------------------
    def wigner(self, rotations) -> list[torch.Tensor]:
        """The Wigner matrices the projection uses, ``D^ell(R^T)`` per ``ell`` (complex128
        ``(K, 2 ell + 1, 2 ell + 1)``); pass them back as ``wigner=`` to reuse them across calls."""
        R, _ = to_tensor(rotations, "Projector.wigner", "rotations")
        if R.dim() == 2:
            R = R[None]
        return wigner_d(self.volume_basis.ell_max, R.transpose(-1, -2))

    def _x_arg(self, fn, x):
        t, kind = to_tensor(x, fn, "x")
        M = self.volume_basis.count
        if t.dim() < 1 or t.shape[-1] != M:
            fail(fn, f"x must have shape (..., M) with M = {M} (the volume basis), got {tuple(t.shape)}")
        if not (t.is_complex() or t.is_floating_point()):
            fail(fn, f"x must be complex coefficients, got {t.dtype}", TypeError)
        return t.to(torch.complex128), kind

    def _wigner_arg(self, fn, rotations, wigner):
        if wigner is not None:
            if len(wigner) != self.volume_basis.ell_max + 1:
                fail(fn, f"wigner must be a list of {self.volume_basis.ell_max + 1} matrices (ell = 0..ell_max), "
                         f"got {len(wigner)}")
            return wigner, wigner[0].shape[0]
        R, _ = to_tensor(rotations, fn, "rotations")
        V.check_floating(fn, "rotations", R)
        if R.dim() not in (2, 3) or tuple(R.shape[-2:]) != (3, 3):
            fail(fn, f"rotations must have shape (K, 3, 3) or (3, 3), got {tuple(R.shape)}")
        D = self.wigner(R)
        return D, D[0].shape[0]

    def coefficients(self, x, rotations=None, *, wigner=None):
        """PSWF coefficients ``b_{N,n}(R)`` (complex convention of :class:`PSWF2D`) of the projections
        of the volume(s) ``x``.

        Args:
            x: ``(..., M_vol)`` complex coefficients in the volume basis.
            rotations: ``(K, 3, 3)`` (or ``(3, 3)``), orbitcore convention
                (``image(x, y) = sum_z v(R (x, y, z))``); or give ``wigner=`` from :meth:`wigner`.

        Returns:
            complex128 ``(..., K, M_pswf)``; entries with ``|N| > ell_max`` are 0. Linear in ``x``
            (autograd works through it).
        """
        return self._coefficients("Projector.coefficients", x, rotations, wigner)

    def _coefficients(self, fn, x, rotations, wigner):
        t, kind = self._x_arg(fn, x)
        D, K = self._wigner_arg(fn, rotations, wigner)
        vb = self.volume_basis
        lead = t.shape[:-1]
        flat = t.reshape(-1, vb.count)
        Vn = flat.shape[0]
        # step 1: z_ell[v, k, N, s] = sum_m D^ell_{N,m}(R_k^T) x[v, ell, m, s] (one batched product per ell)
        z = []
        for e in range(vb.ell_max + 1):
            blk = flat[:, vb.offsets[e]:vb.offsets[e + 1]].reshape(Vn, 1, 2 * e + 1, vb.S[e])
            z.append(torch.matmul(D[e].to(flat.device)[None], blk).reshape(Vn, K, -1))  # (V, K, (2e+1) S)
        z.append(flat.new_zeros(Vn, K, 1))  # the padding column
        z = torch.cat(z, -1)
        # step 2: per N, (V K, rows) @ (rows, n), as one batched product over the N blocks
        dev = flat.device
        nb, rmax, cmax = self._beta_pad.shape
        Z = z.index_select(-1, self._gather.to(dev)).reshape(Vn * K, nb, rmax).transpose(0, 1)
        prod = torch.bmm(Z, self._beta_pad.to(dev))  # (blocks, V K, n_max)
        out = flat.new_zeros(Vn * K, self.pswf.count + 1)
        out = out.index_copy(1, self._scatter.to(dev), prod.transpose(0, 1).reshape(Vn * K, nb * cmax))
        out = out[:, :self.pswf.count].reshape(Vn, K, self.pswf.count)
        return from_tensor(out.reshape(lead + (K, self.pswf.count)), kind)

    def images(self, x, rotations=None, *, wigner=None, dtype=torch.float64):
        """Projection images ``(..., K, L, L)`` (real part of the PSWF evaluation of
        :meth:`coefficients`; exactly real for real volumes) on the pixel grid, 0 outside the disk."""
        return self._images("Projector.images", x, rotations, wigner, dtype)

    def _images(self, fn, x, rotations, wigner, dtype):
        b = self._coefficients(fn, x, rotations, wigner)
        bt, kind = to_tensor(b, fn, "b")
        a = self.pswf.to_real(bt).real.to(dtype)
        return from_tensor(self.pswf.evaluate(a), kind)

    def matrices(self, rotations=None, *, wigner=None) -> torch.Tensor:
        """The dense operators ``B_R`` with ``b(R) = B_R x``: complex128 ``(K, M_pswf, M_vol)``."""
        D, K = self._wigner_arg("Projector.matrices", rotations, wigner)
        vb = self.volume_basis
        out = torch.zeros(K, self.pswf.count, vb.count, dtype=torch.complex128)
        for N, rows, cols, beta in self._blocks:
            for i, (e, s) in enumerate(rows):
                m_cols = vb.offsets[e] + torch.arange(2 * e + 1) * vb.S[e] + s  # (ell, m, s) for all m
                # b[k, (N, n)] += beta[i, n] D^e_{N,m}(R_k^T) x[(e, m, s)]
                contrib = beta[i][None, :, None] * D[e][:, N + e, None, :]  # (K, n, 2e+1)
                out[:, cols[:, None], m_cols[None, :]] += contrib
        return out

    def adjoint(self, b, rotations=None, *, wigner=None):
        """Adjoint of :meth:`coefficients` (complex inner products): ``x = sum_k B_{R_k}^H b_k``;
        ``b (..., K, M_pswf)`` -> complex128 ``(..., M_vol)``."""
        fn = "Projector.adjoint"
        t, kind = to_tensor(b, fn, "b")
        D, K = self._wigner_arg(fn, rotations, wigner)
        if t.dim() < 2 or tuple(t.shape[-2:]) != (K, self.pswf.count):
            fail(fn, f"b must have shape (..., K, M_pswf) = (..., {K}, {self.pswf.count}), got {tuple(t.shape)}")
        vb = self.volume_basis
        lead = t.shape[:-2]
        flat = t.reshape(-1, K, self.pswf.count).to(torch.complex128)
        Vn = flat.shape[0]
        zt = [torch.zeros(Vn, K, 2 * e + 1, vb.S[e], dtype=torch.complex128, device=flat.device)
              for e in range(vb.ell_max + 1)]
        for N, rows, cols, beta in self._blocks:
            Zt = flat[:, :, cols.to(flat.device)] @ beta.to(flat.device).conj().T  # (V, K, rows)
            for i, (e, s) in enumerate(rows):
                zt[e][:, :, N + e, s] += Zt[:, :, i]
        xs = []
        for e in range(vb.ell_max + 1):
            xe = torch.matmul(D[e].to(flat.device).conj().transpose(-1, -2)[None], zt[e]).sum(1)  # (V, 2e+1, S)
            xs.append(xe.reshape(Vn, -1))
        return from_tensor(torch.cat(xs, -1).reshape(lead + (vb.count,)), kind)


def project_coefficients(x, rotations, basis: VolumeBasis, pswf: PSWF2D | None = None):
    """PSWF coefficients ``b_{N,n}(R)`` of the projections of ``x`` (seeds/002 eq. 14–16); see
    :class:`Projector` (which caches ``beta``; build one when projecting repeatedly)."""
    fn = "project_coefficients"
    return _projector(fn, basis, pswf)._coefficients(fn, x, rotations, None)


def project(x, rotations, basis: VolumeBasis, pswf: PSWF2D | None = None):
    """Projection images ``(..., K, L, L)`` of ``x`` through the PSWF expansion (eq. 16)."""
    return _projector("project", basis, pswf)._images("project", x, rotations, None, torch.float64)


def _projector(fn, basis, pswf) -> Projector:
    if not isinstance(basis, VolumeBasis):
        fail(fn, f"basis must be a VolumeBasis, got {type(basis).__name__}", TypeError)
    if pswf is not None and not isinstance(pswf, PSWF2D):
        fail(fn, f"pswf must be a PSWF2D or None, got {type(pswf).__name__}", TypeError)
    cache = basis._cache.setdefault("projectors", {})
    key = id(pswf) if pswf is not None else None
    if key not in cache:
        cache[key] = Projector(basis, pswf)
    return cache[key]
