"""Built-in test volumes, generated in code (no data files)."""
from __future__ import annotations

import math

import torch

from .._validate import check_int

__all__ = ["shepp_logan_3d"]

# 3-D Shepp–Logan head phantom (Kak & Slaney's ellipsoids) with the higher-contrast
# ("modified", Toft) intensities. Columns: intensity, semi-axes (a, b, c), centre (x0, y0, z0),
# rotation about z (degrees). Coordinates are in [-1, 1]^3.
_SHEPP_LOGAN_3D = (
    (1.0, 0.69, 0.92, 0.90, 0.0, 0.0, 0.0, 0.0),
    (-0.8, 0.6624, 0.874, 0.88, 0.0, 0.0, 0.0, 0.0),
    (-0.2, 0.41, 0.16, 0.21, -0.22, 0.0, -0.25, 108.0),
    (-0.2, 0.31, 0.11, 0.22, 0.22, 0.0, -0.25, 72.0),
    (0.1, 0.21, 0.25, 0.50, 0.0, 0.35, -0.25, 0.0),
    (0.1, 0.046, 0.046, 0.046, 0.0, 0.1, -0.25, 0.0),
    (0.1, 0.046, 0.023, 0.02, -0.08, -0.65, -0.25, 0.0),
    (0.1, 0.046, 0.023, 0.02, 0.06, -0.65, -0.25, 90.0),
    (0.1, 0.056, 0.04, 0.1, 0.06, -0.105, 0.625, 90.0),
    (0.1, 0.056, 0.056, 0.1, 0.0, 0.1, 0.625, 0.0),
)


def shepp_logan_3d(D: int, *, extent: float = 1.0, dtype=torch.float32, device=None) -> torch.Tensor:
    """The 3-D Shepp–Logan phantom on a ``(D, D, D)`` grid indexed ``[z, y, x]``.

    Voxel centres are at ``(i - D // 2) / (D / 2)`` (origin at index ``D // 2``); ``extent``
    scales the phantom (1.0: its outer ellipsoid spans 92% of the box along y). Non-negative,
    maximum 1.
    """
    D = check_int("shepp_logan_3d", "D", D, minimum=2)
    k = (torch.arange(D, dtype=torch.float64, device=device) - D // 2) / (D / 2) / extent
    z, y, x = torch.meshgrid(k, k, k, indexing="ij")
    vol = torch.zeros(D, D, D, dtype=torch.float64, device=device)
    for A, a, b, c, x0, y0, z0, phi in _SHEPP_LOGAN_3D:
        p = math.radians(phi)
        xr = (x - x0) * math.cos(p) + (y - y0) * math.sin(p)
        yr = -(x - x0) * math.sin(p) + (y - y0) * math.cos(p)
        zr = z - z0
        vol += A * ((xr / a) ** 2 + (yr / b) ** 2 + (zr / c) ** 2 <= 1).to(torch.float64)
    return vol.clamp_min(0).to(dtype)
