"""Simulated particle images with their ground truth (seeds/000 §5.2, seeds/003 §4.1).

Per image: a rotation (uniform on SO(3), or a vMF mixture of viewing directions × a uniform
in-plane angle, or given), a Gaussian in-plane shift, a CTF with log-normal defocus, the
projection through :class:`~orbitcore.physics.Projector` (``fourier_slice`` of the 2×-padded
volume), then white Gaussian noise at the requested SNR (``E‖clean‖² / (n² σ²)``, the clean
images including the CTF). Images stream in chunks with a progress bar and can be written
straight to an MRCS stack + RELION 3.1 STAR file, so a million images never sit in memory.
"""
from __future__ import annotations

import math
import pathlib
from dataclasses import dataclass, field

import torch

from .._validate import check_float, check_int, check_rotations, fail, to_tensor
from ..geometry import random_rotations
from ..geometry.distributions import VonMisesFisherMixture
from .ctf import CTFParams
from .noise import _resolve_snr
from .projection import Projector, _volume_arg

__all__ = ["simulate_particles", "SimulatedParticles", "sample_ctf_params"]


@dataclass
class SimulatedParticles:
    """Result of :func:`simulate_particles`.

    Attributes:
        images: ``(N, D, D)`` noisy images (``None`` when not kept in memory).
        rotations: ``(N, 3, 3)`` ground-truth rotations (viewing direction ``R @ e_z``).
        shifts: ``(N, 2)`` ground-truth shifts in pixels (content moves by ``+t``).
        ctf: ground-truth :class:`CTFParams` (``None`` without CTF).
        pixel_size: Å.
        sigma: noise standard deviation per pixel (0 without noise).
        signal_power: mean clean power ``E‖clean‖² / n²`` the noise level was set from.
        snr: the SNR requested (linear; ``inf`` without noise).
        labels: ``(N,)`` vMF component of each image (``None`` for other viewing models).
        star_path, stack_path: the files written (``None`` if none).
    """

    images: torch.Tensor | None
    rotations: torch.Tensor
    shifts: torch.Tensor
    ctf: CTFParams | None
    pixel_size: float
    sigma: float
    signal_power: float
    snr: float
    labels: torch.Tensor | None = None
    star_path: pathlib.Path | None = None
    stack_path: pathlib.Path | None = None
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.rotations.shape[0])


def sample_ctf_params(n: int, *, pixel_size: float, defocus_median: float = 15000.0,
                      defocus_log_std: float = 0.3, astigmatism_std: float = 0.0, voltage: float = 300.0,
                      cs: float = 2.7, amplitude_contrast: float = 0.1, phase_shift: float = 0.0,
                      b_factor: float = 0.0, generator: torch.Generator | None = None) -> CTFParams:
    """Random CTF parameters: log-normal mean defocus (seeds/003 §4.1),
    ``log(d) ~ N(log(defocus_median), defocus_log_std²)`` in Å; astigmatism ``dU - dV = |N(0,
    astigmatism_std²)|`` split evenly around ``d`` with a uniform angle in [0, 180) degrees
    (none when ``astigmatism_std = 0``); the other parameters fixed."""
    fn = "sample_ctf_params"
    n = check_int(fn, "n", n, minimum=0)
    med = check_float(fn, "defocus_median", defocus_median, positive=True)
    ls = check_float(fn, "defocus_log_std", defocus_log_std, minimum=0.0)
    ast = check_float(fn, "astigmatism_std", astigmatism_std, minimum=0.0)
    d = torch.exp(math.log(med) + ls * torch.randn(n, generator=generator, dtype=torch.float64))
    if ast > 0:
        delta = (ast * torch.randn(n, generator=generator, dtype=torch.float64)).abs()
        ang = 180.0 * torch.rand(n, generator=generator, dtype=torch.float64)
    else:
        delta = torch.zeros(n, dtype=torch.float64)
        ang = torch.zeros(n, dtype=torch.float64)
    return CTFParams((d + delta / 2).float(), (d - delta / 2).float(), ang.float(), voltage, cs, amplitude_contrast,
                     phase_shift, b_factor, check_float(fn, "pixel_size", pixel_size, positive=True)).to(
        dtype=torch.float32)


def _viewing(fn: str, viewing, n: int, gen) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(viewing, str):
        if viewing != "uniform":
            fail(fn, f"viewing must be 'uniform', a VonMisesFisherMixture or (N, 3, 3) rotations, got {viewing!r}")
        return random_rotations(n, generator=gen, dtype=torch.float64), None
    if isinstance(viewing, VonMisesFisherMixture):
        R, labels = viewing.sample_rotations(n, generator=gen, dtype=torch.float64)
        return R, labels
    R, _ = to_tensor(viewing, fn, "viewing")
    if R.dim() != 3 or tuple(R.shape) != (n, 3, 3):
        fail(fn, f"viewing rotations must have shape ({n}, 3, 3) (one per image), got {tuple(R.shape)}")
    check_rotations(fn, "viewing", R)
    return R.to(torch.float64).cpu(), None


def simulate_particles(volume, n_images: int, *, pixel_size: float = 1.0, snr: float | None = None,
                       snr_db: float | None = None, sigma: float | None = None, viewing="uniform",
                       shift_std: float = 0.0, ctf: bool | CTFParams = True, defocus_median: float = 15000.0,
                       defocus_log_std: float = 0.3, astigmatism_std: float = 0.0, voltage: float = 300.0,
                       cs: float = 2.7, amplitude_contrast: float = 0.1, b_factor: float = 0.0,
                       phase_shift: float = 0.0, pad: int = 2, chunk_size: int = 1024, out=None,
                       keep_images: bool | None = None, generator: torch.Generator | None = None,
                       seed: int | None = None, verbose: bool = False) -> SimulatedParticles:
    """Simulate ``n_images`` noisy, CTF-modulated, shifted projections of a volume.

    Args:
        volume: real ``(D, D, D)`` density indexed ``[z, y, x]`` (torch or NumPy).
        n_images: number of images.
        pixel_size: Å per pixel (sets the CTF frequencies and the STAR pixel size).
        snr / snr_db / sigma: noise level, at most one: linear SNR, SNR in dB, or the noise
            standard deviation directly. None of them: no noise. SNR is
            ``E‖clean‖² / (n² σ²)`` with the expectation over the first chunk's clean images.
        viewing: ``"uniform"`` (Haar on SO(3)), a
            :class:`~orbitcore.geometry.VonMisesFisherMixture` (vMF viewing directions ×
            uniform in-plane angle, seeds/000 §5.2), or explicit ``(N, 3, 3)`` rotations.
        shift_std: standard deviation of the Gaussian in-plane shifts, in Å (seeds/003 uses
            20 Å); 0: centred particles.
        ctf: ``True`` (random parameters from the arguments below, see
            :func:`sample_ctf_params`), ``False`` (no CTF) or explicit :class:`CTFParams` with
            ``N`` entries (their pixel size then replaces ``pixel_size``).
        defocus_median, defocus_log_std, astigmatism_std, voltage, cs, amplitude_contrast,
            b_factor, phase_shift: CTF distribution (Å, -, Å, kV, mm, -, Å², degrees).
        pad: padding factor of the projector (2: RELION's default).
        chunk_size: images per chunk (bounds memory).
        out: optional path of a STAR file to write (the stack goes next to it as
            ``<stem>.mrcs``); both written atomically.
        keep_images: keep the images in memory and return them (default: True without ``out``,
            and with ``out`` when the stack is under 1 GiB).
        generator / seed: randomness (a ``torch.Generator`` or an integer seed; default seed 0).
            Results reproduce for the same seed, arguments and ``chunk_size``.
        verbose: show a progress bar.

    Returns:
        :class:`SimulatedParticles` with the images and the ground truth.
    """
    fn = "simulate_particles"
    vol, _ = _volume_arg(fn, volume)
    N = check_int(fn, "n_images", n_images, minimum=1)
    px = check_float(fn, "pixel_size", pixel_size, positive=True)
    given = [k for k, v in (("snr", snr), ("snr_db", snr_db), ("sigma", sigma)) if v is not None]
    if len(given) > 1:
        fail(fn, f"give at most one of snr, snr_db, sigma, got {', '.join(given)}")
    target_snr = math.inf
    if snr is not None or snr_db is not None:
        target_snr = _resolve_snr(fn, snr, snr_db)
    fixed_sigma = check_float(fn, "sigma", sigma, minimum=0.0) if sigma is not None else None
    s_std = check_float(fn, "shift_std", shift_std, minimum=0.0)
    chunk_size = check_int(fn, "chunk_size", chunk_size, minimum=1)
    if generator is not None and seed is not None:
        fail(fn, "give generator or seed, not both")
    gen = generator if generator is not None else torch.Generator().manual_seed(0 if seed is None else
                                                                                 check_int(fn, "seed", seed))
    D = vol.shape[-1]
    star_path = stack_path = None
    if out is not None:
        star_path = pathlib.Path(out)
        if star_path.suffix.lower() != ".star":
            fail(fn, f"out must be the path of a .star file (the stack is written next to it), got {str(out)!r}")
        stack_path = star_path.with_suffix(".mrcs")
    if keep_images is None:
        keep_images = out is None or N * D * D * 4 <= (1 << 30)
    elif out is None and not keep_images:
        fail(fn, "keep_images=False needs out= (otherwise the images would be lost)")

    # ground truth, drawn up front (O(N) memory, small)
    R, labels = _viewing(fn, viewing, N, gen)
    t = (s_std / px) * torch.randn(N, 2, generator=gen, dtype=torch.float64) if s_std > 0 else \
        torch.zeros(N, 2, dtype=torch.float64)
    if isinstance(ctf, CTFParams):
        if len(ctf) != N:
            fail(fn, f"ctf must have {N} entries (one per image), got {len(ctf)}")
        ctf_p = ctf
        px = float(ctf.pixel_size[0])
        if not bool((ctf.pixel_size == ctf.pixel_size[0]).all()):
            fail(fn, "ctf must have one pixel size for all images")
    elif ctf is True:
        ctf_p = sample_ctf_params(N, pixel_size=px, defocus_median=defocus_median, defocus_log_std=defocus_log_std,
                                  astigmatism_std=astigmatism_std, voltage=voltage, cs=cs,
                                  amplitude_contrast=amplitude_contrast, phase_shift=phase_shift, b_factor=b_factor,
                                  generator=gen)
    elif ctf is False or ctf is None:
        ctf_p = None
    else:
        fail(fn, f"ctf must be True, False or a CTFParams, got {type(ctf).__name__}", TypeError)
    R32 = R.to(vol.dtype)
    t32 = t.to(vol.dtype)

    proj = Projector(vol, pad=pad)
    images = torch.empty((N, D, D), dtype=vol.dtype) if keep_images else None
    sigma_used = fixed_sigma if fixed_sigma is not None else 0.0
    power = float("nan")

    writer = None
    if stack_path is not None:
        from ..io.mrc import MRCStackWriter  # noqa: PLC0415

        writer = MRCStackWriter(stack_path, N, D, voxel_size=px)
        writer.__enter__()
    try:
        from tqdm.auto import tqdm  # noqa: PLC0415

        with torch.no_grad(), tqdm(total=N, desc="simulate", unit="img", disable=not verbose) as bar:
            for s in range(0, N, chunk_size):
                e = min(N, s + chunk_size)
                c = ctf_p[s:e] if ctf_p is not None else None
                clean = proj(R32[s:e].to(vol.device), t32[s:e].to(vol.device), c)
                if s == 0:
                    power = float(clean.to(torch.float64).pow(2).mean())
                    if fixed_sigma is None and target_snr != math.inf:
                        if power == 0:
                            fail(fn, "the clean images are all zero: no SNR can be defined (give sigma)")
                        sigma_used = math.sqrt(power / target_snr)
                if sigma_used > 0:
                    noise = torch.randn(clean.shape, generator=gen, dtype=clean.dtype)
                    clean = clean + sigma_used * noise.to(clean.device)
                clean = clean.cpu()
                if images is not None:
                    images[s:e] = clean
                if writer is not None:
                    writer.write(s, clean.numpy())
                bar.update(e - s)
    except BaseException as exc:
        if writer is not None:
            writer.__exit__(type(exc), exc, None)
        raise
    if writer is not None:
        writer.__exit__(None, None, None)
    if star_path is not None:
        from ..io.star import make_particle_table, write_star  # noqa: PLC0415

        names = [f"{i + 1:06d}@{stack_path.name}" for i in range(N)]
        table = make_particle_table(names, rotations=R, shifts=t, ctf=ctf_p, pixel_size=px, image_size=D)
        try:
            write_star(star_path, table)
        except BaseException:
            stack_path.unlink(missing_ok=True)
            raise
    snr_out = target_snr if fixed_sigma is None else (power / fixed_sigma ** 2 if fixed_sigma > 0 else math.inf)
    return SimulatedParticles(images=images, rotations=R32, shifts=t32, ctf=ctf_p, pixel_size=px, sigma=sigma_used,
                              signal_power=power, snr=snr_out, labels=labels, star_path=star_path,
                              stack_path=stack_path)
