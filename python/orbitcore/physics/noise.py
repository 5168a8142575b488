"""White Gaussian noise at a requested signal-to-noise ratio.

SNR (ARCHITECTURE.md, seeds/002 eq. 4): ``SNR = E‖clean image‖² / (n² σ²)`` for ``n × n``
images and noise standard deviation ``σ`` per pixel, the expectation taken over the images
given; in decibels ``SNR_dB = 10 log10(SNR)``. So ``σ = sqrt(mean(clean²) / SNR)``.
"""
from __future__ import annotations

import math
import numbers

import torch

from .._validate import check_float, fail, from_tensor, to_tensor

__all__ = ["snr_to_db", "db_to_snr", "noise_sigma", "add_noise", "measured_snr"]


def _real_number(fn: str, name: str, v) -> float:
    """A real number (infinities allowed), or a TypeError naming ``fn``."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        fail(fn, f"{name} must be a real number, got {type(v).__name__} {v!r}", TypeError)
    return float(v)


def snr_to_db(snr: float) -> float:
    """``10 log10(snr)`` (``-inf`` for 0, ``inf`` for ``inf``)."""
    s = _real_number("snr_to_db", "snr", snr)
    if s < 0 or math.isnan(s):
        fail("snr_to_db", f"snr must be >= 0, got {snr!r}")
    return math.inf if s == math.inf else (-math.inf if s == 0 else 10.0 * math.log10(s))


def db_to_snr(db: float) -> float:
    """``10 ** (db / 10)``."""
    d = _real_number("db_to_snr", "db", db)
    if math.isnan(d):
        fail("db_to_snr", "db must be a number, got nan")
    return 10.0 ** (d / 10.0)


def _resolve_snr(fn: str, snr, snr_db) -> float:
    if (snr is None) == (snr_db is None):
        fail(fn, f"give exactly one of snr (linear) and snr_db (decibels), got snr={snr!r}, snr_db={snr_db!r}")
    if snr_db is not None:
        if isinstance(snr_db, bool) or not isinstance(snr_db, numbers.Real) or math.isnan(float(snr_db)):
            fail(fn, f"snr_db must be a real number (decibels), got {snr_db!r}", TypeError)
        return db_to_snr(snr_db)
    if isinstance(snr, bool) or not isinstance(snr, numbers.Real) or math.isnan(float(snr)):
        fail(fn, f"snr must be a positive number (linear ratio), got {snr!r}", TypeError)
    if float(snr) <= 0:
        fail(fn, f"snr must be > 0 (use snr=math.inf for no noise), got {snr!r}")
    return float(snr)


def noise_sigma(clean, snr: float | None = None, *, snr_db: float | None = None) -> float:
    """Noise standard deviation ``σ = sqrt(mean(clean²) / SNR)`` that gives the requested SNR
    for clean images ``(..., n, n)`` (``mean(clean²) = E‖clean‖² / n²``). ``snr = inf`` gives 0."""
    fn = "noise_sigma"
    x, _ = to_tensor(clean, fn, "clean")
    if x.is_complex() or x.dim() < 2:
        fail(fn, f"clean must be real images (..., n, n), got {x.dtype} {tuple(x.shape)}")
    s = _resolve_snr(fn, snr, snr_db)
    if x.numel() == 0:
        fail(fn, "clean must contain at least one image")
    power = float(x.detach().to(torch.float64).pow(2).mean())
    if s == math.inf:
        return 0.0
    if power == 0:
        fail(fn, "clean images are all zero: no SNR can be defined (give sigma directly)")
    return math.sqrt(power / s)


def add_noise(images, snr: float | None = None, *, snr_db: float | None = None, sigma: float | None = None,
              generator: torch.Generator | None = None):
    """Add white Gaussian noise to real images ``(..., n, n)``.

    Give exactly one of ``snr`` (linear), ``snr_db`` (decibels) or ``sigma`` (per-pixel
    standard deviation, same units as the images). With ``snr``/``snr_db`` the noise level is
    set from these images' mean power (module docstring).

    Returns:
        ``(noisy, sigma)``: noisy images of the input's kind and the ``σ`` used.
    """
    fn = "add_noise"
    x, kind = to_tensor(images, fn, "images")
    if x.is_complex():
        fail(fn, "images must be real", TypeError)
    if x.dim() < 2:
        fail(fn, f"images must have shape (..., n, n), got {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.to(torch.float32)
    given = sum(v is not None for v in (snr, snr_db, sigma))
    if given != 1:
        fail(fn, f"give exactly one of snr, snr_db or sigma, got snr={snr!r}, snr_db={snr_db!r}, sigma={sigma!r}")
    if sigma is None:
        sig = noise_sigma(x, snr, snr_db=snr_db)
    else:
        sig = check_float(fn, "sigma", sigma, minimum=0.0)
    if sig == 0:
        return from_tensor(x.clone(), kind), 0.0
    gen_dev = generator.device if generator is not None else x.device
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=gen_dev).to(x.device)
    return from_tensor(x + sig * noise, kind), sig


def measured_snr(clean, noisy) -> float:
    """Empirical SNR of a noisy set: ``mean(clean²) / mean((noisy - clean)²)``."""
    fn = "measured_snr"
    c, _ = to_tensor(clean, fn, "clean")
    y, _ = to_tensor(noisy, fn, "noisy")
    if tuple(c.shape) != tuple(y.shape):
        fail(fn, f"noisy must have the shape of clean {tuple(c.shape)}, got {tuple(y.shape)}")
    c = c.detach().to(torch.float64)
    y = y.detach().to(torch.float64)
    n = float((y - c).pow(2).mean())
    return math.inf if n == 0 else float(c.pow(2).mean()) / n
