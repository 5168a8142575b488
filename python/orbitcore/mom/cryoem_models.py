"""The networks of the cryo-EM method of moments (seeds/000 §4.2 and appendix A.2).

Volume models ``v̂`` — each maps the quadrature rotations ``Q (q, 3, 3)`` to the slices
``S_j(k) = v̂(Q_j · (kx, ky, 0))`` at the moment frequencies ``k`` of a
:class:`~orbitcore.MomentLayout` (complex ``(q, m)``, Hermitian-symmetric:
``S_j(−k) = conj(S_j(k))``, so :func:`orbitcore.moment_loss` can use its real basis), and
gives the real-space volume ``(n, n, n)``:

* :class:`FourierNetVolume` — the paper's ``v̂_φ`` (eq. 31; FourierNet of seeds/003):
  ``query="direct"`` evaluates the network at the rotated grids themselves, one
  representative of each pair ``{k, −k}`` per plane (half of each plane; the other half is the
  conjugate, exact because v̂_φ is Hermitian); ``query="grid"`` evaluates it once on the
  ``n³`` Fourier grid (half of it), takes the inverse FT and slices the 2×-padded FT of that
  volume with :func:`orbitcore.fourier_slice` — ~30× fewer network queries at the paper's
  q = 1200, and exactly the forward model of :class:`orbitcore.physics.Projector`.
* :class:`VoxelVolume` — the faster baseline: a voxel volume sliced through the 2×-padded,
  gridding-corrected FT (the projector of ``orbitcore.physics``). Its parameters are the
  half-spectrum of the volume by default (``param="fourier"``); ``param="real"`` uses the
  real-space voxels (measured to stall in a poor local minimum; see docs in ``cryoem``).

Encoders (appendix A.2: "the MRA encoder with conv2D"):

* :class:`MomentEncoder` — two branches on the ``n × n`` frequency grid, ``input2D_{n,1}``
  (M̂1: real and imaginary parts, 2 channels) and ``input2D_{n,m}`` (M̂2: at frequency ``k`` the
  row ``M̂2(k, ·)`` as ``2m`` real channels), conv2D layers (LeakyReLU 0.02), the branches
  stacked into 6 channels, more conv2D layers, ``full`` with tanh and a linear ``full``.
  ``output="density"`` is ξ^ρ: a softmax over the ``q`` quadrature points (``z_ρ``);
  ``output="latent"`` is ξ^v: a latent vector ``z_v`` fed to :class:`FourierNetVolume`.

Choices the paper leaves open (ours): the first layer of the M̂2 branch is a 1×1 convolution
(``2m`` channels are mixed per frequency before any spatial window: a ``w × w`` window on
``2m ≈ 900–6400`` channels would cost more than the rest of a step); zero padding (the
frequency grid is not periodic); before the ``full`` layers the field is average-pooled to at
most ``16 × 16``; the last layer starts at zero, so ``z_ρ`` starts uniform (and ``z_v`` at 0).
"""
from __future__ import annotations

import torch
from torch import nn

from .. import fourier
from .._validate import check_float, check_int, fail, to_tensor
from ..nn.fouriernet import FourierNet
from ..ops.moments import MomentLayout
from ..ops.slice import fourier_slice
from ..physics.projection import prepare_volume_ft

__all__ = ["VolumeModel", "FourierNetVolume", "VoxelVolume", "MomentEncoder", "LatentFourierNet", "FreeDensity",
           "ProjectedDensity", "half_spectrum_frequencies"]

_SLOPE = 0.02  # appendix A: LeakyReLU with parameter 0.02


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def half_spectrum_frequencies(n: int, *, dtype=torch.float64, device=None) -> torch.Tensor:
    """Integer frequencies ``(kx, ky, kz)`` of the uncentred half spectrum (``torch.fft.rfftn``
    layout of an ``(n, n, n)`` array indexed ``[z, y, x]``): shape ``(n, n, n // 2 + 1, 3)``,
    entry ``[iz, iy, ix] = (ix, wrap(iy), wrap(iz))`` with ``wrap(i) = i − n`` for ``i > (n−1)//2``."""
    n = check_int("half_spectrum_frequencies", "n", n, minimum=1)
    k = torch.arange(n, device=device)
    k = torch.where(k > (n - 1) // 2, k - n, k).to(dtype)
    kx = torch.arange(n // 2 + 1, device=device, dtype=dtype)
    Z, Y, X = torch.meshgrid(k, k, kx, indexing="ij")
    return torch.stack((X, Y, Z), -1)


def _volume_from_half_spectrum(H: torch.Tensor, n: int) -> torch.Tensor:
    """Real ``(n, n, n)`` volume (origin at ``n // 2``) whose centred FT has the half spectrum
    ``H`` (uncentred rfftn layout): ``v = fftshift(irfftn(H))``. The irfftn keeps the Hermitian
    part of the redundant planes, so v is real for any H."""
    return torch.fft.fftshift(torch.fft.irfftn(H, s=(n, n, n), dim=(-3, -2, -1)), dim=(-3, -2, -1))


def _half_spectrum_of(v: torch.Tensor) -> torch.Tensor:
    return torch.fft.rfftn(torch.fft.ifftshift(v, dim=(-3, -2, -1)), dim=(-3, -2, -1))


def band_mask(n: int, radius: float | None) -> torch.Tensor:
    """Real ``(n, n, n // 2 + 1)`` mask of the half spectrum: 1 where ``|k| <= radius`` (all ones
    for ``radius=None``)."""
    k = half_spectrum_frequencies(n)
    if radius is None:
        return torch.ones(k.shape[:-1], dtype=torch.float64)
    return ((k * k).sum(-1) <= radius * radius + 1e-9).to(torch.float64)


def _check_layout(fn: str, layout, n: int) -> None:
    if not isinstance(layout, MomentLayout):
        fail(fn, f"layout must be an orbitcore.MomentLayout, got {type(layout).__name__}", TypeError)
    if layout.ndim != 2 or layout.size != n:
        fail(fn, f"layout must describe {n} x {n} images (the model's working size), got {layout!r}")


def _check_rotations(fn: str, Q: torch.Tensor) -> None:
    if not isinstance(Q, torch.Tensor) or Q.dim() != 3 or tuple(Q.shape[-2:]) != (3, 3):
        fail(fn, f"rotations must be a (q, 3, 3) tensor, got {getattr(Q, 'shape', type(Q).__name__)}")


class VolumeModel(nn.Module):
    """Interface of the volume models: ``slices(rotations, layout) -> (q, m)`` complex and
    ``volume() -> (n, n, n)`` real (the units of the moments they are fitted to)."""

    size: int

    def slices(self, rotations: torch.Tensor, layout: MomentLayout) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def volume(self) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


def _padded_slices(v: torch.Tensor, rotations: torch.Tensor, layout: MomentLayout, pad: int) -> torch.Tensor:
    """Slices of a real volume through its ``pad``-fold padded, gridding-corrected FT (the
    projector of orbitcore.physics), gathered at the layout's frequencies."""
    n = layout.size
    V = prepare_volume_ft(v, pad)
    radius = layout.radius if layout.radius is not None else None
    S = fourier_slice(V, pad * rotations.to(v.dtype), n, radius, hermitian=True, check=False)
    return layout.gather(S)


# ----------------------------------------------------------------------------------------------
# FourierNet volume (the paper's v̂_φ)
# ----------------------------------------------------------------------------------------------
class LatentFourierNet(FourierNet):
    """FourierNet whose SIRENs also read a latent vector: ``v̂_φ : R^{3 + |z_v|} → C`` (§4.2,
    the optional ξ^v branch). ``self.latent`` (``(latent_dim,)``) is set by the caller before
    a query; it is appended to every scaled coordinate. Hermitian symmetry is kept (the
    latent is the same for ``k`` and its mirror)."""

    def __init__(self, D: int, latent_dim: int, hidden: int = 256, amplitude_layers: int = 2,
                 modulation_layers: int = 3, *, w0: float = 30.0):
        super().__init__(D, hidden, amplitude_layers, modulation_layers, w0=w0)
        from ..nn.siren import SIREN  # noqa: PLC0415

        self.latent_dim = check_int("LatentFourierNet", "latent_dim", latent_dim, minimum=1)
        self.amplitude = SIREN(3 + latent_dim, 2, hidden, amplitude_layers, w0=w0)
        self.modulation = SIREN(3 + latent_dim, 2, hidden, modulation_layers, w0=w0)
        self.latent: torch.Tensor | None = None

    def _raw(self, k: torch.Tensor) -> torch.Tensor:
        if self.latent is None:
            fail("LatentFourierNet", "set .latent (the z_v of the volume encoder) before querying", RuntimeError)
        x = k / (self.D / 2)
        z = self.latent.to(x.dtype).expand(*x.shape[:-1], self.latent_dim)
        x = torch.cat((x, z), -1)
        a = torch.exp(self.amplitude(x))
        m = self.modulation(x)
        v = a * m
        return torch.complex(v[..., 0], v[..., 1])


class FourierNetVolume(VolumeModel):
    """The paper's volume representation ``v̂_φ`` (eq. 31): a FourierNet on the working grid.

    Args:
        size: working size ``n`` (the network's coordinates are Fourier pixels of an ``n³`` box).
        hidden, amplitude_layers, modulation_layers, w0: FourierNet's SIRENs (paper: 256, 2, 3;
            SIREN's w0 = 30).
        query: ``"direct"`` (the paper: ``v̂_φ(Q_j · (kx, ky, 0))`` for one representative of
            each pair ``±k`` of the moment frequencies per plane; cost ``q · m / 2`` network
            queries, ``q · m / 4`` when the rotations come in pairs ``Q_j' = Q_j Rz(π)``, as in
            every quadrature with an even number of equally spaced in-plane angles: then
            ``S_j'(k) = v̂(−Q_j k) = S_j(−k)`` and only one rotation of each pair is queried) or ``"grid"`` (``v̂_φ`` on the half spectrum of the ``n³`` grid, inverse FT,
            slices of the ``pad``-fold padded FT; cost ``n³ / 2`` queries + FFTs).
        latent_dim: size of the optional latent ``z_v`` (0: none); the network then reads
            ``(k, z_v)`` and :meth:`set_latent` must be called before querying.
        pad: padding factor of the ``"grid"`` query (2, RELION's default).
        radius: band limit of the real-space volume (:meth:`volume`, and the ``"grid"`` query):
            ``v̂_φ`` is used only at ``|k| <= radius`` (the moments' disk radius; the network is
            never trained beyond it). ``None``: the whole ``n³`` grid.

    Convention: our slices are ``S_j[ky, kx] = v̂(Q_j (kx, ky, 0))`` (ARCHITECTURE.md). The
    paper writes ``v̂_φ(Q(j)^T (kx, ky, 0))`` for ``Q(j) ∘ v = v(Q(j)^T ·)`` (eq. 7): its
    ``Q(j)`` is our ``Q_j^T``; the quadrature set is closed under transposition in
    distribution (Haar measure), so only the meaning of ``z_ρ(j)`` changes — ours is the weight
    of the rotation whose viewing direction is ``Q_j e_z``.
    """

    def __init__(self, size: int, hidden: int = 256, amplitude_layers: int = 2, modulation_layers: int = 3, *,
                 w0: float = 30.0, query: str = "direct", latent_dim: int = 0, pad: int = 2,
                 radius: float | None = None):
        super().__init__()
        fn = "FourierNetVolume"
        self.size = check_int(fn, "size", size, minimum=3)
        hidden = check_int(fn, "hidden", hidden, minimum=1)
        check_float(fn, "w0", w0, positive=True)
        if query not in ("direct", "grid"):
            fail(fn, f"query must be 'direct' (the paper: the network at the rotated grids) or 'grid' "
                     f"(the network on the n^3 grid, then fourier_slice), got {query!r}")
        self.query = query
        self.latent_dim = check_int(fn, "latent_dim", latent_dim, minimum=0)
        self.pad = check_int(fn, "pad", pad, minimum=1)
        self.radius = check_float(fn, "radius", radius, positive=True, allow_none=True)
        if self.latent_dim:
            self.net = LatentFourierNet(self.size, self.latent_dim, hidden, amplitude_layers, modulation_layers,
                                        w0=w0)
        else:
            self.net = FourierNet(self.size, hidden, amplitude_layers, modulation_layers, w0=w0)
        self._cache: dict = {}

    def set_latent(self, z: torch.Tensor | None) -> None:
        """The latent ``z_v`` ``(latent_dim,)`` for the next queries (models with ``latent_dim > 0``)."""
        if self.latent_dim == 0:
            if z is not None:
                fail("FourierNetVolume.set_latent", "this model has latent_dim = 0; build it with latent_dim > 0")
            return
        if z is None or z.shape != (self.latent_dim,):
            fail("FourierNetVolume.set_latent",
                 f"z must have shape ({self.latent_dim},), got {None if z is None else tuple(z.shape)}")
        self.net.latent = z

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def _representatives(self, layout: MomentLayout, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rep, partner, kpts): positions u with u <= conj[u], their partners, and the plane
        points (kx, ky, 0) of the representatives (float, on device)."""
        key = ("rep", layout.key(), str(device))
        if key not in self._cache:
            conj = layout.conjugate
            u = torch.arange(layout.m)
            rep = u[u <= conj]
            f = layout.frequencies[rep].to(torch.float64)
            kpts = torch.cat((f, torch.zeros(len(rep), 1, dtype=torch.float64)), 1)
            self._cache[key] = (rep.to(device), conj[rep].to(device), kpts.to(device))
        return self._cache[key]

    def _pi_pairs(self, rotations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(primary, secondary, source)``: the rotations to query, those that are the π in-plane
        turn of one of them (``Q_s = Q_p Rz(π)`` to 1e-5), and for each secondary the position in
        ``primary`` of its partner. Cached for the last rotation set (a constant buffer in fits).
        Rotations that need gradients are all queried (no pairs)."""
        q = rotations.shape[0]
        if rotations.requires_grad:
            u = torch.arange(q, device=rotations.device)
            return u, u[:0], u[:0]
        hit = self._cache.get("pi_pairs")
        if hit is None or hit[0].shape != rotations.shape or hit[0].device != rotations.device or \
                hit[0].dtype != rotations.dtype or not torch.equal(hit[0], rotations):
            R = rotations.detach().to(torch.float64).cpu()
            flip = torch.tensor([-1.0, -1.0, 1.0], dtype=torch.float64)
            dist = torch.cdist((R * flip).reshape(q, 9), R.reshape(q, 9))  # ‖Q_i Rz(π) − Q_j‖
            m, j = dist.min(1)
            u = torch.arange(q)
            j = torch.where(m < 1e-5, j, u)
            paired = (j != u) & (j[j] == u)
            primary = u[~paired | (u < j)]
            secondary = u[paired & (u > j)]
            pos = torch.full((q,), -1, dtype=torch.long)
            pos[primary] = torch.arange(len(primary))
            dev = rotations.device
            hit = (rotations.detach().clone(), (primary.to(dev), secondary.to(dev), pos[j[secondary]].to(dev)))
            self._cache["pi_pairs"] = hit
        return hit[1]

    def slices(self, rotations: torch.Tensor, layout: MomentLayout) -> torch.Tensor:
        """Complex ``(q, m)`` slices at ``layout``'s frequencies (module docstring)."""
        fn = "FourierNetVolume.slices"
        _check_layout(fn, layout, self.size)
        _check_rotations(fn, rotations)
        dt = self._dtype()
        if self.query == "grid":
            return _padded_slices(self.volume_differentiable(), rotations, layout, self.pad)
        rep, partner, kpts = self._representatives(layout, rotations.device)
        primary, secondary, source = self._pi_pairs(rotations)
        pts = torch.einsum("qij,pj->qpi", rotations[primary].to(dt), kpts.to(dt))  # Q_j · (kx, ky, 0)
        vals = self.net(pts)  # (q_primary, P)
        S = vals.new_zeros((len(primary), layout.m))
        S = S.index_copy(1, partner, torch.conj_physical(vals))
        # representatives last: a self-conjugate frequency (DC) keeps its (real) value
        S = S.index_copy(1, rep, vals)
        if len(secondary) == 0:
            return S
        conj = layout.conjugate.to(S.device)
        out = S.new_zeros((rotations.shape[0], layout.m))
        out = out.index_copy(0, primary, S)
        return out.index_copy(0, secondary, S[source][:, conj])  # S_{Q Rz(π)}(k) = S_Q(−k)

    def volume_ft(self) -> torch.Tensor:
        """``v̂_φ`` on the centred ``n³`` Fourier grid (complex, ``[z, y, x]``), no gradient."""
        with torch.no_grad():
            return fourier.fft3c(self.volume_differentiable())

    def _half_grid(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Half-spectrum points inside the band (P, 3) and their flat positions (P,)."""
        key = ("half", str(device))
        if key not in self._cache:
            k = half_spectrum_frequencies(self.size)
            inside = band_mask(self.size, self.radius).reshape(-1) > 0
            idx = inside.nonzero()[:, 0]
            self._cache[key] = (k.reshape(-1, 3)[idx].to(device), idx.to(device))
        return self._cache[key]

    def volume_differentiable(self) -> torch.Tensor:
        """Real ``(n, n, n)`` volume: ``v̂_φ`` on the half spectrum of the grid (inside the band),
        inverse FT."""
        p = next(self.parameters())
        pts, idx = self._half_grid(p.device)
        vals = self.net(pts.to(p.dtype))
        n = self.size
        H = vals.new_zeros(n * n * (n // 2 + 1)).index_copy(0, idx, vals).reshape(n, n, n // 2 + 1)
        return _volume_from_half_spectrum(H, n)

    def volume(self) -> torch.Tensor:
        """Real-space volume ``(n, n, n)`` (the paper's output: v̂_φ on the grid, inverse FT)."""
        with torch.no_grad():
            return self.volume_differentiable()


# ----------------------------------------------------------------------------------------------
# Voxel volume (the faster baseline)
# ----------------------------------------------------------------------------------------------
class VoxelVolume(VolumeModel):
    """A voxel volume ``(n, n, n)`` sliced through its padded FT (the projector of
    ``orbitcore.physics``: ``pad``-fold zero padding, gridding correction, trilinear slices).

    Args:
        size: working size ``n``.
        init: initial real volume ``(n, n, n)`` (default: an isotropic Gaussian of standard
            deviation ``n / 8`` voxels with unit sum).
        param: ``"fourier"`` (default): the parameters are the real and imaginary parts of the
            volume's half spectrum, so Adam's per-parameter step sizes act per frequency (a
            diagonal preconditioner across resolutions); ``"real"``: the voxels themselves.
        pad: padding factor (2).
        radius: band limit in Fourier pixels (the moments' disk radius): frequencies with
            ``|k| > radius`` are held at 0. No slice samples them, so nothing in the data
            constrains them; left free they drift (Adam takes steps of size ~lr whatever the
            gradient) and leak into the sampled frequencies through the padded FT. ``None``:
            no band limit.
    """

    def __init__(self, size: int, init: torch.Tensor | None = None, *, param: str = "fourier", pad: int = 2,
                 radius: float | None = None, dtype=torch.float32):
        super().__init__()
        fn = "VoxelVolume"
        self.size = n = check_int(fn, "size", size, minimum=3)
        if param not in ("fourier", "real"):
            fail(fn, f"param must be 'fourier' or 'real', got {param!r}")
        self.param = param
        self.pad = check_int(fn, "pad", pad, minimum=1)
        self.radius = check_float(fn, "radius", radius, positive=True, allow_none=True)
        if init is None:
            init = gaussian_blob(n, dtype=torch.float64)
        if not isinstance(init, torch.Tensor) or init.shape != (n, n, n) or init.is_complex():
            fail(fn, f"init must be a real ({n}, {n}, {n}) tensor, got "
                     f"{getattr(init, 'dtype', type(init).__name__)} {tuple(getattr(init, 'shape', ()))}")
        init = init.detach().to(torch.float64)
        band = band_mask(n, self.radius)
        self.register_buffer("band", band.to(dtype))
        if self.radius is not None:
            init = _volume_from_half_spectrum(_half_spectrum_of(init) * band, n)
        if param == "fourier":
            H = _half_spectrum_of(init)
            # parameters of order 1: scale by the largest coefficient of the initial volume
            self.register_buffer("scale", torch.tensor(float(H.abs().max().clamp_min(1e-30)), dtype=dtype))
            self.coefficients = nn.Parameter(torch.view_as_real(H / float(self.scale)).to(dtype).contiguous())
        else:
            self.register_buffer("scale", torch.tensor(float(init.abs().max().clamp_min(1e-30)), dtype=dtype))
            self.voxels = nn.Parameter((init / float(self.scale)).to(dtype))

    def volume_differentiable(self) -> torch.Tensor:
        if self.param == "fourier":
            H = torch.view_as_complex(self.coefficients) * self.scale
            return _volume_from_half_spectrum(H * self.band if self.radius is not None else H, self.size)
        v = self.voxels * self.scale
        if self.radius is not None:
            v = _volume_from_half_spectrum(_half_spectrum_of(v) * self.band, self.size)
        return v

    def slices(self, rotations: torch.Tensor, layout: MomentLayout) -> torch.Tensor:
        fn = "VoxelVolume.slices"
        _check_layout(fn, layout, self.size)
        _check_rotations(fn, rotations)
        return _padded_slices(self.volume_differentiable(), rotations, layout, self.pad)

    def volume(self) -> torch.Tensor:
        with torch.no_grad():
            return self.volume_differentiable()


def gaussian_blob(n: int, sigma: float | None = None, *, dtype=torch.float32) -> torch.Tensor:
    """Isotropic Gaussian ``(n, n, n)`` centred at ``n // 2`` (std ``sigma``, default ``n / 8``
    voxels), normalised to unit sum: the default starting volume of :class:`VoxelVolume`."""
    s = n / 8 if sigma is None else check_float("gaussian_blob", "sigma", sigma, positive=True)
    x = torch.arange(n, dtype=torch.float64) - n // 2
    g = torch.exp(-x * x / (2 * s * s))
    b = g[:, None, None] * g[None, :, None] * g[None, None, :]
    return (b / b.sum()).to(dtype)


# ----------------------------------------------------------------------------------------------
# Encoders ξ^ρ, ξ^v (appendix A.2)
# ----------------------------------------------------------------------------------------------
def _conv_stack(c_in: int, widths: tuple[int, ...], c_out: int, window: int, first_window: int | None = None
                ) -> nn.Sequential:
    layers: list[nn.Module] = []
    c = c_in
    for i, w in enumerate(widths):
        k = first_window if (i == 0 and first_window is not None) else window
        layers += [nn.Conv2d(c, w, k, padding=k // 2), nn.LeakyReLU(_SLOPE)]
        c = w
    k = first_window if (not widths and first_window is not None) else window
    layers.append(nn.Conv2d(c, c_out, k, padding=k // 2))
    return nn.Sequential(*layers)


class MomentEncoder(nn.Module):
    """ξ^ρ / ξ^v for cryo-EM (appendix A.2): moments ``(M̂1, M̂2)`` on a disk of frequencies →
    ``z_ρ`` (a probability vector over the ``q`` quadrature rotations) or a latent ``z_v``.

    Args:
        layout: the :class:`~orbitcore.MomentLayout` of the moments (``n × n`` images, ``m``
            frequencies).
        n_out: ``q`` (density) or the latent size (latent).
        output: ``"density"`` (softmax) or ``"latent"`` (linear).
        window: conv2D window ``w`` (odd).
        m2_channels, m1_channels: widths of the M̂2 and M̂1 branches (the M̂2 branch's first layer
            is 1 × 1, module docstring).
        merged: channels after stacking (6 as in appendix A.1: 4 from M̂2, 2 from M̂1).
        trunk_channels: conv2D widths after the merge.
        hidden: width of the tanh ``full`` layer.
        pooled: the field is average-pooled to ``min(n, pooled)²`` before the ``full`` layers.

    ``forward(M1, M2)`` takes the moments as complex ``(m,)`` and ``(m, m)`` (any scale; the
    fitting code passes them normalised, see ``orbitcore.mom.cryoem``).
    """

    def __init__(self, layout: MomentLayout, n_out: int, output: str = "density", *, window: int = 5,
                 m2_channels: tuple[int, ...] = (32, 16), m1_channels: tuple[int, ...] = (8, 8), merged: int = 6,
                 trunk_channels: tuple[int, ...] = (16, 16), hidden: int = 256, pooled: int = 16):
        super().__init__()
        fn = "MomentEncoder"
        if not isinstance(layout, MomentLayout) or layout.ndim != 2:
            fail(fn, f"layout must be an orbitcore.MomentLayout of images (ndim=2), got {layout!r}")
        self.n_out = check_int(fn, "n_out", n_out, minimum=1)
        if output not in ("density", "latent"):
            fail(fn, f"output must be 'density' (xi^rho) or 'latent' (xi^v), got {output!r}")
        window = check_int(fn, "window", window, minimum=1)
        if window % 2 == 0:
            fail(fn, f"window must be odd, got {window}")
        merged = check_int(fn, "merged", merged, minimum=2)
        hidden = check_int(fn, "hidden", hidden, minimum=1)
        pooled = check_int(fn, "pooled", pooled, minimum=1)
        if len(trunk_channels) < 1:
            fail(fn, "trunk_channels must have at least one entry")
        self.output = output
        self.n, self.m = layout.size, layout.m
        self.register_buffer("flat", layout._flat_t.clone(), persistent=False)
        c2 = merged - merged // 3
        self.lower = _conv_stack(2 * self.m, tuple(m2_channels), c2, window, first_window=1)
        self.upper = _conv_stack(2, tuple(m1_channels), merged - c2, window)
        self.trunk = nn.Sequential(nn.LeakyReLU(_SLOPE),
                                   _conv_stack(merged, tuple(trunk_channels)[:-1], trunk_channels[-1], window),
                                   nn.LeakyReLU(_SLOPE))
        side = min(self.n, pooled)
        self.pool = nn.AdaptiveAvgPool2d(side)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(trunk_channels[-1] * side * side, hidden), nn.Tanh(),
                                  nn.Linear(hidden, self.n_out))
        with torch.no_grad():  # z_rho starts uniform (z_v at 0)
            self.head[-1].weight.zero_()
            self.head[-1].bias.zero_()

    def features(self, M1: torch.Tensor, M2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x1 (1, 2, n, n)`` and ``x2 (1, 2m, n, n)``: M̂1 and the rows of M̂2 on the grid
        (zero off the disk)."""
        fn = "MomentEncoder"
        if M1.shape != (self.m,) or M2.shape != (self.m, self.m) or not (M1.is_complex() and M2.is_complex()):
            fail(fn, f"M1, M2 must be complex ({self.m},) and ({self.m}, {self.m}), got {M1.dtype} "
                     f"{tuple(M1.shape)} and {M2.dtype} {tuple(M2.shape)}")
        n, dt = self.n, self._dtype()
        g1 = M1.new_zeros(n * n).index_copy(0, self.flat, M1)
        x1 = torch.stack((g1.real, g1.imag)).reshape(1, 2, n, n)
        g2 = M2.new_zeros(n * n, self.m).index_copy(0, self.flat, M2)  # row k at grid point k
        x2 = torch.cat((g2.real, g2.imag), 1).T.reshape(1, 2 * self.m, n, n)
        return x1.to(dt), x2.to(dt)

    def forward(self, M1: torch.Tensor, M2: torch.Tensor) -> torch.Tensor:
        """``(n_out,)``: the density ``z_ρ`` (sums to 1) or the latent ``z_v``."""
        x1, x2 = self.features(M1, M2)
        h = torch.cat((self.lower(x2), self.upper(x1)), 1)  # the 6-channel field
        z = self.head(self.pool(self.trunk(h)))[0]
        return torch.softmax(z, 0) if self.output == "density" else z

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype


class FreeDensity(nn.Module):
    """``z_ρ = softmax(θ)`` with free logits θ (no encoder): an ablation of ξ^ρ."""

    def __init__(self, q: int):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(check_int("FreeDensity", "q", q, minimum=1)))

    def forward(self, M1: torch.Tensor | None = None, M2: torch.Tensor | None = None) -> torch.Tensor:
        return torch.softmax(self.logits, 0)


class ProjectedDensity(nn.Module):
    """``z_ρ`` eliminated by variable projection: for the current slices, the exact minimiser of the
    squared eq. 28 over densities that are uniform over the in-plane angles (free weights ``w_d ≥ 0``,
    ``Σ w_d = 1``, on the ``q1`` viewing directions of the rule; ``z_j = w_d(j) / count_d``).

    The squared loss is quadratic in ``z``: ``c − 2 bᵀz + zᵀ G z`` with ``G_jk = Re⟨S_j, S_k⟩ +
    λ |⟨S_j, S_k⟩|²`` and ``b_j = Re⟨M̂1, S_j⟩ + λ Re(S_jᵀ M̂2* S_j*)`` (``S_j`` the Hermitian part
    of slice ``j``), so the best ``w`` for fixed slices is a small QP on the simplex, solved
    exactly (non-negative least squares on the Cholesky factor of ``G``, Lawson–Hanson, with the
    sum-to-one row weighted heavily). The volume then sees the reduced loss ``min_w L(v, w)``,
    whose gradient is the partial gradient at the optimal ``w`` (Golub & Pereyra 1973). Not in
    the paper. Measured on the 70S at 17³ (docs/evidence/mom_cryoem/README.md, fourth pass): from
    a start next to the truth (exact moments, ``band_limit="cube"``) it returns to correlation
    0.99 where free softmax logits stall at 0.82; from random starts, and on finite-N moments
    with the ``"disk"`` model, it does no better than free logits. ``forward`` returns the last
    solution (a buffer, so checkpoints and :meth:`MoMResult.weights` see it).
    """

    def __init__(self, group: torch.Tensor):
        super().__init__()
        group = to_tensor(group, "ProjectedDensity", "group")[0]
        if group.is_complex():
            fail("ProjectedDensity", f"group must hold integer direction indices, got {group.dtype}", TypeError)
        group = group.to(torch.long)
        if group.dim() != 1 or group.numel() == 0 or int(group.min()) < 0:
            fail("ProjectedDensity", f"group must be a non-empty (q,) tensor of direction indices, got "
                                     f"{tuple(group.shape)}")
        count = torch.bincount(group)
        if int(count.min()) == 0:
            fail("ProjectedDensity", "group must use every direction index 0..q1-1 at least once")
        self.register_buffer("group", group)
        self.register_buffer("count", count)  # integer: unaffected by .to(dtype)
        self.register_buffer("z", (1.0 / len(count) / count.double())[group])

    def forward(self, M1: torch.Tensor | None = None, M2: torch.Tensor | None = None) -> torch.Tensor:
        return self.z

    @torch.no_grad()
    def solve(self, S: torch.Tensor, M1: torch.Tensor, M2: torch.Tensor, lam: float,
              conjugate: torch.Tensor | None = None, *, shrink: float = 0.0) -> torch.Tensor:
        """The optimal ``z (q,)`` for slices ``S (q, m)`` and (normalised) data moments ``M1 (m,)``,
        ``M2 (m, m)``; ``conjugate``: the layout's ``−k`` map (the loss uses the slices' Hermitian
        part, as :func:`~orbitcore.ops.moment_loss` does). ``shrink = τ ≥ 0`` adds
        ``τ · mean(diag G) · ‖w − 1/q1‖²`` (pulls the weights toward uniform; 0: the exact
        minimiser). Computed in float64 on the CPU."""
        import numpy as np  # noqa: PLC0415
        from scipy.optimize import nnls  # noqa: PLC0415

        q = self.group.shape[0]
        if S.dim() != 2 or S.shape[0] != q:
            fail("ProjectedDensity.solve", f"S must have shape ({q}, m), got {tuple(S.shape)}")
        S = S.detach().to("cpu", torch.complex128)
        if conjugate is not None:
            S = 0.5 * (S + S[:, conjugate.cpu()].conj())
        A1, A2 = M1.detach().to("cpu", torch.complex128), M2.detach().to("cpu", torch.complex128)
        C = S @ S.conj().T
        G = C.real + lam * C.abs().square()
        b = (S @ A1.conj()).real + lam * ((S @ A2.conj()) * S.conj()).sum(1).real
        g, cnt = self.group.cpu(), self.count.cpu().double()
        P = torch.zeros(len(cnt), q, dtype=torch.float64)
        P[g, torch.arange(q)] = 1.0 / cnt[g]
        Gn, bn = (P @ G @ P.T).numpy(), (P @ b).numpy()
        k = len(bn)
        s = max(float(np.trace(Gn)) / k, 1e-300)
        tau = check_float("ProjectedDensity.solve", "shrink", shrink, minimum=0.0)
        if tau > 0:  # + τ s ‖w − u‖² = τ s (wᵀw − 2 uᵀw + const)
            Gn = Gn + tau * s * np.eye(k)
            bn = bn + tau * s / k
        R = np.linalg.cholesky(Gn + 1e-12 * s * np.eye(k)).T          # G = RᵀR
        mu = np.sqrt(1e6 * s)                                           # weight of Σ w = 1
        w, _ = nnls(np.vstack([R, mu * np.ones((1, k))]), np.concatenate([np.linalg.solve(R.T, bn), [mu]]),
                    maxiter=50 * k)
        w = torch.from_numpy(w / w.sum())
        self.z.copy_((w[g] / cnt[g]).to(self.z))
        return self.z


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

