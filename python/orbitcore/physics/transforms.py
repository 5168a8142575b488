"""Image transforms done exactly in Fourier space: sub-pixel shifts and the 180° in-plane
rotation (ARCHITECTURE.md conventions).

Shifts: a shift ``t = (tx, ty)`` in pixels moves image content by ``+t``, i.e. multiplies the
centred FT by ``exp(-2πi (kx·tx + ky·ty) / n)`` (circular on the image box, as RELION applies
them). RELION's ``rlnOriginX/Y`` is ``-t``.

180° rotation: ``image(x) -> image(-x)`` about the centre pixel ``n // 2``, which is the pose
change ``R -> R · Rz(π)``. On the centred grid it is the index map ``i -> (2·(n//2) - i) mod n``
in both real and Fourier space (no interpolation: exact, for odd and even ``n``).
"""
from __future__ import annotations

import math

import torch

from .. import fourier
from .._validate import check_finite, check_int, fail, from_tensor, to_tensor

__all__ = ["shift_phases", "phase_shift", "shift_images", "rotate180"]


def _shifts_arg(fn: str, shifts, device) -> torch.Tensor:
    t, _ = to_tensor(shifts, fn, "shifts")
    if t.is_complex():
        fail(fn, "shifts must be real (tx, ty) in pixels, got a complex array", TypeError)
    if t.dim() < 1 or t.shape[-1] != 2:
        fail(fn, f"shifts must have shape (..., 2) = (tx, ty) in pixels, got {tuple(t.shape)}")
    check_finite(fn, "shifts", t)
    if not t.is_floating_point():
        t = t.to(torch.float64)
    return t.to(device)


def shift_phases(n: int, shifts, *, dtype=torch.complex64, device=None) -> torch.Tensor:
    """Phase factors ``exp(-2πi (kx·tx + ky·ty) / n)`` on the centred ``n × n`` grid.

    Args:
        n: image side.
        shifts: ``(..., 2)`` shifts ``(tx, ty)`` in pixels (content moves by ``+t``).

    Returns:
        complex ``(..., n, n)``, differentiable with respect to ``shifts``.
    """
    fn = "shift_phases"
    n = check_int(fn, "n", n, minimum=1)
    t = _shifts_arg(fn, shifts, device)
    real = torch.float64 if dtype == torch.complex128 else torch.float32
    t = t.to(real)
    k = fourier.frequencies(n, dtype=real, device=t.device)
    # separable: exp(-2πi kx tx / n) · exp(-2πi ky ty / n)
    px = torch.polar(torch.ones((), dtype=real, device=t.device), -2 * math.pi * t[..., 0, None] * k / n)
    py = torch.polar(torch.ones((), dtype=real, device=t.device), -2 * math.pi * t[..., 1, None] * k / n)
    return (py[..., :, None] * px[..., None, :]).to(dtype)


def phase_shift(images_ft, shifts):
    """Shift centred Fourier images ``(..., n, n)`` by ``shifts`` ``(..., 2)`` pixels
    (``(tx, ty)``, content moves by ``+t``); shapes broadcast. Returns the input's kind."""
    fn = "phase_shift"
    F, kind = to_tensor(images_ft, fn, "images_ft")
    if not F.is_complex():
        fail(fn, "images_ft must be complex centred Fourier images (orbitcore.fourier.fft2c), got "
                 f"{F.dtype}", TypeError)
    if F.dim() < 2 or F.shape[-1] != F.shape[-2]:
        fail(fn, f"images_ft must have shape (..., n, n), got {tuple(F.shape)}")
    P = shift_phases(F.shape[-1], shifts, dtype=F.dtype, device=F.device)
    return from_tensor(F * P, kind)


def shift_images(images, shifts):
    """Shift real images ``(..., n, n)`` by ``(tx, ty)`` pixels (sub-pixel, circular, through
    the FT; content moves by ``+t``). Returns real images of the input's kind."""
    fn = "shift_images"
    x, kind = to_tensor(images, fn, "images")
    if x.is_complex():
        fail(fn, "images must be real (use phase_shift for Fourier images)", TypeError)
    if x.dim() < 2 or x.shape[-1] != x.shape[-2]:
        fail(fn, f"images must have shape (..., n, n), got {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.to(torch.float32)
    out = fourier.ifft2c(phase_shift(fourier.fft2c(x), shifts)).real.to(x.dtype)
    return from_tensor(out, kind)


def rotate180(images):
    """Rotate images by 180° in-plane about the centre pixel ``n // 2``, exactly.

    Works on real images and on centred Fourier images alike (``(..., n, n)``): the map
    ``[iy, ix] -> [(2·(n//2) - iy) mod n, (2·(n//2) - ix) mod n]`` is ``x -> -x`` on the centred
    grid (for even ``n`` the first row/column, the Nyquist line, maps to itself). For a real
    image ``I`` with pose ``R``, ``rotate180(I)`` is the image of pose ``R · Rz(π)``, and
    ``fft2c(rotate180(I)) == rotate180(fft2c(I)) == conj(fft2c(I))``. Differentiable.
    """
    fn = "rotate180"
    x, kind = to_tensor(images, fn, "images")
    if x.dim() < 2:
        fail(fn, f"images must have shape (..., n, n), got {tuple(x.shape)}")
    h, w = x.shape[-2], x.shape[-1]
    iy = (2 * (h // 2) - torch.arange(h, device=x.device)) % h
    ix = (2 * (w // 2) - torch.arange(w, device=x.device)) % w
    out = x.index_select(-2, iy).index_select(-1, ix)
    return from_tensor(out, kind)
