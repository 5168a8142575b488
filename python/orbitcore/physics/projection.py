"""Projection of real-space volumes through the Fourier-slice op (the cryo-EM forward model)
and its adjoint for known-pose reconstruction (direct Fourier inversion, Wiener-style with a
CTF).

Image formation (ARCHITECTURE.md; seeds/003 eq. 6), for a volume ``v`` ``(D, D, D)``, pose
``R``, shift ``t`` (pixels, content moves by ``+t``) and CTF ``C``:

    Î[k] = C(k) · exp(-2πi k·t / D) · V̂(R · (kx, ky, 0)),     image = ifft2c(Î)

on the centred ``D × D`` grid of the image box, inside the disk ``|k| <= D/2 - 1/pad`` (zero
outside: beyond the image's Nyquist circle). ``V̂`` is the FT of the volume zero-padded
``pad``-fold (RELION's default 2), pre-divided by the trilinear kernel's real-space
attenuation (gridding correction), and is sampled at the image-box frequencies (``pad · k`` on
the padded grid), as RELION's projector does. The projection is therefore periodic on the
image box: identical to the windowed line integral for densities inside the inscribed sphere
(all masked maps), and wrapped around the box for content outside it. Accuracy against analytic
projections of band-limited Gaussian volumes (tests/physics/test_projection.py): ~0.8% at
D = 32 and ~0.2% at D = 64 for random rotations with ``pad = 2``, 3–4× worse without padding.
The gridding correction compensates the trilinear kernel's attenuation on average over
off-grid positions, so for grid-aligned rotations (the identity) it over-compensates a little
(~2% at D = 32), as RELION's does.
"""
from __future__ import annotations

import torch

from .. import fourier
from .._validate import (
    check_finite,
    check_float,
    check_int,
    check_ndim,
    check_rotations,
    fail,
    from_tensor,
    to_tensor,
)
from ..ops.slice import fourier_insert, fourier_slice
from .ctf import CTFParams
from .transforms import shift_phases

__all__ = ["project", "backproject", "gridding_correction", "prepare_volume_ft", "Projector"]


def gridding_correction(N: int, n: int | None = None, *, dtype=torch.float64, device=None) -> torch.Tensor:
    """``(n, n, n)`` factors ``sinc²(x/N) sinc²(y/N) sinc²(z/N)`` (x in voxels from the centre):
    the real-space attenuation that trilinear interpolation on an ``N³`` Fourier grid causes."""
    N = check_int("gridding_correction", "N", N, minimum=1)
    n = N if n is None else check_int("gridding_correction", "n", n, minimum=1)
    k = (torch.arange(n, dtype=dtype, device=device) - n // 2) / N
    s = torch.special.sinc(k) ** 2
    return s[:, None, None] * s[None, :, None] * s[None, None, :]


def _pad_center(x: torch.Tensor, N: int) -> torch.Tensor:
    D = x.shape[-1]
    o = N // 2 - D // 2
    out = x.new_zeros(x.shape[:-3] + (N, N, N))
    out[..., o:o + D, o:o + D, o:o + D] = x
    return out


def prepare_volume_ft(volume: torch.Tensor, pad: int = 2, *, half: bool = False) -> torch.Tensor:
    """Padded, gridding-corrected centred FT ``(pad·D)³`` of a real ``(D, D, D)`` volume, ready
    for :func:`orbitcore.fourier_slice` / :func:`orbitcore.fourier_sample` at coordinates
    scaled by ``pad``; compute it once when projecting one volume many times. Differentiable.
    With ``half`` (even ``pad·D`` only): its ``kx >= 0`` half ``(N, N, N // 2 + 1)``, for
    ``fourier_slice(..., half=True)`` (see :func:`orbitcore.fourier.fft3c_padded`)."""
    fn = "prepare_volume_ft"
    volume, kind = to_tensor(volume, fn, "volume")  # no finiteness check: it runs in training loops
    if volume.is_complex():
        fail(fn, "volume must be real (a real-space density), got a complex array", TypeError)
    if volume.dim() != 3 or len(set(volume.shape)) != 1:
        fail(fn, f"volume must be a cube (D, D, D), got {tuple(volume.shape)}")
    D = volume.shape[-1]
    N = check_int(fn, "pad", pad, minimum=1) * D
    corr = gridding_correction(N, D, dtype=volume.dtype, device=volume.device)
    if not isinstance(half, bool):
        fail(fn, f"half must be a bool, got {type(half).__name__}", TypeError)
    if half and (N % 2 or N < 4):
        fail(fn, f"half=True needs an even padded side pad·D >= 4, got {N}")
    # = fft3c(_pad_center(volume / corr, N)) (or its kx >= 0 half), pruned
    return from_tensor(fourier.fft3c_padded(volume / corr, N, half=half), kind)


def _volume_arg(fn: str, volume) -> tuple[torch.Tensor, str]:
    vol, kind = to_tensor(volume, fn, "volume")
    check_ndim(fn, "volume", vol, (3,), "(D, D, D)")
    if vol.is_complex():
        fail(fn, "volume must be real (a real-space density), got a complex array", TypeError)
    if vol.shape[0] != vol.shape[1] or vol.shape[1] != vol.shape[2]:
        fail(fn, f"volume must be a cube (D, D, D), got {tuple(vol.shape)}")
    if vol.shape[-1] < 2:
        fail(fn, f"volume side D must be at least 2, got {vol.shape[-1]}")
    if not vol.is_floating_point():
        vol = vol.to(torch.float32)
    check_finite(fn, "volume", vol)
    return vol, kind


def _rotations_arg(fn: str, rotations, device, dtype) -> tuple[torch.Tensor, bool]:
    R, _ = to_tensor(rotations, fn, "rotations")
    if R.dim() not in (2, 3) or tuple(R.shape[-2:]) != (3, 3):
        fail(fn, f"rotations must have shape (B, 3, 3) or (3, 3), got {tuple(R.shape)}")
    if not R.is_floating_point():
        fail(fn, f"rotations must be real floating point, got {R.dtype}", TypeError)
    check_rotations(fn, "rotations", R)
    single = R.dim() == 2
    R = R[None] if single else R
    return R.to(device=device, dtype=dtype), single


def _shifts_arg(fn: str, shifts, B: int, device, dtype) -> torch.Tensor | None:
    if shifts is None:
        return None
    t, _ = to_tensor(shifts, fn, "shifts")
    if t.is_complex() or t.dim() not in (1, 2) or t.shape[-1] != 2 or (t.dim() == 2 and t.shape[0] != B):
        fail(fn, f"shifts must have shape ({B}, 2) = (tx, ty) in pixels (or (2,) for all images), "
                 f"got {t.dtype} {tuple(t.shape)}")
    check_finite(fn, "shifts", t)
    return t.to(device=device, dtype=dtype).expand(B, 2)


def _ctf_arg(fn: str, ctf, B: int, n: int, device, dtype) -> torch.Tensor | None:
    """CTFParams (B entries, or 1 for all) or real CTF values (B, n, n) / (n, n) -> (B, n, n)."""
    if ctf is None:
        return None
    if isinstance(ctf, CTFParams):
        if len(ctf) not in (1, B):
            fail(fn, f"ctf must have {B} entries (one per rotation) or 1, got {len(ctf)}")
        c = ctf.evaluate(n, dtype=dtype, device=device)  # float32 keeps χ to ~1e-5 rad
        return c.expand(B, n, n)
    c, _ = to_tensor(ctf, fn, "ctf")
    if c.is_complex() or c.dim() not in (2, 3) or tuple(c.shape[-2:]) != (n, n) or (c.dim() == 3 and c.shape[0] != B):
        fail(fn, f"ctf must be a CTFParams or real CTF values ({B}, {n}, {n}) / ({n}, {n}) on the centred "
                 f"grid, got {type(ctf).__name__} {getattr(c, 'dtype', '')} {tuple(c.shape)}")
    check_finite(fn, "ctf", c)
    return c.to(device=device, dtype=dtype).expand(B, n, n)


class Projector:
    """The forward model for one volume, with its padded FT computed once.

    ``Projector(volume, pad=2)(rotations, shifts, ctf)`` returns real images; ``.fourier(...)``
    the centred FT of the same images (what Fourier-space losses compare against). Both are
    differentiable with respect to the volume (when it requires grad), rotations, shifts and
    CTF values. See the module docstring for the model and its accuracy.
    """

    def __init__(self, volume, *, pad: int = 2, _fn: str = "Projector"):
        fn = _fn
        vol, self._kind = _volume_arg(fn, volume)
        self.pad = check_int(fn, "pad", pad, minimum=1)
        self.D = vol.shape[-1]
        self.dtype = vol.dtype
        self.device = vol.device
        # the kx >= 0 half of the padded FT where its side is even (half the memory; the same
        # slices and gradients as the full one)
        self.half = (self.pad * self.D) % 2 == 0 and self.pad * self.D >= 4
        self.volume_ft = prepare_volume_ft(vol, self.pad, half=self.half)
        # Frequencies beyond the padded grid's exactly Hermitian ball |pad·k| <= N/2 - 1 are set
        # to 0 (they are beyond the image's Nyquist circle anyway): images are then exactly
        # real-symmetric, so shifts, the CTF and the 180° rotation commute with taking real parts.
        self.radius = self.D / 2 - 1 / self.pad

    def fourier(self, rotations, shifts=None, ctf=None, *, batch_size: int = 512) -> torch.Tensor:
        """Centred Fourier images ``(B, D, D)`` (complex). Arguments as in :func:`project`."""
        fn = "project"
        R, single = _rotations_arg(fn, rotations, self.device, self.dtype)
        B, D = R.shape[0], self.D
        t = _shifts_arg(fn, shifts, B, self.device, self.dtype)
        C = _ctf_arg(fn, ctf, B, D, self.device, self.dtype)
        batch_size = check_int(fn, "batch_size", batch_size, minimum=1)
        ctype = torch.complex128 if self.dtype == torch.float64 else torch.complex64
        out = []
        for i in range(0, B, batch_size):
            Rb = R[i:i + batch_size]
            # sample the padded FT at the image-box frequencies: pad · R · (kx, ky, 0)
            S = fourier_slice(self.volume_ft, self.pad * Rb, size=D, radius=self.radius, hermitian=True,
                              half=self.half, check=False)
            if t is not None:
                S = S * shift_phases(D, t[i:i + batch_size], dtype=ctype, device=self.device)
            if C is not None:
                S = S * C[i:i + batch_size]
            out.append(S)
        F = torch.cat(out) if out else torch.zeros((0, D, D), dtype=ctype, device=self.device)
        return F[0] if single else F

    def __call__(self, rotations, shifts=None, ctf=None, *, batch_size: int = 512):
        """Real images ``(B, D, D)`` (``(D, D)`` for one ``(3, 3)`` rotation)."""
        F = self.fourier(rotations, shifts, ctf, batch_size=batch_size)
        return from_tensor(fourier.ifft2c(F).real, self._kind)


def project(volume, rotations, shifts=None, ctf=None, *, pad: int = 2, batch_size: int = 512):
    """Images ``image(x, y) = Σ_z v(R · (x, y, z))`` of a real volume, shifted and CTF-modulated.

    Args:
        volume: real ``(D, D, D)`` indexed ``[z, y, x]``, origin at ``D // 2``.
        rotations: ``(B, 3, 3)`` (or ``(3, 3)``); viewing direction ``R @ e_z``.
        shifts: optional ``(B, 2)`` (or ``(2,)``) in-plane shifts ``(tx, ty)`` in pixels; content
            moves by ``+t`` (RELION's ``rlnOriginX/Y`` = ``-t``); circular phase shifts.
        ctf: optional :class:`~orbitcore.physics.CTFParams` (``B`` entries or 1; its pixel size
            sets the frequencies) or real CTF values ``(B, D, D)`` / ``(D, D)`` on the centred grid.
        pad: zero-padding factor before the FT (1: none; 2: RELION's default).
        batch_size: rotations per slice call (bounds memory).

    Returns:
        real ``(B, D, D)`` images (``(D, D)`` for one rotation), in the caller's array kind.
        Differentiable (volume, rotations, shifts, CTF values). To project one volume many
        times, build a :class:`Projector` once.
    """
    return Projector(volume, pad=pad, _fn="project")(rotations, shifts, ctf, batch_size=batch_size)


def backproject(images, rotations, shifts=None, ctf=None, *, pad: int = 2, regularization: float = 1e-3,
                batch_size: int = 512):
    """Known-pose reconstruction by direct Fourier inversion (Wiener-style with a CTF).

    Each image is un-shifted, multiplied by its CTF ``C`` on the image box, zero-padded
    ``pad``-fold and inserted (:func:`orbitcore.fourier_insert`) into the padded Fourier
    volume; the weights ``C²`` (1 without CTF), evaluated at the padded grid's frequencies, are
    inserted alongside. ``V̂ = Σ insert(C Î) / (Σ insert(C²) + λ · mean weight)``, inverse FT,
    crop, gridding correction. The box must hold the CTF's point spread (``λ Δf s_max``
    beyond the particle's radius); signal delocalised out of the box is lost, as in any
    reconstruction program.

    Args:
        images: real ``(B, D, D)`` images (conventions of :func:`project`).
        rotations: ``(B, 3, 3)``.
        shifts: optional ``(B, 2)`` shifts in pixels that were applied to the images.
        ctf: optional :class:`~orbitcore.physics.CTFParams` (``B`` entries or 1).
        regularization: ``λ``, relative to the mean weight (Wiener constant; about 1/SNR per
            image divided by the number of images per voxel).

    Returns:
        real ``(D, D, D)`` volume, in the caller's array kind.
    """
    fn = "backproject"
    imgs, kind = to_tensor(images, fn, "images")
    check_ndim(fn, "images", imgs, (3,), "(B, D, D)")
    if imgs.is_complex():
        fail(fn, "images must be real", TypeError)
    if imgs.shape[-1] != imgs.shape[-2]:
        fail(fn, f"images must be square, got {tuple(imgs.shape)}")
    if imgs.shape[0] == 0:
        fail(fn, "images must contain at least one image")
    if not imgs.is_floating_point():
        imgs = imgs.to(torch.float32)
    check_finite(fn, "images", imgs)
    B, D = imgs.shape[0], imgs.shape[-1]
    R, _ = _rotations_arg(fn, rotations, imgs.device, imgs.dtype)
    if R.shape[0] != B:
        fail(fn, f"rotations must have shape ({B}, 3, 3) (one per image), got {tuple(R.shape)}")
    pad = check_int(fn, "pad", pad, minimum=1)
    lam = check_float(fn, "regularization", regularization, minimum=0.0)
    batch_size = check_int(fn, "batch_size", batch_size, minimum=1)
    t = _shifts_arg(fn, shifts, B, imgs.device, imgs.dtype)
    if ctf is not None and not isinstance(ctf, CTFParams):
        fail(fn, f"ctf must be a CTFParams, got {type(ctf).__name__}", TypeError)
    if ctf is not None and len(ctf) not in (1, B):
        fail(fn, f"ctf must have {B} entries (one per image) or 1, got {len(ctf)}")
    N = pad * D
    o = N // 2 - D // 2
    ctype = torch.complex128 if imgs.dtype == torch.float64 else torch.complex64
    num = den = None
    for i in range(0, B, batch_size):
        chunk = imgs[i:i + batch_size]
        b = chunk.shape[0]
        if t is not None or ctf is not None:
            F = fourier.fft2c(chunk)
            if t is not None:
                F = F * shift_phases(D, -t[i:i + b], dtype=ctype, device=imgs.device)
            if ctf is not None:
                cb = ctf if len(ctf) == 1 else ctf[i:i + b]
                F = F * cb.evaluate(D, dtype=torch.float64, device=imgs.device).to(imgs.dtype)
            chunk = fourier.ifft2c(F).real
        big = chunk.new_zeros((b, N, N))
        big[:, o:o + D, o:o + D] = chunk
        Fb = fourier.fft2c(big)
        if ctf is None:
            w = 1.0
        else:
            cb = ctf if len(ctf) == 1 else ctf[i:i + b]
            w = cb.evaluate(N, dtype=torch.float64, device=imgs.device).to(imgs.dtype).pow(2).expand(b, N, N)
        v, wv = fourier_insert(Fb, R[i:i + b], N, weights=w)
        num = v if num is None else num + v
        den = wv if den is None else den + wv
    V = num / (den + lam * den.mean())
    vol = fourier.ifft3c(V).real[o:o + D, o:o + D, o:o + D]
    vol = vol / gridding_correction(N, D, dtype=vol.dtype, device=vol.device)
    return from_tensor(vol, kind)
