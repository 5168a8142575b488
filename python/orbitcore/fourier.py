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

from ._validate import check_float, check_int, fail, from_tensor, to_tensor

__all__ = [
    "fftc", "ifftc", "fft1c", "ifft1c", "fft2c", "ifft2c", "fft3c", "ifft3c",
    "frequencies", "frequency_grid_2d", "frequency_grid_3d", "radial_frequency",
    "fourier_crop", "fourier_pad", "downsample",
]


def _dims(fn: str, x: torch.Tensor, ndim: int) -> tuple[int, ...]:
    if x.dim() < ndim:
        fail(fn, f"x must have at least {ndim} dimensions, got shape {tuple(x.shape)}")
    return tuple(range(-ndim, 0))


def _fftc(fn: str, x, ndim: int, inverse: bool):
    """:func:`fftc` (or :func:`ifftc` if ``inverse``), errors naming ``fn``."""
    t, kind = to_tensor(x, fn, "x")
    d = _dims(fn, t, check_int(fn, "ndim", ndim, minimum=1))
    f = torch.fft.ifftn if inverse else torch.fft.fftn
    out = torch.fft.fftshift(f(torch.fft.ifftshift(t, dim=d), dim=d), dim=d)
    return from_tensor(out, kind)


def fftc(x, ndim: int):
    """Centred, unnormalised forward FFT over the last ``ndim`` axes."""
    return _fftc("fftc", x, ndim, False)


def ifftc(x, ndim: int):
    """Exact inverse of :func:`fftc` (normalised by the number of points)."""
    return _fftc("ifftc", x, ndim, True)


def fft1c(x):
    """Centred FFT of signals ``(..., n)``."""
    return _fftc("fft1c", x, 1, False)


def ifft1c(x):
    return _fftc("ifft1c", x, 1, True)


def fft2c(x):
    """Centred FFT of images ``(..., n, n)`` indexed ``[y, x]``."""
    return _fftc("fft2c", x, 2, False)


def ifft2c(x):
    return _fftc("ifft2c", x, 2, True)


def fft3c(x):
    """Centred FFT of volumes ``(..., D, D, D)`` indexed ``[z, y, x]``."""
    return _fftc("fft3c", x, 3, False)


def ifft3c(x):
    return _fftc("ifft3c", x, 3, True)


def _frequencies(fn: str, n, pixel_size, dtype, device) -> torch.Tensor:
    """:func:`frequencies`, errors naming ``fn``."""
    n = check_int(fn, "n", n, minimum=1)
    pixel_size = check_float(fn, "pixel_size", pixel_size, allow_none=True)
    if pixel_size is not None and pixel_size <= 0:
        fail(fn, f"pixel_size must be > 0 (Å), got {pixel_size}")
    k = torch.arange(n, dtype=dtype, device=device) - (n // 2)
    if pixel_size is not None:
        k = k / (n * pixel_size)
    return k


def frequencies(n: int, pixel_size: float | None = None, *, dtype=torch.float64, device=None) -> torch.Tensor:
    """Centred frequencies of a length-``n`` axis: integers ``i - n // 2`` (pixel_size None) or
    ``(i - n // 2) / (n * pixel_size)`` in 1/Å."""
    return _frequencies("frequencies", n, pixel_size, dtype, device)


def _grid(fn: str, n, ndim: int, pixel_size, dtype, device) -> torch.Tensor:
    """The ``(n,) * ndim + (ndim,)`` grid of ``(kx, ky[, kz])``, errors naming ``fn``."""
    k = _frequencies(fn, n, pixel_size, dtype, device)
    axes = torch.meshgrid(*(k,) * ndim, indexing="ij")  # ([kz,] ky, kx) at index [[iz,] iy, ix]
    return torch.stack(axes[::-1], dim=-1)


def frequency_grid_2d(n: int, pixel_size: float | None = None, *, dtype=torch.float64, device=None) -> torch.Tensor:
    """``(n, n, 2)`` grid of ``(kx, ky)`` at index ``[iy, ix]`` (integers, or 1/Å with pixel_size)."""
    return _grid("frequency_grid_2d", n, 2, pixel_size, dtype, device)


def frequency_grid_3d(n: int, pixel_size: float | None = None, *, dtype=torch.float64, device=None) -> torch.Tensor:
    """``(n, n, n, 3)`` grid of ``(kx, ky, kz)`` at index ``[iz, iy, ix]``."""
    return _grid("frequency_grid_3d", n, 3, pixel_size, dtype, device)


def radial_frequency(n: int, ndim: int = 2, pixel_size: float | None = None, *, dtype=torch.float64,
                     device=None) -> torch.Tensor:
    """``|k|`` on the centred grid of side ``n`` in ``ndim`` dimensions."""
    fn = "radial_frequency"
    ndim = check_int(fn, "ndim", ndim)
    if ndim not in (1, 2, 3):
        fail(fn, f"ndim must be 1, 2 or 3, got {ndim}")
    if ndim == 1:
        return _frequencies(fn, n, pixel_size, dtype, device).abs()
    return _grid(fn, n, ndim, pixel_size, dtype, device).norm(dim=-1)


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
    ndim = check_int(fn, "ndim", ndim, minimum=1)
    if t.dim() < ndim or len(set(t.shape[-ndim:])) != 1:
        fail(fn, f"x must have {ndim} equal last axes (..., n{', n' * (ndim - 1)}), got {tuple(t.shape)}")
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


# ----------------------------------------------------------------------------------------------
# Centred FT of a zero-padded real volume, with pruned real FFTs
# ----------------------------------------------------------------------------------------------
def _place(x: torch.Tensor, dim: int, N: int) -> torch.Tensor:
    """Zero-pad axis ``dim`` of side ``D`` to ``N`` in FFT order: index ``j`` goes to
    ``(j - D // 2) mod N`` (the centred volume, origin at ``D // 2``, ``ifftshift``-ed)."""
    D = x.shape[dim]
    h = D // 2
    shape = list(x.shape)
    shape[dim] = N - D
    parts = [x.narrow(dim, h, D - h), x.new_zeros(shape)]
    if h:
        parts.append(x.narrow(dim, 0, h))
    return torch.cat(parts, dim)


def _crop(x: torch.Tensor, dim: int, D: int) -> torch.Tensor:
    """Adjoint of :func:`_place`: the ``D`` entries of an FFT-ordered axis back in centred order."""
    N = x.shape[dim]
    h = D // 2
    parts = ([x.narrow(dim, N - h, h)] if h else []) + [x.narrow(dim, 0, D - h)]
    return torch.cat(parts, dim)


def _mirror_zy(src: torch.Tensor, conj: bool = False) -> torch.Tensor:
    """``M[..., cz, cy, :] = src[..., (N - cz) % N, (N - cy) % N, :]`` (the centred index of
    ``-k`` for even ``N``), optionally conjugated: one flip and four block copies (no gather,
    no roll, which cost several passes)."""
    F = src.flip((-3, -2))  # F[i, j] = src[N-1-i, N-1-j]  =>  M[i, j] = F[i-1, j-1] (cyclic)
    if conj:
        F = F.conj()
    M = torch.empty(F.shape, dtype=F.dtype, device=F.device)
    M[..., 1:, 1:, :] = F[..., :-1, :-1, :]
    M[..., :1, 1:, :] = F[..., -1:, :-1, :]
    M[..., 1:, :1, :] = F[..., :-1, -1:, :]
    M[..., :1, :1, :] = F[..., -1:, -1:, :]
    return M


def _checker(D: int, dtype, device) -> torch.Tensor:
    """``(-1)^((jz - D//2) + (jy - D//2))`` on ``(D, D, 1)``: modulating the input by it centres
    the spectrum in kz and ky (for even N), replacing two ``fftshift`` passes."""
    s = 1.0 - 2.0 * ((torch.arange(D, device=device) - D // 2) % 2)
    return (s[:, None, None] * s[None, :, None]).to(dtype)


class _PaddedFFT3(torch.autograd.Function):
    """x real (..., D, D, D) -> centred FT of its centred zero-padding to N³ (complex), even N;
    with ``half`` only its kx >= 0 half (..., N, N, N/2 + 1), kx = last index."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, N: int, half: bool = False) -> torch.Tensor:
        D = x.shape[-1]
        ctx.D, ctx.N, ctx.half = D, N, half
        h = N // 2
        # pruned transforms: x first (real FFT on the D² non-zero lines), then y, then z
        xs = x * _checker(D, x.dtype, x.device)
        H = torch.fft.rfft(_place(xs, -1, N), dim=-1)           # (..., D, D, h+1)
        H = torch.fft.fft(_place(H, -2, N), dim=-2)             # (..., D, N, h+1)
        H = torch.fft.fft(_place(H, -3, N), dim=-3)             # (..., N, N, h+1), centred kz, ky
        if half:
            return H.contiguous()  # the FFTs leave z fastest; the slice kernels read [z][y][x]
        # kx < 0 from Hermitian symmetry: V(kz, ky, -j) = conj V(-kz, -ky, j), j = h .. 1
        neg = _mirror_zy(H[..., 1:h + 1].flip(-1), conj=True)
        return torch.cat((neg, H[..., :h]), -1)

    @staticmethod
    def backward(ctx, G: torch.Tensor):
        D, N = ctx.D, ctx.N
        h = N // 2
        if ctx.half:
            # Re(A^H G) for the rows A of kx = 0 .. h: the irfft below counts kx = 1 .. h-1
            # twice (as kx and -kx) and takes the real part of kx = 0 and h, so kx = 1 .. h-1 are
            # halved, after the kz, ky transforms and crops (they act on the other axes)
            Gh = G
        else:
            # d Re<F x, G> / dx = Re(F^H G) on the D³ support = F^H of the Hermitian part of G,
            # evaluated from its kx >= 0 half with pruned inverse transforms (irfft last).
            Gp = torch.cat((G[..., h:], G[..., :1]), -1)         # kx = 0 .. h (h wraps to index 0)
            Gn = _mirror_zy(G[..., :h + 1].flip(-1), conj=True)  # conj G(-k) for kx = 0 .. h
            Gh = 0.5 * (Gp + Gn)
        g = _crop(torch.fft.ifft(Gh, dim=-3), -3, D)
        g = _crop(torch.fft.ifft(g, dim=-2), -2, D)              # a new (..., D, D, h+1) array
        if ctx.half:
            g[..., 1:h] *= 0.5
        g = _crop(torch.fft.irfft(g, n=N, dim=-1), -1, D)
        return g * (_checker(D, g.dtype, g.device) * float(N) ** 3), None, None


def fft3c_padded(volume, N: int, half: bool = False):
    """Centred FT of a real volume zero-padded to ``N³``: ``fft3c(pad(volume))``, fast.

    The volume ``(..., D, D, D)`` (origin at ``D // 2``) is placed at the centre of an ``N³``
    box (origin at ``N // 2``), as RELION pads before projecting. Computed with pruned real
    FFTs for even ``N`` (a real FFT along x over the ``D²`` non-zero lines, then y over
    ``D · (N//2 + 1)`` lines, then z; the centring by modulation instead of ``fftshift``; the
    ``kx < 0`` half from Hermitian symmetry), about 3× fewer operations and memory passes than
    ``fft3c`` of the padded array; the backward pass (gradient to the real volume) is pruned
    the same way. Equal to ``fft3c`` of the padded volume to rounding. Odd ``N`` uses the
    plain definition.

    Args:
        volume: real ``(..., D, D, D)`` indexed ``[z, y, x]``.
        N: padded side, ``N >= D``.
        half: return only the ``kx >= 0`` half, ``(..., N, N, N // 2 + 1)``: ``kz, ky`` centred,
            the last index equal to ``kx`` (the rest is ``V(-k) = conj V(k)``). Even ``N >= 4``
            only. :func:`orbitcore.ops.fourier_slice` reads it with ``half=True``. It saves
            the Hermitian completion and its adjoint (at N = 128 about half the time of the
            forward and of the backward, on one CPU thread) and half the memory.

    Returns:
        complex ``(..., N, N, N)`` (``(..., N, N, N // 2 + 1)`` with ``half``), centred (DC at
        ``N // 2``); differentiable with respect to ``volume``. Same kind (torch / NumPy) as the
        input.
    """
    fn = "fft3c_padded"
    t, kind = to_tensor(volume, fn, "volume")
    if t.is_complex():
        fail(fn, "volume must be real (use fft3c for complex volumes), got a complex array", TypeError)
    if t.dim() < 3 or not (t.shape[-1] == t.shape[-2] == t.shape[-3]):
        fail(fn, f"volume must have shape (..., D, D, D), got {tuple(t.shape)}")
    N = check_int(fn, "N", N, minimum=1)
    if N < t.shape[-1]:
        fail(fn, f"N must be >= the volume side {t.shape[-1]}, got {N}")
    if not isinstance(half, bool):
        fail(fn, f"half must be a bool, got {type(half).__name__}", TypeError)
    if half and (N % 2 or N < 4):
        fail(fn, f"half=True needs an even N >= 4, got {N}")
    if not t.is_floating_point():
        t = t.to(torch.float32)
    if N % 2:  # odd boxes (rare): the plain definition
        pad = t.new_zeros(t.shape[:-3] + (N, N, N))
        o = N // 2 - t.shape[-1] // 2
        D = t.shape[-1]
        pad[..., o:o + D, o:o + D, o:o + D] = t
        return from_tensor(fft3c(pad), kind)
    return from_tensor(_PaddedFFT3.apply(t, N, half), kind)


__all__.append("fft3c_padded")
