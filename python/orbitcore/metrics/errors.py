"""Orbit-invariant relative errors (seeds/000 eqs. 21, 22, 27).

* MRA (eq. 21): ``min_s ‖S_s v − u‖ / ‖v‖`` over the circular shifts ``S_s v(x) = v(x − s)``
  of the discretised signal ``v`` (or density ``ρ``), all shifts at once by FFT.
* Cryo-EM (eq. 27): ``min_R ‖R ∘ v − u‖ / ‖v‖`` over rotations, translations and (by
  default) the handedness, which ab-initio reconstruction cannot fix, through
  :func:`orbitcore.metrics.align_volumes`. The estimate is aligned onto the truth (equivalent
  for norm-preserving transforms, so the denominator is the untouched ``‖v‖``).
* Moments (eq. 22): ``‖M(model) − A‖ / ‖A‖`` with ``A`` the moment estimate from data.
"""
from __future__ import annotations

import torch

from .._validate import fail, from_tensor, to_tensor
from .align import AlignmentResult, align_volumes

__all__ = ["mra_relative_error", "volume_relative_error", "moment_relative_error"]


def mra_relative_error(estimate, truth, *, return_shift: bool = False):
    """Eq. 21 of seeds/000: ``min_s ‖S_s truth − estimate‖_F / ‖truth‖_F`` over circular shifts.

    Args:
        estimate, truth: real ``(..., n)`` signals or densities on the same grid (batches
            broadcast).
        return_shift: also return the minimising shift ``s`` (``S_s v(x) = v(x − s)``).

    Returns:
        ``(...)`` errors (float64), and the ``(...)`` integer shifts if asked; input kind.
    """
    fn = "mra_relative_error"
    u, kind = to_tensor(estimate, fn, "estimate")
    v, _ = to_tensor(truth, fn, "truth")
    if u.is_complex() or v.is_complex():
        fail(fn, "estimate and truth must be real", TypeError)
    if u.dim() < 1 or v.dim() < 1 or u.shape[-1] != v.shape[-1]:
        fail(fn, f"estimate and truth must have the same last axis (n), got {tuple(u.shape)} and {tuple(v.shape)}")
    u = u.detach().to(torch.float64)
    v = v.detach().to(device=u.device, dtype=torch.float64)
    n = u.shape[-1]
    nv = v.pow(2).sum(-1)
    if bool((nv == 0).any()):
        fail(fn, "truth must not be zero (the error is relative to ‖truth‖)")
    # c[s] = Σ_x v(x − s) u(x) for every circular shift s, by FFT
    c = torch.fft.irfft(torch.fft.rfft(u, dim=-1) * torch.fft.rfft(v, dim=-1).conj(), n=n, dim=-1)
    best, s = c.max(dim=-1)
    d2 = (nv + u.pow(2).sum(-1) - 2 * best).clamp_min(0)
    err = torch.sqrt(d2 / nv)
    if return_shift:
        return from_tensor(err, kind), from_tensor(s, kind)
    return from_tensor(err, kind)


def volume_relative_error(estimate, truth, *, mirror: bool = True,
                          alignment: AlignmentResult | None = None, **align_kwargs):
    """Eq. 27 of seeds/000: ``min ‖R ∘ truth − estimate‖_F / ‖truth‖_F`` after 3-D alignment.

    Args:
        estimate, truth: real ``(D, D, D)`` volumes.
        mirror: include the handedness (mirror) in the minimisation (default True).
        alignment: a precomputed :class:`AlignmentResult` of ``estimate`` onto ``truth``.
        align_kwargs: passed to :func:`align_volumes`.

    Returns:
        ``(error, alignment)``.
    """
    fn = "volume_relative_error"
    u, _ = to_tensor(estimate, fn, "estimate")
    v, _ = to_tensor(truth, fn, "truth")
    if u.dim() != 3 or tuple(u.shape) != tuple(v.shape):
        fail(fn, f"estimate and truth must be (D, D, D) volumes of the same shape, got {tuple(u.shape)} and "
                 f"{tuple(v.shape)}")
    v64 = v.detach().to(torch.float64).cpu()
    if float(v64.norm()) == 0:
        fail(fn, "truth must not be zero")
    if alignment is None:
        alignment = align_volumes(v64, u, mirror=mirror, **align_kwargs)
    from .align import transform_volume  # noqa: PLC0415

    aligned = transform_volume(u.detach().to(torch.float64).cpu(), alignment.rotation, alignment.shift,
                               alignment.mirror)
    err = float((aligned - v64).norm() / v64.norm())
    return err, alignment


def moment_relative_error(model, estimate) -> float:
    """Eq. 22 of seeds/000: ``‖model − estimate‖_F / ‖estimate‖_F`` for moment arrays of any
    shape (real or complex), ``estimate`` being the data's moment estimator ``A``."""
    fn = "moment_relative_error"
    a, _ = to_tensor(model, fn, "model")
    b, _ = to_tensor(estimate, fn, "estimate")
    if tuple(a.shape) != tuple(b.shape):
        fail(fn, f"model must have the shape of estimate {tuple(b.shape)}, got {tuple(a.shape)}")
    dt = torch.complex128 if (a.is_complex() or b.is_complex()) else torch.float64
    a = a.detach().to(dt)
    b = b.detach().to(device=a.device, dtype=dt)
    nb = float(torch.linalg.vector_norm(b))
    if nb == 0:
        fail(fn, "estimate must not be zero (the error is relative to ‖estimate‖)")
    return float(torch.linalg.vector_norm(a - b)) / nb
