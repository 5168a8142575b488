"""orbitcore: fast, tested kernels and reconstruction algorithms for orbit recovery
(multireference alignment and single-particle cryo-EM).

Conventions: see ARCHITECTURE.md (Fourier centring, rotations, CTF, units).
"""
from __future__ import annotations

from . import _ext
from ._ext import built_with_cuda, cuda_available
from ._alloc import tune_allocator
from ._validate import OrbitcoreWarning
from .ops.slice import fourier_insert, fourier_sample, fourier_slice
from .ops.moments import (
    MomentAccumulator, MomentLayout, Moments, model_moments, moment_loss, moments_from_stack,
)
from . import basis, fourier, geometry, nn  # noqa: E402

__version__ = getattr(_ext.C, "__version__", "dev")

# Subpackages with heavier dependencies (mrcfile, starfile, pandas, scipy) load on first use:
# `orbitcore.physics`, `orbitcore.io`, `orbitcore.metrics` work without an explicit import.
_LAZY = ("physics", "io", "metrics")


def __getattr__(name):
    if name in _LAZY:
        import importlib  # noqa: PLC0415

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'orbitcore' has no attribute {name!r}")

__all__ = [
    "MomentAccumulator",
    "MomentLayout",
    "Moments",
    "OrbitcoreWarning",
    "basis",
    "built_with_cuda",
    "cuda_available",
    "fourier",
    "fourier_insert",
    "fourier_sample",
    "fourier_slice",
    "geometry",
    "io",
    "metrics",
    "model_moments",
    "moment_loss",
    "moments_from_stack",
    "nn",
    "physics",
    "tune_allocator",
]
