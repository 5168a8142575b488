"""Stochastic approximate EM: a 3-D structure directly from micrographs (seeds/002, Kreymer,
Singer, Bendory).

Pieces (equation numbers of seeds/002):

* :func:`simulate_micrographs` — §II/§IV: ``T`` projections at uniformly random rotations placed
  at random positions under the separation condition (eq. 5), white noise at an SNR (eq. 4);
  ground truth (locations, rotations) kept.
* :func:`extract_patches` — §III-A: non-overlapping ``L x L`` patches and, with ground truth, the
  true shift (displacement) of each patch.
* :class:`EMOperator` — the forward model ``x -> P R_w f`` for a grid of ``K`` rotations through
  the volume basis (eq. 6) and the PSWF projection operator (eq. 13–16,
  :class:`orbitcore.basis.Projector`), as one real linear map ``J_w`` per rotation on a real
  parametrisation ``theta`` of the coefficients of real volumes. The E-step projections and the
  M-step normal equations both come from this one operator.
* :func:`e_step` — eq. 22–24 for every (patch, shift, rotation) by the fused kernel
  :func:`orbitcore.ops.em.em_estep` (sufficient statistics, never the (patch x shift x rotation)
  array).
* :func:`m_step` — eq. 28–37: ``A theta = y`` with ``A = sum_w J_w^T diag(m_w) J_w`` and
  ``y = sum_w J_w^T h_w`` (``m_w`` the posterior-weighted visibility of projection pixels,
  ``h_w`` the posterior-weighted back-shifted patches), and ``rho`` (eq. 37).
* :func:`q_value` — eq. 25 from the same statistics (a quadratic in ``theta``).
* :func:`reconstruct` — Algorithm 1 (stochastic factor ``S``) with frequency marching over
  ``ell_max`` (§III-D), the default.
* :func:`pick_particles`, :func:`picking_scores` — Algorithm 2 and the F1 score (eq. 39) / shift
  accuracy of §IV-B.

Shifts. The paper's shift set is ``{0..2L-1}^2`` (eq. 19); we index the informative ones by the
displacement ``d in [-(L-1), L-1]^2`` with ``patch[i, j] = g[i + d0, j + d1]`` and merge the
``4L - 1`` shifts that show nothing into one *empty* state (``orbitcore.ops.em``). A projection
whose top-left corner sits at micrograph pixel ``(r, c)`` appears in the patch with top-left
corner ``(a, b)`` with displacement ``(a - r, b - c)``.

Conventions: images ``[row, column]``; the projections are those of
:class:`orbitcore.basis.Projector` (ARCHITECTURE.md). ``sigma`` is the noise standard deviation
per pixel of the micrographs that are processed (after any downsampling).
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from .. import _validate as V
from .._validate import fail, to_tensor
from ..basis import Projector, VolumeBasis, max_ell
from ..ops import em as ops_em

__all__ = ["rotation_grid", "Micrographs", "simulate_micrographs", "extract_patches", "EMOperator",
           "Statistics", "e_step", "m_step", "q_value", "uniform_log_prior", "EMState", "reconstruct",
           "pick_particles", "picking_scores"]


# ----------------------------------------------------------------------------------------------
# rotations
# ----------------------------------------------------------------------------------------------
def rotation_grid(K: int) -> torch.Tensor:
    """``K`` quasi-uniform rotations (float64 ``(K, 3, 3)``): the super-Fibonacci spiral on the unit
    quaternions (Alexa, CVPR 2022): ``q_i = (r sin a, r cos a, R sin b, R cos b)`` with
    ``s = i + 1/2``, ``r = sqrt(s / K)``, ``R = sqrt(1 - s / K)``, ``a = 2 pi s / sqrt(2)``,
    ``b = 2 pi s / psi`` (``psi^4 = psi + 4``). Deterministic; any ``K >= 1`` (the paper used a
    552-rotation quasi-uniform grid)."""
    from ..geometry.rotations import quaternion_to_matrix  # noqa: PLC0415

    K = V.check_int("rotation_grid", "K", K, minimum=1)
    psi = 1.533751168755204288118041
    s = torch.arange(K, dtype=torch.float64) + 0.5
    r, R = torch.sqrt(s / K), torch.sqrt(1.0 - s / K)
    a, b = 2 * math.pi * s / math.sqrt(2.0), 2 * math.pi * s / psi
    q = torch.stack([r * torch.sin(a), r * torch.cos(a), R * torch.sin(b), R * torch.cos(b)], -1)
    return quaternion_to_matrix(q).to(torch.float64)


# ----------------------------------------------------------------------------------------------
# micrographs
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Micrographs:
    """Simulated micrographs with their ground truth.

    micrographs: float64 ``(n, N, N)`` noisy micrographs (eq. 3); clean: the same without noise;
    sigma: noise standard deviation per pixel; L: projection side;
    locations: per micrograph int64 ``(T_i, 2)`` top-left corners ``(row, column)`` of the projections;
    rotations: per micrograph float64 ``(T_i, 3, 3)``; snr: eq. 4 (mean projection energy / (L^2 sigma^2));
    images: per micrograph float64 ``(T_i, Ls, Ls)`` the placed projections (``Ls`` the simulated side);
    coefficients: the true volume-basis coefficients (``method="basis"``), else None.
    """

    micrographs: torch.Tensor
    clean: torch.Tensor
    sigma: float
    L: int
    locations: list
    rotations: list
    snr: float
    images: list
    coefficients: Optional[torch.Tensor] = None


def _place(N: int, L: int, T: int, separation: int, rng: np.random.Generator, fn: str) -> np.ndarray:
    """Top-left corners of ``T`` boxes in ``[0, N - L]^2`` with ``|dr| >= sep or |dc| >= sep`` for
    every pair (eq. 5 with ``sep = 2L - 1``), by random sequential placement."""
    n = N - L + 1
    free = np.ones((n, n), dtype=bool)
    out = np.empty((T, 2), dtype=np.int64)
    for t in range(T):
        for _ in range(64):
            r, c = rng.integers(0, n, 2)
            if free[r, c]:
                break
        else:
            idx = np.flatnonzero(free)
            if idx.size == 0:
                fail(fn, f"cannot place {T} projections of side {L} in a {N} x {N} micrograph with separation "
                         f"{separation} (only {t} fit); lower gamma or the separation, or enlarge the micrograph")
            r, c = divmod(int(idx[rng.integers(0, idx.size)]), n)
        out[t] = (r, c)
        free[max(0, r - separation + 1):r + separation, max(0, c - separation + 1):c + separation] = False
    return out


def simulate_micrographs(volume, N: int, *, n_micrographs: int = 1, gamma: float = 0.1, snr: float = 1.0,
                         L: Optional[int] = None, ell_max: Optional[int] = None, method: str = "basis",
                         separation: Optional[int] = None, seed: int = 0) -> Micrographs:
    """Micrographs of ``T`` projections of a volume (seeds/002 §II, §IV).

    Args:
        volume: real ``(Lv, Lv, Lv)`` volume (indexed ``[z, y, x]``, origin ``Lv // 2``).
        N: micrograph side (pixels, after downsampling for ``method="volume"``); ``N >= L``.
        n_micrographs: how many micrographs.
        gamma: density ``T L^2 / N^2`` per micrograph (fraction of the area covered by projections).
        snr: eq. 4, ``mean ||I_w||^2 / (L^2 sigma^2)`` over the placed projections.
        L: projection side in the output (default ``Lv``).
        ell_max: band limit of the basis expansion for ``method="basis"`` (default :func:`max_ell`).
        method: ``"basis"`` (the paper's second method: the volume (downsampled to ``L`` if needed)
            expanded in :class:`VolumeBasis` up to ``ell_max`` and projected by the PSWF projector of
            the EM, eq. 16) or ``"volume"`` (first method: projections of the full volume by
            :func:`orbitcore.physics.project`, the noisy micrograph then Fourier-downsampled by
            ``Lv / L``; the reported ``sigma`` is rescaled by ``L / Lv``, the noise standard deviation
            after downsampling; the ground-truth ``locations`` are the full-resolution corners divided by
            ``Lv / L`` and rounded down, so they are exact only to within a pixel).
        separation: minimum Chebyshev distance between top-left corners (default ``2L - 1``, eq. 5,
            which guarantees at most one projection per patch; ``L`` allows any non-overlapping
            spacing, §IV-C).
        seed: random seed (rotations, positions, noise).

    Returns:
        :class:`Micrographs`.
    """
    fn = "simulate_micrographs"
    vol, _ = to_tensor(volume, fn, "volume")
    V.check_floating(fn, "volume", vol)
    if vol.dim() != 3 or len(set(vol.shape)) != 1:
        fail(fn, f"volume must be a cubic (Lv, Lv, Lv) array, got {tuple(vol.shape)}")
    V.check_finite(fn, "volume", vol)
    vol = vol.detach().to("cpu", torch.float64)
    Lv = int(vol.shape[0])
    L = Lv if L is None else V.check_int(fn, "L", L, minimum=3)
    if L > Lv:
        fail(fn, f"L ({L}) must not exceed the volume side ({Lv})")
    N = V.check_int(fn, "N", N, minimum=1)
    if N < L:
        fail(fn, f"N must be at least the projection side L = {L} (a micrograph holds at least one patch), got {N}")
    n_mic = V.check_int(fn, "n_micrographs", n_micrographs, minimum=1)
    gamma = V.check_float(fn, "gamma", gamma, positive=True)
    if gamma >= 1:
        fail(fn, f"gamma must be in (0, 1) (the fraction of the micrograph covered), got {gamma}")
    snr = V.check_float(fn, "snr", snr, positive=True)
    if method not in ("basis", "volume"):
        fail(fn, f"method must be 'basis' or 'volume', got {method!r}")
    sep = 2 * L - 1 if separation is None else V.check_int(fn, "separation", separation, minimum=L)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(int(seed))
    T = max(1, int(round(gamma * N * N / (L * L))))
    from ..geometry.rotations import random_rotations  # noqa: PLC0415

    if method == "basis":
        from .. import fourier  # noqa: PLC0415

        v = vol if Lv == L else fourier.downsample(vol, L, 3)
        basis = VolumeBasis(L, max_ell(L) if ell_max is None else ell_max)
        x = basis.symmetrize(basis.expand(v))
        proj = Projector(basis)

        def projections(R):
            return proj.images(x, R)
        scale, side = 1, L
        coef = x
    else:
        coef = None
        from ..physics.projection import project  # noqa: PLC0415

        def projections(R):
            return project(vol, R).to(torch.float64)
        scale, side = Lv / L, Lv
    Nfull = int(round(N * scale))
    if method == "volume" and abs(Nfull - N * scale) > 1e-9:
        fail(fn, f"for method='volume', N * Lv / L must be an integer, got {N} * {Lv} / {L}")
    clean, locs, rots, energies, images = [], [], [], [], []
    for _ in range(n_mic):
        R = random_rotations(T, generator=gen, dtype=torch.float64)
        imgs = projections(R)
        corners = _place(Nfull, side, T, int(round(sep * scale)), rng, fn)
        m = torch.zeros(Nfull, Nfull, dtype=torch.float64)
        for (r, c), img in zip(corners.tolist(), imgs):
            m[r:r + side, c:c + side] += img
        clean.append(m)
        locs.append(torch.from_numpy(corners))
        rots.append(R)
        energies.append(imgs.pow(2).sum((-2, -1)))
        images.append(imgs)
    clean = torch.stack(clean)
    mean_energy = float(torch.cat(energies).mean())
    sigma_full = math.sqrt(mean_energy / (side * side * snr))  # eq. 4 at the simulated resolution
    noisy = clean + sigma_full * torch.randn(clean.shape, generator=gen, dtype=torch.float64)
    sigma = sigma_full
    if method == "volume" and Lv != L:
        from .. import fourier  # noqa: PLC0415

        clean, noisy = fourier.downsample(clean, N, 2), fourier.downsample(noisy, N, 2)
        sigma = sigma_full * L / Lv  # mean-preserving Fourier crop: noise variance / (Lv / L)^2
        locs = [torch.div(l, scale, rounding_mode="floor").long() for l in locs]
    return Micrographs(noisy, clean, sigma, L, locs, rots, snr, images, coef)


def extract_patches(micrographs, L: int, *, locations: Optional[Sequence] = None):
    """Non-overlapping ``L x L`` patches (§III-A), row-major per micrograph.

    Args:
        micrographs: ``(N, N)`` or ``(n, N, N)`` real (``N`` not a multiple of ``L``: the border is
            dropped).
        L: patch side.
        locations: optional ground truth (per micrograph ``(T_i, 2)`` top-left corners, eq. 5 spacing).

    Returns:
        ``patches`` float64 ``(P, L, L)``; with ``locations`` also ``truth`` int64 ``(P, 2)``: the
        displacement ``(d0, d1)`` of the projection seen in each patch, ``(L, L)`` for empty patches
        (a patch that meets several projections reports the one that covers most of it).
    """
    fn = "extract_patches"
    m, _ = to_tensor(micrographs, fn, "micrographs")
    V.check_floating(fn, "micrographs", m)
    if m.dim() == 2:
        m = m[None]
    if m.dim() != 3:
        fail(fn, f"micrographs must have shape (N, N) or (n, N, N), got {tuple(m.shape)}")
    L = V.check_int(fn, "L", L, minimum=2)
    n0, n1 = int(m.shape[-2]), int(m.shape[-1])
    if n0 < L or n1 < L:
        fail(fn, f"micrographs ({n0} x {n1}) are smaller than one patch (L = {L})")
    V.check_finite(fn, "micrographs", m)
    a, b = n0 // L, n1 // L
    m = m.detach().to(torch.float64)
    patches = m[:, :a * L, :b * L].reshape(m.shape[0], a, L, b, L).permute(0, 1, 3, 2, 4).reshape(-1, L, L)
    if locations is None:
        return patches
    if len(locations) != m.shape[0]:
        fail(fn, f"locations must hold one (T, 2) array per micrograph ({m.shape[0]}), got {len(locations)}")
    truth = torch.full((m.shape[0], a, b, 2), L, dtype=torch.int64)
    cover = torch.zeros(m.shape[0], a, b, dtype=torch.int64)
    for i, loc in enumerate(locations):
        for r, c in torch.as_tensor(loc).tolist():
            for pa in range(r // L, min(a, (r + L - 1) // L + 1)):
                for pb in range(c // L, min(b, (c + L - 1) // L + 1)):
                    d0, d1 = pa * L - r, pb * L - c
                    area = (L - abs(d0)) * (L - abs(d1))
                    if abs(d0) < L and abs(d1) < L and area > cover[i, pa, pb]:
                        cover[i, pa, pb] = area
                        truth[i, pa, pb] = torch.tensor([d0, d1])
    return patches, truth.reshape(-1, 2)


# ----------------------------------------------------------------------------------------------
# the forward operator shared by the E- and M-steps
# ----------------------------------------------------------------------------------------------
class EMOperator:
    """Real linear forward model of the EM for ``K`` rotations: ``g_w = J_w theta`` (``L x L``).

    ``theta`` (float64 ``(M,)``) parametrises the coefficients ``x = U theta`` (complex ``(M,)``) of
    real volumes in :class:`VolumeBasis` (``U`` an orthonormal real basis of the fixed points of
    :meth:`VolumeBasis.conjugate_mirror`); ``J_w`` is :meth:`Projector.images` applied to the
    columns of ``U`` (eq. 16; built from :meth:`Projector.matrices`), so the E-step projections and the M-step matrices are the same
    operator. Memory ``K L^2 M`` doubles (``K = 552, L = 11, ell_max = 10``: 117 MB).

    Args:
        L, ell_max: the volume basis (``ell_max <= max_ell(L)``).
        rotations: ``(K, 3, 3)`` the rotation grid (:func:`rotation_grid`).
    """

    def __init__(self, L: int, ell_max: int, rotations):
        fn = "EMOperator"
        L = V.check_int(fn, "L", L, minimum=3)
        ell_max = V.check_int(fn, "ell_max", ell_max, minimum=0)
        if ell_max > max_ell(L):
            fail(fn, f"L = {L} is too small for ell_max = {ell_max}: the Nyquist rule leaves no radial function "
                     f"(S(ell_max) = 0); use ell_max <= {max_ell(L)} or a larger L")
        R, _ = to_tensor(rotations, fn, "rotations")
        V.check_floating(fn, "rotations", R)
        if R.dim() != 3 or R.shape[0] < 1:
            fail(fn, f"rotations must have shape (K, 3, 3) with K >= 1, got {tuple(R.shape)}")
        R = R.detach().to("cpu", torch.float64)
        V.check_rotations(fn, "rotations", R)
        self.L, self.ell_max, self.rotations, self.K = L, ell_max, R, int(R.shape[0])
        self.basis = VolumeBasis(L, ell_max)
        self.projector = Projector(self.basis)
        self.support = self.projector.pswf.disk_mask.clone()
        M = self.basis.count
        self.M = M
        # U: orthonormal real basis of {x : conjugate_mirror(x) = x}, from the real 2M x 2M matrix of
        # symmetrize (an orthogonal projector for the real inner product Re <x, y>).
        eye = torch.eye(M, dtype=torch.complex128)
        cols = torch.cat([self.basis.symmetrize(eye), self.basis.symmetrize(1j * eye)], 0)  # (2M, M)
        Pm = torch.cat([cols.real, cols.imag], 1).T  # (2M real, 2M): column j = projector(e_j)
        w, Q = torch.linalg.eigh(0.5 * (Pm + Pm.T))
        keep = Q[:, w > 0.5]
        if keep.shape[1] != M:
            fail(fn, f"internal: the real-volume subspace has dimension {keep.shape[1]}, expected {M}")
        self.U = torch.complex(keep[:M], keep[M:])  # (M complex, M real)
        # J_w = Re E(to_real(B_w U)): the PSWF coefficients of the projections of the basis columns
        # (Projector.matrices, eq. 14) evaluated on the pixel grid, as Projector.images does.
        B = self.projector.matrices(wigner=self.projector.wigner(R))  # (K, M_pswf, M_vol)
        b = torch.matmul(B, self.U).transpose(1, 2)  # (K, M, M_pswf)
        pswf = self.projector.pswf
        imgs = pswf.evaluate(pswf.to_real(b).real)  # (K, M, L, L)
        self.J = imgs.permute(0, 2, 3, 1).reshape(self.K, L * L, M).contiguous()  # (K, L^2, M)
        self._visible = None

    def theta_from_coefficients(self, x) -> torch.Tensor:
        """``theta = Re(U^H x)`` (the real-volume part of ``x``)."""
        t = torch.as_tensor(x).to(torch.complex128)
        if t.shape[-1] != self.M:
            fail("EMOperator.theta_from_coefficients", f"x must have shape (..., {self.M}), got {tuple(t.shape)}")
        return (t @ self.U.conj()).real

    def coefficients(self, theta) -> torch.Tensor:
        """Volume-basis coefficients ``x = U theta`` (complex128 ``(..., M)``)."""
        return torch.as_tensor(theta, dtype=torch.float64).to(torch.complex128) @ self.U.T

    def volume(self, theta) -> torch.Tensor:
        """Real-space volume ``(L, L, L)`` of ``theta``."""
        return self.basis.evaluate(self.coefficients(theta))

    def projections(self, theta, dtype=torch.float64) -> torch.Tensor:
        """``g_w = P R_w f`` for all rotations: ``(K, L, L)`` (0 outside the disk)."""
        th = torch.as_tensor(theta, dtype=torch.float64)
        return (self.J @ th).reshape(self.K, self.L, self.L).to(dtype)

    def random_theta(self, generator: Optional[torch.Generator] = None, scale: float = 1.0) -> torch.Tensor:
        """A random start: i.i.d. normal ``theta`` scaled by ``scale``."""
        return scale * torch.randn(self.M, generator=generator, dtype=torch.float64)

    def visibility(self, shift_weights: torch.Tensor) -> torch.Tensor:
        """``m_w[q] = sum_k W[w, k] [projection pixel q visible under displacement k]`` (the diagonal
        of ``sum_k W[w, k] (C T_k Z)^T (C T_k Z)``): ``(K, L^2)`` from ``W (K, D)``. Pixel ``(r, c)`` is
        visible for ``d0 in [r - L + 1, r]``, ``d1 in [c - L + 1, c]``: an ``L x L`` box sum."""
        L = self.L
        Wg = shift_weights.reshape(-1, 1, 2 * L - 1, 2 * L - 1)
        box = torch.nn.functional.conv2d(Wg, torch.ones(1, 1, L, L, dtype=Wg.dtype))  # (K, 1, L, L)
        return box.reshape(-1, L * L)


# ----------------------------------------------------------------------------------------------
# E-step, M-step, Q
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Statistics:
    """Sufficient statistics of one E-step (float64): ``n`` = sum of patch weights; ``energy`` =
    ``sum_p ||I_p||^2``; ``shift_weights (K, D)``; ``empty`` = total empty-state posterior;
    ``backprojection (K, L, L)``; ``log_likelihood`` = ``sum_p log p(I_p; x, rho)``;
    ``log_evidence (P,)``, ``empty_posterior (P,)``, ``shift_posterior (P, D)`` or None."""

    n: float
    energy: float
    shift_weights: torch.Tensor
    empty: float
    backprojection: torch.Tensor
    log_likelihood: float
    log_evidence: torch.Tensor
    empty_posterior: torch.Tensor
    shift_posterior: Optional[torch.Tensor]

    def all_reduce(self, group=None) -> "Statistics":
        """Sum the statistics of every process of a ``torch.distributed`` group, in place (a
        collective: every process calls it, each with the E-step of its own patches). The sums
        (``n``, ``energy``, ``shift_weights``, ``empty``, ``backprojection``, ``log_likelihood``)
        become those of all the patches; the per-patch fields stay this process's."""
        from .._distributed import all_reduce_sum_, require_group  # noqa: PLC0415

        require_group("Statistics.all_reduce")
        scalars = torch.tensor([self.n, self.energy, self.empty, self.log_likelihood], dtype=torch.float64,
                               device=self.shift_weights.device)
        self.shift_weights, self.backprojection = self.shift_weights.clone(), self.backprojection.clone()
        all_reduce_sum_([scalars, self.shift_weights, self.backprojection], group=group)
        self.n, self.energy, self.empty, self.log_likelihood = scalars.tolist()
        return self


def uniform_log_prior(L: int) -> torch.Tensor:
    """``log rho`` uniform over the paper's ``(2L)^2`` shifts: ``(D + 1,)`` (D displacements, then the
    empty state with its ``4L - 1`` shifts)."""
    L = V.check_int("uniform_log_prior", "L", L, minimum=1)
    D = (2 * L - 1) ** 2
    lp = torch.full((D + 1,), -math.log(4 * L * L), dtype=torch.float64)
    lp[-1] = math.log((4 * L - 1) / (4 * L * L))
    return lp


def _check_patches(fn, patches, L):
    x, _ = to_tensor(patches, fn, "patches")
    V.check_floating(fn, "patches", x)
    if x.dim() != 3 or tuple(x.shape[1:]) != (L, L):
        fail(fn, f"patches must have shape (P, L, L) = (P, {L}, {L}), got {tuple(x.shape)}")
    V.check_finite(fn, "patches", x)
    return x


def _check_op(fn, op, stats=None):
    if not isinstance(op, EMOperator):
        fail(fn, f"op must be an EMOperator, got {type(op).__name__}", TypeError)
    if stats is not None and not isinstance(stats, Statistics):
        fail(fn, f"stats must be the Statistics of e_step, got {type(stats).__name__}", TypeError)


def _check_theta_prior(fn, op, theta, log_prior):
    _check_op(fn, op)
    th, _ = to_tensor(theta, fn, "theta")
    if tuple(th.shape) != (op.M,) or th.is_complex():
        fail(fn, f"theta must be a real vector of shape ({op.M},) (EMOperator.M), got {th.dtype} {tuple(th.shape)}")
    V.check_finite(fn, "theta", th)
    lp, _ = to_tensor(log_prior, fn, "log_prior")
    D = (2 * op.L - 1) ** 2
    if tuple(lp.shape) != (D + 1,):
        fail(fn, f"log_prior must have shape (D + 1,) = ({D + 1},) for L = {op.L}, got {tuple(lp.shape)}")
    if bool(torch.isnan(lp).any()) or bool((lp == math.inf).any()):
        fail(fn, "log_prior must not contain NaN or +inf")
    return th.detach().to(torch.float64), lp.detach().to(torch.float64)


def e_step(op: EMOperator, patches, theta, log_prior, sigma: float, *, posterior: bool = False,
           dtype=torch.float32) -> Statistics:
    """E-step (eq. 22–24) for all patches, shifts and the ``K`` rotations of ``op``.

    Args:
        op: :class:`EMOperator`; patches: ``(P, L, L)``; theta: ``(M,)`` current volume;
        log_prior: ``(D + 1,)`` ``log rho`` (:func:`uniform_log_prior` layout); sigma: noise std;
        posterior: also keep ``p(shift | I_p)`` (Algorithm 2); dtype: kernel precision
        (float32 with float64 accumulation, or float64).
    """
    fn = "e_step"
    _check_op(fn, op)
    x = _check_patches(fn, patches, op.L)
    s = V.check_float(fn, "sigma", sigma, positive=True)
    th, lp = _check_theta_prior(fn, op, theta, log_prior)
    if dtype not in (torch.float32, torch.float64):
        fail(fn, f"dtype must be torch.float32 or torch.float64, got {dtype}", TypeError)
    g = op.projections(th, dtype)
    r = ops_em.em_estep(x.to(dtype), g, s, lp.to(dtype), support=op.support, posterior=posterior)
    xd = x.to(torch.float64)
    return Statistics(n=float(x.shape[0]), energy=float(xd.pow(2).sum()), shift_weights=r.shift_weights,
                      empty=float(r.empty_posterior.sum()), backprojection=r.backprojection,
                      log_likelihood=float(r.log_evidence.sum()), log_evidence=r.log_evidence,
                      empty_posterior=r.empty_posterior, shift_posterior=r.shift_posterior)


def normal_equations(op: EMOperator, stats: Statistics) -> tuple[torch.Tensor, torch.Tensor]:
    """``A`` (eq. 31/34) and ``y`` (eq. 30/32) in the ``theta`` parametrisation:
    ``A = sum_w J_w^T diag(m_w) J_w``, ``y = sum_w J_w^T h_w`` (float64 ``(M, M)``, ``(M,)``)."""
    _check_op("normal_equations", op, stats)
    m = op.visibility(stats.shift_weights)  # (K, L^2)
    h = stats.backprojection.reshape(op.K, -1)
    sup = op.support.reshape(-1)
    J = op.J[:, sup, :]  # pixels outside the disk carry no signal
    Jm = J * m[:, sup, None]
    A = Jm.reshape(-1, op.M).T @ J.reshape(-1, op.M)
    y = torch.einsum("kqm,kq->m", J, h[:, sup])
    return 0.5 * (A + A.T), y


def q_value(op: EMOperator, stats: Statistics, theta, log_prior, sigma: float, normal=None) -> float:
    """Eq. 25 for ``(theta, rho)`` given the statistics of an E-step at ``(theta_k, rho_k)``:

        Q = -(E - 2 y^T theta + theta^T A theta) / (2 sigma^2) - (n L^2 / 2) log(2 pi sigma^2)
            + sum_k W_k log rho_k + W_e log rho_e - (n - W_e) log K

    (``E = sum_p ||I_p||^2``; the empty shifts as one state, its rotations marginalised)."""
    th, lp = _check_theta_prior("q_value", op, theta, log_prior)
    s2 = V.check_float("q_value", "sigma", sigma, positive=True) ** 2
    A, y = normal if normal is not None else normal_equations(op, stats)
    quad = stats.energy - 2 * float(y @ th) + float(th @ (A @ th))
    Wk = stats.shift_weights.sum(0)

    def xlogy(w, l):
        return torch.where(w > 0, w * l, torch.zeros_like(w)).sum()
    prior = float(xlogy(Wk, lp[:-1])) + (stats.empty * float(lp[-1]) if stats.empty > 0 else 0.0)
    return (-quad / (2 * s2) - 0.5 * stats.n * op.L ** 2 * math.log(2 * math.pi * s2) + prior
            - (stats.n - stats.empty) * math.log(op.K))


def m_step(op: EMOperator, stats: Statistics, *, ridge: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """M-step (eq. 29, 37): ``theta = A^{-1} y`` and ``rho_k = sum_w W[w, k] / n``,
    ``rho_e = W_e / n``. ``ridge`` (>= 0) adds ``ridge * mean(diag A) * I`` to ``A`` (default 0: the
    exact M-step; a least-squares solution is used if ``A`` is singular). Returns
    ``(theta (M,), log_prior (D + 1,))``."""
    fn = "m_step"
    _check_op(fn, op, stats)
    ridge = V.check_float(fn, "ridge", ridge, minimum=0.0)
    if stats.n <= 0:
        fail(fn, "the statistics hold no patches (n = 0)")
    A, y = normal_equations(op, stats)
    if ridge > 0:
        A = A + ridge * float(A.diagonal().mean()) * torch.eye(op.M, dtype=A.dtype)
    try:
        L_ = torch.linalg.cholesky(A)
        theta = torch.cholesky_solve(y[:, None], L_)[:, 0]
    except RuntimeError:
        theta = torch.linalg.lstsq(A, y[:, None], driver="gelsd").solution[:, 0]
    rho = torch.cat([stats.shift_weights.sum(0), torch.tensor([stats.empty], dtype=torch.float64)]) / stats.n
    return theta, torch.log(rho)


# ----------------------------------------------------------------------------------------------
# Algorithm 1 with frequency marching
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class EMState:
    """Where a reconstruction stands (enough to resume): ``stage`` index into the ``ell_max``
    schedule, ``iteration`` within the stage, ``theta`` of that stage's operator, ``log_prior``,
    ``history`` (one dict per iteration: stage, ell_max, iteration, Q, log_likelihood, seconds),
    ``rng_state`` (the patch sampler)."""

    stage: int
    iteration: int
    theta: torch.Tensor
    log_prior: torch.Tensor
    history: list
    rng_state: dict
    done: bool = False


def _lift(op_from: EMOperator, theta, op_to: EMOperator) -> torch.Tensor:
    """Frequency marching: coefficients of ``ell_max`` into the larger basis (zeros elsewhere)."""
    x = op_from.coefficients(theta)
    b0, b1 = op_from.basis, op_to.basis
    pos = {(int(e), int(m), int(s)): i for i, (e, m, s) in
           enumerate(zip(b1.indices["ell"], b1.indices["m"], b1.indices["s"]))}
    x1 = torch.zeros(b1.count, dtype=torch.complex128)
    for i, (e, m, s) in enumerate(zip(b0.indices["ell"], b0.indices["m"], b0.indices["s"])):
        x1[pos[(int(e), int(m), int(s))]] = x[i]
    return op_to.theta_from_coefficients(x1)


def reconstruct(patches, sigma: float, *, L: int, ell_max: Sequence[int] = (6, 8, 10), K: int = 552,
                iterations: Sequence[int] | int = 10, S: float = 1.0, epsilon: float = 0.0, seed: int = 0,
                theta0=None, log_prior0=None, dtype=torch.float32, state: Optional[EMState] = None,
                callback: Optional[Callable[[EMState, EMOperator], None]] = None,
                distributed: Optional[bool] = None) -> tuple[torch.Tensor, EMState, EMOperator]:
    """Algorithm 1 (stochastic approximate EM) with frequency marching (§III-D).

    Args:
        patches: ``(P, L, L)`` from :func:`extract_patches`; sigma: noise std per pixel.
        L: patch side; ell_max: the marching schedule (each stage starts from the last; a single
            value disables marching); K: rotations (:func:`rotation_grid`).
        iterations: maximum iterations per stage (``N_it``; an int for all stages).
        S: stochastic factor: each iteration draws ``floor(S P)`` patches uniformly (``S = 1``:
            full-batch EM).
        epsilon: stop a stage when ``Q_{k+1} - Q_k <= epsilon`` (Algorithm 1; ``-inf`` disables).
            With ``S < 1`` the Q values of successive minibatches are noisy; the default 0 follows the
            paper.
        seed: patch sampling and the random start (i.i.d. normal ``theta``, scaled to the energy of
            the data); theta0 / log_prior0: explicit start for the first stage.
        dtype: E-step precision; state: resume from a saved :class:`EMState`;
        callback: called after every iteration with ``(state, operator)`` (progress, checkpoints).
        distributed: split every E-step over a ``torch.distributed`` process group (``None``: when
            one with more than one process is initialised, e.g. under ``torchrun``). Every process
            holds all the patches and draws the same minibatch; each runs the E-step on its share
            (every ``world``-th patch of it) and the sufficient statistics are summed
            (:meth:`Statistics.all_reduce`), so every process makes the same M-step and ends with
            the same state: the reconstruction of one process, up to the order of the sums.

    Returns:
        ``(volume (L, L, L) float64, state, operator of the last stage)``.
    """
    fn = "reconstruct"
    L = V.check_int(fn, "L", L, minimum=3)
    x = _check_patches(fn, patches, L)
    if x.shape[0] < 1:
        fail(fn, "patches must hold at least one patch")
    sigma = V.check_float(fn, "sigma", sigma, positive=True)
    sched = [V.check_int(fn, "ell_max", e, minimum=0) for e in (ell_max if isinstance(ell_max, Sequence) else [ell_max])]
    if not sched:
        fail(fn, "ell_max must list at least one value")
    for e in sched:
        if e > max_ell(L):
            fail(fn, f"L = {L} is too small for ell_max = {e} (largest with a radial function: {max_ell(L)})")
    its = [iterations] * len(sched) if isinstance(iterations, int) else list(iterations)
    if len(its) != len(sched):
        fail(fn, f"iterations must be an int or one per stage ({len(sched)}), got {len(its)}")
    S = V.check_float(fn, "S", S, positive=True)
    if S > 1:
        fail(fn, f"S must be in (0, 1], got {S}")
    K = V.check_int(fn, "K", K, minimum=1)
    from .. import _distributed  # noqa: PLC0415

    world, rank = _distributed.world(fn, distributed)
    P = int(x.shape[0])
    B = max(1, int(math.floor(S * P)))
    if B < world:
        fail(fn, f"each E-step draws floor(S P) = {B} patches, fewer than the {world} processes sharing it")
    R = rotation_grid(K)
    rng = torch.Generator().manual_seed(int(seed))
    if state is None:
        state = EMState(stage=0, iteration=0, theta=None, log_prior=None, history=[], rng_state={})
    else:
        rng.set_state(state.rng_state["torch"])
    op = EMOperator(L, sched[state.stage], R)
    if state.theta is None:
        if theta0 is not None:
            state.theta = torch.as_tensor(theta0, dtype=torch.float64)
        else:
            # random start scaled so that its projections carry about the energy of the data
            t = op.random_theta(rng)
            g = op.projections(t)
            data_power = max(float(x.pow(2).mean()) - sigma ** 2, 1e-12 * sigma ** 2)
            t = t * math.sqrt(data_power * L * L / max(float(g.pow(2).sum((-2, -1)).mean()), 1e-300))
            state.theta = t
        state.log_prior = uniform_log_prior(L) if log_prior0 is None else torch.as_tensor(log_prior0, dtype=torch.float64)
    while not state.done:
        stage = state.stage
        q_prev = state.history[-1]["Q"] if state.history and state.history[-1]["stage"] == stage else -math.inf
        t0 = time.perf_counter()
        idx = torch.randperm(P, generator=rng)[:B] if B < P else torch.arange(P)
        if world == 1:
            stats = e_step(op, x[idx], state.theta, state.log_prior, sigma, dtype=dtype)
        else:  # this process's share of the minibatch; the sums over all of it (eq. 22-24)
            stats = e_step(op, x[idx[rank::world]], state.theta, state.log_prior, sigma, dtype=dtype).all_reduce()
        t1 = time.perf_counter()
        q = q_value(op, stats, state.theta, state.log_prior, sigma)  # Q_k of Algorithm 1
        theta, lp = m_step(op, stats)
        t2 = time.perf_counter()
        state.history.append({"stage": stage, "ell_max": sched[stage], "iteration": state.iteration, "Q": q,
                              "log_likelihood": stats.log_likelihood, "patches": B,
                              "seconds": t2 - t0, "e_step_seconds": t1 - t0, "m_step_seconds": t2 - t1})
        converged = (q - q_prev) <= epsilon and math.isfinite(q_prev)
        state.theta, state.log_prior = theta, lp
        state.iteration += 1
        if converged or state.iteration >= its[stage]:
            if stage + 1 < len(sched):
                op_next = EMOperator(L, sched[stage + 1], R)
                state.theta = _lift(op, state.theta, op_next)
                op = op_next
                state.stage, state.iteration = stage + 1, 0
            else:
                state.done = True
        state.rng_state = {"torch": rng.get_state()}
        if callback is not None:
            callback(state, op)
    return op.volume(state.theta), state, op


# ----------------------------------------------------------------------------------------------
# Algorithm 2
# ----------------------------------------------------------------------------------------------
def pick_particles(op: EMOperator, patches, theta, log_prior, sigma: float, *, dtype=torch.float32):
    """Algorithm 2: the most probable shift of each patch, ``argmax_l p(l | I_p, x)`` over the
    displacements and the empty state. Returns int64 ``(P, 2)``: the displacement ``(d0, d1)``, or
    ``(L, L)`` for patches judged empty (the layout of :func:`extract_patches`'s ``truth``)."""
    _check_op("pick_particles", op)
    st = e_step(op, patches, theta, log_prior, sigma, posterior=True, dtype=dtype)
    probs = torch.cat([st.shift_posterior, st.empty_posterior[:, None]], 1)
    best = probs.argmax(1)
    d = ops_em.displacements(op.L)
    out = torch.full((best.shape[0], 2), op.L, dtype=torch.int64)
    ne = best < d.shape[0]
    out[ne] = d[best[ne]]
    return out


def _sees_support(d: torch.Tensor, L: int, support: torch.Tensor) -> torch.Tensor:
    """Whether a patch at displacement ``d (P, 2)`` shows any pixel of ``support (L, L)``."""
    cs = torch.nn.functional.pad(support.to(torch.int64).cumsum(0).cumsum(1), (1, 0, 1, 0))
    dd = d.clamp(-L, L)
    r0, r1 = dd[:, 0].clamp(min=0), (L + dd[:, 0]).clamp(max=L)
    c0, c1 = dd[:, 1].clamp(min=0), (L + dd[:, 1]).clamp(max=L)
    r1, c1 = torch.maximum(r1, r0), torch.maximum(c1, c0)
    n = cs[r1, c1] - cs[r0, c1] - cs[r1, c0] + cs[r0, c0]
    return (n > 0) & (d[:, 0] != L)


def picking_scores(picked, truth, L: int, support=None) -> dict:
    """§IV-B: F1 (eq. 39) for detecting empty patches (empty = positive) and the share of patches
    at least half occupied by a projection (``|d0|, |d1| < L/2`` in our displacement terms: the
    paper's ``l < L/2`` or ``l > 3L/2``) whose picked displacement is within one pixel per axis.

    ``support`` (``(L, L)`` bool, e.g. :attr:`EMOperator.support`): also report ``f1_signal``, where
    a patch (true or picked) counts as empty when it shows no pixel of the support (a patch that
    meets only the corners of a disk-supported projection carries no signal and cannot be told
    from an empty one)."""
    fn = "picking_scores"
    L = V.check_int(fn, "L", L, minimum=1)
    p, t = (to_tensor(v, fn, name)[0] for v, name in ((picked, "picked"), (truth, "truth")))
    for name, v in (("picked", p), ("truth", t)):
        if v.dim() != 2 or v.shape[1] != 2 or v.is_complex() or v.is_floating_point():
            fail(fn, f"{name} must be integer displacements (P, 2) (pick_particles' layout), "
                     f"got {v.dtype} {tuple(v.shape)}")
    if p.shape != t.shape:
        fail(fn, f"picked and truth must have the same shape, got {tuple(p.shape)} and {tuple(t.shape)}")
    extra = {}
    if support is not None:
        sup = to_tensor(support, fn, "support")[0].to(torch.bool)
        if tuple(sup.shape) != (L, L):
            fail(fn, f"support must be an (L, L) = ({L}, {L}) mask, got {tuple(sup.shape)}")
        pe_s, te_s = ~_sees_support(p, L, sup), ~_sees_support(t, L, sup)
        tp_s = int((pe_s & te_s).sum())
        prec_s = tp_s / max(1, int(pe_s.sum()))
        rec_s = tp_s / max(1, int(te_s.sum()))
        extra = {"f1_signal": 2 * prec_s * rec_s / (prec_s + rec_s) if prec_s + rec_s else 0.0,
                 "empty_fraction_signal": float(te_s.float().mean())}
    pe, te = p[:, 0] == L, t[:, 0] == L
    tp = int((pe & te).sum())
    fp = int((pe & ~te).sum())
    fn_ = int((~pe & te).sum())
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn_) if tp + fn_ else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    half = (~te) & (t[:, 0].abs() < L / 2) & (t[:, 1].abs() < L / 2)
    ok = half & ~pe & ((p - t).abs().amax(1) <= 1)
    acc = int(ok.sum()) / int(half.sum()) if int(half.sum()) else float("nan")
    return {"f1": f1, "precision": prec, "recall": rec, "shift_accuracy": acc,
            "empty_fraction": float(te.float().mean()), "half_occupied": int(half.sum()), **extra}
