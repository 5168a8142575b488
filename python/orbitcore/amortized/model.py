"""The amortized pose-inference model: an image encoder and a physics decoder (CryoAI, seeds/003
§3; CryoPoseNet, seeds/004 §3).

Image formation in Fourier space (seeds/003 eqs. 5, 6, 8, 9; conventions of ARCHITECTURE.md)::

    (R_i, t_i) = E_ξ(Y_i)                                   encoder, §3.3
    S_i[V̂](kx, ky) = V̂(R_i · (kx, ky, 0))                   slice, eq. 5
    X̂_i = T̂_{t_i} ⊙ C_i ⊙ S_i[V̂]                            eq. 8
    T̂_t(k) = exp(-2πi k·t / n)                              eq. 9 (t in pixels, k integer)

with ``Ŷ_i = fft2c(Y_i)`` the centred FT of image ``i``, ``C_i`` its CTF (RELION sign) and
``V̂`` the volume's Fourier transform, held by one of two decoders sharing the physics:

* :class:`VoxelDecoder` (CryoPoseNet): a learnable real-space ``D³`` volume; once per batch its
  2×-padded, gridding-corrected centred FT is computed (:func:`orbitcore.fourier.fft3c_padded`,
  as :class:`orbitcore.physics.Projector` does) and sliced with
  :func:`orbitcore.fourier_slice` (``hermitian=True`` inside the disk where that is exact).
* :class:`FourierNetDecoder` (CryoAI §3.4): ``V̂`` is a :class:`orbitcore.nn.FourierNet`
  (exact Hermitian symmetry, eq. 7) queried only on the half-disk of each slice.

The loss (:mod:`orbitcore.amortized.losses`) compares ``Ŷ_i`` and ``X̂_i`` inside the disk
``|k| <= radius``; with the symmetric loss (eq. 10) each image also goes through the model
rotated by π (:class:`orbitcore.nn.RotationLayer`) and the better of the two paths is kept.

Our additions for pose inference from scratch (docs/evidence/amortized/README.md): with
``pose_heads = K > 1`` the encoder predicts K rotations per image (multi-choice encoder, cf.
CryoSPIN), each is rendered, and the loss keeps the best (eq. 10 generalised to a minimum over
``2K`` paths); ``forward(..., radius=r)`` evaluates the slices and the loss on a smaller disk
(the frequency curriculum of :class:`orbitcore.amortized.TrainConfig`).

With several paths per image, ``forward`` scores every path without gradients and renders only
each image's winner again with them: the minimum routes the gradient to the winner alone, so
this is the same loss and gradients as differentiating every path, for a ``2K``-th of the
decoder's backward (tested against that). With the FourierNet decoder the scoring can instead
slice the network's values on a 2×-oversampled grid of the ball, computed once per batch
(``ModelConfig.fourier_scoring="grid"``): only the choice of the winner is then approximate.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .. import fourier
from .._validate import check_float, check_int, check_torch_tensor, fail
from ..nn import FourierNet, PoseEncoder, RotationLayer
from ..nn.fouriernet import canonical_half
from ..nn.encoders import ROTATION_HEADS
from ..ops.slice import fourier_slice
from ..physics.projection import gridding_correction
from ..physics.transforms import shift_phases
from .losses import fourier_l2, symmetric_loss

__all__ = ["ModelConfig", "VoxelDecoder", "FourierNetDecoder", "AmortizedModel", "ModelOutput", "form_images"]

DECODERS = ("voxel", "fouriernet")
SHIFT_MODES = ("predict", "known", "none")
ENCODER_INPUTS = ("raw", "phase_flipped", "wiener")
FOURIER_SCORING = ("exact", "grid")
GRID_PAD = 2  # oversampling of FourierNetDecoder.grid_ft (the voxel decoder's padding)


# ----------------------------------------------------------------------------------------------
# Decoders: V̂ and its central slices S_i[V̂] (eq. 5)
# ----------------------------------------------------------------------------------------------
class VoxelDecoder(nn.Module):
    """CryoPoseNet's decoder (seeds/004 §3): a learnable real-space volume ``v`` ``(D, D, D)``
    (indexed ``[z, y, x]``, origin ``D // 2``, in the units of the images: ``Σ_z v`` is an image).

    Once per batch (:meth:`fourier_volume`): ``V̂ = fft3c(pad(v / g))`` with ``pad``-fold
    centred zero padding and the trilinear gridding correction ``g`` (RELION's projector,
    :func:`orbitcore.physics.prepare_volume_ft`); slices sample ``V̂`` at ``pad · R (kx, ky, 0)``,
    i.e. at the image-box frequencies, with the Hermitian half-plane kernel.

    Args:
        D: volume side (= image side n).
        pad: zero-padding factor (2: RELION's default; 1: none, faster but ~4× less accurate).
        init_scale: the volume starts uniform in ``[0, init_scale)`` (CryoPoseNet: uniform
            random), inside the inscribed ball.
        generator: for the initial values.
    """

    kind = "voxel"

    def __init__(self, D: int, *, pad: int = 2, init_scale: float = 1e-3,
                 generator: torch.Generator | None = None):
        super().__init__()
        fn = "VoxelDecoder"
        self.D = check_int(fn, "D", D, minimum=4)
        self.pad = check_int(fn, "pad", pad, minimum=1)
        s = check_float(fn, "init_scale", init_scale, minimum=0.0)
        r = fourier.radial_frequency(self.D, 3, dtype=torch.float32)  # |x| in voxels from the centre
        v0 = s * torch.rand((self.D,) * 3, generator=generator) * (r < self.D / 2 - 1)
        self.volume_real = nn.Parameter(v0)
        self._gridding: dict = {}

    @property
    def max_radius(self) -> float:
        """Largest slice radius (Fourier pixels of the image) where the Hermitian slice of the
        padded grid is exact: ``pad · radius <= pad·D/2 - 1``."""
        return self.D / 2 - 1 / self.pad

    def fourier_volume(self, half: bool = False) -> torch.Tensor:
        """``V̂``: complex ``(pad·D)³`` centred FT of the padded, gridding-corrected volume (with
        ``half``, its ``kx >= 0`` half ``(pad·D, pad·D, pad·D/2 + 1)``: see
        :func:`orbitcore.fourier.fft3c_padded`)."""
        v = self.volume_real
        key = (v.dtype, str(v.device))
        if key not in self._gridding:  # computed in float64, cached per dtype and device
            self._gridding[key] = gridding_correction(self.pad * self.D, self.D).to(dtype=v.dtype, device=v.device)
        v = v / self._gridding[key]
        return fourier.fft3c_padded(v, self.pad * self.D, half=half)

    def slices(self, rotations: torch.Tensor, n: int, radius: float) -> torch.Tensor:
        """``S_i[V̂]`` (eq. 5): complex ``(B, n, n)``, zero outside ``|k| <= radius``."""
        return self.renderer()(rotations, n, radius)

    def renderer(self):
        """``slices`` as a function of ``(rotations, n, radius)`` that shares one ``V̂`` between
        calls (one batch's renders: the volume's FT is computed once, with gradients when enabled).
        The FT is kept as its ``kx >= 0`` half where the padded side is even (the same slices and
        gradients, without the Hermitian completion, half the memory)."""
        M = self.pad * self.D
        half = M % 2 == 0
        V = self.fourier_volume(half=half)

        def render(rotations: torch.Tensor, n: int, radius: float) -> torch.Tensor:
            if radius > self.max_radius + 1e-9:
                fail("VoxelDecoder.slices", f"radius must be <= D/2 - 1/pad = {self.max_radius:g} (where the "
                                            f"Hermitian slice is exact), got {radius:g}")
            return fourier_slice(V, self.pad * rotations, size=n, radius=radius, hermitian=True, half=half,
                                 check=False)

        return render

    @torch.no_grad()
    def volume(self) -> torch.Tensor:
        """The real-space volume ``(D, D, D)`` (a detached copy)."""
        return self.volume_real.detach().clone()


class FourierNetDecoder(nn.Module):
    """CryoAI's decoder (seeds/003 §3.4, supp. C): ``V̂(k) = scale · FourierNet(k)``, two SIRENs
    ``exp(A(k)) ⊙ M(k)`` with exact Hermitian symmetry (eq. 7), queried only on the slice
    points of the half-disk (:meth:`orbitcore.nn.FourierNet.slice`).

    ``scale = D`` (fixed): the networks then represent values of order 1 for images of unit
    variance, so SIREN initialisation and Adam step sizes suit them. The paper's size is
    ``hidden=256`` with 2 and 3 hidden layers.
    """

    kind = "fouriernet"

    def __init__(self, D: int, *, hidden: int = 256, amplitude_layers: int = 2, modulation_layers: int = 3,
                 w0: float = 30.0):
        super().__init__()
        self.D = check_int("FourierNetDecoder", "D", D, minimum=4)
        self.net = FourierNet(self.D, hidden=hidden, amplitude_layers=amplitude_layers,
                              modulation_layers=modulation_layers, w0=w0)
        self.scale = float(self.D)
        self._grid_cache: dict = {}  # _grid_points' query set for one (grid, radius, dtype, device)

    @torch.no_grad()
    def grid_ft(self, radius: float, pad: int = GRID_PAD) -> torch.Tensor:
        """``V̂`` sampled on the ``pad``-fold oversampled centred grid: complex ``(pad·D)³``
        (``[z, y, x]``, spacing ``1 / pad`` Fourier pixels, the layout of
        :meth:`VoxelDecoder.fourier_volume`), without gradients.

        The networks are queried only at the grid points a trilinear slice of radius ``radius``
        can touch (``|k| <= radius + √3 / pad``) and only on the canonical half; the other half is
        the conjugate mirror (eq. 7). Zero elsewhere."""
        fn = "FourierNetDecoder.grid_ft"
        pad = check_int(fn, "pad", pad, minimum=2)  # pad >= 2 keeps every touched point's mirror on the grid
        r = check_float(fn, "radius", radius, positive=True)
        if r > self.max_radius + 1e-9:
            fail(fn, f"radius must be <= D/2 - 1 = {self.max_radius:g}, got {r:g}")
        p = next(self.parameters())
        M = pad * self.D
        q, idx, midx = self._grid_points(M, pad, r, p.dtype, p.device)
        vals = torch.cat([self.net.canonical(q[i:i + 65536]) for i in range(0, q.shape[0], 65536)])
        V = torch.zeros(M ** 3, dtype=vals.dtype, device=p.device)
        V.index_copy_(0, idx, self.scale * vals)
        V.index_copy_(0, midx, self.scale * vals.conj())  # V̂(-k) = conj V̂(k); DC is real, its own mirror
        return V.view(M, M, M)

    def _grid_points(self, M: int, pad: int, r: float, dtype, device):
        """The query set of :meth:`grid_ft`: canonical points ``q (P, 3)`` (Fourier pixels), their
        flat indices on the ``M³`` grid and their mirrors'. Built once per (M, radius, dtype,
        device) and kept (not in the state dict): the scoring pass asks for it every batch."""
        key = (M, pad, float(r), dtype, str(device))
        cache = self._grid_cache
        if key not in cache:
            f = fourier.frequency_grid_3d(M, dtype=dtype, device=device).reshape(-1, 3)  # grid units, (x, y, z)
            keep = canonical_half(f) & (f.square().sum(-1) <= (pad * r + 3 ** 0.5) ** 2)
            q = f[keep]                                      # every |q| <= M/2 - 1: the mirror is on the grid
            idx = keep.nonzero().squeeze(1)
            fi = q.round().long() + M // 2                    # (x, y, z) indices of q, and of -q
            mi = (M // 2 - (fi - M // 2))
            midx = (mi[:, 2] * M + mi[:, 1]) * M + mi[:, 0]
            cache.clear()  # one radius at a time (the curriculum changes it): keep the memory bounded
            cache[key] = (q / pad, idx, midx)
        return cache[key]

    def grid_renderer(self, radius: float, pad: int = GRID_PAD):
        """Approximate ``slices`` for scoring many paths without gradients: the network is
        evaluated once on the oversampled grid (:meth:`grid_ft`) and every slice is a trilinear
        :func:`orbitcore.fourier_slice` of it, as in :class:`VoxelDecoder`. Costs one network
        query per grid point in the ball instead of one per slice point; pays off when a batch
        renders more points than the ball holds (e.g. 16 hypotheses × 2 paths × 32 images at
        n = 32: 390 k slice points against 69 k grid points)."""
        V = self.grid_ft(radius, pad)

        def render(rotations: torch.Tensor, n: int, radius_: float) -> torch.Tensor:
            if radius_ > radius + 1e-9:
                fail("FourierNetDecoder.grid_renderer", f"radius must be <= {radius:g} (the grid's), got {radius_:g}")
            return fourier_slice(V, pad * rotations, size=n, radius=radius_, hermitian=True, check=False)

        return render

    @property
    def max_radius(self) -> float:
        return self.D / 2 - 1

    def slices(self, rotations: torch.Tensor, n: int, radius: float) -> torch.Tensor:
        """``S_i[V̂]`` (eq. 5): complex ``(B, n, n)``, zero outside ``|k| <= radius``."""
        return self.scale * self.net.slice(rotations, n, radius=radius)

    def renderer(self):
        """``slices`` as a function (nothing to share between a batch's renders)."""
        return self.slices

    @torch.no_grad()
    def volume(self) -> torch.Tensor:
        """The network on the ``D³`` grid, inverse-transformed: real ``(D, D, D)``."""
        return fourier.ifft3c(self.scale * self.net.to_volume_ft(self.D)).real


def form_images(slices: torch.Tensor, ctf: torch.Tensor | None = None, shifts: torch.Tensor | None = None
                ) -> torch.Tensor:
    """Eq. 8: ``X̂ = T̂_t ⊙ C ⊙ S`` for slices ``(B, n, n)`` (complex), CTF values ``(B, n, n)``
    (real, centred grid) and shifts ``(B, 2)`` in pixels (eq. 9: ``T̂_t(k) = exp(-2πi k·t/n)``,
    content moves by ``+t``)."""
    fn = "form_images"
    if not isinstance(slices, torch.Tensor):
        fail(fn, f"slices must be a complex torch.Tensor (B, n, n), got {type(slices).__name__}", TypeError)
    if not slices.is_complex() or slices.dim() < 2 or slices.shape[-1] != slices.shape[-2]:
        fail(fn, f"slices must be complex (B, n, n), got {slices.dtype} {tuple(slices.shape)}")
    for name, v in (("ctf", ctf), ("shifts", shifts)):
        check_torch_tensor(fn, name, v, allow_none=True)
    X = slices
    if ctf is not None:
        X = X * ctf
    if shifts is not None:
        X = X * shift_phases(X.shape[-1], shifts, dtype=X.dtype, device=X.device)
    return X


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------
@dataclass
class ModelConfig:
    """Everything that defines an :class:`AmortizedModel` (saved in checkpoints).

    Attributes:
        n: image side in pixels (the decoder's volume side too).
        decoder: ``"voxel"`` (CryoPoseNet) or ``"fouriernet"`` (CryoAI).
        symmetric: use the symmetric loss (eq. 10) instead of plain L2.
        shifts: ``"predict"`` (the encoder's translation head, CryoAI), ``"known"`` (from the
            particle file, CryoPoseNet's setting) or ``"none"`` (centred particles).
        radius: disk of the loss and of the slices, Fourier pixels (default ``n // 2 - 1``).
        encoder_size: the encoder sees images Fourier-cropped to this side (default ``n``);
            a cheaper encoder, the decoder keeps full resolution.
        encoder_input: ``"raw"`` (default, the papers' encoder: the particle images as given)
            or ``"phase_flipped"``: the encoder sees each image with the sign of its CTF applied
            in Fourier space, ``F⁻¹[sign(CTF) · F Y]`` (phase flipping, the usual CTF
            pre-correction of 2-D classification), so that particles imaged at different
            defoci show the same contrast; or ``"wiener"``: ``F⁻¹[CTF / (CTF² + ε) · F Y]``
            with ``ε = wiener_eps``, which also restores the amplitudes the CTF damps. Only the
            encoder's input changes: the decoder and the loss still model the raw images with
            their CTF (eq. 8). Both need the CTF wherever the encoder runs (training with
            ``use_ctf``, evaluation, recalibration).
        wiener_eps: ``ε > 0`` of the ``"wiener"`` encoder input (default 0.1: a gain of at
            most ``1 / (2 √ε) ≈ 1.6`` at the CTF's zeros' flanks, none at the zeros).
        rotation: encoder rotation head, ``"s2s2"`` (default), ``"quaternion"`` or ``"euler"``.
        channels, filters, hidden, batch_norm: encoder architecture (:class:`orbitcore.nn.PoseEncoder`).
        whiten_rotation: standardise the encoder's raw rotation output across the batch, a
            uniform-pose prior that prevents pose collapse (:class:`orbitcore.nn.PoseEncoder`;
            our addition, default on).
        pose_heads: rotation hypotheses per image (multi-choice encoder, cf. CryoSPIN): the
            encoder predicts ``pose_heads`` rotations, each is rendered, and the per-image loss
            is the minimum over them (over ``2 · pose_heads`` paths with the symmetric loss,
            eq. 10 generalised); only the winner carries gradient and its pose is reported.
            Costs ``pose_heads`` times the decoder's forward work (the backward runs on the winners
            only). Default 1 (the papers' encoder).
        max_shift: bound of the predicted shifts in pixels (``max_shift · tanh``; default ``n / 8``).
        pad, init_scale: voxel decoder (:class:`VoxelDecoder`).
        fourier_hidden, amplitude_layers, modulation_layers, w0: FourierNet decoder.
        fourier_scoring: how the FourierNet decoder scores the paths that compete for each image
            (several pose heads, or the symmetric loss's two copies): ``"exact"`` (default)
            queries the networks on every path's slice points; ``"grid"`` queries them once per
            batch on a 2×-oversampled grid of the ball and scores every path by trilinear
            slicing of it (:meth:`FourierNetDecoder.grid_renderer`). Only the choice of the
            winner is approximate: the winners are rendered again exactly, so the loss, its
            gradients and ``per_image`` are the exact ones of the chosen paths. With 16 heads
            at n = 32 a training step is several times cheaper (benchmarks/RESULTS.md); with one
            head it is dearer. No effect on the voxel decoder.
        seed: initialisation of every weight and of the volume.
    """

    n: int
    decoder: str = "voxel"
    symmetric: bool = True
    shifts: str = "predict"
    radius: float | None = None
    encoder_size: int | None = None
    encoder_input: str = "raw"
    wiener_eps: float = 0.1
    rotation: str = "s2s2"
    channels: tuple = (16, 32, 64, 128)
    filters: int = 5
    hidden: tuple = (512, 256)
    batch_norm: bool = True
    whiten_rotation: bool = True
    pose_heads: int = 1
    max_shift: float | None = None
    pad: int = 2
    init_scale: float = 1e-3
    fourier_hidden: int = 128
    amplitude_layers: int = 2
    modulation_layers: int = 3
    w0: float = 30.0
    fourier_scoring: str = "exact"
    seed: int = 0
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        fn = "ModelConfig"
        self.n = check_int(fn, "n", self.n, minimum=8)
        if self.decoder not in DECODERS:
            fail(fn, f"decoder must be one of {list(DECODERS)}, got {self.decoder!r}")
        if self.shifts not in SHIFT_MODES:
            fail(fn, f"shifts must be one of {list(SHIFT_MODES)}, got {self.shifts!r}")
        if self.fourier_scoring not in FOURIER_SCORING:
            fail(fn, f"fourier_scoring must be one of {list(FOURIER_SCORING)}, got {self.fourier_scoring!r}")
        if self.encoder_input not in ENCODER_INPUTS:
            fail(fn, f"encoder_input must be one of {list(ENCODER_INPUTS)}, got {self.encoder_input!r}")
        self.wiener_eps = check_float(fn, "wiener_eps", self.wiener_eps, positive=True)
        if self.rotation not in ROTATION_HEADS:
            fail(fn, f"rotation must be one of {sorted(ROTATION_HEADS)}, got {self.rotation!r}")
        if not isinstance(self.symmetric, bool):
            fail(fn, f"symmetric must be True or False, got {self.symmetric!r}", TypeError)
        max_r = self.n / 2 - 1
        if self.radius is None:
            self.radius = float(self.n // 2 - 1)
        r = check_float(fn, "radius", self.radius, positive=True)
        if r > max_r:
            fail(fn, f"radius must be <= n/2 - 1 = {max_r:g} Fourier pixels, got {r:g}")
        self.radius = r
        if self.encoder_size is None:
            self.encoder_size = self.n
        self.encoder_size = check_int(fn, "encoder_size", self.encoder_size, minimum=8)
        if self.encoder_size > self.n:
            fail(fn, f"encoder_size must be <= n = {self.n} (Fourier cropping only), got {self.encoder_size}")
        self.channels = tuple(int(c) for c in self.channels)
        self.hidden = tuple(int(h) for h in self.hidden)
        if self.max_shift is None:
            self.max_shift = self.n / 8
        check_float(fn, "max_shift", self.max_shift, positive=True)
        self.pad = check_int(fn, "pad", self.pad, minimum=1)
        self.pose_heads = check_int(fn, "pose_heads", self.pose_heads, minimum=1)
        self.seed = check_int(fn, "seed", self.seed)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"], d["hidden"] = list(self.channels), list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        if not isinstance(d, dict):
            fail("ModelConfig.from_dict", f"d must be a dict, got {type(d).__name__}", TypeError)
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(d) - known)
        if unknown:
            fail("ModelConfig.from_dict", f"unknown fields {unknown} (checkpoint from a newer orbitcore?)")
        return cls(**d)


@dataclass
class ModelOutput:
    """Result of :meth:`AmortizedModel.forward` for a batch of ``B`` images.

    Attributes:
        loss: scalar, the mean over the batch of ``per_image`` (what is minimised).
        per_image: ``(B,)`` loss of each image (eq. 10's min with the symmetric loss).
        rotations: ``(B, 3, 3)`` pose of each input image (of the chosen path, mapped back to the
            unrotated image: ``R_b · Rz(π)`` when the rotated copy won).
        shifts: ``(B, 2)`` shift in pixels (``-t_b`` when the rotated copy won).
        flipped: ``(B,)`` bool, the rotated copy's path was chosen (all False without the
            symmetric loss).
        loss_direct, loss_rotated: ``(B,)`` the two paths' losses (``loss_rotated`` is None
            without the symmetric loss); with several pose heads, each path's best head. With
            ``fourier_scoring="grid"`` these are the grid scores that chose the winner
            (``per_image`` is always the exact loss of the chosen path).
        head: ``(B,)`` long, the winning rotation hypothesis (all 0 with one pose head).
    """

    loss: torch.Tensor
    per_image: torch.Tensor
    rotations: torch.Tensor
    shifts: torch.Tensor
    flipped: torch.Tensor
    loss_direct: torch.Tensor
    loss_rotated: torch.Tensor | None
    head: torch.Tensor | None = None


_RZ_PI = torch.tensor([-1.0, -1.0, 1.0])  # Rz(π) = diag(-1, -1, 1): R · Rz(π) negates R's first two columns


class AmortizedModel(nn.Module):
    """Encoder + physics decoder (module docstring). Build with ``AmortizedModel(ModelConfig(...))``
    or ``AmortizedModel.create(n, decoder=..., **options)``.

    ``forward(images, ctf=None, shifts=None)``:

    Args:
        images: real ``(B, n, n)`` particle images (normalised, e.g. by
            :class:`orbitcore.io.ParticleStack`).
        ctf: optional real ``(B, n, n)`` CTF values on the centred grid
            (:meth:`orbitcore.physics.CTFParams.evaluate`); None: no CTF.
        shifts: ``(B, 2)`` known shifts in pixels (required with ``shifts="known"``).

    Returns:
        :class:`ModelOutput`.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        if not isinstance(config, ModelConfig):
            fail("AmortizedModel", f"config must be a ModelConfig, got {type(config).__name__}", TypeError)
        self.config = c = config
        g = torch.Generator().manual_seed(c.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(c.seed)  # nn.Module initialisers draw from the global generator
            self.encoder = PoseEncoder(c.encoder_size, channels=c.channels, filters=c.filters, rotation=c.rotation,
                                       hidden=c.hidden, max_shift=c.max_shift, batch_norm=c.batch_norm,
                                       whiten_rotation=c.whiten_rotation, heads=c.pose_heads)
            if c.decoder == "voxel":
                self.decoder = VoxelDecoder(c.n, pad=c.pad, init_scale=c.init_scale, generator=g)
            else:
                self.decoder = FourierNetDecoder(c.n, hidden=c.fourier_hidden, amplitude_layers=c.amplitude_layers,
                                                 modulation_layers=c.modulation_layers, w0=c.w0)
        if c.radius > self.decoder.max_radius + 1e-9:
            fail("AmortizedModel", f"radius {c.radius:g} exceeds the decoder's exact range "
                                   f"{self.decoder.max_radius:g}")
        self.rotation_layer = RotationLayer()
        k = fourier.radial_frequency(c.n, 2, dtype=torch.float32)
        self.register_buffer("mask", k <= c.radius, persistent=False)

    @classmethod
    def create(cls, n: int, **options) -> "AmortizedModel":
        return cls(ModelConfig(n=n, **options))

    @property
    def n(self) -> int:
        return self.config.n

    def encoder_parameters(self):
        return self.encoder.parameters()

    def decoder_parameters(self):
        return self.decoder.parameters()

    # ------------------------------------------------------------------ the two halves
    def encode(self, images: torch.Tensor, ctf: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``E_ξ``: real images ``(B, n, n)`` → rotations ``(B, 3, 3)``, shifts ``(B, 2)`` pixels.
        ``ctf`` ``(B, n, n)``: the images' CTF values, needed (only) with a CTF-corrected
        ``encoder_input`` (``"phase_flipped"``, ``"wiener"``)."""
        x = images
        mode = self.config.encoder_input
        if mode != "raw":
            fn = "AmortizedModel.encode"
            if ctf is None:
                fail(fn, f"encoder_input={mode!r} needs the images' CTF (ctf=CTFParams.evaluate(...)); "
                         "train and evaluate with the CTF (use_ctf=True)")
            if tuple(ctf.shape) != tuple(images.shape) or ctf.is_complex():
                fail(fn, f"ctf must be real CTF values {tuple(images.shape)}, got {ctf.dtype} {tuple(ctf.shape)}")
            c = ctf.to(x.dtype)
            filt = torch.sign(c) if mode == "phase_flipped" else c / (c * c + self.config.wiener_eps)
            x = fourier.ifft2c(fourier.fft2c(x) * filt).real  # phase flipping / Wiener filter
        if self.config.encoder_size != self.n:
            x = fourier.downsample(x, self.config.encoder_size)
        return self.encoder(x)

    def decode(self, rotations: torch.Tensor, shifts: torch.Tensor | None = None,
               ctf: torch.Tensor | None = None, radius: float | None = None, *, render=None) -> torch.Tensor:
        """``Γ``: poses → model images ``X̂`` (eq. 8), complex ``(B, n, n)``, zero outside the disk
        ``|k| <= radius`` (default: the configured radius). ``render``: a ``decoder.renderer()``
        to share between calls of one batch (default: a fresh one)."""
        r = self.config.radius if radius is None else self._radius("AmortizedModel.decode", radius)
        S = (self.decoder.slices if render is None else render)(rotations, self.n, r)
        return form_images(S, ctf, shifts)

    def _radius(self, fn: str, radius) -> float:
        r = check_float(fn, "radius", radius, positive=True)
        if r > self.config.radius + 1e-9:
            fail(fn, f"radius must be in (0, {self.config.radius:g}] Fourier pixels (the configured radius), "
                     f"got {r:g}")
        return r

    def loss_mask(self, radius: float | None = None) -> torch.Tensor:
        """Boolean ``(n, n)`` disk ``|k| <= radius`` where the loss is evaluated (default: the
        configured radius)."""
        if radius is None or radius == self.config.radius:
            return self.mask
        r = self._radius("AmortizedModel.loss_mask", radius)
        k = fourier.radial_frequency(self.n, 2, dtype=torch.float32, device=self.mask.device)
        return k <= r

    # ------------------------------------------------------------------ forward
    def _check(self, images, ctf, shifts):
        fn = "AmortizedModel"
        n = self.n
        if not isinstance(images, torch.Tensor) or images.dim() != 3 or tuple(images.shape[1:]) != (n, n):
            fail(fn, f"images must be a real tensor (B, {n}, {n}), got "
                     f"{getattr(images, 'dtype', type(images).__name__)} {tuple(getattr(images, 'shape', ()))}")
        if images.is_complex():
            fail(fn, "images must be real (real-space particle images)", TypeError)
        B = images.shape[0]
        if ctf is not None and (not isinstance(ctf, torch.Tensor) or tuple(ctf.shape) != (B, n, n) or ctf.is_complex()):
            fail(fn, f"ctf must be real CTF values ({B}, {n}, {n}) (CTFParams.evaluate), got "
                     f"{getattr(ctf, 'dtype', type(ctf).__name__)} {tuple(getattr(ctf, 'shape', ()))}")
        if self.config.shifts == "known":
            if shifts is None:
                fail(fn, "shifts='known' needs the particles' shifts (the STAR file's origins)")
            if tuple(shifts.shape) != (B, 2):
                fail(fn, f"shifts must have shape ({B}, 2) in pixels, got {tuple(shifts.shape)}")

    def forward(self, images: torch.Tensor, ctf: torch.Tensor | None = None,
                shifts: torch.Tensor | None = None, *, radius: float | None = None) -> ModelOutput:
        self._check(images, ctf, shifts)
        c = self.config
        radius = c.radius if radius is None else self._radius("AmortizedModel", radius)
        B = images.shape[0]
        Y = fourier.fft2c(images)                               # Ŷ_i
        if c.symmetric:
            x = self.rotation_layer(images)                     # [Y_i ; R_π Y_i]   (supp. B)
            Y = self.rotation_layer(Y)                          # [Ŷ_i ; R_π Ŷ_i]
            ctf = None if ctf is None else torch.cat((ctf, ctf))  # the CTF is centrosymmetric
            if shifts is not None:
                shifts = torch.cat((shifts, -shifts))           # R_π moves content by -t
        else:
            x = images
        R, t = self.encode(x, ctf)                              # (R_i, t_i) = E_ξ(Y_i)
        if c.shifts == "known":
            t = shifts.to(R.dtype)
        elif c.shifts == "none":
            t = None
        K = c.pose_heads
        mask = self.loss_mask(radius)
        if K == 1 and not c.symmetric:  # one path per image: nothing to choose
            d = fourier_l2(Y, self.decode(R, t, ctf, radius), mask)  # X̂_i = Γ(Y_i), eq. 8
            t = torch.zeros(B, 2, dtype=R.dtype, device=R.device) if t is None else t
            return ModelOutput(loss=d.mean(), per_image=d, rotations=R, shifts=t,
                               flipped=torch.zeros(B, dtype=torch.bool, device=d.device), loss_direct=d,
                               loss_rotated=None, head=torch.zeros(B, dtype=torch.long, device=d.device))
        # Several paths per image (K hypotheses, and the direct and π-rotated copies with the
        # symmetric loss): the loss keeps the best path per image, and only that path gets a
        # gradient (eq. 10; winner takes all over the hypotheses). So every path is scored once
        # without gradients, and only the B winners are rendered again with them: the same loss
        # and gradients as differentiating all 2·K·B renders, for about a 2K-th of the backward.
        Bx = x.shape[0]
        Rk = R.reshape(Bx, K, 3, 3)
        render = self.decoder.renderer()                         # one V̂ for both passes
        approximate = c.decoder == "fouriernet" and c.fourier_scoring == "grid"
        with torch.no_grad():
            score = self.decoder.grid_renderer(radius) if approximate else render
            ti = None if t is None else t.repeat_interleave(K, 0)
            ci = None if ctf is None else ctf.repeat_interleave(K, 0)
            X = self.decode(Rk.reshape(Bx * K, 3, 3), ti, ci, radius, render=score)  # every path, eq. 8
            d = fourier_l2(Y.repeat_interleave(K, 0), X, mask).view(Bx, K)
            del X
        dmin, head = d.min(1)                                   # min over the hypotheses
        if c.symmetric:
            da, db = dmin[:B], dmin[B:]
            _, flipped = symmetric_loss(da, db)                 # eq. 10: the better of the two paths
            rows = torch.where(flipped, torch.arange(B, 2 * B, device=d.device), torch.arange(B, device=d.device))
        else:
            da, db = dmin, None
            flipped = torch.zeros(B, dtype=torch.bool, device=d.device)
            rows = torch.arange(B, device=d.device)
        hsel = head[rows]
        Rw = Rk[rows, hsel]                                      # the winning path's rotation
        tw = None if t is None else t[rows]
        if torch.is_grad_enabled() or approximate:              # the winners, exactly (with gradients in training)
            per = fourier_l2(Y[rows], self.decode(Rw, tw, None if ctf is None else ctf[rows], radius, render=render),
                             mask)
        else:
            per = dmin[rows]
        tsel = torch.zeros(B, 2, dtype=R.dtype, device=R.device) if tw is None else tw
        # the pose of the chosen path, for the unrotated image: a rotated path's (R_b, t_b) is
        # (R_b Rz(π), -t_b) for the image as given
        Rsel = torch.where(flipped[:, None, None], Rw * _RZ_PI.to(R)[None, None, :], Rw)
        tsel = torch.where(flipped[:, None], -tsel, tsel)
        return ModelOutput(loss=per.mean(), per_image=per, rotations=Rsel, shifts=tsel, flipped=flipped,
                           loss_direct=da, loss_rotated=db, head=hsel)

    def given_pose_losses(self, images: torch.Tensor, rotations: torch.Tensor, shifts: torch.Tensor | None = None,
                          ctf: torch.Tensor | None = None, *, radius: float | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """The two per-image losses of training on *given* poses ``(R*, t*)`` (``TrainConfig``'s
        ``objective="poses"``: the encoder amortizes poses found otherwise, e.g. by
        :func:`~orbitcore.amortized.refine_poses`).

        - Encoder, pose regression: ``‖R − R*‖²_F + ‖t − t*‖²`` (pixels; the shift term only with
          ``shifts="predict"``), averaged over the pose heads (every hypothesis learns the
          target, so the choice among them at evaluation is immaterial) and, with the
          symmetric loss, over both copies: the π-rotated copy's target is ``(R* Rz(π), −t*)``
          (:class:`~orbitcore.nn.RotationLayer`). ``‖R − R*‖²_F = 4 (1 − cos θ)`` for the
          angle ``θ`` between the two rotations.
        - Decoder: the image loss (eq. 8) at the given poses, which carry no gradient.

        The two depend on disjoint parameters (encoder, decoder).

        Args:
            images: real ``(B, n, n)``.
            rotations: ``(B, 3, 3)`` target rotations (ARCHITECTURE.md's convention).
            shifts: ``(B, 2)`` target shifts in pixels (None: centred particles, zero).
            ctf: optional real ``(B, n, n)`` CTF values.
            radius: loss radius in Fourier pixels (default: the configured radius).

        Returns:
            ``(pose_loss, image_loss)``, each ``(B,)``.
        """
        fn = "AmortizedModel.given_pose_losses"
        c = self.config
        if shifts is not None and not torch.is_tensor(shifts):
            fail(fn, f"shifts must be a (B, 2) tensor in pixels or None, got {type(shifts).__name__}", TypeError)
        self._check(images, ctf, shifts if c.shifts == "known" else None)
        B = images.shape[0]
        if not torch.is_tensor(rotations) or tuple(rotations.shape) != (B, 3, 3) or rotations.is_complex():
            fail(fn, f"rotations must be a real ({B}, 3, 3) tensor (one per image), got "
                     f"{tuple(rotations.shape) if torch.is_tensor(rotations) else type(rotations).__name__}")
        if shifts is not None and tuple(shifts.shape) != (B, 2):
            fail(fn, f"shifts must be a ({B}, 2) tensor in pixels or None, got {tuple(shifts.shape)}")
        radius = c.radius if radius is None else self._radius(fn, radius)
        R_tgt = rotations.detach().to(images.dtype)  # targets: no gradient flows to the given poses
        t_tgt = (torch.zeros(B, 2, dtype=images.dtype, device=images.device) if shifts is None
                 else shifts.detach().to(images.dtype))
        # encoder: regression onto the given poses (both copies with the symmetric loss)
        x, R_enc, t_enc, c_enc = images, R_tgt, t_tgt, ctf
        if c.symmetric:
            x = self.rotation_layer(images)
            R_enc = torch.cat((R_tgt, R_tgt * _RZ_PI.to(R_tgt)))  # the rotated copy's pose: (R* Rz(π), −t*)
            t_enc = torch.cat((t_tgt, -t_tgt))
            c_enc = None if ctf is None else torch.cat((ctf, ctf))
        R, t = self.encode(x, c_enc)
        R = R.reshape(x.shape[0], c.pose_heads, 3, 3)
        d = (R - R_enc[:, None]).square().sum((-1, -2)).mean(1)
        if c.shifts == "predict":
            d = d + (t - t_enc).square().sum(-1)
        if c.symmetric:
            d = 0.5 * (d[:B] + d[B:])
        # decoder: eq. 8 at the given poses
        X = self.decode(R_tgt, None if c.shifts == "none" else t_tgt, ctf, radius)
        e = fourier_l2(fourier.fft2c(images), X, self.loss_mask(radius))
        return d, e

    @torch.no_grad()
    def volume(self) -> torch.Tensor:
        """Current real-space volume estimate ``(n, n, n)``."""
        return self.decoder.volume()
