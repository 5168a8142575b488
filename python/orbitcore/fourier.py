"""Centred FFT helpers: the Fourier convention every orbitcore module obeys.

Forward transforms are centred and unnormalised, ``fft2c(x) = fftshift(fft2(ifftshift(x)))``;
``ifft2c`` is its exact inverse (so it carries the ``1/n²``). DC sits at index ``n // 2``; the
integer frequency at index ``i`` is ``k = i - n // 2``, in ``[-(n // 2), (n - 1) // 2]``; the
physical frequency is ``k / (n * pixel_size)`` in 1/Å. Real-space origin is also at index
``n // 2``. Images are ``(..., n, n)`` indexed ``[y, x]``, volumes ``(..., D, D, D)`` indexed
``[z, y, x]``. With these, the discrete projection-slice theorem is exact for the identity:
``fft2c(vol.sum(0)) == fft3c(vol)[D // 2]``.

All functions accept torch tensors or NumPy arrays and return the same kind.
"""
from __future__ import annotations

import torch

from ._validate import check_int, fail, from_tensor, to_tensor

__all__ = [
    "fftc", "ifftc", "fft1c", "ifft1c", "fft2c", "ifft2c", "fft3c", "ifft3c",
    "frequencies", "frequency_grid_2d", "frequency_grid_3d", "radial_frequency",
    "fourier_crop", "fourier_pad", "downsample",
]


def _dims(fn: str, x: torch.Tensor, ndim: int) -> tuple[int, ...]:
    if x.dim() < ndim:
        fail(fn, f"input must have at least {ndim} dimensions, got shape {tuple(x.shape)}")
    return tuple(range(-ndim, 0))


def fftc(x, ndim: int):
    """Centred, unnormalised forward FFT over the last ``ndim`` axes."""
    t, kind = to_tensor(x, "fftc", "x")
    d = _dims("fftc", t, ndim)
    out = torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(t, dim=d), dim=d), dim=d)
    return from_tensor(out, kind)


def ifftc(x, ndim: int):
    """Exact inverse of :func:`fftc` (normalised by the number of points)."""
    t, kind = to_tensor(x, "ifftc", "x")
    d = _dims("ifftc", t, ndim)
    out = torch.fft.fftshift(torch.fft.ifftn(torch.fft.ifftshift(t, dim=d), dim=d), dim=d)
    return from_tensor(out, kind)


def fft1c(x):
    """Centred FFT of signals ``(..., n)``."""
    return fftc(x, 1)


def ifft1c(x):
    return ifftc(x, 1)


def fft2c(x):
    """Centred FFT of images ``(..., n, n)`` indexed ``[y, x]``."""
    return fftc(x, 2)


def ifft2c(x):
    return ifftc(x, 2)


def fft3c(x):
    """Centred FFT of volumes ``(..., D, D, D)`` indexed ``[z, y, x]``."""
    return fftc(x, 3)


def ifft3c(x):
    return ifftc(x, 3)


def frequencies(n: int, pixel_size: float | None = None, *, dtype=torch.float64, device=None) -> torch.Tensor:
    """Centred frequencies of a length-``n`` axis: integers ``i - n // 2`` (pixel_size None) or
    ``(i - n // 2) / (n * pixel_size)`` in 1/Å."""
    n = check_int("frequencies", "n", n, minimum=1)
    k = torch.arange(n, dtype=dtype, device=device) - (n // 2)
    if pixel_size is not None:
        if pixel_size <= 0:
            fail("frequencies", f"pixel_size must be > 0 (Å), got {pixel_size}")
        k = k / (n * float(pixel_size))
    return k


def frequency_grid_2d(n: int, pixel_size: float | None = None, *, dtype=torch.float64, device=None) -> torch.Tensor:
    """``(n, n, 2)`` grid of ``(kx, ky)`` at index ``[iy, ix]`` (integers, or 1/Å with pixel_size)."""
    k = frequencies(n, pixel_size, dtype=dtype, device=device)
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    return torch.stack((kx, ky), dim=-1)


def frequency_grid_3d(n: int, pixel_size: float | None = None, *, dtype=torch.float64, device=None) -> torch.Tensor:
    """``(n, n, n, 3)`` grid of ``(kx, ky, kz)`` at index ``[iz, iy, ix]``."""
    k = frequencies(n, pixel_size, dtype=dtype, device=device)
    kz, ky, kx = torch.meshgrid(k, k, k, indexing="ij")
    return torch.stack((kx, ky, kz), dim=-1)


def radial_frequency(n: int, ndim: int = 2, pixel_size: float | None = None, *, dtype=torch.float64,
                     device=None) -> torch.Tensor:
    """``|k|`` on the centred grid of side ``n`` in ``ndim`` dimensions."""
    if ndim == 2:
        g = frequency_grid_2d(n, pixel_size, dtype=dtype, device=device)
    elif ndim == 3:
        g = frequency_grid_3d(n, pixel_size, dtype=dtype, device=device)
    elif ndim == 1:
        return frequencies(n, pixel_size, dtype=dtype, device=device).abs()
    else:
        fail("radial_frequency", f"ndim must be 1, 2 or 3, got {ndim}")
    return g.norm(dim=-1)


def _crop_slices(n: int, m: int) -> slice:
    start = n // 2 - m // 2
    return slice(start, start + m)


def fourier_crop(x_ft, m: int, ndim: int):
    """Keep the central ``m`` frequencies (per axis) of a centred spectrum of side ``n >= m``."""
    fn = "fourier_crop"
    t, kind = to_tensor(x_ft, fn, "x_ft")
    m = check_int(fn, "m", m, minimum=1)
    n = t.shape[-1]
    if any(t.shape[d] != n for d in range(-ndim, 0)):
        fail(fn, f"the last {ndim} axes must be equal, got {tuple(t.shape)}")
    if m > n:
        fail(fn, f"m must be <= the current size {n}, got {m}")
    idx = (Ellipsis,) + (_crop_slices(n, m),) * ndim
    return from_tensor(t[idx], kind)


def fourier_pad(x_ft, m: int, ndim: int):
    """Zero-pad a centred spectrum of side ``n`` to ``m >= n`` (DC stays at the centre)."""
    fn = "fourier_pad"
    t, kind = to_tensor(x_ft, fn, "x_ft")
    m = check_int(fn, "m", m, minimum=1)
    n = t.shape[-1]
    if m < n:
        fail(fn, f"m must be >= the current size {n}, got {m}")
    out = t.new_zeros(t.shape[:-ndim] + (m,) * ndim)
    idx = (Ellipsis,) + (_crop_slices(m, n),) * ndim
    out[idx] = t
    return from_tensor(out, kind)


def downsample(x, m: int, ndim: int = 2):
    """Fourier-crop real images (ndim=2) or volumes (ndim=3) of side ``n`` to side ``m``.

    Pixel values are scaled so the mean is preserved (the pixel size grows by ``n / m``).
    Returns real arrays of the input's kind.
    """
    fn = "downsample"
    t, kind = to_tensor(x, fn, "x")
    if t.is_complex():
        fail(fn, "x must be real images or volumes (real space), got a complex array", TypeError)
    n = t.shape[-1]
    m = check_int(fn, "m", m, minimum=1)
    if m > n:
        fail(fn, f"m must be <= the current size {n}, got {m}")
    if m == n:
        return from_tensor(t, kind)
    dt = t if t.is_floating_point() else t.to(torch.float32)
    f = fftc(dt, ndim)
    f = fourier_crop(f, m, ndim)
    out = ifftc(f, ndim).real * (m / n) ** ndim
    return from_tensor(out.to(dt.dtype), kind)
