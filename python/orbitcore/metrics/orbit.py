"""Orbit-invariant errors for multireference alignment (seeds/000 eqs. 21, 22).

* Eq. 21: ``min_s ‖S_s v − u‖_F / ‖v‖_F`` over the ``n`` circular shifts
  ``S_s v(x) = v(x − s)`` of a discretised signal or density ``v`` (the group identified with
  the grid ``X_1``), every shift at once through an FFT cross-correlation.
* Eq. 22: ``‖M(model) − A‖_F / ‖A‖_F`` for a moment estimator ``A``.

Both are yardsticks (float64, no gradient). The signatures are those of the forward-model
issue's ``orbitcore.metrics`` so that either implementation can stand in for the other.
"""
from __future__ import annotations

import torch

from .._validate import fail, from_tensor, to_tensor

__all__ = ["mra_relative_error", "moment_relative_error"]


def mra_relative_error(estimate, truth, *, return_shift: bool = False):
    """Eq. 21: ``min_s ‖S_s truth − estimate‖_F / ‖truth‖_F`` over circular shifts.

    Args:
        estimate, truth: real ``(..., n)`` signals or densities on the same grid (leading
            axes broadcast).
        return_shift: also return the minimising integer shift ``s`` (``S_s v(x) = v(x − s)``,
            content moved by ``+s`` samples).

    Returns:
        ``(...)`` float64 errors (and int64 shifts), in the kind of ``estimate``.
    """
    fn = "mra_relative_error"
    u, kind = to_tensor(estimate, fn, "estimate")
    v, _ = to_tensor(truth, fn, "truth")
    if u.is_complex() or v.is_complex():
        fail(fn, f"estimate and truth must be real (real-space samples), got {u.dtype} and {v.dtype}", TypeError)
    if u.dim() < 1 or v.dim() < 1 or u.shape[-1] != v.shape[-1]:
        fail(fn, f"estimate and truth must be (..., n) on the same grid, got {tuple(u.shape)} and {tuple(v.shape)}")
    u = u.detach().to(torch.float64)
    v = v.detach().to(device=u.device, dtype=torch.float64)
    n = u.shape[-1]
    nv = v.square().sum(-1)
    if bool((nv == 0).any()):
        fail(fn, "truth must not be zero (the error is relative to ‖truth‖)")
    # corr[s] = Σ_x u(x) v(x − s): the overlap of the estimate with each shifted truth
    corr = torch.fft.irfft(torch.fft.rfft(u, dim=-1) * torch.fft.rfft(v, dim=-1).conj(), n=n, dim=-1)
    best, shift = corr.max(dim=-1)
    d2 = (nv + u.square().sum(-1) - 2.0 * best).clamp_min(0.0)
    err = torch.sqrt(d2 / nv)
    if return_shift:
        return from_tensor(err, kind), from_tensor(shift, kind)
    return from_tensor(err, kind)


def moment_relative_error(model, estimate) -> float:
    """Eq. 22: ``‖model − estimate‖_F / ‖estimate‖_F`` for moment arrays of the same shape (real
    or complex); ``estimate`` is the data's moment estimator ``A``."""
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
