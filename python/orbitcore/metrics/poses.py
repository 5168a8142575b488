"""Pose errors after global alignment (seeds/003 Table 1 definitions).

Estimated poses are defined up to the gauge of the reconstruction: a global rotation ``Q``,
the handedness (a mirrored volume with poses ``F R' F``, ``F = diag(1, 1, -1)``, gives the
same images, seeds/003 Supp. D.1) and a global 3-D translation ``c`` of the volume, which moves
image ``i``'s shift by ``(R_iᵀ c)_xy``. With the true poses ``(R_i, t_i)`` and estimates
``(R'_i, t'_i)``:

* rotation error: ``median_i ‖R_i − Q R̃'_i‖_F²`` (``R̃' = R'`` or ``F R' F``), minimised over
  ``Q`` and the handedness (CryoAI's "median square Frobenius norm"); for small errors
  ``‖ΔR‖_F² ≈ 2θ²`` (θ in radians);
* shift error: ``mean_i ‖t_i − t'_i − (R_iᵀ c)_xy‖²`` in pixels² (CryoAI's "mean square
  L2-norm"), with ``c`` fitted by least squares (``fit_volume_shift=False``: ``c = 0``).

``Q`` is found robustly (the median ignores a minority of wrong poses): candidates
``R_j R̃'_jᵀ`` from a sample of images, the one with the lowest median error, then orthogonal
Procrustes on the images within twice the median angle, iterated.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .._validate import check_int, check_rotations, fail, to_tensor

__all__ = ["PoseErrors", "pose_errors", "align_rotations"]

_F = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))


@dataclass
class PoseErrors:
    """Result of :func:`pose_errors`.

    Attributes:
        rotation_median_sq_frobenius: ``median ‖R_i − Q R̃'_i‖_F²`` (CryoAI Table 1).
        rotation_mean_sq_frobenius: the mean of the same.
        rotation_median_angle: median geodesic angle (degrees) between ``R_i`` and ``Q R̃'_i``.
        shift_mse: ``mean ‖t_i − t'_i − (R_iᵀ c)_xy‖²`` in pixels² (``None`` without shifts).
        shift_mse_raw: the same with ``c = 0``.
        global_rotation: ``Q`` (3, 3). mirror: whether ``R̃' = F R' F``.
        volume_shift: ``c`` (3,) in pixels (``None`` without shifts).
        per_image_sq_frobenius: ``(N,)``; per_image_angle: ``(N,)`` degrees.
        aligned_rotations: ``(N, 3, 3)`` the estimates in the truth's frame, ``Q R̃'_i``.
    """

    rotation_median_sq_frobenius: float
    rotation_mean_sq_frobenius: float
    rotation_median_angle: float
    shift_mse: float | None
    shift_mse_raw: float | None
    global_rotation: torch.Tensor
    mirror: bool
    volume_shift: torch.Tensor | None
    per_image_sq_frobenius: torch.Tensor
    per_image_angle: torch.Tensor
    aligned_rotations: torch.Tensor

    def as_dict(self) -> dict:
        return {
            "rotation_median_sq_frobenius": self.rotation_median_sq_frobenius,
            "rotation_mean_sq_frobenius": self.rotation_mean_sq_frobenius,
            "rotation_median_angle_deg": self.rotation_median_angle,
            "shift_mse_px2": self.shift_mse, "shift_mse_raw_px2": self.shift_mse_raw,
            "mirror": self.mirror,
        }


def _rots(fn: str, name: str, R) -> torch.Tensor:
    t, _ = to_tensor(R, fn, name)
    if t.dim() != 3 or tuple(t.shape[-2:]) != (3, 3):
        fail(fn, f"{name} must have shape (N, 3, 3), got {tuple(t.shape)}")
    if not t.is_floating_point():
        fail(fn, f"{name} must be real floating point, got {t.dtype}", TypeError)
    t = t.detach().to(torch.float64).cpu()
    check_rotations(fn, name, t, atol=1e-3)
    return t


def _sq_frob(R: torch.Tensor, Q: torch.Tensor, Rp: torch.Tensor) -> torch.Tensor:
    """‖R_i − Q R'_i‖_F² = 6 − 2 tr(R_iᵀ Q R'_i) for rotations."""
    tr = torch.einsum("nji,jk,nki->n", R, Q, Rp)
    return (6.0 - 2.0 * tr).clamp_min(0.0)


def _procrustes(R: torch.Tensor, Rp: torch.Tensor) -> torch.Tensor:
    """argmax_Q Σ tr(R_iᵀ Q R'_i) over rotations: Q = U diag(1, 1, det) Vᵀ from Σ R_i R'_iᵀ."""
    H = torch.einsum("nij,nkj->ik", R, Rp)
    U, _, Vh = torch.linalg.svd(H)
    d = torch.sign(torch.det(U @ Vh))
    S = torch.diag(torch.tensor([1.0, 1.0, float(d) if d != 0 else 1.0], dtype=torch.float64))
    return U @ S @ Vh


def align_rotations(rotations_est, rotations_true, *, mirror: bool = True, n_trials: int = 200,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, bool]:
    """Global ``(Q, mirror)`` minimising ``median_i ‖R_i − Q R̃'_i‖_F²`` (module docstring)."""
    fn = "align_rotations"
    Rp = _rots(fn, "rotations_est", rotations_est)
    R = _rots(fn, "rotations_true", rotations_true)
    if Rp.shape[0] != R.shape[0] or R.shape[0] == 0:
        fail(fn, f"rotations_est and rotations_true must have the same length N >= 1, got {Rp.shape[0]} and "
                 f"{R.shape[0]}")
    n_trials = check_int(fn, "n_trials", n_trials, minimum=1)
    N = R.shape[0]
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    score_idx = torch.randperm(N, generator=g)[:4096] if N > 4096 else torch.arange(N)
    best = None
    for m in ((False, True) if mirror else (False,)):
        Rm = _F @ Rp @ _F if m else Rp
        cand = torch.randperm(N, generator=g)[:n_trials]
        Qs = R[cand] @ Rm[cand].transpose(-1, -2)  # Q_j with R_j = Q_j R'_j exactly
        tr = torch.einsum("nji,cjk,nki->cn", R[score_idx], Qs, Rm[score_idx])
        med = (6.0 - 2.0 * tr).clamp_min(0).median(dim=1).values
        Q = Qs[int(med.argmin())]
        for _ in range(8):
            # inliers: within twice the median angle (4x in squared norm) of the current Q, so
            # that every good pose counts (a tighter cut would lock in the starting error)
            e = _sq_frob(R, Q, Rm)
            inl = e <= 4 * e.median()
            Q = _procrustes(R[inl], Rm[inl])
        med_e = float(_sq_frob(R, Q, Rm).median())
        if best is None or med_e < best[2]:
            best = (Q, m, med_e)
    return best[0], best[1]


def pose_errors(rotations_est, rotations_true, shifts_est=None, shifts_true=None, *, mirror: bool = True,
                fit_volume_shift: bool = True, global_rotation=None, generator: torch.Generator | None = None
                ) -> PoseErrors:
    """Pose errors of estimated poses against the truth after global alignment (module docstring).

    Args:
        rotations_est, rotations_true: ``(N, 3, 3)``.
        shifts_est, shifts_true: optional ``(N, 2)`` in pixels (our convention, ``t = -origin``).
        mirror: consider the handedness ambiguity (default True).
        fit_volume_shift: fit the global 3-D translation ``c`` of the reconstruction.
        global_rotation: use this ``(Q, mirror)`` instead of estimating it (e.g. from
            :class:`~orbitcore.metrics.AlignmentResult`: ``(res.rotation, res.mirror)``).

    Returns:
        :class:`PoseErrors`.
    """
    fn = "pose_errors"
    Rp = _rots(fn, "rotations_est", rotations_est)
    R = _rots(fn, "rotations_true", rotations_true)
    N = R.shape[0]
    if Rp.shape[0] != N or N == 0:
        fail(fn, f"rotations_est and rotations_true must have the same length N >= 1, got {Rp.shape[0]} and {N}")
    if global_rotation is None:
        Q, m = align_rotations(Rp, R, mirror=mirror, generator=generator)
    else:
        if not (isinstance(global_rotation, (tuple, list)) and len(global_rotation) == 2):
            fail(fn, "global_rotation must be a (Q (3, 3), mirror bool) pair", TypeError)
        Q = _rots(fn, "global_rotation[0]", to_tensor(global_rotation[0], fn, "global_rotation")[0][None])[0]
        m = bool(global_rotation[1])
    Rm = _F @ Rp @ _F if m else Rp
    e = _sq_frob(R, Q, Rm)
    aligned = Q @ Rm
    tr = torch.einsum("nji,nji->n", R, aligned)
    ang = torch.rad2deg(torch.acos(((tr - 1) / 2).clamp(-1, 1)))
    shift_mse = shift_raw = c = None
    if (shifts_est is None) != (shifts_true is None):
        fail(fn, "give both shifts_est and shifts_true, or neither")
    if shifts_est is not None:
        ts, _ = to_tensor(shifts_est, fn, "shifts_est")
        tt, _ = to_tensor(shifts_true, fn, "shifts_true")
        if tuple(ts.shape) != (N, 2) or tuple(tt.shape) != (N, 2):
            fail(fn, f"shifts_est and shifts_true must have shape ({N}, 2), got {tuple(ts.shape)} and {tuple(tt.shape)}")
        d = (tt.detach().to(torch.float64).cpu() - ts.detach().to(torch.float64).cpu())
        shift_raw = float(d.pow(2).sum(1).mean())
        if fit_volume_shift:
            A = R.transpose(-1, -2)[:, :2, :]  # (R_iᵀ c)_xy = A_i c
            c = torch.linalg.lstsq(A.reshape(-1, 3), d.reshape(-1, 1)).solution[:, 0]
            res = d - (A @ c)
            shift_mse = float(res.pow(2).sum(1).mean())
        else:
            c = torch.zeros(3, dtype=torch.float64)
            shift_mse = shift_raw
    return PoseErrors(rotation_median_sq_frobenius=float(e.median()), rotation_mean_sq_frobenius=float(e.mean()),
                      rotation_median_angle=float(ang.median()), shift_mse=shift_mse, shift_mse_raw=shift_raw,
                      global_rotation=Q, mirror=m, volume_shift=c, per_image_sq_frobenius=e, per_image_angle=ang,
                      aligned_rotations=aligned)
