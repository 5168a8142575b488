"""Contrast transfer function (RELION's convention, ARCHITECTURE.md).

Units: defocus U/V in Å (positive = underfocus), astigmatism angle in degrees (RELION's
``rlnDefocusAngle``, measured from the x axis), voltage in kV, spherical aberration Cs in mm,
amplitude contrast ``w`` (fraction, 0 <= w < 1), phase shift ``φ`` in degrees, B-factor in Å²,
spatial frequencies ``s = (sx, sy)`` in 1/Å. With ``θ`` the angle of ``s`` and
``|s|`` its norm:

    Δf(θ) = (dU + dV)/2 + (dU - dV)/2 · cos(2(θ - θ_ast))
    λ     = 12.2643247 / sqrt(V · (1 + 0.978466e-6 · V))          (Å, V in volts)
    χ     = -π λ Δf |s|² + (π/2) Cs λ³ |s|⁴ - φ - atan(w / sqrt(1 - w²))   (Cs in Å)
    CTF   = -sin(χ) · exp(-B |s|² / 4)

so ``CTF(0) = w`` for ``φ = 0``. cryoDRGN's CTF is the negative of this one; ASPIRE's and
RELION's agree with it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

from .. import fourier
from .._validate import check_finite, check_float, check_int, fail, from_tensor, to_tensor

__all__ = ["ctf", "CTFParams", "electron_wavelength", "frequency_grid"]


def electron_wavelength(voltage_kv: float) -> float:
    """Relativistic electron wavelength in Å for an accelerating voltage in kV
    (``λ = 12.2643247 / sqrt(V (1 + 0.978466e-6 V))``, V in volts; 300 kV: 0.019687 Å)."""
    v = check_float("electron_wavelength", "voltage_kv", voltage_kv, positive=True) * 1e3
    return 12.2643247 / math.sqrt(v * (1.0 + 0.978466e-6 * v))


def frequency_grid(n: int, pixel_size: float, *, dtype=torch.float64, device=None) -> torch.Tensor:
    """Centred frequency grid of an ``n × n`` image with ``pixel_size`` Å: ``(n, n, 2)`` with
    ``(sx, sy)`` in 1/Å at index ``[iy, ix]`` (DC at ``[n // 2, n // 2]``), ready for :func:`ctf`."""
    check_int("frequency_grid", "n", n, minimum=1)
    check_float("frequency_grid", "pixel_size", pixel_size, positive=True)
    return fourier.frequency_grid_2d(n, pixel_size, dtype=dtype, device=device)


_PARAMS = ("defocus_u", "defocus_v", "astigmatism_angle", "voltage", "cs", "amplitude_contrast",
           "phase_shift", "b_factor")


def _param(fn: str, name: str, v, dtype, device) -> torch.Tensor:
    t, _ = to_tensor(v, fn, name)
    if t.is_complex():
        fail(fn, f"{name} must be real, got a complex array", TypeError)
    if t.dim() > 1:
        fail(fn, f"{name} must be a number or a 1-D array (B,) of per-image values, got shape {tuple(t.shape)}")
    check_finite(fn, name, t)
    if not t.is_floating_point():
        t = t.to(torch.float64)
    return t.to(device=device, dtype=dtype if dtype is not None else t.dtype)


def ctf(freqs, defocus_u, defocus_v, astigmatism_angle, voltage, cs, amplitude_contrast,
        phase_shift=0.0, b_factor=0.0):
    """Evaluate the CTF (RELION convention, module docstring) at spatial frequencies.

    Args:
        freqs: real ``(..., 2)`` frequencies ``(sx, sy)`` in 1/Å, e.g. :func:`frequency_grid`.
        defocus_u, defocus_v: Å (numbers or ``(B,)`` arrays, one value per image).
        astigmatism_angle: degrees, angle of the U axis from x.
        voltage: kV. cs: mm. amplitude_contrast: ``w`` in [0, 1).
        phase_shift: degrees (phase plate). b_factor: Å² (envelope ``exp(-B s² / 4)``).

    Every parameter is a number or a ``(B,)`` array; they broadcast together to a batch shape
    ``P`` (``()`` or ``(B,)``), and the result has shape ``P + freqs.shape[:-1]``, e.g.
    ``(B, n, n)`` for a grid ``(n, n, 2)``. Differentiable with respect to every parameter
    (defocus included) and the frequencies. Computed in the floating dtype of ``freqs``
    (float64 for integer input). Returns the kind (torch/NumPy) of ``freqs``.
    """
    fn = "ctf"
    f, kind = to_tensor(freqs, fn, "freqs")
    if f.is_complex():
        fail(fn, "freqs must be real (sx, sy) in 1/Å, got a complex array", TypeError)
    if f.dim() < 1 or f.shape[-1] != 2:
        fail(fn, f"freqs must have shape (..., 2) = (sx, sy) in 1/Å, got {tuple(f.shape)}")
    if not f.is_floating_point():
        f = f.to(torch.float64)
    dtype, dev = f.dtype, f.device
    vals = {}
    for name, v in zip(_PARAMS, (defocus_u, defocus_v, astigmatism_angle, voltage, cs, amplitude_contrast,
                                 phase_shift, b_factor)):
        vals[name] = _param(fn, name, v, dtype, dev)
    volt = vals["voltage"]
    w = vals["amplitude_contrast"]
    if bool((volt <= 0).any()):
        fail(fn, f"voltage must be > 0 kV, got {volt.min().item():g}")
    if bool(((w < 0) | (w >= 1)).any()):
        bad = w[(w < 0) | (w >= 1)][0].item()
        fail(fn, f"amplitude_contrast must be in [0, 1), got {bad:g}")
    if bool((vals["cs"] < 0).any()):
        fail(fn, f"cs must be >= 0 mm, got {vals['cs'].min().item():g}")
    try:
        P = torch.broadcast_shapes(*(v.shape for v in vals.values()))
    except RuntimeError:
        shapes = {k: tuple(v.shape) for k, v in vals.items() if v.dim()}
        fail(fn, f"per-image parameters must have the same length B, got shapes {shapes}")
    extra = (None,) * (f.dim() - 1)
    v = {k: t.expand(P)[(...,) + extra] for k, t in vals.items()}
    out = _evaluate(f[..., 0], f[..., 1], v)
    return from_tensor(out, kind)


def _evaluate(sx: torch.Tensor, sy: torch.Tensor, v: dict) -> torch.Tensor:
    """The CTF formula on frequencies (sx, sy) with parameters ``v`` already broadcastable.

    The astigmatic defocus uses ``cos(2(θ - θ_ast)) = cos 2θ cos 2θ_ast + sin 2θ sin 2θ_ast`` with
    ``cos 2θ = (sx² - sy²)/s²``, ``sin 2θ = 2 sx sy / s²`` (no per-image trigonometry on the grid;
    at s = 0 the defocus term vanishes anyway)."""
    s2 = sx * sx + sy * sy
    inv = torch.where(s2 > 0, 1.0 / torch.where(s2 > 0, s2, torch.ones_like(s2)), torch.zeros_like(s2))
    c2t = (sx * sx - sy * sy) * inv
    s2t = 2.0 * sx * sy * inv
    ang = 2.0 * torch.deg2rad(v["astigmatism_angle"])
    dfu, dfv = v["defocus_u"], v["defocus_v"]
    mean, half = 0.5 * (dfu + dfv), 0.5 * (dfu - dfv)
    V = v["voltage"] * 1e3
    lam = 12.2643247 / torch.sqrt(V * (1.0 + 0.978466e-6 * V))
    w = v["amplitude_contrast"]
    # χ = -π λ Δf s² + (π/2) Cs λ³ s⁴ - φ - atan(w / sqrt(1 - w²)), with Δf split into its parts
    a1 = -math.pi * lam * mean
    a2 = -math.pi * lam * half * torch.cos(ang)
    a3 = -math.pi * lam * half * torch.sin(ang)
    a4 = 0.5 * math.pi * (v["cs"] * 1e7) * lam ** 3
    a0 = -torch.deg2rad(v["phase_shift"]) - torch.atan(w / torch.sqrt(1.0 - w * w))
    chi = s2 * (a1 + a2 * c2t + a3 * s2t + a4 * s2) + a0
    out = -torch.sin(chi)
    b = v["b_factor"]
    if b.requires_grad or bool((b != 0).any()):
        out = out * torch.exp(-b * s2 / 4.0)
    return out


@dataclass
class CTFParams:
    """Per-image CTF parameters (units as in :func:`ctf`) plus the pixel size (Å) of the images
    they apply to. Every field is a ``(B,)`` tensor (numbers are broadcast at construction).

    ``CTFParams.evaluate(n)`` gives the ``(B, n, n)`` CTF on the centred grid of an ``n × n``
    image; :func:`orbitcore.physics.project` and :func:`~orbitcore.physics.simulate_particles`
    take a ``CTFParams``. STAR files map to it with :meth:`orbitcore.io.ParticleTable.ctf`.
    """

    defocus_u: torch.Tensor
    defocus_v: torch.Tensor
    astigmatism_angle: torch.Tensor
    voltage: torch.Tensor
    cs: torch.Tensor
    amplitude_contrast: torch.Tensor
    phase_shift: torch.Tensor
    b_factor: torch.Tensor
    pixel_size: torch.Tensor

    FIELDS = _PARAMS + ("pixel_size",)

    def __post_init__(self):
        fn = "CTFParams"
        vals = {}
        for fld in fields(self):
            vals[fld.name] = _param(fn, fld.name, getattr(self, fld.name), None, None)
        dev = vals["defocus_u"].device
        dtype = torch.float64 if any(t.dtype == torch.float64 for t in vals.values()) else torch.float32
        try:
            B = torch.broadcast_shapes(*(t.shape for t in vals.values()))
        except RuntimeError:
            shapes = {k: tuple(t.shape) for k, t in vals.items() if t.dim()}
            fail(fn, f"per-image parameters must have the same length B, got shapes {shapes}")
        if len(B) == 0:
            B = (1,)
        for k, t in vals.items():
            object.__setattr__(self, k, t.to(device=dev, dtype=dtype).expand(B).contiguous())
        if bool((self.pixel_size <= 0).any()):
            fail(fn, f"pixel_size must be > 0 Å, got {self.pixel_size.min().item():g}")
        if bool((self.voltage <= 0).any()):
            fail(fn, f"voltage must be > 0 kV, got {self.voltage.min().item():g}")
        w = self.amplitude_contrast
        if bool(((w < 0) | (w >= 1)).any()):
            fail(fn, f"amplitude_contrast must be in [0, 1), got {w[(w < 0) | (w >= 1)][0].item():g}")

    @classmethod
    def create(cls, defocus_u, defocus_v=None, astigmatism_angle=0.0, voltage=300.0, cs=2.7,
               amplitude_contrast=0.1, phase_shift=0.0, b_factor=0.0, pixel_size=1.0) -> "CTFParams":
        """Convenience constructor with typical defaults (300 kV, Cs 2.7 mm, w = 0.1);
        ``defocus_v`` defaults to ``defocus_u`` (no astigmatism)."""
        return cls(defocus_u, defocus_u if defocus_v is None else defocus_v, astigmatism_angle, voltage, cs,
                   amplitude_contrast, phase_shift, b_factor, pixel_size)

    def __len__(self) -> int:
        return int(self.defocus_u.shape[0])

    def __getitem__(self, idx) -> "CTFParams":
        if isinstance(idx, int):
            idx = slice(idx, idx + 1 if idx != -1 else None)
        return CTFParams(*(getattr(self, k)[idx] for k in self.FIELDS))

    def to(self, device=None, dtype=None) -> "CTFParams":
        return CTFParams(*(getattr(self, k).to(device=device, dtype=dtype) for k in self.FIELDS))

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k) for k in self.FIELDS}

    @classmethod
    def cat(cls, items) -> "CTFParams":
        items = list(items)
        if not items:
            fail("CTFParams.cat", "items must contain at least one CTFParams")
        return cls(*(torch.cat([getattr(c, k) for c in items]) for k in cls.FIELDS))

    @classmethod
    def from_batch(cls, batch: dict) -> "CTFParams":
        """From a collated :class:`orbitcore.io.ParticleStack` batch (keys ``ctf_<field>``)."""
        missing = [k for k in cls.FIELDS if f"ctf_{k}" not in batch]
        if missing:
            fail("CTFParams.from_batch", f"batch has no CTF entries {['ctf_' + k for k in missing]} "
                                         "(the STAR file has no CTF parameters?)", KeyError)
        return cls(*(batch[f"ctf_{k}"] for k in cls.FIELDS))

    def evaluate(self, n: int, *, pixel_size=None, dtype=None, device=None) -> torch.Tensor:
        """The CTF ``(B, n, n)`` on the centred grid of ``n × n`` images (DC at ``n // 2``).

        Frequencies are ``k / (n · pixel_size)`` with this object's per-image pixel size
        (or ``pixel_size`` if given, e.g. after downsampling)."""
        fn = "CTFParams.evaluate"
        n = check_int(fn, "n", n, minimum=1)
        dtype = dtype or self.defocus_u.dtype
        device = device or self.defocus_u.device
        k = fourier.frequency_grid_2d(n, None, dtype=dtype, device=device)  # integer frequencies
        px = self.pixel_size if pixel_size is None else _param(fn, "pixel_size", pixel_size, dtype, device)
        px = px.to(device=device, dtype=dtype).expand(len(self))
        if bool((px <= 0).any()):
            fail(fn, f"pixel_size must be > 0 Å, got {px.min().item():g}")
        v = {name: getattr(self, name).to(device=device, dtype=dtype)[:, None, None] for name in _PARAMS}
        if len(self) and bool((px == px[0]).all()):
            freqs = k / (n * px[0])  # one grid for all images
            return _evaluate(freqs[..., 0], freqs[..., 1], v).expand(len(self), n, n)
        freqs = k[None] / (n * px)[:, None, None, None]  # (B, n, n, 2), per-image pixel size
        return _evaluate(freqs[..., 0], freqs[..., 1], v)
