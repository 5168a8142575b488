"""Fourier shell correlation (FSC) between two maps, with resolution estimates."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .. import fourier
from .._validate import check_finite, check_float, check_int, fail, to_tensor

__all__ = ["FSCResult", "fsc", "spherical_mask"]


@dataclass
class FSCResult:
    """FSC curve and resolutions.

    Attributes:
        curve: ``(S,)`` correlation per shell, shells ``0 .. D // 2`` (integer radius in Fourier
            pixels, ``round(|k|)``).
        shells: ``(S,)`` shell radii ``k`` in Fourier pixels.
        frequencies: ``(S,)`` shell frequencies in 1/Å (``k / (D * pixel_size)``).
        pixel_size: Å per voxel. ``box``: the side D.
        resolution_05, resolution_0143: resolution in Å where the curve first falls below 0.5 /
            0.143 (linear interpolation between shells), ``D * pixel_size / k``; the Nyquist
            resolution ``2 * pixel_size`` (roughly) if it never does.
        resolution_05_px, resolution_0143_px: the same in pixels (``D / k``; the unit of
            CryoAI's Table 1).
        shell_05, shell_0143: the crossing as a shell radius ``k`` in Fourier pixels.
    """

    curve: np.ndarray
    shells: np.ndarray
    frequencies: np.ndarray
    pixel_size: float
    box: int
    resolution_05: float
    resolution_0143: float
    resolution_05_px: float
    resolution_0143_px: float
    shell_05: float
    shell_0143: float

    def resolution(self, threshold: float) -> float:
        """Resolution in Å at another threshold."""
        return _crossing(self.curve, self.shells, threshold, self.pixel_size, self.box)[0]

    def to_dict(self) -> dict:
        return {
            "curve": self.curve.tolist(), "shells": self.shells.tolist(),
            "frequencies": self.frequencies.tolist(), "pixel_size": self.pixel_size, "box": self.box,
            "resolution_05": self.resolution_05, "resolution_0143": self.resolution_0143,
            "resolution_05_px": self.resolution_05_px, "resolution_0143_px": self.resolution_0143_px,
            "shell_05": self.shell_05, "shell_0143": self.shell_0143,
        }


def _crossing(curve: np.ndarray, shells: np.ndarray, threshold: float, pixel_size: float, D: int):
    """First fall below ``threshold`` after DC, linearly interpolated: (Å, shell radius)."""
    below = np.nonzero(curve < threshold)[0]
    below = below[below > 0]
    if below.size == 0:
        k = float(shells[-1])
    else:
        i = int(below[0])
        c0, c1 = curve[i - 1], curve[i]
        t = (c0 - threshold) / (c0 - c1) if c0 != c1 else 0.0
        k = float(shells[i - 1] + t * (shells[i] - shells[i - 1]))
    k = max(k, 1e-12)
    return D * pixel_size / k, k


def spherical_mask(D: int, radius: float | None = None, *, soft_width: float = 3.0, dtype=torch.float64,
                   device=None) -> torch.Tensor:
    """A ``(D, D, D)`` spherical mask centred at ``D // 2``: 1 inside ``radius`` voxels (default
    ``D/2 - soft_width``), a raised-cosine edge of ``soft_width`` voxels, 0 outside."""
    fn = "spherical_mask"
    D = check_int(fn, "D", D, minimum=2)
    w = check_float(fn, "soft_width", soft_width, minimum=0.0)
    r0 = D / 2 - w if radius is None else check_float(fn, "radius", radius, positive=True)
    r = fourier.radial_frequency(D, 3, dtype=dtype, device=device)  # |x| on the centred grid
    if w == 0:
        return (r <= r0).to(dtype)
    t = ((r - r0) / w).clamp(0, 1)
    return 0.5 * (1 + torch.cos(math.pi * t))


def fsc(volume1, volume2, pixel_size: float = 1.0, *, mask=None) -> FSCResult:
    """Fourier shell correlation between two real volumes ``(D, D, D)`` (vectorised over shells).

    ``FSC(k) = Re Σ_{round|q|=k} F1(q) conj(F2(q)) / sqrt(Σ |F1|² Σ |F2|²)`` over shells of
    integer radius ``k = 0 .. D // 2`` (Fourier pixels; corners beyond ``D // 2`` are not used).
    ``mask``: optional real ``(D, D, D)`` multiplied into both volumes first (e.g.
    :func:`spherical_mask`). Resolution in Å is ``D * pixel_size / k`` at the first crossing of
    0.5 and 0.143. Computed in float64; accepts torch or NumPy.
    """
    fn = "fsc"
    a, _ = to_tensor(volume1, fn, "volume1")
    b, _ = to_tensor(volume2, fn, "volume2")
    if a.is_complex() or b.is_complex():
        fail(fn, "volume1 and volume2 must be real (real-space maps)", TypeError)
    if a.dim() != 3 or a.shape[0] != a.shape[1] or a.shape[1] != a.shape[2]:
        fail(fn, f"volume1 must have shape (D, D, D), got {tuple(a.shape)}")
    if tuple(b.shape) != tuple(a.shape):
        fail(fn, f"volume2 must have the shape of volume1 {tuple(a.shape)}, got {tuple(b.shape)}")
    px = check_float(fn, "pixel_size", pixel_size, positive=True)
    a = a.detach().to(torch.float64)
    b = b.detach().to(device=a.device, dtype=torch.float64)
    check_finite(fn, "volume1", a)
    check_finite(fn, "volume2", b)
    if mask is not None:
        m, _ = to_tensor(mask, fn, "mask")
        if m.is_complex() or tuple(m.shape) != tuple(a.shape):
            fail(fn, f"mask must be real with shape {tuple(a.shape)}, got {m.dtype} {tuple(m.shape)}")
        m = m.detach().to(device=a.device, dtype=torch.float64)
        check_finite(fn, "mask", m)
        a, b = a * m, b * m
    D = a.shape[-1]
    F1, F2 = fourier.fft3c(a), fourier.fft3c(b)
    r = torch.round(fourier.radial_frequency(D, 3, device=a.device)).long().reshape(-1)
    S = D // 2 + 1
    keep = r < S
    r = r[keep]
    num = torch.zeros(S, dtype=torch.float64, device=a.device).index_add_(0, r, (F1 * F2.conj()).real.reshape(-1)[keep])
    p1 = torch.zeros(S, dtype=torch.float64, device=a.device).index_add_(0, r, F1.abs().pow(2).reshape(-1)[keep])
    p2 = torch.zeros(S, dtype=torch.float64, device=a.device).index_add_(0, r, F2.abs().pow(2).reshape(-1)[keep])
    curve = (num / torch.sqrt(p1 * p2).clamp_min(1e-300)).cpu().numpy()
    shells = np.arange(S, dtype=np.float64)
    r05, k05 = _crossing(curve, shells, 0.5, px, D)
    r0143, k0143 = _crossing(curve, shells, 0.143, px, D)
    return FSCResult(curve=curve, shells=shells, frequencies=shells / (D * px), pixel_size=px, box=D,
                     resolution_05=r05, resolution_0143=r0143, resolution_05_px=D / k05,
                     resolution_0143_px=D / k0143, shell_05=k05, shell_0143=k0143)
