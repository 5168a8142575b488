"""FourierNet (CryoAI, seeds/003 §3.4 and supp. C): an implicit representation of the centred
Fourier transform of a real volume.

``V̂(k) = exp(A(k)) ⊙ M(k)`` mapped to ℂ with Cartesian coordinates, where ``A`` and ``M`` are
SIRENs ``R³ → R²`` (the exponential lets a SIREN represent amplitudes spanning orders of
magnitude). Hermitian symmetry ``V̂(-k) = conj(V̂(k))`` (eq. 7) is enforced exactly: the networks
are only evaluated on the canonical half-space (``kx > 0``, or ``kx = 0`` and ``ky > 0``, or
``kx = ky = 0`` and ``kz >= 0`` — eq. 7 extended to the ``kx = 0`` plane), and the value at any
other point is the conjugate of its mirror; DC is real. At the paper's size (hidden 256, 2 and 3
hidden layers) the weight matrices hold 330,240 parameters, the paper's count (332,036 with
biases).

Coordinates are in Fourier pixels relative to DC (ARCHITECTURE.md), scaled internally by
``1 / (D / 2)`` so the SIRENs see ``[-1, 1]``.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import fourier
from .._validate import check_float, check_int, check_torch_tensor, fail
from .siren import SIREN


def _check_points(fn: str, k) -> None:
    """``k`` is a torch tensor of points ``(..., 3)``, or an error naming ``fn``."""
    check_torch_tensor(fn, "k", k, "(..., 3)")
    if k.dim() < 1 or k.shape[-1] != 3:
        fail(fn, f"k must have shape (..., 3), got {tuple(k.shape)}")


def canonical_half(k: torch.Tensor) -> torch.Tensor:
    """Boolean mask of points ``(..., 3)`` in the canonical half-space (see module docstring)."""
    _check_points("canonical_half", k)
    return _canonical_half(k)


def _canonical_half(k: torch.Tensor) -> torch.Tensor:
    kx, ky, kz = k.unbind(-1)
    return (kx > 0) | ((kx == 0) & ((ky > 0) | ((ky == 0) & (kz >= 0))))


class FourierNet(nn.Module):
    """Implicit Fourier volume of side ``D`` (the grid it is trained against).

    Args:
        D: volume side in voxels (sets the coordinate scale).
        hidden: SIREN width (paper: 256).
        amplitude_layers, modulation_layers: hidden layers of the amplitude (exp) and modulation
            SIRENs (paper: 2 and 3).
        w0: SIREN first-layer frequency.
    """

    def __init__(self, D: int, hidden: int = 256, amplitude_layers: int = 2, modulation_layers: int = 3,
                 *, w0: float = 30.0):
        super().__init__()
        fn = type(self).__name__  # a subclass (LatentFourierNet) names itself
        self.D = check_int(fn, "D", D, minimum=2)
        check_int(fn, "hidden", hidden, minimum=1)
        check_int(fn, "amplitude_layers", amplitude_layers, minimum=0)
        check_int(fn, "modulation_layers", modulation_layers, minimum=0)
        check_float(fn, "w0", w0, positive=True)
        self.amplitude = SIREN(3, 2, hidden, amplitude_layers, w0=w0)
        self.modulation = SIREN(3, 2, hidden, modulation_layers, w0=w0)

    def _raw(self, k: torch.Tensor) -> torch.Tensor:
        x = k / (self.D / 2)
        a = torch.exp(self.amplitude(x))
        m = self.modulation(x)
        v = a * m
        return torch.complex(v[..., 0], v[..., 1])

    def canonical(self, k: torch.Tensor) -> torch.Tensor:
        """Values at points ``k (..., 3)`` that are all in the canonical half-space (not
        checked; callers that build their point sets from :func:`canonical_half`, such as
        ``FourierNetDecoder.grid_ft``): ``forward`` without the mirror pass. DC is made real."""
        v = self._raw(k)
        dc = (k == 0).all(-1)
        return torch.where(dc, torch.complex(v.real, torch.zeros_like(v.real)), v)

    def forward(self, k: torch.Tensor) -> torch.Tensor:
        """Values at points ``k (..., 3)`` (Fourier pixels) → complex ``(...)``, Hermitian."""
        _check_points(type(self).__name__, k)  # names LatentFourierNet too
        canon = _canonical_half(k)
        kc = torch.where(canon[..., None], k, -k)
        v = self._raw(kc)
        v = torch.where(canon, v, v.conj())
        # DC is its own mirror: Hermitian symmetry makes it real.
        dc = (k == 0).all(-1)
        return torch.where(dc, torch.complex(v.real, torch.zeros_like(v.real)), v)

    def slice(self, rotations: torch.Tensor, n: int | None = None, radius: float | None = None) -> torch.Tensor:
        """Central slices ``S[b, ky, kx] = V̂(R_b (kx, ky, 0))`` ``(B, n, n)``, querying the
        networks only on half of each plane (the other half is the conjugate mirror, exact
        because V̂ is Hermitian and the plane is centred). ``radius``: points outside the disk
        are 0 and not queried."""
        n = self.D if n is None else check_int("FourierNet.slice", "n", n, minimum=1)
        R = rotations if rotations.dim() == 3 else rotations[None]
        dev, dt = R.device, R.dtype
        kk = fourier.frequencies(n, dtype=dt, device=dev)
        ky, kx = torch.meshgrid(kk, kk, indexing="ij")
        lo, hi = -(n // 2), (n - 1) // 2
        mirror_in = (-kx >= lo) & (-kx <= hi) & (-ky >= lo) & (-ky <= hi)
        negative = (ky < 0) | ((ky == 0) & (kx < 0))
        compute = ~(mirror_in & negative)
        if radius is not None:
            compute = compute & (kx ** 2 + ky ** 2 <= radius ** 2)
        idx = compute.reshape(-1).nonzero().squeeze(1)
        q = torch.stack((kx, ky, torch.zeros_like(kx)), -1).reshape(-1, 3)[idx]  # (P, 3)
        pts = torch.einsum("bij,pj->bpi", R, q)
        vals = self(pts)  # (B, P)
        out = vals.new_zeros((R.shape[0], n * n))
        out = out.index_copy(1, idx, vals)
        # mirrored half: S(-k) = conj(S(k)) where the mirror is in the plane
        c = n // 2
        kxi, kyi = kx.reshape(-1)[idx].long(), ky.reshape(-1)[idx].long()
        has_mirror = mirror_in.reshape(-1)[idx] & ~((kxi == 0) & (kyi == 0))
        midx = ((-kyi + c) * n + (-kxi + c))[has_mirror]
        out = out.index_copy(1, midx, vals[:, has_mirror].conj())
        out = out.reshape(-1, n, n)
        return out if rotations.dim() == 3 else out[0]

    @torch.no_grad()
    def to_volume_ft(self, D: int | None = None, chunk: int = 1 << 16) -> torch.Tensor:
        """The network on the centred ``D³`` Fourier grid (complex ``(D, D, D)``, ``[z, y, x]``)."""
        D = self.D if D is None else D
        p = next(self.parameters())
        g = fourier.frequency_grid_3d(D, dtype=p.dtype, device=p.device).reshape(-1, 3)
        vals = torch.cat([self(g[i:i + chunk]) for i in range(0, g.shape[0], chunk)])
        return vals.reshape(D, D, D)

    @torch.no_grad()
    def to_volume(self, D: int | None = None) -> torch.Tensor:
        """Real-space volume ``(D, D, D)``: inverse centred FT of :meth:`to_volume_ft`."""
        return fourier.ifft3c(self.to_volume_ft(D)).real
