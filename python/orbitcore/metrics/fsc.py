"""Fourier shell correlation."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .. import fourier
from .._validate import check_float, fail, to_tensor

__all__ = ["FSCResult", "fsc"]


@dataclass
class FSCResult:
    """FSC curve and resolutions.

    Attributes:
        curve: ``(S,)`` correlation per shell, shells ``0 .. D // 2`` (integer radius in Fourier pixels).
        shells: ``(S,)`` shell radii in Fourier pixels.
        frequencies: ``(S,)`` shell frequencies in 1/Å (``shell / (D * pixel_size)``).
        pixel_size: Å per voxel.
        resolution_05, resolution_0143: resolution (Å) where the curve first falls below 0.5 /
            0.143 (linear interpolation between shells); Nyquist ``2 * pixel_size`` if it never does.
        resolution_05_px, resolution_0143_px: the same as a shell radius in Fourier pixels.
    """

    curve: np.ndarray
    shells: np.ndarray
    frequencies: np.ndarray
    pixel_size: float
    resolution_05: float
    resolution_0143: float
    resolution_05_px: float
    resolution_0143_px: float

    def resolution(self, threshold: float) -> float:
        return _crossing(self.curve, self.shells, threshold, self.pixel_size, len(self.shells))[0]

    def to_dict(self) -> dict:
        return {
            "curve": self.curve.tolist(), "shells": self.shells.tolist(),
            "frequencies": self.frequencies.tolist(), "pixel_size": self.pixel_size,
            "resolution_05": self.resolution_05, "resolution_0143": self.resolution_0143,
            "resolution_05_px": self.resolution_05_px, "resolution_0143_px": self.resolution_0143_px,
        }


def _crossing(curve: np.ndarray, shells: np.ndarray, threshold: float, pixel_size: float, D2: int):
    below = np.nonzero(curve < threshold)[0]
    below = below[below > 0]
    D = 2 * (D2 - 1) if D2 > 1 else 2
    if below.size == 0:
        k = float(shells[-1])
    else:
        i = int(below[0])
        c0, c1 = curve[i - 1], curve[i]
        t = (c0 - threshold) / (c0 - c1) if c0 != c1 else 0.0
        k = float(shells[i - 1] + t * (shells[i] - shells[i - 1]))
    k = max(k, 1e-12)
    return D * pixel_size / k, k


def fsc(volume1, volume2, pixel_size: float = 1.0, *, mask=None) -> FSCResult:
    """FSC between two real volumes ``(D, D, D)`` (vectorised over shells).

    ``FSC(s) = Re Σ_{|k|∈s} F1 conj(F2) / sqrt(Σ |F1|² Σ |F2|²)`` over shells of integer radius
    ``s = round(|k|)``, ``s = 0 .. D // 2``. ``mask``: optional real ``(D, D, D)`` applied to both
    volumes first. Resolution in Å is ``D * pixel_size / s``.
    """
    fn = "fsc"
    a, _ = to_tensor(volume1, fn, "volume1")
    b, _ = to_tensor(volume2, fn, "volume2")
    if a.dim() != 3 or a.shape[0] != a.shape[1] or a.shape[1] != a.shape[2]:
        fail(fn, f"volume1 must have shape (D, D, D), got {tuple(a.shape)}")
    if tuple(b.shape) != tuple(a.shape):
        fail(fn, f"volume2 must have the shape of volume1 {tuple(a.shape)}, got {tuple(b.shape)}")
    px = check_float(fn, "pixel_size", pixel_size, positive=True)
    a = a.to(torch.float64)
    b = b.to(device=a.device, dtype=torch.float64)
    if mask is not None:
        m, _ = to_tensor(mask, fn, "mask")
        if tuple(m.shape) != tuple(a.shape):
            fail(fn, f"mask must have shape {tuple(a.shape)}, got {tuple(m.shape)}")
        m = m.to(device=a.device, dtype=torch.float64)
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
    r05, k05 = _crossing(curve, shells, 0.5, px, S)
    r0143, k0143 = _crossing(curve, shells, 0.143, px, S)
    return FSCResult(curve=curve, shells=shells, frequencies=shells / (D * px), pixel_size=px,
                     resolution_05=r05, resolution_0143=r0143, resolution_05_px=k05, resolution_0143_px=k0143)
