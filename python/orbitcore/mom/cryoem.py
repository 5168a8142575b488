"""Method of moments with a neural-network prior for cryo-EM (seeds/000 §3.2, §4.2, §5.2, A.2).

An *ab initio* volume from the first two moments of the particle images, with no pose
estimation: the rotations are nuisance variables whose density ρ on SO(3) is estimated on a
fixed quadrature Q together with the volume.

Data side (eq. 30). Images ``v_j`` (``N × n0 × n0``, CTF-free, centred) are Fourier-cropped to
the working size ``n`` and their moments accumulated in one streaming pass by
:class:`orbitcore.MomentAccumulator` on a disk ``|k| <= radius`` of frequencies::

    M̂1 = (1/N) Σ_j F v_j,      M̂2 = (1/N) Σ_j (F v_j)(F v_j)^* − n² σ² I

(``F`` the centred, unnormalised DFT; ``σ²`` the per-pixel noise variance at the working size:
known, or estimated from the image corners). The cropped images are scaled by ``(n / n0)³`` in
Fourier space (:func:`working_images`), so they are *exactly* the projections of the volume
Fourier-cropped to ``n³`` (:func:`orbitcore.fourier.downsample`): the reconstruction is in the
units of ``downsample(v, n, 3)``, with voxel size ``pixel_size · n0 / n``. White noise of
variance σ² per pixel becomes white noise of variance ``σ² (n / n0)⁴`` (:func:`working_sigma2`).

Model side (eqs. 20, 28). For the quadrature ``Q = {Q_1..Q_q}`` (:func:`orbitcore.geometry.so3_quadrature`,
a spherical t-design × equally spaced in-plane angles; the paper's 100 × 12 by default)::

    S_j(k) = v̂_φ(Q_j · (kx, ky, 0))                       (the slices, eq. 12–13)
    M1 = Σ_j z_ρ(j) S_j,    M2 = Σ_j z_ρ(j) S_j S_j^*       (eq. 20)
    L  = ‖M̂1 − M1‖_F + λ ‖M̂2 − M2‖_F                       (eq. 28)

with ``z_ρ = ξ^ρ_θ(M̂1, M̂2)`` (a softmax over Q: the density times the uniform quadrature weight
``1/q``; ``ρ(Q_j) = q · z_ρ(j)`` is the density w.r.t. the normalised Haar measure, uniform = 1)
and ``v̂_φ`` a FourierNet (optionally reading a latent ``z_v = ξ^v_θ(M̂1, M̂2)``) or a voxel
volume (:mod:`orbitcore.mom.cryoem_models`). The loss goes through
:func:`orbitcore.moment_loss` in the real basis of Hermitian slices (``conjugate=``).

Conventions (ARCHITECTURE.md). Slices are ``S[ky, kx] = V̂(R (kx, ky, 0))``, the viewing
direction of ``R`` is ``R e_z``. The paper composes ``R ∘ v = v(R^T ·)`` (eq. 7) and evaluates
``v̂_φ(Q(j)^T (kx, ky, 0))``: its ``Q(j)`` is our ``Q_j^T``. Both quadratures are uniform rules
for the Haar measure; with ours, ``z_ρ(j)`` is the weight of the images seen along ``Q_j e_z``
(what :meth:`orbitcore.geometry.VonMisesFisherMixture.so3_density` evaluates).

Units. The fit runs on normalised moments ``M̂1 / a``, ``M̂2 / a²`` with
``a = sqrt(max_k Re M̂2(k, k))`` (the RMS of the strongest Fourier coefficient, ~ the particle's
mass); the volume is multiplied back by ``a``. λ defaults to ``‖M̂1‖ / ‖M̂2‖``, so the two terms of
eq. 28 weigh the *relative* errors of eq. 22 equally (the paper does not give λ).

Fitting: Adam on (φ, θ) with the paper's schedule shape (seeds/000 §5.2: 10⁻⁵ then 10⁻⁶,
10,000 epochs each) scaled to the run: ``lr`` for the first half of the steps, ``lr / 10`` for
the second. Checkpoints are written atomically; a resumed run continues bit for bit
(same parameters, Adam state, step and history as an uninterrupted run).

Status (measured on a 2-core CPU; docs/evidence/mom_cryoem/README.md). From noiseless moments
the voxel model with a free density recovers four non-coplanar Gaussians at 11³ (FSC-0.5 at the
band limit, aligned correlation 0.94; tests/mom). From 2·10⁵ noisy images (σ = 0.5) at 25³ it
reaches 5.2 Å at FSC 0.5 (the paper: 4.45 Å with 5·10⁶ images). Two Gaussians (a volume with a
continuous symmetry) and the 70S ribosome at 17³/25³ (N up to 5·10⁵, voxel and FourierNet +
ξ^ρ) are *not* recovered: the fits reach about the truth's own moment errors with a wrong volume. FourierNet (grid query, lr 1e-4,
600 steps) reaches 5.5 Å on the same 25³ data; with lr 1e-3 it does not train (the loss stays
flat). The paper's schedule (10⁻⁵, 10⁻⁶ over 2 × 10,000 epochs) was not run at full length here.
The paper's neural ground truth (:func:`neural_ground_truth`, CLI ``--neural-truth``) does not
change the 70S result: at 17³ the FourierNet interpolates the grid (stopped at the paper's error,
0.043, it differs from the map by 1 ‰ in FSC); at 33³, where it is smoother than the map, the fit
lands in the same basin (correlation 0.38 against 0.42 with the map).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from .. import fourier
from .._schedule import check_step_drop, step_drop_factor
from .._validate import OrbitcoreWarning, check_float, check_int, fail, to_tensor
from ..geometry.so3 import so3_quadrature
from ..io.mrc import atomic_path
from ..ops.moments import MomentAccumulator, MomentLayout, Moments, model_moments, moment_loss
from .cryoem_models import FourierNetVolume, FreeDensity, MomentEncoder, ProjectedDensity, VolumeModel, VoxelVolume

__all__ = [
    "CryoEMMoments", "FitConfig", "MoMCryoEM", "MoMResult", "working_images", "working_sigma2",
    "moments_from_images", "simulate_moments", "build_model", "fit", "evaluate", "write_outputs",
    "default_radius", "exact_moments", "direction_density", "viewing_groups", "neural_ground_truth",
    "CHECKPOINT_FORMAT",
]

CHECKPOINT_FORMAT = "orbitcore.mom.cryoem/1"


# ================================================================================================
# Data side (eq. 30)
# ================================================================================================
def default_radius(n: int) -> float:
    """Default frequency disk for working size ``n``: ``(n − 1) // 2`` Fourier pixels (inside the
    image's Nyquist circle, and closed under ``k → −k`` on the grid for odd and even ``n``)."""
    return float((check_int("default_radius", "n", n, minimum=1) - 1) // 2)


def working_images(images, size: int):
    """Fourier-crop real images ``(..., n0, n0)`` to ``(..., size, size)`` so that they are the
    projections of the volume Fourier-cropped to ``size³``.

    ``F(out) = crop(F(images)) · (size / n0)³`` (centred DFTs): a projection sums ``n0`` voxels
    along z; the cropped volume ``downsample(v, size, 3)`` (mean preserving) has ``size`` of
    them, and its projections equal these images (tests/mom/test_mom_cryoem.py checks it against
    :class:`orbitcore.physics.Projector`). Returns a real tensor of the input's dtype
    (float64 for integer input is not supported: pass float images)."""
    fn = "working_images"
    x, _ = to_tensor(images, fn, "images")
    if x.is_complex() or not x.is_floating_point():
        fail(fn, f"images must be real floating-point (..., n0, n0), got {x.dtype}", TypeError)
    if x.dim() < 2 or x.shape[-1] != x.shape[-2]:
        fail(fn, f"images must be square (..., n0, n0), got {tuple(x.shape)}")
    n0 = x.shape[-1]
    size = check_int(fn, "size", size, minimum=1)
    if size > n0:
        fail(fn, f"size must be <= the image size {n0} (only downsampling), got {size}")
    if size == n0:
        return x
    X = fourier.fourier_crop(fourier.fft2c(x), size, 2) * (size / n0) ** 3
    return fourier.ifft2c(X).real.to(x.dtype)


def working_sigma2(sigma2: float, original_size: int, size: int) -> float:
    """Per-pixel variance of white noise of variance ``sigma2`` after :func:`working_images`:
    ``σ² (size / n0)⁴`` (a frequency of the unnormalised DFT carries ``n0² σ²``; the crop keeps
    it, the scaling multiplies it by ``(size/n0)⁶``, and at the working size it reads
    ``size² σ_w²``)."""
    fn = "working_sigma2"
    s2 = check_float(fn, "sigma2", sigma2, minimum=0.0)
    n0 = check_int(fn, "original_size", original_size, minimum=1)
    n = check_int(fn, "size", size, minimum=1)
    return s2 * (n / n0) ** 4


@dataclass
class CryoEMMoments:
    """Data moments at the working size (eq. 30), with what is needed to interpret them.

    Attributes:
        M1: complex128 ``(m,)``; M2: complex128 ``(m, m)`` Hermitian (unnormalised centred DFT
            of the working images, ``layout`` order).
        layout: :class:`orbitcore.MomentLayout` (working size ``n``, disk ``radius``).
        count: number of images N.
        sigma2: per-pixel noise variance removed (working-image units; 0 if none).
        pixel_size: Å per working pixel (``original pixel size · n0 / n``).
        original_size: side ``n0`` of the images before cropping.
        meta: provenance (source, seeds, timings ...), JSON-serialisable.
    """

    M1: torch.Tensor
    M2: torch.Tensor
    layout: MomentLayout
    count: int
    sigma2: float
    pixel_size: float
    original_size: int
    meta: dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.layout.size

    @property
    def radius(self) -> float | None:
        return self.layout.radius

    @property
    def m(self) -> int:
        return self.layout.m

    def fingerprint(self) -> list:
        """A short summary that identifies the data (checked when a fit resumes)."""
        return [self.size, self.radius, self.m, int(self.count),
                float(self.M1.abs().sum()), float(torch.diagonal(self.M2).real.sum())]

    def save(self, path) -> pathlib.Path:
        """Write to a ``.pt`` file (atomically)."""
        path = pathlib.Path(path)
        doc = {"format": "orbitcore.mom.cryoem.moments/1", "M1": self.M1.cpu(), "M2": self.M2.cpu(),
               "size": self.size, "radius": self.radius, "count": self.count, "sigma2": self.sigma2,
               "pixel_size": self.pixel_size, "original_size": self.original_size, "meta": self.meta}
        with atomic_path(path, suffix=".pt") as tmp:
            torch.save(doc, tmp)
        return path

    @classmethod
    def load(cls, path) -> "CryoEMMoments":
        """Read a file written by :meth:`save`."""
        fn = "CryoEMMoments.load"
        path = pathlib.Path(path)
        if not path.is_file():
            fail(fn, f"{path}: no such file", FileNotFoundError)
        doc = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(doc, dict) or doc.get("format") != "orbitcore.mom.cryoem.moments/1":
            fail(fn, f"{path} is not a moments file written by CryoEMMoments.save")
        layout = MomentLayout(doc["size"], 2, doc["radius"])
        if tuple(doc["M1"].shape) != (layout.m,) or tuple(doc["M2"].shape) != (layout.m, layout.m):
            fail(fn, f"{path}: moments of shape {tuple(doc['M1'].shape)}, {tuple(doc['M2'].shape)} do not match "
                     f"the layout (m = {layout.m})")
        return cls(doc["M1"], doc["M2"], layout, int(doc["count"]), float(doc["sigma2"]), float(doc["pixel_size"]),
                   int(doc["original_size"]), dict(doc.get("meta", {})))

    @classmethod
    def from_moments(cls, moments: Moments, *, pixel_size: float = 1.0, original_size: int | None = None,
                     meta: dict | None = None) -> "CryoEMMoments":
        """Wrap a :class:`orbitcore.Moments` of images (e.g. from :func:`orbitcore.moments_from_stack`)."""
        fn = "CryoEMMoments.from_moments"
        if not isinstance(moments, Moments) or moments.layout.ndim != 2:
            fail(fn, f"moments must be orbitcore.Moments of images (ndim=2), got {type(moments).__name__}", TypeError)
        px = check_float(fn, "pixel_size", pixel_size, positive=True)
        n0 = moments.layout.size if original_size is None else check_int(fn, "original_size", original_size, minimum=1)
        return cls(moments.M1.to(torch.complex128), moments.M2.to(torch.complex128), moments.layout, moments.count,
                   moments.sigma2, px, n0, dict(meta or {}))


def _sigma2_arg(fn: str, sigma2):
    if sigma2 is None or isinstance(sigma2, str):
        if isinstance(sigma2, str) and sigma2 not in ("corners", "high_frequency"):
            fail(fn, f"sigma2 must be None, a number >= 0 (noise variance per original pixel), 'corners' or "
                     f"'high_frequency', got {sigma2!r}")
        return sigma2
    return check_float(fn, "sigma2", sigma2, minimum=0.0)


def _image_batches(fn: str, source, batch_size: int):
    """``(total, n0, pixel_size or None, batches, description)``; ``batches`` yields
    ``(count, load)`` pairs, ``load()`` returning the batch ``(count, n0, n0)``. Files and arrays
    are read only when ``load`` is called, so a process of a data-parallel pass reads only its
    own batches; an iterable's batches are read as they come (``count`` None: known once read)."""
    from ..ops import moments as _m  # noqa: PLC0415

    if isinstance(source, (str, os.PathLike)):
        path = pathlib.Path(source)
        if not path.is_file():
            fail(fn, f"{path}: no such file", FileNotFoundError)
        suffix = path.suffix.lower()
        if suffix == ".star":
            from ..io import ParticleStack  # noqa: PLC0415

            stack = ParticleStack(path)
            if stack.table.has_ctf():
                warnings.warn(f"{fn}: {path} has CTF parameters; the cryo-EM method of moments here models "
                              "CTF-free images (seeds/000 eq. 29) and uses the images as they are",
                              OrbitcoreWarning, stacklevel=3)
            n0 = int(stack.n)
            pxs = stack.pixel_size  # (N,) Å per pixel, or None when the STAR file has none
            px = float(pxs[0]) if pxs is not None and len(pxs) and math.isfinite(float(pxs[0])) else None
            return len(stack), n0, px, _m._star_batch_loaders(stack, batch_size), str(path)
        if suffix in (".mrcs", ".mrc", ".st", ".map"):
            from ..io import mrc_info  # noqa: PLC0415

            info = mrc_info(path, fn=fn)
            total, loads = _m._mrc_batch_loaders(path, batch_size)
            return total, int(info.shape[-1]), info.voxel_size, loads, str(path)
        fail(fn, f"{path}: expected an .mrcs/.mrc stack or a .star file, got suffix {suffix!r}")
    if isinstance(source, (torch.Tensor, np.ndarray)) or hasattr(source, "__dlpack__"):
        t, _ = to_tensor(source, fn, "source")
        if t.dim() == 2:
            t = t[None]
        if t.dim() != 3 or t.shape[-1] != t.shape[-2]:
            fail(fn, f"source images must have shape (N, n0, n0), got {tuple(t.shape)}")
        N = t.shape[0]
        loads = ((min(batch_size, N - s), lambda s=s: t[s:s + batch_size]) for s in range(0, N, batch_size))
        return t.shape[0], t.shape[-1], None, loads, "array"
    if isinstance(source, Iterable):
        it = iter(source)
        try:
            first = next(it)
        except StopIteration:
            fail(fn, "source yielded no images")
        f, _ = to_tensor(first, fn, "batch")
        f = f[None] if f.dim() == 2 else f

        def chain():
            yield None, lambda: f
            for b in it:
                yield None, lambda b=b: b

        return None, f.shape[-1], None, chain(), "iterable"
    fail(fn, f"source must be a .star/.mrcs path, an (N, n0, n0) array or an iterable of batches, got "
             f"{type(source).__name__}", TypeError)


def moments_from_images(source, size: int | None = None, *, radius: float | None = None, sigma2=None,
                        noise_radius: float | None = None, pixel_size: float | None = None,
                        batch_size: int = 1024, limit: int | None = None, verbose: bool = True,
                        distributed: bool | None = None) -> CryoEMMoments:
    """Eq. 30 from images: Fourier-crop to the working size, accumulate M̂1, M̂2 in one pass.

    Args:
        source: a RELION ``.star`` file (images named by ``rlnImageName``), an ``.mrcs``/``.mrc``
            stack (memory-mapped), an ``(N, n0, n0)`` array, or an iterable of ``(B, n0, n0)``
            batches. Images are used as they are: CTF-free, centred particles (seeds/000 eq. 29).
        size: working size ``n <= n0`` (default ``n0``).
        radius: frequency disk in working Fourier pixels (default :func:`default_radius`).
        sigma2: noise debiasing of M̂2: ``None``; a number, the noise variance per pixel of the
            *original* images (converted by :func:`working_sigma2`); ``"corners"`` or
            ``"high_frequency"``: estimated on the working images
            (:class:`orbitcore.MomentAccumulator`).
        noise_radius: for the estimated modes, in working pixels.
        pixel_size: Å per original pixel (default: from the STAR/MRC header, else 1).
        batch_size, limit, verbose: images per batch, at most ``limit`` images, progress bar.
        distributed: share the batches over a ``torch.distributed`` process group (``None``: when
            one with more than one process is initialised, e.g. under ``torchrun``): process ``r``
            accumulates batches ``r, r + world, ...`` and the partial sums are all-reduced
            (:meth:`orbitcore.MomentAccumulator.all_reduce`), so every process returns the moments
            of all the images. A process reads only its own batches of a file or an array (an
            iterable's batches are all read, in order, by every process).

    Returns:
        :class:`CryoEMMoments`.
    """
    from tqdm.auto import tqdm  # noqa: PLC0415

    fn = "moments_from_images"
    from .. import _distributed  # noqa: PLC0415

    world, rank = _distributed.world(fn, distributed)
    batch_size = check_int(fn, "batch_size", batch_size, minimum=1)
    limit = None if limit is None else check_int(fn, "limit", limit, minimum=1)
    s2 = _sigma2_arg(fn, sigma2)
    total, n0, px_src, batches, what = _image_batches(fn, source, batch_size)
    n = n0 if size is None else check_int(fn, "size", size, minimum=3)
    if n > n0:
        fail(fn, f"size must be <= the image size {n0} (only downsampling), got {n}")
    r = default_radius(n) if radius is None else check_float(fn, "radius", radius, positive=True)
    px0 = pixel_size if pixel_size is not None else (px_src if px_src else 1.0)
    px0 = check_float(fn, "pixel_size", px0, positive=True)
    known = isinstance(s2, float)
    acc = MomentAccumulator(n, 2, radius=r, sigma2=working_sigma2(s2, n0, n) if known else s2,
                            noise_radius=noise_radius)
    if limit is not None:
        total = limit if total is None else min(total, limit)
    done = 0
    t0 = time.perf_counter()
    with tqdm(total=total, unit="img", desc="moments", disable=not verbose or rank != 0) as bar:
        for index, (count, load) in enumerate(batches):
            mine = index % world == rank  # this process's share of the batches
            if mine or count is None:     # (an iterable's batch is read to be counted)
                x, _ = to_tensor(load(), fn, "batch")
                x = x[None] if x.dim() == 2 else x
                if x.dim() != 3 or tuple(x.shape[-2:]) != (n0, n0):
                    fail(fn, f"every batch must have shape (B, {n0}, {n0}), got {tuple(x.shape)}")
                count = x.shape[0]
            if limit is not None:
                count = min(count, limit - done)
            if mine:
                x = x[:count]
                acc.update(working_images(x if x.is_floating_point() else x.to(torch.float32), n))
            done += count
            bar.update(count)
            if limit is not None and done >= limit:
                break
    if world > 1:
        acc.all_reduce()
    if acc.count == 0:
        fail(fn, "the source yielded no images")
    res = acc.result()
    meta = {"source": what, "original_pixel_size": px0, "seconds": time.perf_counter() - t0,
            "sigma2_mode": s2 if not known else "known", "sigma2_original": s2 if known else None}
    return CryoEMMoments(res.M1, res.M2, res.layout, res.count, res.sigma2, px0 * n0 / n, n0, meta)


def exact_moments(volume, viewing, rotations: torch.Tensor, *, radius: float | None = None,
                  pad: int = 2) -> CryoEMMoments:
    """The population moments (N = ∞, no noise) of ``volume`` under a rotation density,
    integrated by a quadrature rule: eq. 20 with ``z_j ∝ ρ(Q_j)``, float64.

    Exact when the rule integrates the slices' products with ``ρ`` exactly (a rule exact to a
    high enough degree, :func:`orbitcore.geometry.so3_quadrature`); with the model's own rule
    they are the moments a perfect fit reproduces exactly (diagnostics, tests).

    Args:
        volume: real ``(n, n, n)`` map (the working size; crop first).
        viewing: a :class:`orbitcore.geometry.VonMisesFisherMixture` (or anything with
            ``so3_density(rotations) -> (q,)``) or ``"uniform"``.
        rotations: the rule ``(q, 3, 3)``; its weights are taken uniform (so3_quadrature's).
        radius: disk of frequencies (default :func:`default_radius`).
        pad: padding of the slices' Fourier transform (the projector's, 2).
    """
    from ..ops.slice import fourier_slice  # noqa: PLC0415
    from ..physics.projection import prepare_volume_ft  # noqa: PLC0415

    fn = "exact_moments"
    v, _ = to_tensor(volume, fn, "volume")
    if v.dim() != 3 or len(set(v.shape)) != 1 or v.is_complex():
        fail(fn, f"volume must be a real cube (n, n, n), got {v.dtype} {tuple(v.shape)}")
    if not isinstance(rotations, torch.Tensor) or rotations.dim() != 3 or tuple(rotations.shape[1:]) != (3, 3):
        fail(fn, f"rotations must be a (q, 3, 3) tensor, got {getattr(rotations, 'shape', type(rotations).__name__)}")
    n = v.shape[0]
    Q = rotations.detach().to(torch.float64).cpu()
    if isinstance(viewing, str) and viewing == "uniform":
        rho = torch.ones(len(Q), dtype=torch.float64)
    elif hasattr(viewing, "so3_density"):
        rho = viewing.so3_density(Q).to(torch.float64)
    else:
        fail(fn, f"viewing must be 'uniform' or a density with so3_density (VonMisesFisherMixture), got "
                 f"{type(viewing).__name__}", TypeError)
    r = default_radius(n) if radius is None else check_float(fn, "radius", radius, positive=True)
    pad = check_int(fn, "pad", pad, minimum=1)
    lay = MomentLayout(n, 2, r)
    V = prepare_volume_ft(v.detach().to(torch.float64).cpu(), pad)
    S = lay.gather(fourier_slice(V, pad * Q, n, lay.radius, hermitian=True, check=False))
    M1, M2 = model_moments(S, rho / rho.sum())
    return CryoEMMoments(M1, M2, lay, 1, 0.0, 1.0, n, {"source": "exact (quadrature)", "q": len(Q)})


def simulate_moments(volume, n_images: int, *, viewing="uniform", sigma: float = 0.0, size: int | None = None,
                     radius: float | None = None, pixel_size: float = 1.0, batch_size: int = 4096,
                     debias: bool = True, pad: int = 2, seed: int | None = 0,
                     generator: torch.Generator | None = None, verbose: bool = True) -> CryoEMMoments:
    """Eq. 30 from simulated images (eq. 29), streamed: ``n_images`` projections at rotations
    drawn from ``viewing``, white noise of standard deviation ``sigma`` per pixel, cropped to the
    working size and accumulated batch by batch — memory independent of ``n_images``.

    Args:
        volume: real ``(n0, n0, n0)`` map (the paper scales it to unit norm first; so does the
            CLI, not this function).
        n_images: N.
        viewing: ``"uniform"``, a :class:`orbitcore.geometry.VonMisesFisherMixture` (vMF viewing
            directions × uniform in-plane angle, seeds/000 §5.2) or a callable
            ``(n, generator) -> (n, 3, 3)`` rotations.
        sigma: noise standard deviation per original pixel (eq. 29; the paper uses 0.5).
        size, radius, pixel_size: working size, disk, Å per original pixel.
        batch_size: images per batch.
        debias: remove ``n² σ_w²`` from the diagonal of M̂2 (eq. 30).
        pad: padding factor of the projector (:class:`orbitcore.physics.Projector`).
        seed / generator: randomness (rotations and noise).
        verbose: progress bar.

    Returns:
        :class:`CryoEMMoments`; ``meta`` records the seconds spent projecting, adding noise and
        accumulating, so the cost of N is known.
    """
    from tqdm.auto import tqdm  # noqa: PLC0415

    from ..geometry import random_rotations  # noqa: PLC0415
    from ..geometry.distributions import VonMisesFisherMixture  # noqa: PLC0415
    from ..physics.projection import Projector  # noqa: PLC0415

    fn = "simulate_moments"
    vol, _ = to_tensor(volume, fn, "volume")
    if vol.dim() != 3 or len(set(vol.shape)) != 1 or vol.is_complex():
        fail(fn, f"volume must be a real cube (n0, n0, n0), got {vol.dtype} {tuple(vol.shape)}")
    vol = vol.to(torch.float32) if vol.dtype != torch.float64 else vol
    N = check_int(fn, "n_images", n_images, minimum=1)
    sig = check_float(fn, "sigma", sigma, minimum=0.0)
    n0 = vol.shape[-1]
    n = n0 if size is None else check_int(fn, "size", size, minimum=3)
    if n > n0:
        fail(fn, f"size must be <= the volume size {n0}, got {n}")
    r = default_radius(n) if radius is None else check_float(fn, "radius", radius, positive=True)
    px = check_float(fn, "pixel_size", pixel_size, positive=True)
    batch_size = check_int(fn, "batch_size", batch_size, minimum=1)
    if generator is not None and seed is not None and seed != 0:
        fail(fn, "give generator or seed, not both")
    gen = generator if generator is not None else torch.Generator().manual_seed(check_int(fn, "seed", seed or 0))
    if isinstance(viewing, str):
        if viewing != "uniform":
            fail(fn, f"viewing must be 'uniform', a VonMisesFisherMixture or a callable, got {viewing!r}")
        draw = lambda k: random_rotations(k, generator=gen, dtype=torch.float64)  # noqa: E731
    elif isinstance(viewing, VonMisesFisherMixture):
        draw = lambda k: viewing.sample_rotations(k, generator=gen, dtype=torch.float64)[0]  # noqa: E731
    elif callable(viewing):
        draw = lambda k: viewing(k, gen)  # noqa: E731
    else:
        fail(fn, f"viewing must be 'uniform', a VonMisesFisherMixture or a callable, got {type(viewing).__name__}",
             TypeError)
    acc = MomentAccumulator(n, 2, radius=r, sigma2=working_sigma2(sig * sig, n0, n) if debias else None)
    proj = Projector(vol, pad=pad)
    t_proj = t_noise = t_acc = 0.0
    t0 = time.perf_counter()
    with torch.no_grad(), tqdm(total=N, unit="img", desc="simulate+moments", disable=not verbose) as bar:
        for s in range(0, N, batch_size):
            k = min(batch_size, N - s)
            ta = time.perf_counter()
            R = draw(k).to(vol.dtype)
            img = proj(R)
            tb = time.perf_counter()
            if sig > 0:
                img = img + sig * torch.randn(img.shape, generator=gen, dtype=img.dtype)
            tc = time.perf_counter()
            acc.update(working_images(img, n))
            td = time.perf_counter()
            t_proj, t_noise, t_acc = t_proj + tb - ta, t_noise + tc - tb, t_acc + td - tc
            bar.update(k)
    res = acc.result()
    meta = {"source": "simulated", "n_images": N, "sigma_original": sig, "original_pixel_size": px,
            "seconds": time.perf_counter() - t0, "seconds_project": t_proj, "seconds_noise": t_noise,
            "seconds_crop_accumulate": t_acc, "batch_size": batch_size, "threads": torch.get_num_threads()}
    return CryoEMMoments(res.M1, res.M2, res.layout, res.count, res.sigma2, px * n0 / n, n0, meta)


# ================================================================================================
# The neural ground truth (seeds/000 §5.2)
# ================================================================================================
def neural_ground_truth(volume, *, steps: int = 2000, lr: float = 1e-4, hidden: int = 256,
                        amplitude_layers: int = 2, modulation_layers: int = 3, w0: float = 30.0,
                        target_error: float | None = None, seed: int = 0, dtype: str = "float32",
                        progress: bool | Callable[[int, float], Any] = False) -> tuple[torch.Tensor, dict]:
    """The paper's *neural ground truth* (seeds/000 §5.2): the FourierNet ``v̂_φ`` fitted to a
    map, evaluated on the map's grid. The paper simulates the images and computes the FSC
    against this volume, not the map (EMD-0409 at 63³: approximation error 0.043 by eq. 27).

    The network is the one the moment fit uses for ``FitConfig(model="fouriernet")``
    (:class:`~orbitcore.mom.cryoem_models.FourierNetVolume`, same ``hidden``, layers and ``w0``;
    the grid query on the whole ``n³`` grid, no band limit). It is fitted by regression on the
    grid with Adam (constant ``lr``, seed ``seed``): the loss is the relative squared error of
    its centred 3-D FT against the map's, ``Σ_k |v̂_φ(k) − V̂(k)|² / Σ_k |V̂(k)|²`` over the
    ``n³`` frequencies, evaluated as the same ratio in real space (Parseval) on the real volume
    ``v_φ = ifft3c(v̂_φ)`` (``v̂_φ`` is Hermitian, so ``v_φ`` is real). Targets are scaled by
    ``a = max_k |V̂(k)|`` during the fit (parameters of order 1) and the result scaled back.

    Eq. 27: ``inf_R ‖R ∘ v − u‖ / ‖v‖``. The network is fitted in the map's own frame, so the
    value reported is the one at ``R = I``, ``‖v − v_φ‖ / ‖v‖`` (float64), an upper bound of
    the infimum; no search over SO(3) is made.

    Args:
        volume: real ``(n, n, n)`` map (torch tensor or NumPy array), ``[z, y, x]``, origin at
            ``n // 2``, any units (the result has the same units).
        steps: Adam steps (at most; see ``target_error``), >= 1.
        lr: Adam learning rate (1e-4: FourierNet's default in :class:`FitConfig`).
        hidden, amplitude_layers, modulation_layers, w0: the SIRENs of FourierNet (paper: 256,
            2, 3, 30; :class:`FitConfig`'s defaults).
        target_error: stop as soon as the relative error (eq. 27 at ``R = I``) is at or below
            this (e.g. the paper's 0.043), None: run all ``steps``. The returned volume is the
            network after the last step taken.
        seed: initialisation of the network.
        dtype: ``"float32"`` or ``"float64"``, the network's precision.
        progress: True prints the error every ``max(1, steps // 20)`` steps to stderr; a callable
            is called as ``progress(step, relative_error)`` after every step.

    Returns:
        ``(volume_nn, info)``: ``volume_nn`` the real ``(n, n, n)`` network volume (dtype of
        ``volume`` if floating, else float64; on the CPU), ``info`` a dict with
        ``relative_error`` (eq. 27 at ``R = I``, float64), ``relative_error_start`` (the
        initialised network's), ``loss`` (the relative error before each step, list; with
        ``target_error``, its last entry is the one that met it),
        ``steps_done``, ``seconds``, ``parameters`` and the settings.
    """
    import sys  # noqa: PLC0415

    fn = "neural_ground_truth"
    v, _ = to_tensor(volume, fn, "volume")
    if v.dim() != 3 or len(set(v.shape)) != 1 or v.is_complex() or v.shape[0] < 3:
        fail(fn, f"volume must be a real cube (n, n, n) with n >= 3, got {v.dtype} {tuple(v.shape)}")
    steps = check_int(fn, "steps", steps, minimum=1)
    lr = check_float(fn, "lr", lr, positive=True)
    hidden = check_int(fn, "hidden", hidden, minimum=1)
    amplitude_layers = check_int(fn, "amplitude_layers", amplitude_layers, minimum=0)
    modulation_layers = check_int(fn, "modulation_layers", modulation_layers, minimum=0)
    w0 = check_float(fn, "w0", w0, positive=True)
    target_error = check_float(fn, "target_error", target_error, minimum=0.0, allow_none=True)
    seed = check_int(fn, "seed", seed, minimum=0)
    if dtype not in ("float32", "float64"):
        fail(fn, f"dtype must be 'float32' or 'float64', got {dtype!r}")
    if not (isinstance(progress, bool) or callable(progress)):
        fail(fn, f"progress must be a bool or a callable(step, relative_error), got {type(progress).__name__}",
             TypeError)
    out_dtype = v.dtype if v.is_floating_point() else torch.float64
    v64 = v.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(v64).all()):
        fail(fn, "volume must be finite (it has NaN or inf values)")
    norm = float(v64.norm())
    if norm == 0:
        fail(fn, "volume is zero everywhere; nothing to approximate")
    n = v64.shape[0]
    dt = torch.float64 if dtype == "float64" else torch.float32
    a = float(fourier.fft3c(v64).abs().max())
    target = (v64 / a).to(dt)
    tnorm2 = float((v64 / a).square().sum())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = FourierNetVolume(n, hidden, amplitude_layers, modulation_layers, w0=w0, query="grid",
                                 radius=None).to(dt)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    every = max(1, steps // 20)
    curve: list[float] = []
    done = 0
    t0 = time.perf_counter()
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        # Σ_k |v̂_φ(k) − V̂(k)|² / Σ_k |V̂(k)|², as the same ratio in real space (Parseval)
        loss = (model.volume_differentiable() - target).square().sum() / tnorm2
        err = math.sqrt(max(float(loss.detach()), 0.0))
        curve.append(err)
        if target_error is not None and err <= target_error:
            break
        loss.backward()
        opt.step()
        done += 1
        if callable(progress) and not isinstance(progress, bool):
            progress(step, err)
        elif progress and (step % every == 0 or step == steps - 1):
            print(f"{fn}: step {step}  relative error {err:.3g}", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - t0
    u = model.volume().to(torch.float64) * a
    rel = float((v64 - u).norm() / norm)  # eq. 27 at R = I
    info = {"relative_error": rel, "relative_error_start": curve[0], "loss": curve,
            "steps_done": done,
            "seconds": seconds, "parameters": sum(p.numel() for p in model.parameters()),
            "size": n, "steps": steps, "lr": lr, "hidden": hidden, "amplitude_layers": amplitude_layers,
            "modulation_layers": modulation_layers, "w0": w0, "target_error": target_error, "seed": seed,
            "dtype": dtype, "scale": a}
    return u.to(out_dtype), info


# ================================================================================================
# Model (eqs. 20, 28)
# ================================================================================================
@dataclass
class FitConfig:
    """Settings of :func:`fit` (all JSON-serialisable; stored in checkpoints).

    Model: ``model`` ``"fouriernet"`` (the paper) or ``"voxel"`` (baseline); ``query``
    ``"direct"`` (the paper) or ``"grid"`` for FourierNet (:class:`FourierNetVolume`);
    ``hidden``, ``amplitude_layers``, ``modulation_layers``, ``w0``: FourierNet's SIRENs;
    ``voxel_param`` ``"fourier"`` / ``"real"`` (:class:`VoxelVolume`); ``latent_dim``: size of
    ``z_v`` (0: no ξ^v). Density: ``density`` ``"encoder"`` (ξ^ρ, the paper), ``"free"``
    (softmax of free logits) or ``"projected"`` (not in the paper: in-plane-uniform weights on
    the viewing directions, eliminated exactly at every evaluation by variable projection,
    :class:`~orbitcore.mom.cryoem_models.ProjectedDensity`; needs ``squared=True``).
    Quadrature (:func:`orbitcore.geometry.so3_quadrature`): ``n_directions`` × ``n_inplane``
    (None, None: the paper's 100 × 12, exact to degree 11) or ``exact_degree`` (a t-design ×
    (t+1) angles, exact to degree t), ``inplane_offset`` (radians). Loss: ``lam`` (None:
    ``‖M̂1‖/‖M̂2‖``), ``squared`` (squared norms). Optimiser: ``optimizer`` ``"adam"`` (the
    paper) or ``"lbfgs"`` (full-batch L-BFGS with a strong-Wolfe line search, one iteration per
    step; ``lr`` and the schedule do not apply), ``steps``, ``lr`` (None: 1e-4 for FourierNet,
    1e-2 for voxels), ``encoder_lr`` (None: ``lr``), ``lr_drop`` (factor of the second stage,
    0.1), ``drop_fraction`` (where it starts, 0.5). ``seed`` initialises the networks.

    Why L-BFGS: eq. 28 is a deterministic, smooth, full-batch objective. Adam divides every
    coordinate's step by its own gradient scale, so the weakly determined coefficients (the
    high frequencies of a smooth volume, whose moments are orders of magnitude below the low
    ones) take steps as large as the well-determined ones and are driven away from the truth
    even from a start next to it. A quasi-Newton method keeps the steps in proportion to the
    curvature: with voxels it recovers the two-Gaussian volume of the tests where Adam does not
    (docs/evidence/mom_cryoem/README.md). Adam stays the default for FourierNet, as in the paper.
    ``dtype`` ``"float32"``/``"float64"``.

    ``band_limit`` (voxel model and FourierNet's ``"grid"`` query, which both slice an ``n³``
    grid): ``"disk"`` (default) holds the grid's frequencies beyond the moments' disk radius at
    zero; ``"cube"`` keeps the whole ``n³`` grid. The slices interpolate the padded FT, so values
    on the disk depend on the grid's corner frequencies too: with ``"disk"`` a map with power in
    its corners is *not* representable (for the 70S Fourier-cropped to 17³ the cut removes 45 %
    of its norm and leaves moment errors of 0.8 % / 3.3 % at the truth), and the minimum of
    eq. 28 is no longer at the truth. ``"cube"`` represents it exactly (with exact moments and
    the true density L-BFGS then returns from a start near the truth to correlation 0.99, where
    the disk model drifts to 0.72), but its corners are only weakly determined, and on moments of
    finite image sets the extra freedom fits the sampling error instead (measured:
    docs/evidence/mom_cryoem/README.md), so it is an option, not the default.
    """

    model: str = "fouriernet"
    query: str = "direct"
    hidden: int = 256
    amplitude_layers: int = 2
    modulation_layers: int = 3
    w0: float = 30.0
    voxel_param: str = "fourier"
    latent_dim: int = 0
    density: str = "encoder"
    n_directions: int | None = None
    n_inplane: int | None = None
    exact_degree: int | None = None
    inplane_offset: float = 0.0
    lam: float | None = None
    squared: bool = False
    optimizer: str = "adam"
    steps: int = 2000
    lr: float | None = None
    encoder_lr: float | None = None
    lr_drop: float = 0.1
    drop_fraction: float = 0.5
    seed: int = 0
    dtype: str = "float32"
    band_limit: str = "disk"

    def validate(self) -> "FitConfig":
        fn = "FitConfig"
        choices = {"model": ("fouriernet", "voxel"), "query": ("direct", "grid"), "voxel_param": ("fourier", "real"),
                   "density": ("encoder", "free", "projected"), "dtype": ("float32", "float64"),
                   "optimizer": ("adam", "lbfgs"), "band_limit": ("disk", "cube")}
        for k, allowed in choices.items():
            if getattr(self, k) not in allowed:
                fail(fn, f"{k} must be one of {allowed}, got {getattr(self, k)!r}")
        for k in ("hidden", "steps"):
            check_int(fn, k, getattr(self, k), minimum=1)
        for k in ("n_directions", "n_inplane"):
            if getattr(self, k) is not None:
                check_int(fn, k, getattr(self, k), minimum=1)
        for k in ("amplitude_layers", "modulation_layers", "latent_dim", "seed"):
            check_int(fn, k, getattr(self, k), minimum=0)
        if self.exact_degree is not None:
            check_int(fn, "exact_degree", self.exact_degree, minimum=0)
        if self.density == "projected" and not self.squared:
            fail(fn, "density='projected' eliminates z_rho from the squared loss (eq. 28 with squared norms); "
                     "set squared=True")
        if self.latent_dim and self.model != "fouriernet":
            fail(fn, f"latent_dim > 0 (the xi^v latent) needs model='fouriernet', got model={self.model!r}")
        check_float(fn, "w0", self.w0, positive=True)
        check_float(fn, "inplane_offset", self.inplane_offset)
        check_float(fn, "lam", self.lam, minimum=0.0, allow_none=True)
        check_float(fn, "lr", self.lr, positive=True, allow_none=True)
        check_float(fn, "encoder_lr", self.encoder_lr, positive=True, allow_none=True)
        check_step_drop(fn, self.lr_drop, self.drop_fraction)
        return self

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch.float64 if self.dtype == "float64" else torch.float32

    def learning_rate(self) -> float:
        if self.lr is not None:
            return float(self.lr)
        return 1e-4 if self.model == "fouriernet" else 1e-2

    def lr_factor(self, step: int) -> float:
        """The schedule: 1 for the first ``drop_fraction`` of the steps, then ``lr_drop``."""
        return step_drop_factor(step, self.steps, self.lr_drop, self.drop_fraction)


def _moment_scale(M2: torch.Tensor) -> float:
    a2 = float(torch.diagonal(M2).real.max())
    if not math.isfinite(a2) or a2 <= 0:
        fail("fit", f"the data moments have no positive power on the diagonal of M2 (max {a2:g}); nothing to fit")
    return math.sqrt(a2)


class MoMCryoEM(nn.Module):
    """The pipeline of Fig. 2: ``(M̂1, M̂2) → ξ^ρ → z_ρ``; (optionally ``ξ^v → z_v``); slices of
    ``v̂_φ`` at the quadrature rotations; model moments (eq. 20); loss (eq. 28).

    Args:
        layout: the moments' :class:`~orbitcore.MomentLayout`.
        volume: a :class:`~orbitcore.mom.cryoem_models.VolumeModel`.
        rotations, weights: the quadrature ``(q, 3, 3)``, ``(q,)`` (uniform weights; the density
            model's softmax replaces them, see the module docstring).
        density: ``"encoder"`` (ξ^ρ), ``"free"`` or ``"projected"`` (:class:`ProjectedDensity`).
        latent_dim: size of ``z_v`` (needs a FourierNetVolume with the same latent_dim).
    """

    def __init__(self, layout: MomentLayout, volume: VolumeModel, rotations: torch.Tensor, weights: torch.Tensor,
                 *, density: str = "encoder", latent_dim: int = 0, encoder_kwargs: dict | None = None):
        super().__init__()
        fn = "MoMCryoEM"
        if not isinstance(volume, VolumeModel):
            fail(fn, f"volume must be a VolumeModel (FourierNetVolume or VoxelVolume), got {type(volume).__name__}",
                 TypeError)
        if rotations.dim() != 3 or tuple(rotations.shape[-2:]) != (3, 3) or weights.shape != rotations.shape[:1]:
            fail(fn, f"rotations must be (q, 3, 3) and weights (q,), got {tuple(rotations.shape)} and "
                     f"{tuple(weights.shape)}")
        self.layout = layout
        self.volume = volume
        self.register_buffer("rotations", rotations.clone())
        self.register_buffer("weights", weights.clone())
        self.register_buffer("conjugate", layout.conjugate.clone(), persistent=False)
        q = rotations.shape[0]
        kw = dict(encoder_kwargs or {})
        if density == "encoder":
            self.density = MomentEncoder(layout, q, "density", **kw)
        elif density == "free":
            self.density = FreeDensity(q)
        elif density == "projected":
            self.density = ProjectedDensity(viewing_groups(rotations)[1])
        else:
            fail(fn, f"density must be 'encoder', 'free' or 'projected', got {density!r}")
        self.latent_dim = latent_dim
        self.latent = MomentEncoder(layout, latent_dim, "latent", **kw) if latent_dim else None
        if latent_dim and getattr(volume, "latent_dim", 0) != latent_dim:
            fail(fn, f"latent_dim={latent_dim} needs a FourierNetVolume built with the same latent_dim")

    @property
    def q(self) -> int:
        return self.rotations.shape[0]

    def forward(self, M1: torch.Tensor, M2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(slices (q, m) complex, z_ρ (q,))`` for the (normalised) data moments."""
        z = self.density(M1, M2)
        if self.latent is not None:
            self.volume.set_latent(self.latent(M1, M2))
        S = self.volume.slices(self.rotations, self.layout)
        return S, z

    def loss(self, M1: torch.Tensor, M2: torch.Tensor, lam: float, *, squared: bool = False):
        """Eq. 28 and its parts: ``(L, S, z)``."""
        S, z = self(M1, M2)
        if isinstance(self.density, ProjectedDensity):  # z_ρ = argmin_z L(S, z) (variable projection)
            if not squared:
                fail("MoMCryoEM.loss", "the projected density needs squared=True")
            z = self.density.solve(S, M1, M2, lam, self.conjugate).to(S.real.dtype)
        L = moment_loss(M1, M2, S, z, lam, conjugate=self.conjugate, squared=squared)
        return L, S, z


def build_model(moments: CryoEMMoments, config: FitConfig | None = None) -> MoMCryoEM:
    """The :class:`MoMCryoEM` of a configuration (networks initialised from ``config.seed``)."""
    if not isinstance(moments, CryoEMMoments):
        fail("build_model", f"moments must be CryoEMMoments, got {type(moments).__name__}", TypeError)
    if config is not None and not isinstance(config, FitConfig):
        fail("build_model", f"config must be a FitConfig or None, got {type(config).__name__}", TypeError)
    cfg = (config or FitConfig()).validate()
    n = moments.size
    dt = cfg.torch_dtype
    Q, w = so3_quadrature(cfg.n_directions, cfg.n_inplane, exact_degree=cfg.exact_degree,
                          inplane_offset=cfg.inplane_offset, dtype=dt)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        # the direct query never leaves the disk (its band limit only shapes the exported map)
        cube = cfg.band_limit == "cube" and not (cfg.model == "fouriernet" and cfg.query == "direct")
        band = None if cube else moments.radius
        if cfg.model == "fouriernet":
            vol = FourierNetVolume(n, cfg.hidden, cfg.amplitude_layers, cfg.modulation_layers, w0=cfg.w0,
                                   query=cfg.query, latent_dim=cfg.latent_dim, radius=band)
        else:
            vol = VoxelVolume(n, param=cfg.voxel_param, radius=band)
        model = MoMCryoEM(moments.layout, vol, Q, w, density=cfg.density, latent_dim=cfg.latent_dim)
    return model.to(dt)


# ================================================================================================
# Fitting
# ================================================================================================
@dataclass
class MoMResult:
    """Output of :func:`fit`.

    Attributes:
        model: the fitted :class:`MoMCryoEM` (normalised units).
        config: the :class:`FitConfig`.
        moments: the data (:class:`CryoEMMoments`).
        scale: ``a`` (module docstring): volume in data units = ``a ·`` model volume.
        lam: the λ used.
        history: ``step``, ``loss``, ``e1``, ``e2`` (relative errors of eq. 22 from the loss
            evaluation, float32 accuracy), ``lr``, ``seconds`` — one entry per step.
        seconds: fitting time of this call (resumed runs: since the resume).
    """

    model: MoMCryoEM
    config: FitConfig
    moments: CryoEMMoments
    scale: float
    lam: float
    history: dict
    seconds: float = 0.0

    @property
    def rotations(self) -> torch.Tensor:
        """The quadrature ``Q`` ``(q, 3, 3)``."""
        return self.model.rotations.detach()

    def weights(self) -> torch.Tensor:
        """``z_ρ`` ``(q,)`` (sums to 1); the projected density is solved for the final volume."""
        M1n, M2n = _normalised(self.moments, self.scale, self.config.torch_dtype)
        with torch.no_grad():
            if isinstance(self.model.density, ProjectedDensity):
                self.model.loss(M1n, M2n, self.lam, squared=True)
            return self.model.density(M1n, M2n).detach().to(torch.float64)

    def density(self) -> torch.Tensor:
        """``ρ(Q_j) = q · z_ρ(j)``: density w.r.t. the normalised Haar measure (uniform = 1)."""
        return self.weights() * self.model.q

    def volume(self) -> torch.Tensor:
        """Real ``(n, n, n)`` float64 volume in data units (``downsample(truth, n, 3)`` units)."""
        M1n, M2n = _normalised(self.moments, self.scale, self.config.torch_dtype)
        with torch.no_grad():
            if self.model.latent is not None:
                self.model.volume.set_latent(self.model.latent(M1n, M2n))
            return self.model.volume.volume().to(torch.float64) * self.scale

    def model_moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 20 in data units, complex128: ``(M1 (m,), M2 (m, m))`` of the fitted model."""
        M1n, M2n = _normalised(self.moments, self.scale, self.config.torch_dtype)
        with torch.no_grad():
            S, z = self.model(M1n, M2n)
            M1, M2 = model_moments(S.to(torch.complex128), z.to(torch.float64))
        return M1 * self.scale, M2 * self.scale ** 2

    def moment_errors(self) -> tuple[float, float]:
        """Table 2 (eq. 22): ``‖M1 − M̂1‖/‖M̂1‖``, ``‖M2 − M̂2‖/‖M̂2‖`` in float64."""
        from ..metrics.errors import moment_relative_error  # noqa: PLC0415

        M1, M2 = self.model_moments()
        return (moment_relative_error(M1, self.moments.M1.to(torch.complex128)),
                moment_relative_error(M2, self.moments.M2.to(torch.complex128)))


def _normalised(moments: CryoEMMoments, a: float, dt: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    cdt = torch.complex128 if dt == torch.float64 else torch.complex64
    return (moments.M1 / a).to(cdt), (moments.M2 / (a * a)).to(cdt)


def _save_checkpoint(path: pathlib.Path, model, opt, step, history, cfg, moments, scale, lam) -> None:
    doc = {"format": CHECKPOINT_FORMAT, "config": dataclasses.asdict(cfg), "step": step,
           "model": model.state_dict(), "optimizer": opt.state_dict(), "history": history,
           "fingerprint": moments.fingerprint(), "scale": scale, "lam": lam}
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(doc, tmp)


def load_checkpoint(path) -> dict:
    """Read a checkpoint written by :func:`fit` (a dict: config, step, model, optimizer, history)."""
    fn = "load_checkpoint"
    path = pathlib.Path(path)
    if not path.is_file():
        fail(fn, f"{path}: no such file", FileNotFoundError)
    doc = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(doc, dict) or doc.get("format") != CHECKPOINT_FORMAT:
        fail(fn, f"{path} is not a checkpoint of orbitcore.mom.cryoem.fit (format {CHECKPOINT_FORMAT})")
    return doc


def _check_extension(fn: str, ckpt: pathlib.Path, saved: FitConfig, cfg: FitConfig, done: int) -> None:
    """A checkpoint of ``done`` steps resumes under another ``steps`` only where the steps done
    are the ones the new configuration would have taken (the Adam schedule depends on ``steps``)."""
    if cfg.steps == saved.steps:
        return
    if cfg.steps < done:
        fail(fn, f"checkpoint {ckpt} was written with another configuration: it has {done} steps done, "
                 f"more than steps={cfg.steps}; use steps >= {done}, another checkpoint path, or resume=False")
    if cfg.optimizer == "adam" and any(saved.lr_factor(s) != cfg.lr_factor(s) for s in range(done)):
        fail(fn, f"checkpoint {ckpt} was written with another configuration (steps {saved.steps} vs now "
                 f"{cfg.steps}): Adam's learning-rate drop (at drop_fraction × steps) would have come at "
                 f"another step than in the {done} steps done; use steps={saved.steps}, another checkpoint "
                 "path, or resume=False")


def fit(moments: CryoEMMoments, config: FitConfig | None = None, *, checkpoint=None, checkpoint_every: int = 100,
        resume: bool = True, verbose: bool = True, callback: Callable[[int, dict], Any] | None = None,
        **overrides) -> MoMResult:
    """Reconstruct a volume and a density on Q from data moments by minimising eq. 28.

    Args:
        moments: :class:`CryoEMMoments` (:func:`moments_from_images`, :func:`simulate_moments`).
        config: :class:`FitConfig`; keyword ``overrides`` replace its fields
            (``fit(mom, steps=500, model="voxel")``).
        checkpoint: path of a ``.pt`` checkpoint, written atomically every ``checkpoint_every``
            steps, at the end and on KeyboardInterrupt. With ``resume=True`` and an existing file,
            the run continues from it (same configuration and data required; the result is
            identical to an uninterrupted run). ``steps`` alone may grow, to extend a run,
            where the steps already done are the same under the new value: always with
            L-BFGS; with Adam where its learning rate over those steps is the same under both
            values (its drop comes at ``drop_fraction × steps``).
        verbose: progress bar (loss and the relative moment errors of eq. 22).
        callback: ``callback(step, record)`` after every step.

    Returns:
        :class:`MoMResult`.
    """
    from tqdm.auto import tqdm  # noqa: PLC0415

    fn = "fit"
    if not isinstance(moments, CryoEMMoments):
        fail(fn, f"moments must be CryoEMMoments (moments_from_images / simulate_moments), got "
                 f"{type(moments).__name__}", TypeError)
    cfg = dataclasses.replace(config or FitConfig(), **overrides) if overrides else (config or FitConfig())
    if not isinstance(cfg, FitConfig):
        fail(fn, f"config must be a FitConfig, got {type(cfg).__name__}", TypeError)
    cfg.validate()
    checkpoint_every = check_int(fn, "checkpoint_every", checkpoint_every, minimum=1)
    ckpt = pathlib.Path(checkpoint) if checkpoint is not None else None
    dt = cfg.torch_dtype
    a = _moment_scale(moments.M2)
    M1n, M2n = _normalised(moments, a, dt)
    lam = float(cfg.lam) if cfg.lam is not None else float(M1n.norm() / M2n.norm())
    n1, n2 = float(M1n.norm()), float(M2n.norm())
    model = build_model(moments, cfg)
    lr = cfg.learning_rate()
    enc_lr = cfg.encoder_lr if cfg.encoder_lr is not None else lr
    groups = [{"params": list(model.volume.parameters()), "lr": lr, "base_lr": lr}]
    enc = list(model.density.parameters()) + (list(model.latent.parameters()) if model.latent is not None else [])
    if enc:  # (the projected density has no parameters)
        groups.append({"params": enc, "lr": enc_lr, "base_lr": enc_lr})
    if cfg.optimizer == "lbfgs":
        params = [p for g in groups for p in g["params"]]
        # one iteration per call (history kept in the optimiser's state: checkpoints resume exactly)
        opt = torch.optim.LBFGS(params, lr=1.0, max_iter=1, max_eval=26, history_size=50, line_search_fn="strong_wolfe",
                                tolerance_grad=0.0, tolerance_change=0.0)
    else:
        opt = torch.optim.Adam(groups)
    history = {k: [] for k in ("step", "loss", "e1", "e2", "lr", "seconds")}
    start = 0
    if ckpt is not None and resume and ckpt.is_file():
        doc = load_checkpoint(ckpt)
        # checkpoints from before FitConfig.band_limit existed were fitted with the disk band limit
        saved = FitConfig(**{"band_limit": "disk", **doc["config"]})
        if dataclasses.asdict(saved) != dataclasses.asdict(dataclasses.replace(cfg, steps=saved.steps)):
            diff = {k: (v, getattr(cfg, k)) for k, v in dataclasses.asdict(saved).items() if getattr(cfg, k) != v}
            fail(fn, f"checkpoint {ckpt} was written with another configuration (saved vs now: {diff}); "
                     "use the same settings, another checkpoint path, or resume=False")
        _check_extension(fn, ckpt, saved, cfg, int(doc["step"]))
        if not np.allclose(doc["fingerprint"][3:], moments.fingerprint()[3:], rtol=1e-9) or \
                doc["fingerprint"][:3] != moments.fingerprint()[:3]:
            fail(fn, f"checkpoint {ckpt} was written for other data moments (fingerprint {doc['fingerprint']} vs "
                     f"{moments.fingerprint()})")
        model.load_state_dict(doc["model"])
        opt.load_state_dict(doc["optimizer"])
        history = doc["history"]
        start = int(doc["step"])
    t0 = time.perf_counter()
    t_prev = history["seconds"][-1] if history["seconds"] else 0.0
    step = start
    bar = tqdm(total=cfg.steps, initial=start, unit="step", desc=f"mom-cryoem ({cfg.model})", disable=not verbose)
    try:
        for step in range(start, cfg.steps):
            if cfg.optimizer == "lbfgs":
                f = 1.0
                out = {}

                def closure():
                    opt.zero_grad(set_to_none=True)
                    Lc, Sc, zc = model.loss(M1n, M2n, lam, squared=cfg.squared)
                    Lc.backward()
                    if not out:  # the first evaluation is at the current point, as Adam's below
                        out.update(L=Lc, S=Sc, z=zc)
                    return Lc

                opt.step(closure)
                L, S, z = out["L"], out["S"], out["z"]
                rate = float(opt.state[opt.param_groups[0]["params"][0]].get("t", 0.0))  # line-search step
            else:
                f = cfg.lr_factor(step)
                for g in opt.param_groups:
                    g["lr"] = g["base_lr"] * f
                L, S, z = model.loss(M1n, M2n, lam, squared=cfg.squared)
                opt.zero_grad(set_to_none=True)
                L.backward()
                opt.step()
                rate = lr * f
            with torch.no_grad():  # relative errors of eq. 22 from this evaluation (float32 accuracy)
                r1 = float((M1n - z.detach().to(S.dtype) @ S.detach()).norm())
                lv = float(L.detach())
                if cfg.squared:
                    r1sq = r1 * r1
                    r2 = math.sqrt(max(lv - r1sq, 0.0) / lam) if lam > 0 else float("nan")
                else:
                    r2 = (lv - r1) / lam if lam > 0 else float("nan")
            rec = {"step": step + 1, "loss": lv, "e1": r1 / n1, "e2": max(r2, 0.0) / n2, "lr": rate,
                   "seconds": t_prev + time.perf_counter() - t0}
            for k, v in rec.items():
                history[k].append(v)
            bar.update(1)
            bar.set_postfix(loss=f"{lv:.4g}", e1=f"{rec['e1']:.3g}", e2=f"{rec['e2']:.3g}", refresh=False)
            if not math.isfinite(lv):
                fail(fn, f"the loss became {lv} at step {step + 1} (learning rate too large? lr={rate:g})",
                     FloatingPointError)
            if callback is not None:
                callback(step + 1, rec)
            if ckpt is not None and (step + 1) % checkpoint_every == 0 and step + 1 < cfg.steps:
                _save_checkpoint(ckpt, model, opt, step + 1, history, cfg, moments, a, lam)
            if cfg.optimizer == "lbfgs" and rate == 0.0:
                # the line search found no decrease: converged to the working precision
                if verbose:
                    bar.write(f"L-BFGS: no further decrease at step {step + 1} (converged at {cfg.dtype} "
                              "precision); stopping")
                break
        step = cfg.steps
    except KeyboardInterrupt:
        if ckpt is not None:
            done = len(history["step"])
            _save_checkpoint(ckpt, model, opt, done, history, cfg, moments, a, lam)
            if verbose:
                print(f"\ninterrupted at step {done}: checkpoint written to {ckpt} (run again to resume)")
        raise
    finally:
        bar.close()
    if ckpt is not None:
        _save_checkpoint(ckpt, model, opt, cfg.steps, history, cfg, moments, a, lam)
    return MoMResult(model, cfg, moments, a, lam, history, time.perf_counter() - t0)


# ================================================================================================
# Evaluation and outputs
# ================================================================================================
def evaluate(result: MoMResult, truth, *, truth_pixel_size: float | None = None, mirror: bool = True,
             viewing=None, align_kwargs: dict | None = None) -> dict:
    """Compare a reconstruction with the ground truth (seeds/000 §5.2, Tables 2 and 3).

    The truth (any size ``n0 >= n``) is Fourier-cropped to the working size
    (:func:`orbitcore.fourier.downsample`, the units of the reconstruction), the reconstruction
    aligned onto it over rotations, translations and handedness
    (:func:`orbitcore.metrics.align_volumes`), then: FSC and its 0.5 / 0.143 resolutions in Å
    (working voxel size), the relative error of eq. 27, and the moment errors of Table 2
    (eq. 22, float64). With ``viewing`` (a :class:`~orbitcore.geometry.VonMisesFisherMixture`,
    the true distribution), also the true density at the aligned quadrature and its
    correlation with the estimate (the alignment maps the estimate's Q_j to
    ``R Q_j`` — ``R F Q_j F`` when mirrored, ``F = diag(1, 1, −1)``).

    Returns:
        dict with ``resolution_05_A``, ``resolution_0143_A``, ``fsc`` (FSCResult),
        ``volume_relative_error``, ``moment_error_1``, ``moment_error_2``, ``alignment``,
        ``aligned`` (volume), ``truth`` (cropped), and density comparisons if asked.
    """
    from ..metrics import align_volumes, fsc  # noqa: PLC0415
    from ..metrics.align import transform_volume  # noqa: PLC0415

    fn = "evaluate"
    if not isinstance(result, MoMResult):
        fail(fn, f"result must be a MoMResult, got {type(result).__name__}", TypeError)
    t, _ = to_tensor(truth, fn, "truth")
    n = result.moments.size
    if t.dim() != 3 or len(set(t.shape)) != 1 or t.is_complex() or t.shape[0] < n:
        fail(fn, f"truth must be a real cube (n0, n0, n0) with n0 >= {n}, got {t.dtype} {tuple(t.shape)}")
    t = t.detach().to(torch.float64).cpu()
    truth_w = fourier.downsample(t, n, 3) if t.shape[0] != n else t
    px = result.moments.pixel_size
    if truth_pixel_size is not None:
        px = check_float(fn, "truth_pixel_size", truth_pixel_size, positive=True) * t.shape[0] / n
    est = result.volume().cpu()
    al = align_volumes(truth_w, est, mirror=mirror, **(align_kwargs or {}))
    aligned = transform_volume(est, al.rotation, al.shift, al.mirror)
    f = fsc(truth_w, aligned, px)
    e1, e2 = result.moment_errors()
    out = {"resolution_05_A": f.resolution_05, "resolution_0143_A": f.resolution_0143,
           "resolution_05_px": f.resolution_05_px, "pixel_size_A": px, "fsc": f,
           "volume_relative_error": float((aligned - truth_w).norm() / truth_w.norm()),
           "correlation": al.correlation, "moment_error_1": e1, "moment_error_2": e2,
           "alignment": {"rotation": al.rotation.tolist(), "shift": al.shift.tolist(), "mirror": al.mirror},
           "aligned": aligned, "truth": truth_w}
    if viewing is not None:
        F = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))
        Q = result.rotations.to(torch.float64)
        Qt = al.rotation @ (F @ Q @ F if al.mirror else Q)
        rho_true = viewing.so3_density(Qt)
        rho_est = result.density()
        c = torch.corrcoef(torch.stack((rho_true, rho_est)))[0, 1]
        # the same on the viewing directions (in-plane angles summed): the part of ρ that the
        # moments of a smooth volume constrain best (the truth is uniform in-plane)
        _, inv = viewing_groups(Q)
        q1 = int(inv.max()) + 1
        d_true = torch.zeros(q1, dtype=torch.float64).index_add_(0, inv, rho_true.to(torch.float64))
        d_est = torch.zeros(q1, dtype=torch.float64).index_add_(0, inv, rho_est.to(torch.float64))
        cd = torch.corrcoef(torch.stack((d_true, d_est)))[0, 1]
        out.update({"density_true_on_Q": rho_true, "density_correlation": float(c),
                    "direction_density_correlation": float(cd)})
    return out


def viewing_groups(rotations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(directions (q1, 3), group (q,))``: the distinct viewing directions ``Q_j e_z`` of a
    rule ``(q, 3, 3)`` (equal to 1e-6) and, for each rotation, the index of its direction."""
    R = to_tensor(rotations, "viewing_groups", "rotations")[0]
    if R.dim() != 3 or tuple(R.shape[1:]) != (3, 3) or R.is_complex() or not R.is_floating_point():
        fail("viewing_groups", f"rotations must be real (q, 3, 3), got {R.dtype} {tuple(R.shape)}")
    d = R.to(torch.float64)[:, :, 2]
    uniq, inv = torch.unique(torch.round(d * 1e6), dim=0, return_inverse=True)
    dirs = torch.zeros(uniq.shape[0], 3, dtype=torch.float64).index_copy_(0, inv, d)
    return dirs, inv


def direction_density(result: MoMResult) -> tuple[torch.Tensor, torch.Tensor]:
    """``(directions (q1, 3), density (q1,))``: the density on the viewing directions of the
    quadrature (in-plane angles summed), relative to uniform (= 1)."""
    if not isinstance(result, MoMResult):
        fail("direction_density", f"result must be the MoMResult of fit, got {type(result).__name__}", TypeError)
    dirs, inv = viewing_groups(result.rotations)
    q1 = dirs.shape[0]
    dens = torch.zeros(q1, dtype=torch.float64).index_add_(0, inv, result.weights()) * q1
    return dirs, dens


def write_outputs(result: MoMResult, outdir, *, evaluation: dict | None = None, plots: bool = True,
                  extra: dict | None = None) -> dict:
    """Write the reconstruction into ``outdir`` (every file atomically):

    * ``volume.mrc`` — the volume (v̂ on the grid, inverse FT; data units, working voxel size);
    * ``density.npz`` — ``rotations (q, 3, 3)``, ``weights`` (z_ρ), ``density`` (ρ on Q, Haar,
      uniform = 1), ``directions``/``direction_density`` (in-plane angles summed);
    * ``history.json`` — the loss and the relative moment errors per step;
    * ``summary.json`` — configuration, data description, final moment errors (Table 2) and, with
      ``evaluation``, resolutions and errors against the truth;
    * ``extra`` (JSON-serialisable dict): merged into the summary (e.g. the CLI's
      ``neural_truth`` record);
    * with ``plots``: ``directions.png`` (density on the viewing directions,
      :func:`orbitcore.geometry.plot_directions`), ``loss.png`` and, with ``evaluation``,
      ``fsc.png``.

    Returns the summary dict.
    """
    from ..io import write_mrc  # noqa: PLC0415

    fn = "write_outputs"
    if not isinstance(result, MoMResult):
        fail(fn, f"result must be a MoMResult, got {type(result).__name__}", TypeError)
    out = pathlib.Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    vol = result.volume()
    write_mrc(out / "volume.mrc", vol.float().numpy(), voxel_size=result.moments.pixel_size)
    dirs, dd = direction_density(result)
    with atomic_path(out / "density.npz", suffix=".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, rotations=result.rotations.double().numpy(), weights=result.weights().numpy(),
                     density=result.density().numpy(), directions=dirs.numpy(), direction_density=dd.numpy())
    with atomic_path(out / "history.json", suffix=".json") as tmp:
        tmp.write_text(json.dumps(result.history))
    e1, e2 = result.moment_errors()
    h = result.history
    summary = {
        "config": dataclasses.asdict(result.config),
        "data": {"size": result.moments.size, "radius": result.moments.radius, "m": result.moments.m,
                 "count": result.moments.count, "sigma2": result.moments.sigma2,
                 "pixel_size_A": result.moments.pixel_size, "original_size": result.moments.original_size,
                 "meta": result.moments.meta},
        "scale": result.scale, "lam": result.lam, "q": result.model.q,
        "steps_done": len(h["step"]), "fit_seconds_total": h["seconds"][-1] if h["seconds"] else 0.0,
        "final_loss": h["loss"][-1] if h["loss"] else None,
        "moment_error_1": e1, "moment_error_2": e2,
    }
    if evaluation is not None:
        summary["evaluation"] = {k: v for k, v in evaluation.items()
                                 if k not in ("fsc", "aligned", "truth", "density_true_on_Q")}
        summary["evaluation"]["fsc_curve"] = evaluation["fsc"].curve.tolist()
        summary["evaluation"]["fsc_frequencies"] = evaluation["fsc"].frequencies.tolist()
    if extra is not None:
        if not isinstance(extra, dict):
            fail(fn, f"extra must be a dict, got {type(extra).__name__}", TypeError)
        summary.update(extra)
    with atomic_path(out / "summary.json", suffix=".json") as tmp:
        tmp.write_text(json.dumps(summary, indent=1, default=float))
    if plots:
        from ..geometry.so3 import plot_directions  # noqa: PLC0415

        plot_directions(dirs, out / "directions.png", values=dd,
                        title=f"estimated density of viewing directions ({dirs.shape[0]} design points)",
                        label="density (uniform = 1)")
        _plot_history(result.history, out / "loss.png")
        if evaluation is not None:
            from ..metrics.plots import plot_fsc  # noqa: PLC0415

            plot_fsc(evaluation["fsc"], out / "fsc.png", title="reconstruction vs ground truth (aligned)")
    return summary


def _plot_history(history: dict, path) -> None:
    from ..metrics.plots import _plt  # noqa: PLC0415

    plt = _plt()
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    s = history["step"]
    ax[0].semilogy(s, history["loss"], lw=0.8)
    ax[0].set_xlabel("step")
    ax[0].set_ylabel("loss (eq. 28, normalised units)")
    ax[1].semilogy(s, history["e1"], lw=0.8, label="M1 relative error")
    ax[1].semilogy(s, history["e2"], lw=0.8, label="M2 relative error")
    ax[1].set_xlabel("step")
    ax[1].legend(fontsize=8)
    ax[1].set_title("relative moment errors (eq. 22)", fontsize=9)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
