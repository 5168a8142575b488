"""Losses of the amortized model (seeds/003 §3.5 and supp. D).

* :func:`fourier_l2`: ``‖Ŷ_i − X̂_i‖²`` in Fourier space (supp. D eq. 7; seeds/004 eq. 11), the
  maximum-likelihood loss under white Gaussian noise. Normalised by ``n⁴`` so that, by Parseval
  (``Σ_k |F(k)|² = n² Σ_x |f(x)|²`` for the unnormalised centred FT), it is the mean squared
  real-space error per pixel of the band-limited residual: white noise of variance ``σ²`` gives
  ``σ² · (disk area / n²)``.
* :func:`symmetric_loss`: eq. 10, ``min(‖Ŷ_i − Γ(Y_i)‖², ‖R_π[Ŷ_i] − Γ(R_π[Y_i])‖²)`` per
  image; only the better path carries gradient, and which one won is returned so that the pose
  of that path can be reported.
"""
from __future__ import annotations

import torch

from .._validate import check_torch_tensor, fail

__all__ = ["fourier_l2", "symmetric_loss"]


def fourier_l2(target_ft: torch.Tensor, model_ft: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image squared distance ``Σ_{k ∈ mask} |Ŷ(k) − X̂(k)|² / n⁴`` (module docstring).

    Args:
        target_ft, model_ft: complex ``(B, n, n)`` centred Fourier images.
        mask: optional boolean ``(n, n)`` (the disk where the model is defined).

    Returns:
        real ``(B,)``.
    """
    fn = "fourier_l2"
    check_torch_tensor(fn, "target_ft", target_ft)
    check_torch_tensor(fn, "model_ft", model_ft)
    if target_ft.shape != model_ft.shape or target_ft.dim() != 3 or target_ft.shape[-1] != target_ft.shape[-2]:
        fail(fn, f"target_ft and model_ft must both have shape (B, n, n), got {tuple(target_ft.shape)} and "
                 f"{tuple(model_ft.shape)}")
    n = target_ft.shape[-1]
    r = target_ft - model_ft
    e = r.real.square() + r.imag.square()
    if mask is not None:
        check_torch_tensor(fn, "mask", mask)
        if tuple(mask.shape) != (n, n) or mask.dtype != torch.bool:
            fail(fn, f"mask must be a boolean ({n}, {n}) array, got {mask.dtype} {tuple(mask.shape)}")
        e = e * mask
    return e.sum((-1, -2)) / float(n) ** 4


def symmetric_loss(loss_direct: torch.Tensor, loss_rotated: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 10: the per-image minimum of the direct path's loss and the π-rotated path's loss.

    The selection is a ``where`` (not a smooth min): the gradient flows only through the chosen
    path, as in the paper (supp. D.2, Fig. S5). Ties go to the direct path.

    Args:
        loss_direct, loss_rotated: real ``(B,)``.

    Returns:
        ``(loss (B,), flipped (B,) bool)``: ``flipped`` is True where the rotated path won.
    """
    check_torch_tensor("symmetric_loss", "loss_direct", loss_direct)
    check_torch_tensor("symmetric_loss", "loss_rotated", loss_rotated)
    if loss_direct.shape != loss_rotated.shape or loss_direct.dim() != 1:
        fail("symmetric_loss", f"loss_direct and loss_rotated must both have shape (B,), got "
                               f"{tuple(loss_direct.shape)} and {tuple(loss_rotated.shape)}")
    flipped = loss_rotated < loss_direct
    return torch.where(flipped, loss_rotated, loss_direct), flipped
