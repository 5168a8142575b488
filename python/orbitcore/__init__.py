"""orbitcore: fast, tested kernels and reconstruction algorithms for orbit recovery
(multireference alignment and single-particle cryo-EM).

Conventions: see ARCHITECTURE.md (Fourier centring, rotations, CTF, units).
"""
from __future__ import annotations

from . import _ext
from ._ext import built_with_cuda, cuda_available
from ._validate import OrbitcoreWarning
from .ops.slice import fourier_insert, fourier_sample, fourier_slice
from . import basis, fourier, geometry  # noqa: E402

__version__ = getattr(_ext.C, "__version__", "dev")

__all__ = [
    "OrbitcoreWarning",
    "basis",
    "built_with_cuda",
    "cuda_available",
    "fourier",
    "fourier_insert",
    "fourier_sample",
    "fourier_slice",
    "geometry",
]
