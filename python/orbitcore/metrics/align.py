"""3-D alignment of a volume to a reference over rotations, translations and handedness.

The transform (:func:`transform_volume`): ``out(x) = v_m(Rᵀ (x - t))`` with ``v_m(y) = v(F y)``,
``F = diag(1, 1, -1)``, when ``mirror`` is set (else ``v_m = v``); ``x`` in voxels from the box
centre ``D // 2``, ``t`` in voxels. :func:`align_volumes` finds ``(R, t, mirror)`` so that
``transform_volume(volume, R, t, mirror) ≈ reference``.

If ``volume`` was reconstructed with poses ``R'_i`` (images ``Σ_z v(R'_i p)``), the same images
come from the aligned volume with poses ``R · R'_i`` (``R · F R'_i F`` when mirrored), so the
alignment also maps estimated poses onto the reference's frame (see
:func:`orbitcore.metrics.pose_errors`, which estimates that map from the poses themselves).

Search (coarse to fine):

1. Global: both volumes are Fourier-cropped to ``coarse_size`` (default 24) voxels. Every
   rotation of a grid of ``coarse_step`` degrees (golden-spiral viewing directions × in-plane
   angles: 1872 rotations at 20°; twice that with ``mirror=True``) is scored by the maximum of
   the FFT cross-correlation over all circular translations (the rotated volume's half
   spectrum is sampled from its 2×-padded, gridding-corrected FT with
   :func:`orbitcore.fourier_sample`, the correlation comes from one ``irfftn``).
2. Local: the best ``n_candidates`` distinct maxima per handedness are refined by L-BFGS over
   an axis-angle increment and a sub-voxel translation, maximising the real-space correlation
   inside the ball of radius ``m/2``, with the volume sampled by trilinear interpolation of its
   2× Fourier-upsampled copy (nearly unbiased, unlike trilinear sampling of the FT, whose
   optimum is off by ~0.3–0.7°). First at ``coarse_size``, then at ``refine_size`` (default
   ``min(D, 64)``) for the best candidate of each handedness within 0.05 of the best score.

Accuracy (measured, tests/metrics/test_align.py and benchmarks/bench_physics.py): a 64³ chiral
pseudo-molecule rotated, shifted and mirrored analytically (atoms moved, no interpolation) is
recovered to < 0.02° and < 0.003 voxel, with the right handedness; the aligned volume then
differs from the reference by ~1e-3 (the cubic-spline resampling of
:func:`transform_volume`). Accuracy is limited by ``refine_size`` for larger boxes (a 64³
refinement of a 256³ map resolves ~1/4 of its voxel). Volumes with (pseudo-)symmetries are
aligned to one of their equivalent poses.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .. import fourier
from .._validate import check_float, check_int, check_rotations, fail, from_tensor, to_tensor
from ..geometry.distributions import fibonacci_sphere, rotations_from_directions
from ..ops.slice import fourier_sample
from ..physics.projection import prepare_volume_ft

__all__ = ["AlignmentResult", "align_volumes", "transform_volume", "rotation_angle", "so3_grid",
           "mirror_symmetry"]

_F = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))


@dataclass
class AlignmentResult:
    """Result of :func:`align_volumes`.

    Attributes:
        rotation: ``(3, 3)`` float64 rotation ``R``.
        shift: ``(3,)`` translation ``t`` (voxels, ``(x, y, z)``).
        mirror: whether the volume was mirrored (``z -> -z``) first.
        correlation: normalised real-space correlation of the aligned volume with the reference
            (within the band limit of the refinement).
        aligned: the aligned volume ``(D, D, D)`` (:func:`transform_volume`), or ``None``.
        coarse_step: angular step of the coarse grid (degrees).
        candidates: ``(rotation, shift, score, mirror)`` of every candidate refined at the coarse size.
        timings: seconds spent in the global search and the two refinements.
    """

    rotation: torch.Tensor
    shift: torch.Tensor
    mirror: bool
    correlation: float
    aligned: torch.Tensor | None
    coarse_step: float
    candidates: list
    timings: dict | None = None

    def apply(self, volume):
        """Apply this alignment to another volume on the same grid (e.g. the other half-map)."""
        return transform_volume(volume, self.rotation, self.shift, self.mirror)

    def map_poses(self, rotations, shifts=None):
        """Poses of the unaligned volume → poses in the reference frame.

        Rotations ``(N, 3, 3)``: ``Q_i = R · R'_i`` (``R · F R'_i F`` when mirrored). Shifts
        ``(N, 2)`` in pixels (default 0): ``s_i - (Q_iᵀ t)_xy``, because the volume was also
        translated by ``t``. ``project(volume, R', s) ≈ project(reference, Q, s_mapped)``.

        Returns:
            ``(rotations, shifts)`` in the input's kind.
        """
        fn = "AlignmentResult.map_poses"
        Rp, kind = to_tensor(rotations, fn, "rotations")
        if Rp.dim() != 3 or tuple(Rp.shape[-2:]) != (3, 3):
            fail(fn, f"rotations must have shape (N, 3, 3), got {tuple(Rp.shape)}")
        Rp64 = Rp.detach().to(torch.float64).cpu()
        if self.mirror:
            Rp64 = _F @ Rp64 @ _F
        Q = self.rotation @ Rp64
        if shifts is None:
            s0 = torch.zeros(Rp64.shape[0], 2, dtype=torch.float64)
        else:
            s0, _ = to_tensor(shifts, fn, "shifts")
            if tuple(s0.shape) != (Rp64.shape[0], 2):
                fail(fn, f"shifts must have shape ({Rp64.shape[0]}, 2), got {tuple(s0.shape)}")
            s0 = s0.detach().to(torch.float64).cpu()
        s_new = s0 - (Q.transpose(-1, -2) @ self.shift)[:, :2]
        dt = Rp.dtype if Rp.is_floating_point() else torch.float64
        return from_tensor(Q.to(dt), kind), from_tensor(s_new.to(dt), kind)


def _rotations_like(fn: str, name: str, R: torch.Tensor) -> torch.Tensor:
    """Real ``(..., 3, 3)`` as float64 (not checked to be orthogonal: the angle is a diagnostic)."""
    if R.is_complex():
        fail(fn, f"{name} must be real rotation matrices, got {R.dtype}", TypeError)
    if R.dim() < 2 or tuple(R.shape[-2:]) != (3, 3):
        fail(fn, f"{name} must have shape (..., 3, 3), got {tuple(R.shape)}")
    return R.to(torch.float64)


def rotation_angle(R1, R2=None):
    """Geodesic angle in degrees between rotations ``(..., 3, 3)`` (``R2`` default identity)."""
    fn = "rotation_angle"
    A, kind = to_tensor(R1, fn, "R1")
    A = _rotations_like(fn, "R1", A)
    if R2 is not None:
        B = _rotations_like(fn, "R2", to_tensor(R2, fn, "R2")[0])
        A = A.transpose(-1, -2) @ B
    tr = A[..., 0, 0] + A[..., 1, 1] + A[..., 2, 2]
    ang = torch.rad2deg(torch.acos(((tr - 1) / 2).clamp(-1.0, 1.0)))
    return from_tensor(ang, kind)


def so3_grid(step_deg: float) -> torch.Tensor:
    """A deterministic grid ``(M, 3, 3)`` covering SO(3) with spacing about ``step_deg``:
    ``4π / step²`` golden-spiral viewing directions × ``360 / step`` in-plane angles."""
    step = math.radians(check_float("so3_grid", "step_deg", step_deg, positive=True))
    n_dir = max(2, int(math.ceil(4 * math.pi / step ** 2)))
    n_psi = max(1, int(math.ceil(2 * math.pi / step)))
    d = fibonacci_sphere(n_dir)
    psi = torch.arange(n_psi, dtype=torch.float64) * (2 * math.pi / n_psi)
    R = rotations_from_directions(d[:, None, :].expand(n_dir, n_psi, 3), psi[None, :].expand(n_dir, n_psi))
    return R.reshape(-1, 3, 3)


def _volume(fn: str, name: str, v) -> tuple[torch.Tensor, str]:
    t, kind = to_tensor(v, fn, name)
    if t.is_complex() or t.dim() != 3 or not (t.shape[0] == t.shape[1] == t.shape[2]):
        fail(fn, f"{name} must be a real cube (D, D, D), got {t.dtype} {tuple(t.shape)}")
    if t.shape[0] < 4:
        fail(fn, f"{name} side must be at least 4, got {t.shape[0]}")
    t = t.detach().to(torch.float64).cpu()
    if not bool(torch.isfinite(t).all()):
        fail(fn, f"{name} must be finite (NaN or inf found)")
    return t, kind


def transform_volume(volume, rotation, shift=None, mirror: bool = False, *, order: int = 3):
    """``out(x) = v_m(Rᵀ (x - t))`` (module docstring): rotate about the centre voxel
    ``D // 2``, then translate by ``t`` (voxels, ``(x, y, z)``); ``mirror`` flips ``z`` first.

    Interpolation: cubic B-spline (``order=3``, ``scipy.ndimage.affine_transform``; 1 =
    trilinear), zero outside the box. Accurate to ~1e-3 relative for band-limited volumes
    (Gaussians of width >= 1.5 voxels). Returns the input's kind (float64 for torch input)."""
    from scipy import ndimage  # noqa: PLC0415

    fn = "transform_volume"
    v, kind = _volume(fn, "volume", volume)
    R, _ = to_tensor(rotation, fn, "rotation")
    if tuple(R.shape) != (3, 3):
        fail(fn, f"rotation must have shape (3, 3), got {tuple(R.shape)}")
    check_rotations(fn, "rotation", R.to(torch.float64))
    R = R.to(torch.float64).cpu()
    t = torch.zeros(3, dtype=torch.float64) if shift is None else to_tensor(shift, fn, "shift")[0].to(torch.float64).cpu()
    if tuple(t.shape) != (3,) or not bool(torch.isfinite(t).all()):
        fail(fn, f"shift must be a finite (3,) vector (x, y, z) in voxels, got {tuple(t.shape)}")
    D = v.shape[0]
    c = D // 2
    M = (_F @ R.T) if mirror else R.T  # input coordinate (x, y, z) = M (x_out - t)
    # ndimage works on array indices (z, y, x): permute the (x, y, z) matrix accordingly.
    P = torch.tensor([[0, 0, 1], [0, 1, 0], [1, 0, 0]], dtype=torch.float64)
    Mi = P @ M @ P
    ti = P @ t
    cen = torch.full((3,), float(c), dtype=torch.float64)
    offset = cen - Mi @ (cen + ti)
    out = ndimage.affine_transform(v.numpy(), Mi.numpy(), offset=offset.numpy(), order=order, mode="constant",
                                   cval=0.0, prefilter=order > 1)
    res = torch.from_numpy(out)
    return from_tensor(res, kind)


class _CoarseScorer:
    """Global search at side ``m``: for many rotations at once, the best circular translation
    by FFT cross-correlation. Works on the half spectrum (both volumes are real): the rotated
    volume's FT is sampled (trilinear, 2×-padded, gridding-corrected) at the ``rfftn``
    frequencies inside the ball ``|k| <= m/2 - 1/2``, and ``irfftn`` gives the correlation for
    every shift."""

    def __init__(self, ref: torch.Tensor, vol: torch.Tensor, m: int, pad: int = 2):
        D = ref.shape[0]
        self.m, self.pad = m, pad
        self.scale = D / m
        r = fourier.downsample(ref, m, 3) if m < D else ref
        v = fourier.downsample(vol, m, 3) if m < D else vol
        r, v = r - r.mean(), v - v.mean()
        self.Vp = prepare_volume_ft(v, pad).to(torch.complex64)
        kz = torch.fft.fftfreq(m, dtype=torch.float64) * m
        kx = torch.fft.rfftfreq(m, dtype=torch.float64) * m
        gz, gy, gx = torch.meshgrid(kz, kz, kx, indexing="ij")
        k = torch.stack((gx, gy, gz), -1).reshape(-1, 3)
        inside = k.norm(dim=1) <= m / 2 - 0.5
        self.flat = inside.nonzero()[:, 0]
        self.k = k[self.flat].to(torch.float32)
        self.half = (m, m, m // 2 + 1)
        Fr = torch.fft.rfftn(torch.fft.ifftshift(r), dim=(-3, -2, -1)).reshape(-1)[self.flat]
        self.Fr = Fr.to(torch.complex64)
        # weights of the half spectrum in Parseval sums (kx = 0 counted once, others twice)
        wgt = torch.where(self.k[:, 0] == 0, 1.0, 2.0).to(torch.float64)
        Fv = torch.fft.rfftn(torch.fft.ifftshift(v), dim=(-3, -2, -1)).reshape(-1)[self.flat]
        self.norm = float(((Fr.abs() ** 2) * wgt).sum().sqrt() * ((Fv.abs() ** 2) * wgt).sum().sqrt())

    def translation_scores(self, M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores (B,), shifts (B, 3) in m-voxels) of the best translation for each M = F^m R^T."""
        B, m = M.shape[0], self.m
        coords = self.pad * torch.einsum("bij,pj->bpi", M.to(torch.float32), self.k)
        G = fourier_sample(self.Vp, coords.reshape(-1, 3), check=False).reshape(B, -1)
        full = torch.zeros((B, self.half[0] * self.half[1] * self.half[2]), dtype=torch.complex64)
        full[:, self.flat] = self.Fr[None] * G.conj()
        cc = torch.fft.irfftn(full.reshape(B, *self.half), s=(m, m, m), dim=(-3, -2, -1))
        best, idx = cc.reshape(B, -1).max(dim=1)
        iz, iy, ix = np.unravel_index(idx.numpy(), (m, m, m))
        sh = torch.from_numpy(np.stack([ix, iy, iz], 1).astype(np.float64))
        sh = torch.where(sh > m // 2, sh - m, sh)
        return best.to(torch.float64) * m ** 3 / self.norm, sh


class _RealScorer:
    """Real-space correlation, inside the ball of radius ``m/2``, of the reference with the
    transformed volume, sampled by trilinear interpolation (``grid_sample``) of the volume
    Fourier-upsampled ``up``-fold. Nearly unbiased: the optimum sits within ~0.001° of the
    true rotation for band-limited volumes (trilinear sampling of the Fourier transform is
    biased by ~0.5° instead). Differentiable in the rotation and shift."""

    def __init__(self, ref: torch.Tensor, vol: torch.Tensor, m: int, up: int = 2, dtype=torch.float32):
        D = ref.shape[0]
        self.m, self.up, self.dtype = m, up, dtype
        self.scale = D / m
        r = fourier.downsample(ref, m, 3) if m < D else ref
        v = fourier.downsample(vol, m, 3) if m < D else vol
        big = fourier.ifft3c(fourier.fourier_pad(fourier.fft3c(v - v.mean()), up * m, 3)).real * up ** 3
        # orbitcore's trilinear kernel samples a DC-centred complex grid: use it in real space
        self.big = big.to(torch.complex64 if dtype == torch.float32 else torch.complex128)
        k = torch.arange(m, dtype=torch.float64) - m // 2
        zz, yy, xx = torch.meshgrid(k, k, k, indexing="ij")
        X = torch.stack((xx, yy, zz), -1).reshape(-1, 3)
        inside = X.norm(dim=1) <= m / 2
        self.X = X[inside]
        rr = r.reshape(-1)[inside]
        rr = rr - rr.mean()
        self.ref = (rr / rr.norm()).to(dtype)

    def score(self, M: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Correlation for the transform x -> M (x - t) (M = F^m R^T), t in m-voxels."""
        y = (self.X - t) @ M.T
        val = fourier_sample(self.big, (self.up * y).to(self.dtype), check=False).real
        val = val - val.mean()
        return ((self.ref * val).sum() / val.norm().clamp_min(1e-30)).to(torch.float64)


def _skew(w: torch.Tensor) -> torch.Tensor:
    z = torch.zeros((), dtype=w.dtype)
    return torch.stack((torch.stack((z, -w[2], w[1])), torch.stack((w[2], z, -w[0])),
                        torch.stack((-w[1], w[0], z))))


def _refine(scorer: _RealScorer, R0: torch.Tensor, t0: torch.Tensor, mirror: bool, iters: int = 60):
    """L-BFGS over (axis-angle increment, shift) maximising scorer.score; t in m-voxels."""
    w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    t = t0.clone().to(torch.float64).requires_grad_(True)
    Fm = _F if mirror else torch.eye(3, dtype=torch.float64)
    opt = torch.optim.LBFGS([w, t], lr=1.0, max_iter=iters, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-10, tolerance_change=1e-12)

    def rot():
        return torch.linalg.matrix_exp(_skew(w)) @ R0

    def closure():
        opt.zero_grad()
        loss = -scorer.score(Fm @ rot().T, t)
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        R = rot()
        s = float(scorer.score(Fm @ R.T, t))
    return R.detach(), t.detach(), s


def align_volumes(reference, volume, *, mirror: bool = True, coarse_step: float = 20.0, coarse_size: int = 24,
                  refine_size: int | None = 64, n_candidates: int = 2, return_aligned: bool = True,
                  verbose: bool = False) -> AlignmentResult:
    """Align ``volume`` to ``reference`` over rotations, translations and (optionally) the
    mirror: find ``(R, t, mirror)`` maximising the correlation of
    ``transform_volume(volume, R, t, mirror)`` with the reference (module docstring for the
    method and its accuracy).

    Args:
        reference, volume: real ``(D, D, D)`` volumes on the same grid.
        mirror: also search the mirrored volume (the handedness ambiguity of ab-initio
            reconstruction); ``False`` restricts to proper rotations.
        coarse_step: angular step of the global search (degrees).
        coarse_size: side of the downsampled volumes for the global search.
        refine_size: side for the final local refinement (default ``min(D, 64)``; ``None``: D).
        n_candidates: distinct coarse maxima per handedness refined locally.
        return_aligned: also return the aligned volume.

    Returns:
        :class:`AlignmentResult`.
    """
    fn = "align_volumes"
    ref, kind = _volume(fn, "reference", reference)
    vol, _ = _volume(fn, "volume", volume)
    if ref.shape != vol.shape:
        fail(fn, f"volume must have the shape of reference {tuple(ref.shape)}, got {tuple(vol.shape)}")
    if float(ref.std()) == 0 or float(vol.std()) == 0:
        fail(fn, "reference and volume must not be constant")
    step = check_float(fn, "coarse_step", coarse_step, positive=True)
    D = ref.shape[0]
    mc = min(D, check_int(fn, "coarse_size", coarse_size, minimum=8))
    mr = D if refine_size is None else min(D, check_int(fn, "refine_size", refine_size, minimum=8))
    nc = check_int(fn, "n_candidates", n_candidates, minimum=1)

    import time  # noqa: PLC0415

    t_start = time.perf_counter()
    grid = so3_grid(step)
    coarse = _CoarseScorer(ref, vol, mc)
    from tqdm.auto import tqdm  # noqa: PLC0415

    hands = (False, True) if mirror else (False,)
    scores, shifts, hand = [], [], []
    with torch.no_grad(), tqdm(total=len(grid) * len(hands), desc="align (coarse)", unit="rot",
                               disable=not verbose) as bar:
        for m in hands:
            Fm = _F if m else torch.eye(3, dtype=torch.float64)
            for s in range(0, len(grid), 256):
                Rg = grid[s:s + 256]
                sc, sh = coarse.translation_scores(Fm @ Rg.transpose(-1, -2))
                scores.append(sc)
                shifts.append(sh)
                hand.append(torch.full((len(Rg),), m, dtype=torch.bool))
                bar.update(len(Rg))
    scores, shifts, hand = torch.cat(scores), torch.cat(shifts), torch.cat(hand)
    rots = grid.repeat(len(hands), 1, 1)
    # the best distinct maxima per handedness (more than 1.5 coarse steps apart)
    chosen = []
    for m in hands:
        idx = torch.nonzero(hand == m)[:, 0]
        order = idx[torch.argsort(scores[idx], descending=True)]
        picked: list[int] = []
        for i in order.tolist():
            if picked:
                ang = rotation_angle(rots[picked], rots[i].expand(len(picked), 3, 3))
                if bool((ang <= 1.5 * step).any()):
                    continue
            picked.append(i)
            if len(picked) >= nc:
                break
        chosen += [(float(scores[i]), rots[i], shifts[i], bool(hand[i])) for i in picked]
    # local refinement at the coarse size for every candidate, then at refine_size for the best
    # of each handedness whose score is within 0.05 of the overall best
    t_coarse = time.perf_counter()
    mid = _RealScorer(ref, vol, mc)
    refined = [(*_refine(mid, R0, t0, m, iters=25), m) for _, R0, t0, m in chosen]
    refined.sort(key=lambda c: -c[2])
    t_mid = time.perf_counter()
    finals = []
    fine = _RealScorer(ref, vol, mr) if mr != mc else mid
    for m in hands:
        best = next((c for c in refined if c[3] == m), None)
        if best is None or best[2] < refined[0][2] - 0.05:
            continue
        R1, t1, s1, _ = best
        if fine is not mid:
            R1, t1, s1 = _refine(fine, R1, t1 * (mr / mc), m)
        finals.append((R1, t1 * fine.scale, s1, m))
    finals.sort(key=lambda c: -c[2])
    t_fine = time.perf_counter()
    R, t, s, m = finals[0]
    aligned = transform_volume(vol, R, t, m) if return_aligned else None
    if aligned is not None and kind == "numpy":
        aligned = aligned.numpy()
    cand = [(c[0], c[1] * mid.scale, c[2], c[3]) for c in refined]
    return AlignmentResult(rotation=R, shift=t, mirror=bool(m), correlation=float(s), aligned=aligned,
                           coarse_step=step, candidates=cand,
                           timings={"coarse_s": t_coarse - t_start, "refine_coarse_s": t_mid - t_coarse,
                                    "refine_fine_s": t_fine - t_mid, "grid_size": len(grid) * len(hands)})


def mirror_symmetry(volume, *, coarse_step: float = 20.0, coarse_size: int = 24, refine_size: int | None = 32,
                    verbose: bool = False) -> float:
    """How mirror-symmetric a volume is: the best normalised correlation between the volume and
    its mirror image (``z -> -z``) over all rotations and translations (:func:`align_volumes`
    with ``mirror=False`` on the mirrored copy). 1 for a volume with a mirror plane (any plane:
    every reflection is ``F`` composed with a rotation); lower for a chiral volume. The
    diagnostic of the "spurious planar symmetry" of amortized reconstructions trained with the
    plain L2 loss (seeds/003 §4.3, supp. D): compare with the value of the true structure."""
    fn = "mirror_symmetry"
    v, _ = _volume(fn, "volume", volume)
    if float(v.std()) == 0:
        fail(fn, "volume must not be constant")
    vm = torch.flip(v, dims=(0,))  # v(F x) about the centre index D // 2 ... for odd D exactly
    D = v.shape[0]
    if D % 2 == 0:  # keep the centre voxel D // 2 fixed: index z -> (2 (D // 2) - z) mod D
        idx = (2 * (D // 2) - torch.arange(D)) % D
        vm = v.index_select(0, idx)
    res = align_volumes(v, vm, mirror=False, coarse_step=coarse_step, coarse_size=min(coarse_size, D),
                        refine_size=refine_size, return_aligned=False, verbose=verbose)
    return float(res.correlation)
