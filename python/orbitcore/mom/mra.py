"""Method of moments with a neural-network prior for multireference alignment (seeds/000 §3.1,
§4.1, §5.1, appendix A.1).

The model (eq. 23): a real signal ``v`` on ``n`` points and a density ``ρ`` on the ``n`` cyclic
shifts; observations ``v_j = s_j ∘ v + ε_j``, ``s_j ~ ρ``, ``ε_j ~ N(0, σ² I_n)``, where
``(s ∘ v)(x) = v(x − s)`` moves the content by ``+s`` samples.

Conventions (ARCHITECTURE.md). Arrays are indexed with the origin at ``n // 2``: ``v[i]`` is
the sample at ``x = (i − n//2) / n`` of ``I = [−1/2, 1/2)`` (the grid ``X_1``), ``rho[i]`` the
probability of the shift ``s = i − n//2`` samples. Spectra are the library's centred,
*unnormalised* DFT ``v̂ = fft1c(v)`` (``v̂(k) = Σ_x v(x) e^{−2πi k x / n}``, DC at index
``n // 2``, frequency ``k = i − n//2``), so ``F(s ∘ v)(k) = e^{−2πi k s / n} v̂(k)``.

How the paper's moments map to ours. The paper's ``F`` is unitary (``F^*F = I``), ours is
``√n`` times that. Every moment here is in our convention:

* eq. 24 (data): ``M̂1 = (1/N) Σ_j F v_j``, ``M̂2 = (1/N) Σ_j (F v_j)(F v_j)^* − n σ² I``;
* eq. 15 (population): ``M1(k) = v̂(k) ρ̂(k)``, ``M2(k1, k2) = v̂(k1) ρ̂(k1 − k2) v̂(k2)^*`` with
  ``ρ̂ = fft1c(ρ)`` (frequencies mod n);
* eq. 25 (model): ``M1 = Σ_j ρ_j S_j``, ``M2 = Σ_j ρ_j S_j S_j^*``,
  ``S_j = e^{−2πi K s_j / n} ⊙ v̂``;

and the paper's moments are ``M1 / √n``, ``M2 / n``. The relative errors (eqs. 21, 22) do not
depend on the normalisation; the loss (eq. 26) does, through λ, so :func:`reconstruction_loss`
evaluates it **in the paper's normalisation** (it rescales before calling the kernel): a λ
here is the paper's λ.

Pipeline (Fig. 1): moments → encoder ``ξ_θ = (ξ^v_θ, ξ^ρ_θ)`` (:class:`MRAEncoder`) →
``(z_v, z_ρ)`` → model moments (eq. 25) → loss (eq. 26).

* Supervised phase (§5.1.1): :class:`SupervisedTrainer` / :func:`train_supervised` — pairs
  ``(M1, M2) → (ρ, v)`` made on the fly from the generators (noise-free moments, eq. 15), loss
  the orbit-invariant error (eq. 21), learning rates 1e-4, 1e-5, 1e-6 in equal thirds,
  checkpoints with exact resume.
* Reconstruction phase (§5.1.2): :func:`reconstruct` — align the encoder's outputs to the
  data moments over the relative shift, then refine θ on eq. 26 (kernel-backed loss); with
  ``encoder=None`` from a randomly initialised encoder.
* Classical baseline: :func:`fit_moments_classical` — optimise ``v`` and softmax logits of
  ``ρ`` directly on eq. 26 from random starts, keep the best of several restarts.
"""
from __future__ import annotations

import copy
import math
import pathlib
from dataclasses import asdict, dataclass, field
from typing import Iterable, Iterator

import torch

from .. import fourier
from .._validate import check_float, check_int, check_path, fail, real_array, to_tensor
from ..io import atomic_path
from ..metrics.errors import moment_relative_error, mra_relative_error
from . import _moments
from .mra_encoder import MomentCNN, MRAEncoder, moment_features

__all__ = [
    # conventions and data model
    "shifts", "grid", "gaussian_mixture", "random_signals", "random_densities", "random_instances",
    "shift_signals", "sample_observations", "iter_observations",
    # moments
    "population_moments", "shift_slices", "model_moments", "data_moments", "simulate_moments",
    # losses and errors
    "reconstruction_loss", "orbit_error", "continuous_orbit_error", "instance_errors", "trivial_errors",
    # encoders
    "MomentCNN", "MRAEncoder", "moment_features",
    # supervised phase
    "TrainConfig", "SupervisedTrainer", "train_supervised", "load_encoder", "learning_rate",
    # reconstruction phase and baseline
    "Reconstruction", "align_to_moments", "reconstruct", "fit_moments_classical",
]


# ================================================================================================
# Helpers: validation
# ================================================================================================
def _generator(fn: str, generator) -> torch.Generator | None:
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, int) and not isinstance(generator, bool):
        return torch.Generator().manual_seed(generator)
    fail(fn, f"generator must be a torch.Generator, an integer seed or None, got {type(generator).__name__}",
         TypeError)


def _real(fn: str, name: str, x, *, ndim: tuple[int, ...] = (1,), layout: str = "(n,)") -> torch.Tensor:
    t, _ = to_tensor(x, fn, name)
    if t.is_complex() or not t.is_floating_point():
        fail(fn, f"{name} must be a real floating-point array {layout}, got {t.dtype}", TypeError)
    if t.dim() not in ndim:
        fail(fn, f"{name} must have shape {layout}, got {tuple(t.shape)}")
    if t.shape[-1] < 2:
        fail(fn, f"{name} must have at least 2 points on its last axis, got {tuple(t.shape)}")
    if not bool(torch.isfinite(t.detach()).all()):
        fail(fn, f"{name} must be finite, got NaN or inf values")
    return t


def _real_batch(fn: str, name: str, x) -> torch.Tensor:
    """A real ``(..., n)`` array as a tensor (any batch shape)."""
    t = real_array(fn, name, x)
    if t.dim() < 1:
        fail(fn, f"{name} must have shape (..., n), got {tuple(t.shape)}")
    return t


def _density(fn: str, name: str, rho, n: int | None = None, *, ndim: tuple[int, ...] = (1,),
             layout: str = "(n,)", atol: float = 1e-6) -> torch.Tensor:
    r = _real(fn, name, rho, ndim=ndim, layout=layout)
    if n is not None and r.shape[-1] != n:
        fail(fn, f"{name} must have n = {n} points to match the signal, got {tuple(r.shape)}")
    rd = r.detach()
    if bool((rd < 0).any()):
        fail(fn, f"{name} must be a probability vector (non-negative), got a minimum of {float(rd.min()):.3g}")
    s = rd.sum(-1)
    if bool(((s - 1).abs() > atol * max(1.0, r.shape[-1] ** 0.5)).any()):
        fail(fn, f"{name} must sum to 1 (a density on the n shifts), got sums in "
                 f"[{float(s.min()):.6g}, {float(s.max()):.6g}]")
    return r


def _moments_in(fn: str, M1_hat, M2_hat) -> tuple[torch.Tensor, torch.Tensor]:
    M1, _ = to_tensor(M1_hat, fn, "M1_hat")
    M2, _ = to_tensor(M2_hat, fn, "M2_hat")
    if not M1.is_complex() or not M2.is_complex():
        fail(fn, f"M1_hat and M2_hat must be complex Fourier moments, got {M1.dtype} and {M2.dtype}", TypeError)
    if M1.dim() != 1 or M2.dim() != 2 or tuple(M2.shape) != (M1.shape[0], M1.shape[0]):
        fail(fn, f"M1_hat must be (n,) and M2_hat (n, n), got {tuple(M1.shape)} and {tuple(M2.shape)}")
    if M1.shape[0] < 2:
        fail(fn, f"the moments must have n >= 2 frequencies, got n = {M1.shape[0]}")
    for name, t in (("M1_hat", M1), ("M2_hat", M2)):
        if not bool(torch.isfinite(torch.view_as_real(t)).all()):
            fail(fn, f"{name} must be finite, got NaN or inf values")
    return M1, M2


# ================================================================================================
# Conventions and the data model (eq. 23); generators (§5.1.1)
# ================================================================================================
def shifts(n: int) -> torch.Tensor:
    """int64 ``(n,)``: the shift ``s = i − n//2`` (samples) that ``rho[i]`` weights."""
    n = check_int("shifts", "n", n, minimum=1)
    return torch.arange(n) - n // 2


def grid(n: int, *, dtype=torch.float64) -> torch.Tensor:
    """``X_1``: the ``n`` sample positions ``(i − n//2) / n`` on ``I = [−1/2, 1/2)``."""
    n = check_int("grid", "n", n, minimum=1)
    return (torch.arange(n, dtype=dtype) - n // 2) / n


def gaussian_mixture(n: int, k: int, batch: int = 1, *, widths=(0.03, 0.08), weights=(0.5, 1.5),
                     normalize: bool = False, generator=None, dtype=torch.float64) -> torch.Tensor:
    """``batch`` mixtures of ``k`` periodic Gaussians on the circle ``I``, sampled on ``X_1``.

    ``f(x) = Σ_{i<k} a_i Σ_{m∈Z} exp(−(x − μ_i − m)² / (2 w_i²))`` with centres
    ``μ_i ~ U[−1/2, 1/2)``, widths ``w_i ~ U[widths]`` (fractions of the period) and weights
    ``a_i ~ U[weights]``, all independent. The images ``m`` with ``|m| <= 3`` are summed (the
    rest is below 1e-300 for widths up to 0.15). ``normalize=True`` rescales each mixture to
    sum to 1 over the grid (a density on ``X_1``).

    Returns:
        real ``(batch, n)``.
    """
    return _gaussian_mixture("gaussian_mixture", n, k, batch, widths, weights, normalize, generator, dtype)


def _gaussian_mixture(fn: str, n, k, batch, widths, weights, normalize, generator, dtype) -> torch.Tensor:
    """:func:`gaussian_mixture`, errors naming ``fn``."""
    n = check_int(fn, "n", n, minimum=2)
    k = check_int(fn, "k", k, minimum=1)
    batch = check_int(fn, "batch", batch, minimum=1)
    wlo, whi = (check_float(fn, "widths", w, positive=True) for w in widths)
    alo, ahi = (check_float(fn, "weights", a, positive=True) for a in weights)
    if whi < wlo or ahi < alo:
        fail(fn, f"widths and weights must be (low, high) ranges, got {tuple(widths)} and {tuple(weights)}")
    if whi > 0.15:
        fail(fn, f"widths must be <= 0.15 of the period (periodic images beyond |m| = 3 are dropped), got {whi}")
    gen = _generator(fn, generator)
    u = torch.rand(3, batch, k, generator=gen, dtype=torch.float64)
    mu = u[0] - 0.5
    w = wlo + (whi - wlo) * u[1]
    a = alo + (ahi - alo) * u[2]
    x = grid(n)
    m = torch.arange(-3, 4, dtype=torch.float64)
    d = x[None, None, :, None] - mu[:, :, None, None] - m  # (batch, k, n, images)
    g = torch.exp(-0.5 * (d / w[:, :, None, None]).square()).sum(-1)
    f = (a[:, :, None] * g).sum(1)
    if normalize:
        f = f / f.sum(-1, keepdim=True)
    return f.to(dtype)


def random_signals(n: int, k: int, batch: int = 1, *, generator=None, dtype=torch.float64,
                   widths=(0.03, 0.08), amplitudes=(0.5, 1.5)) -> torch.Tensor:
    """Signals ``v``: mixtures of ``k`` Gaussians with widths ``U[widths]`` (period units) and
    amplitudes ``U[amplitudes]`` (peak heights in data units). Real ``(batch, n)``."""
    return _gaussian_mixture("random_signals", n, k, batch, widths, amplitudes, False, generator, dtype)


def random_densities(n: int, k: int, batch: int = 1, *, generator=None, dtype=torch.float64,
                     widths=(0.04, 0.12), weights=(0.5, 1.5)) -> torch.Tensor:
    """Densities ``ρ`` on the shifts: normalised mixtures of ``k`` Gaussians (``(batch, n)``,
    non-negative, each row sums to 1)."""
    return _gaussian_mixture("random_densities", n, k, batch, widths, weights, True, generator, dtype)


def random_instances(n: int, k: int, batch: int = 1, *, generator=None, dtype=torch.float64
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(v, rho)``, each ``(batch, n)``: the §5.1.1 family with ``k`` Gaussians for both."""
    fn = "random_instances"
    for name, value, minimum in (("n", n, 2), ("k", k, 1), ("batch", batch, 1)):
        check_int(fn, name, value, minimum=minimum)
    gen = _generator(fn, generator)
    v = random_signals(n, k, batch, generator=gen, dtype=dtype)
    rho = random_densities(n, k, batch, generator=gen, dtype=dtype)
    return v, rho


def shift_signals(v: torch.Tensor, s) -> torch.Tensor:
    """``(s ∘ v)(x) = v(x − s)``: circular shifts by integer ``s`` (samples; content moves by
    ``+s``). ``v`` ``(n,)`` with ``s`` of any shape gives ``(*s.shape, n)``; ``v`` ``(B, n)``
    with ``s`` ``(B,)`` shifts row by row."""
    fn = "shift_signals"
    v = _real(fn, "v", v, ndim=(1, 2), layout="(n,) or (B, n)")
    s, _ = to_tensor(s, fn, "s")
    if s.is_floating_point() or s.is_complex():
        fail(fn, f"s must hold integer shifts, got {s.dtype}", TypeError)
    n = v.shape[-1]
    if v.dim() == 2 and tuple(s.shape) != (v.shape[0],):
        fail(fn, f"s must have shape ({v.shape[0]},) to shift the rows of v {tuple(v.shape)}, got {tuple(s.shape)}")
    idx = (torch.arange(n, device=v.device) - s.to(v.device)[..., None]) % n
    if v.dim() == 1:
        return v[idx]
    return torch.gather(v, 1, idx)


def _sample_batch(v: torch.Tensor, rho: torch.Tensor, B: int, sigma: float, gen) -> torch.Tensor:
    j = torch.multinomial(rho.to(torch.float64), B, replacement=True, generator=gen)
    s = j - v.shape[-1] // 2
    x = shift_signals(v, s)
    if sigma > 0:
        x = x + sigma * torch.randn(x.shape, generator=gen, dtype=x.dtype)
    return x


def sample_observations(v, rho, N: int, sigma: float, *, generator=None) -> torch.Tensor:
    """Eq. 23: ``N`` observations ``v_j = s_j ∘ v + ε_j`` (``(N, n)``, v's dtype), ``s_j ~ ρ``,
    ``ε_j ~ N(0, σ² I)``. For large N use :func:`iter_observations` (streams batches)."""
    fn = "sample_observations"
    v = _real(fn, "v", v)
    rho = _density(fn, "rho", rho, v.shape[0])
    N = check_int(fn, "N", N, minimum=1)
    sigma = check_float(fn, "sigma", sigma, minimum=0.0)
    return _sample_batch(v, rho, N, sigma, _generator(fn, generator))


def iter_observations(v, rho, N: int, sigma: float, *, batch_size: int = 65536, generator=None
                      ) -> Iterator[torch.Tensor]:
    """Eq. 23 streamed: batches ``(≤ batch_size, n)`` of observations, ``N`` in all."""
    fn = "iter_observations"
    v = _real(fn, "v", v)
    rho = _density(fn, "rho", rho, v.shape[0])
    N = check_int(fn, "N", N, minimum=1)
    sigma = check_float(fn, "sigma", sigma, minimum=0.0)
    batch_size = check_int(fn, "batch_size", batch_size, minimum=1)
    gen = _generator(fn, generator)

    def it():
        done = 0
        while done < N:
            B = min(batch_size, N - done)
            yield _sample_batch(v, rho, B, sigma, gen)
            done += B

    return it()


# ================================================================================================
# Moments: eq. 15 (closed form), eq. 25 (model, kernel-backed), eq. 24 (data, streamed)
# ================================================================================================
def population_moments(v, rho) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise-free moments in closed form (eq. 15, batched):
    ``M1(k) = v̂(k) ρ̂(k)``, ``M2(k1, k2) = v̂(k1) ρ̂(k1 − k2) v̂(k2)^*``.

    Args:
        v: real ``(..., n)`` signals; rho: ``(..., n)`` densities on the shifts.

    Returns:
        complex ``M1 (..., n)``, ``M2 (..., n, n)`` in the library's convention (unnormalised
        centred DFT; the paper's are ``M1/√n``, ``M2/n``). Differentiable.
    """
    fn = "population_moments"
    v = _real(fn, "v", v, ndim=(1, 2), layout="(n,) or (B, n)")
    rho = _density(fn, "rho", rho, v.shape[-1], ndim=(1, 2), layout="(n,) or (B, n)")
    n = v.shape[-1]
    vh = fourier.fft1c(v)
    rh = fourier.fft1c(rho.to(v.dtype))
    c = n // 2
    i = torch.arange(n, device=v.device)
    diff = (i[:, None] - i[None, :] + c) % n  # centred index of the frequency k1 − k2 (mod n)
    M1 = vh * rh
    M2 = vh[..., :, None] * rh[..., diff] * vh.conj()[..., None, :]
    return M1, M2


def shift_slices(v: torch.Tensor) -> torch.Tensor:
    """Eq. 25's ``S_j = F(s_j ∘ v) = e^{−2πi K s_j / n} ⊙ v̂`` for the ``n`` shifts
    ``s_j = j − n//2``: complex ``(n, n)`` (row j), from a real signal ``(n,)``. Differentiable."""
    real_array("shift_slices", "v", v, floating=True, torch_only=True)
    if v.dim() != 1:
        fail("shift_slices", f"v must be a signal (n,), got {tuple(v.shape)}")
    n = v.shape[-1]
    k = (torch.arange(n, device=v.device) - n // 2).to(torch.float64)
    ang = (-2.0 * math.pi / n) * torch.outer(k, k)  # shifts and frequencies share the centred index
    cdt = torch.complex128 if v.dtype == torch.float64 else torch.complex64
    E = torch.polar(torch.ones_like(ang), ang).to(cdt)
    return E * fourier.fft1c(v).to(cdt)[None, :]


def model_moments(v, rho) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 25 through the moment kernel: ``M1 = Σ_j ρ_j S_j``, ``M2 = Σ_j ρ_j S_j S_j^*`` for a
    real signal ``v`` ``(n,)`` and density ``rho`` ``(n,)``. Library convention; differentiable."""
    fn = "model_moments"
    v = _real(fn, "v", v)
    rho = _density(fn, "rho", rho, v.shape[0])
    return _moments.model_moments(shift_slices(v), rho.to(v.dtype))


def data_moments(batches: Iterable, n: int, sigma: float, *, total: int | None = None,
                 verbose: bool = False) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Eq. 24 from observations streamed in batches through the moment accumulator.

    Args:
        batches: iterable of real ``(B, n)`` arrays (torch or NumPy); any batch sizes.
        n: signal length.
        sigma: known noise standard deviation (per sample); ``n σ²`` is removed from M̂2's
            diagonal (our unnormalised DFT; the paper's ``σ² I`` for its unitary F).
        total: number of observations, for the progress bar only.

    Returns:
        ``(M1_hat (n,), M2_hat (n, n), N)``, complex128; memory independent of N.
    """
    from tqdm.auto import tqdm  # noqa: PLC0415

    fn = "data_moments"
    n = check_int(fn, "n", n, minimum=2)
    sigma = check_float(fn, "sigma", sigma, minimum=0.0)
    acc = _moments.accumulator(n, sigma * sigma)
    with tqdm(total=total, unit="obs", unit_scale=True, desc="moments", disable=not verbose) as bar:
        for b in batches:
            x, _ = to_tensor(b, fn, "batch")
            if x.is_complex() or not x.is_floating_point():
                fail(fn, f"batches must be real floating-point observations, got {x.dtype}", TypeError)
            if x.dim() != 2 or x.shape[-1] != n:
                fail(fn, f"batches must have shape (B, n) with n = {n}, got {tuple(x.shape)}")
            acc.update(x)
            bar.update(x.shape[0])
    if acc.count == 0:
        fail(fn, "no observations were given")
    M1, M2 = acc.result()
    return M1, M2, acc.count


def simulate_moments(v, rho, N: int, sigma: float, *, batch_size: int = 65536, generator=None,
                     verbose: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Eqs. 23 + 24: draw ``N`` observations in batches and accumulate their debiased moments
    without ever holding them all (``10⁶`` observations is routine). Returns complex128
    ``(M1_hat (n,), M2_hat (n, n))``."""
    fn = "simulate_moments"
    v = _real(fn, "v", v)
    it = iter_observations(v, rho, N, sigma, batch_size=batch_size, generator=_generator(fn, generator))
    M1, M2, _ = data_moments(it, v.shape[0], sigma, total=N, verbose=verbose)
    return M1, M2


# ================================================================================================
# Loss (eq. 26) and errors (eqs. 21, 22)
# ================================================================================================
# The kernel's real-basis path (slices of real signals) has a fixed cost of several ms per call
# that only pays off for long signals: measured forward + backward, one thread, q = m = n:
# n = 64: 1.6 ms plain complex path vs 15 ms real basis; n = 256: 38 ms vs 29 ms.
_HERMITIAN_FROM = 256


def reconstruction_loss(M1_hat, M2_hat, v, rho, lam: float = 1.0) -> torch.Tensor:
    """Eq. 26, ``‖M̂1 − M1[v, ρ]‖_F + λ ‖M̂2 − M2[v, ρ]‖_F``, in the paper's unitary
    normalisation (moments ``/√n`` and ``/n``; see the module docstring), through the
    kernel-backed ``moment_loss`` with the model moments of eq. 25.

    Args:
        M1_hat, M2_hat: complex ``(n,)``, ``(n, n)`` data moments (library convention).
        v: real ``(n,)`` signal (real space); rho: ``(n,)`` density on the shifts (e.g. a
            softmax). Gradients flow to both.
        lam: λ >= 0.

    Returns:
        0-d tensor in v's real dtype.
    """
    fn = "reconstruction_loss"
    M1, M2 = _moments_in(fn, M1_hat, M2_hat)
    v = _real(fn, "v", v)
    n = v.shape[0]
    if M1.shape[0] != n:
        fail(fn, f"v must have n = {M1.shape[0]} points to match the moments, got {tuple(v.shape)}")
    rho = _density(fn, "rho", rho, n, atol=1e-4)
    lam = check_float(fn, "lam", lam, minimum=0.0)
    S = shift_slices(v) / math.sqrt(n)
    cdt = S.dtype
    M1, M2 = M1.to(device=v.device, dtype=cdt), M2.to(device=v.device, dtype=cdt)
    return _moments.moment_loss(M1 / math.sqrt(n), M2 / n, S, rho.to(v.dtype), lam,
                                hermitian=n >= _HERMITIAN_FROM)


def orbit_error(estimate: torch.Tensor, truth: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Eq. 21 as a differentiable training loss: ``min_s ‖s ∘ truth − estimate‖ / ‖truth‖`` for
    batches ``(B, n)`` (gradient w.r.t. ``estimate`` through the minimising shift).
    :func:`orbitcore.metrics.mra_relative_error` is the float64 yardstick."""
    fn = "orbit_error"
    real_array(fn, "estimate", estimate, floating=True, torch_only=True)
    real_array(fn, "truth", truth, floating=True, torch_only=True)
    if estimate.dim() < 1 or truth.dim() < 1 or estimate.shape[-1] != truth.shape[-1]:
        fail(fn, f"estimate and truth must have the same last axis (n), got {tuple(estimate.shape)} and "
                 f"{tuple(truth.shape)}")
    n = estimate.shape[-1]
    corr = torch.fft.irfft(torch.fft.rfft(estimate, dim=-1) * torch.fft.rfft(truth, dim=-1).conj(), n=n, dim=-1)
    nt = truth.square().sum(-1)
    d2 = nt + estimate.square().sum(-1) - 2.0 * corr.amax(-1)
    return torch.sqrt(d2.clamp_min(eps * nt) / nt)


@torch.no_grad()
def continuous_orbit_error(estimate, truth, *, upsample: int = 32) -> torch.Tensor:
    """Eq. 21 with the infimum over *continuous* shifts (a diagnostic, float64):
    ``min_s ‖s ∘ truth − estimate‖ / ‖truth‖`` where ``s ∘`` is the band-limited shift
    (``F(s ∘ v)(k) = e^{−2πi k s / n} v̂(k)``, real part for the Nyquist term of even n),
    searched on the grid ``s ∈ {0, 1/upsample, 2/upsample, …}`` samples (integers included, so
    it never exceeds eq. 21 on ``X_1``).

    Why it is reported besides eq. 21: the moments are invariant under
    ``(s ∘ v, (−s) ∘ ρ)`` for every real ``s`` (eq. 15: the phases cancel), and for a smooth
    density ``(−s) ∘ ρ`` is again (to rounding) a density on the grid. So the data fix ``v`` and
    ``ρ`` only up to sub-sample shifts, which eq. 21 on the grid counts as error. (For even n
    the Nyquist coefficient of a real signal cannot be shifted by a fraction of a sample; its
    share of the energy, tiny for resolved signals, stays in the error.)

    Args:
        estimate, truth: real ``(..., n)``. Returns ``(...)`` float64 errors.
    """
    fn = "continuous_orbit_error"
    u = _real(fn, "estimate", estimate, ndim=(1, 2), layout="(n,) or (B, n)").double()
    v = _real(fn, "truth", truth, ndim=(1, 2), layout="(n,) or (B, n)").to(device=u.device, dtype=torch.float64)
    upsample = check_int(fn, "upsample", upsample, minimum=1)
    if u.shape[-1] != v.shape[-1]:
        fail(fn, f"estimate and truth must have the same n, got {tuple(u.shape)} and {tuple(v.shape)}")
    n = v.shape[-1]
    nv = v.square().sum(-1)
    if bool((nv == 0).any()):
        fail(fn, "truth must not be zero (the error is relative to ‖truth‖)")
    Fv = torch.fft.fft(v, dim=-1)
    P = Fv * torch.fft.fft(u, dim=-1).conj()                          # uncentred, k = 0, 1, …, −1
    L = n * upsample
    pad = P.new_zeros(*P.shape[:-1], L)
    h = (n + 1) // 2                                                 # k = 0 … h−1 and −(n−h) … −1
    pad[..., :h] = P[..., :h]
    pad[..., L - (n - h):] = P[..., h:]
    corr = torch.fft.fft(pad, dim=-1).real / n   # corr[j] = Σ_x (s∘v)(x) u(x), s = j / upsample
    ns = nv[..., None].expand_as(corr)           # ‖s∘v‖²: ‖v‖², less the lost Nyquist share (even n)
    if n % 2 == 0:
        sj = torch.arange(L, dtype=torch.float64, device=u.device) / upsample
        ns = ns - torch.sin(math.pi * sj).square() * Fv[..., n // 2, None].real.square() / n
    # the expansion ‖s∘v‖² + ‖u‖² − 2⟨s∘v, u⟩ picks the best grid shift; the distance itself is
    # then computed directly, as ‖s∘v − u‖: the expansion cancels to ~1e-16 ‖v‖², i.e. a floor of
    # ~1e-8 on the returned (square-rooted) error, which hid exact matches
    j = (ns + u.square().sum(-1, keepdim=True) - 2.0 * corr).argmin(-1, keepdim=True)
    s = j.to(torch.float64) / upsample                                # (..., 1) samples
    k = torch.fft.fftfreq(n, d=1.0 / n, dtype=torch.float64, device=u.device)  # 0, 1, …, −1
    sv = torch.fft.ifft(Fv * torch.exp(-2j * math.pi * k * s / n), dim=-1).real   # .real: even n's Nyquist rule
    return torch.sqrt((sv - u).square().sum(-1) / nv)


def instance_errors(v_est, rho_est, v, rho, *, continuous: bool = False) -> dict:
    """Eq. 21 errors of an estimate: ``{"v": …, "rho": …}`` (floats, or lists for batches);
    with ``continuous=True`` also ``"v_continuous"``, ``"rho_continuous"``
    (:func:`continuous_orbit_error`)."""
    fn = "instance_errors"
    v_est, rho_est, v, rho = (_real_batch(fn, name, x) for name, x in
                              (("v_est", v_est), ("rho_est", rho_est), ("v", v), ("rho", rho)))
    for (a, ta), (b, tb) in ((("v_est", v_est), ("v", v)), (("rho_est", rho_est), ("rho", rho))):
        if ta.shape[-1] != tb.shape[-1]:
            fail(fn, f"{a} and {b} must have the same n, got {tuple(ta.shape)} and {tuple(tb.shape)}")
    ev = mra_relative_error(v_est, v)
    er = mra_relative_error(rho_est, rho)
    conv = (lambda t: float(t)) if ev.dim() == 0 else (lambda t: t.tolist())
    out = {"v": conv(ev), "rho": conv(er)}
    if continuous:
        out["v_continuous"] = conv(continuous_orbit_error(v_est, v))
        out["rho_continuous"] = conv(continuous_orbit_error(rho_est, rho))
    return out


def trivial_errors(v, rho) -> dict:
    """Eq. 21 errors of the trivial predictor that knows nothing but the first moment's DC
    term: the constant signal with v's mean and the uniform density. Batched like
    :func:`instance_errors`; the yardstick a learned encoder must beat."""
    v = _real_batch("trivial_errors", "v", v).to(torch.float64)
    rho = _real_batch("trivial_errors", "rho", rho).to(torch.float64)
    return instance_errors(v.mean(-1, keepdim=True).expand_as(v), torch.full_like(rho, 1.0 / rho.shape[-1]),
                           v, rho)


# ================================================================================================
# Supervised phase (§5.1.1)
# ================================================================================================
@dataclass
class TrainConfig:
    """Settings of the supervised phase (all saved in checkpoints).

    Attributes:
        n: signal length; n_gaussians: Gaussians per signal and per density (§5.1.1).
        epochs: passes over the training pairs (or ``steps_per_epoch`` fresh batches).
        batch_size: pairs per optimiser step.
        train_size: number of training pairs (a fixed set drawn from ``seed``; the paper's
            1.75 M); ``None`` draws fresh pairs for every step (infinite data).
        steps_per_epoch: steps of an epoch when ``train_size`` is None.
        test_size: held-out pairs (a disjoint random stream) for the test error.
        lrs: Adam learning rates of the three equal thirds of the epochs (paper: 1e-4, 1e-5,
            1e-6).
        seed: seeds the training set, the test set, the initialisation and the shuffling.
        dtype: ``"float32"`` or ``"float64"`` for the network.
        encoder: keyword arguments of :class:`MomentCNN` (channels, window, ...).
    """

    n: int = 32
    n_gaussians: int = 2
    epochs: int = 30
    batch_size: int = 64
    train_size: int | None = 4096
    steps_per_epoch: int = 100
    test_size: int = 1024
    lrs: tuple = (1e-4, 1e-5, 1e-6)
    seed: int = 0
    dtype: str = "float32"
    encoder: dict = field(default_factory=dict)

    def validate(self) -> "TrainConfig":
        fn = "TrainConfig"
        check_int(fn, "n", self.n, minimum=2)
        check_int(fn, "n_gaussians", self.n_gaussians, minimum=1)
        check_int(fn, "epochs", self.epochs, minimum=1)
        check_int(fn, "batch_size", self.batch_size, minimum=1)
        if self.train_size is not None:
            check_int(fn, "train_size", self.train_size, minimum=1)
        check_int(fn, "steps_per_epoch", self.steps_per_epoch, minimum=1)
        check_int(fn, "test_size", self.test_size, minimum=1)
        check_int(fn, "seed", self.seed, minimum=0)
        if len(tuple(self.lrs)) != 3:
            fail(fn, f"lrs must hold 3 learning rates (one per third of the epochs), got {self.lrs!r}")
        for lr in self.lrs:
            check_float(fn, "lrs", lr, positive=True)
        if self.dtype not in ("float32", "float64"):
            fail(fn, f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        if not isinstance(self.encoder, dict):
            fail(fn, f"encoder must be a dict of MomentCNN arguments, got {type(self.encoder).__name__}", TypeError)
        return self


def learning_rate(epoch: int, epochs: int, lrs=(1e-4, 1e-5, 1e-6)) -> float:
    """The paper's schedule: ``lrs[0]`` for the first third of the epochs, ``lrs[1]`` for the
    second, ``lrs[2]`` for the last (epoch counted from 0; thirds by ``3·epoch // epochs``)."""
    fn = "learning_rate"
    epoch = check_int(fn, "epoch", epoch, minimum=0)
    epochs = check_int(fn, "epochs", epochs, minimum=0)
    if not isinstance(lrs, (tuple, list)):
        fail(fn, f"lrs must be a tuple or list of 3 learning rates, got {type(lrs).__name__}", TypeError)
    if len(lrs) != 3:
        fail(fn, f"lrs must hold 3 learning rates (one per third of the epochs), got {lrs!r}")
    return check_float(fn, "lrs", lrs[min(3 * epoch // max(epochs, 1), 2)], positive=True)


def _seeded_encoder(n: int, seed: int, dtype: torch.dtype, kwargs: dict) -> MRAEncoder:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        enc = MRAEncoder(n, **kwargs)
    return enc.to(dtype)


class SupervisedTrainer:
    """The supervised phase (§5.1.1) with checkpoints and exact resume.

    Training pairs are made on the fly from the generators: ``(v, ρ)`` from
    :func:`random_instances`, their noise-free moments from eq. 15. The loss is the mean
    orbit-invariant error (eq. 21) of ξ^v plus that of ξ^ρ — the two networks have disjoint
    parameters, so one Adam on the sum is the paper's two separate trainings on the same
    batches. Learning rate by :func:`learning_rate`.

    Use :meth:`run` (optionally with a checkpoint path), :meth:`save` / :meth:`load`,
    :meth:`evaluate`. A checkpoint holds the config, the model, the optimiser, the RNG states
    and the epoch: loading it and training on gives bit-for-bit the run that was not
    interrupted (same thread count).
    """

    def __init__(self, config: TrainConfig):
        if not isinstance(config, TrainConfig):
            fail("SupervisedTrainer", f"config must be a TrainConfig, got {type(config).__name__}", TypeError)
        self.config = cfg = config.validate()
        self.dtype = torch.float32 if cfg.dtype == "float32" else torch.float64
        self.encoder = _seeded_encoder(cfg.n, cfg.seed, self.dtype, cfg.encoder)
        self.optimizer = torch.optim.Adam(self.encoder.parameters(), lr=learning_rate(0, cfg.epochs, cfg.lrs),
                                          foreach=True)
        self.epoch = 0
        self.history: list[dict] = []
        # independent streams: training set, test set, per-step randomness (shuffles, fresh data)
        self._step_gen = torch.Generator().manual_seed(cfg.seed * 3 + 2)
        self._train = None
        if cfg.train_size is not None:
            self._train = random_instances(cfg.n, cfg.n_gaussians, cfg.train_size,
                                           generator=torch.Generator().manual_seed(cfg.seed * 3))
        self._test = random_instances(cfg.n, cfg.n_gaussians, cfg.test_size,
                                      generator=torch.Generator().manual_seed(cfg.seed * 3 + 1))

    # -- one step ------------------------------------------------------------------------------
    def _loss(self, v: torch.Tensor, rho: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        M1, M2 = population_moments(v, rho)  # eq. 15, noise-free
        cdt = torch.complex64 if self.dtype == torch.float32 else torch.complex128
        v_est, rho_est = self.encoder(M1.to(cdt), M2.to(cdt))
        ev = orbit_error(v_est, v.to(self.dtype)).mean()
        er = orbit_error(rho_est, rho.to(self.dtype)).mean()
        return ev + er, ev, er

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        cfg = self.config
        if self._train is None:
            for _ in range(cfg.steps_per_epoch):
                yield random_instances(cfg.n, cfg.n_gaussians, cfg.batch_size, generator=self._step_gen)
            return
        perm = torch.randperm(cfg.train_size, generator=self._step_gen)
        for s in range(0, cfg.train_size, cfg.batch_size):
            idx = perm[s:s + cfg.batch_size]
            yield self._train[0][idx], self._train[1][idx]

    def train_epoch(self, verbose: bool = False) -> dict:
        """One epoch at the scheduled learning rate; returns ``{"epoch", "lr", "loss", "v", "rho"}``
        (means of the per-batch eq. 21 errors)."""
        from tqdm.auto import tqdm  # noqa: PLC0415

        cfg = self.config
        lr = learning_rate(self.epoch, cfg.epochs, cfg.lrs)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.encoder.train()
        tot = torch.zeros(3, dtype=torch.float64)
        count = 0
        n_steps = cfg.steps_per_epoch if self._train is None else math.ceil(cfg.train_size / cfg.batch_size)
        for v, rho in tqdm(self._batches(), total=n_steps, desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
                           leave=False, disable=not verbose):
            loss, ev, er = self._loss(v, rho)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            tot += torch.stack([loss.detach(), ev.detach(), er.detach()]).double() * v.shape[0]
            count += v.shape[0]
        self.epoch += 1
        rec = {"epoch": self.epoch, "lr": lr, "loss": float(tot[0] / count), "v": float(tot[1] / count),
               "rho": float(tot[2] / count)}
        self.history.append(rec)
        return rec

    # -- evaluation ----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, split: str = "test", limit: int | None = None, batch_size: int = 512) -> dict:
        """Average eq. 21 errors ``{"v", "rho", "trivial_v", "trivial_rho", "count"}`` of the
        encoder on the ``"test"`` or ``"train"`` pairs (the first ``limit`` of them), float64
        yardstick (:func:`orbitcore.metrics.mra_relative_error`), and the same with continuous
        shifts, ``"v_continuous"``, ``"rho_continuous"`` (:func:`continuous_orbit_error`)."""
        fn = "SupervisedTrainer.evaluate"
        if split not in ("test", "train"):
            fail(fn, f"split must be 'test' or 'train', got {split!r}")
        if split == "train" and self._train is None:
            fail(fn, "split='train' needs a fixed training set (train_size is None: every pair is fresh)")
        v_all, rho_all = self._test if split == "test" else self._train
        if limit is not None:
            v_all, rho_all = v_all[:limit], rho_all[:limit]
        self.encoder.eval()
        cdt = torch.complex64 if self.dtype == torch.float32 else torch.complex128
        sums = torch.zeros(6, dtype=torch.float64)
        for s in range(0, v_all.shape[0], batch_size):
            v, rho = v_all[s:s + batch_size], rho_all[s:s + batch_size]
            M1, M2 = population_moments(v, rho)
            v_est, rho_est = self.encoder(M1.to(cdt), M2.to(cdt))
            sums[0] += mra_relative_error(v_est, v).sum()
            sums[1] += mra_relative_error(rho_est, rho).sum()
            triv = trivial_errors(v, rho)
            sums[2] += sum(triv["v"])
            sums[3] += sum(triv["rho"])
            sums[4] += continuous_orbit_error(v_est, v).sum()
            sums[5] += continuous_orbit_error(rho_est, rho).sum()
        N = v_all.shape[0]
        return {"v": float(sums[0] / N), "rho": float(sums[1] / N), "trivial_v": float(sums[2] / N),
                "trivial_rho": float(sums[3] / N), "v_continuous": float(sums[4] / N),
                "rho_continuous": float(sums[5] / N), "count": int(N)}

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "format": "orbitcore.mom.mra/supervised/1",
            "config": _config_dict(self.config),
            "epoch": self.epoch,
            "model": self.encoder.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": self._step_gen.get_state(),
            "history": list(self.history),
        }

    def save(self, path) -> pathlib.Path:
        """Write a checkpoint atomically (a crash mid-write leaves the previous one intact)."""
        path = pathlib.Path(path)
        with atomic_path(path) as tmp:
            torch.save(self.state_dict(), tmp)
        return path

    @classmethod
    def load(cls, path) -> "SupervisedTrainer":
        """Rebuild a trainer from a checkpoint written by :meth:`save`."""
        state = _read_checkpoint("SupervisedTrainer.load", path)
        trainer = cls(_config_from_dict(state["config"]))
        trainer.encoder.load_state_dict(state["model"])
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer._step_gen.set_state(state["rng"])
        trainer.epoch = int(state["epoch"])
        trainer.history = list(state["history"])
        return trainer

    def run(self, epochs: int | None = None, *, checkpoint=None, checkpoint_every: int = 1,
            verbose: bool = False) -> list[dict]:
        """Train up to epoch ``epochs`` (default ``config.epochs``), writing ``checkpoint`` every
        ``checkpoint_every`` epochs and at the end. Returns the history."""
        from tqdm.auto import tqdm  # noqa: PLC0415

        fn = "SupervisedTrainer.run"
        target = self.config.epochs if epochs is None else check_int(fn, "epochs", epochs, minimum=0)
        target = min(target, self.config.epochs)
        checkpoint_every = check_int(fn, "checkpoint_every", checkpoint_every, minimum=1)
        with tqdm(total=target, initial=min(self.epoch, target), desc="supervised", unit="epoch",
                  disable=not verbose) as bar:
            while self.epoch < target:
                rec = self.train_epoch(verbose=verbose)
                bar.update(1)
                bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.0e}")
                if checkpoint is not None and (self.epoch % checkpoint_every == 0 or self.epoch == target):
                    self.save(checkpoint)
        return self.history


def _config_dict(cfg: TrainConfig) -> dict:
    d = asdict(cfg)
    d["lrs"] = list(cfg.lrs)
    d["encoder"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.encoder.items()}
    return d


def _config_from_dict(d: dict) -> TrainConfig:
    d = dict(d)
    d["lrs"] = tuple(d["lrs"])
    d["encoder"] = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.get("encoder", {}).items()}
    return TrainConfig(**d)


def _read_checkpoint(fn: str, path) -> dict:
    path = check_path(fn, "checkpoint", path)
    if not path.is_file():
        fail(fn, f"{path}: no such checkpoint", FileNotFoundError)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling problem is a bad file
        fail(fn, f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})")
    if not isinstance(state, dict) or state.get("format") != "orbitcore.mom.mra/supervised/1":
        fail(fn, f"{path}: not an orbitcore MRA supervised checkpoint")
    return state


def train_supervised(config: TrainConfig | None = None, *, checkpoint=None, resume: bool = True,
                     checkpoint_every: int = 1, verbose: bool = True, **overrides) -> SupervisedTrainer:
    """Run the supervised phase (§5.1.1) and return the trainer (``.encoder``, ``.history``,
    ``.evaluate()``).

    Args:
        config: a :class:`TrainConfig`; keyword ``overrides`` replace its fields (or make one).
        checkpoint: path of the checkpoint written every ``checkpoint_every`` epochs and at
            the end (atomically).
        resume: if ``checkpoint`` exists, continue from it (its config must match, apart from
            ``epochs``, which may be raised to train longer).
    """
    fn = "train_supervised"
    cfg = TrainConfig() if config is None else copy.deepcopy(config)
    for k, v in overrides.items():
        if not hasattr(cfg, k):
            fail(fn, f"unknown setting {k!r} (TrainConfig fields: {', '.join(TrainConfig.__dataclass_fields__)})",
                 TypeError)
        setattr(cfg, k, v)
    cfg.validate()
    if checkpoint is not None and resume and pathlib.Path(checkpoint).is_file():
        trainer = SupervisedTrainer.load(checkpoint)
        old, new = _config_dict(trainer.config), _config_dict(cfg)
        diff = {k for k in new if k != "epochs" and old.get(k) != new[k]}
        if diff:
            fail(fn, f"checkpoint {checkpoint} was made with different settings ({', '.join(sorted(diff))}); "
                     "pass resume=False to start over or use another path")
        trainer.config.epochs = cfg.epochs
    else:
        trainer = SupervisedTrainer(cfg)
    trainer.run(checkpoint=checkpoint, checkpoint_every=checkpoint_every, verbose=verbose)
    return trainer


def load_encoder(checkpoint) -> MRAEncoder:
    """The trained :class:`MRAEncoder` of a supervised checkpoint (eval mode)."""
    state = _read_checkpoint("load_encoder", checkpoint)
    cfg = _config_from_dict(state["config"])
    dtype = torch.float32 if cfg.dtype == "float32" else torch.float64
    enc = MRAEncoder(cfg.n, **cfg.encoder).to(dtype)
    enc.load_state_dict(state["model"])
    return enc.eval()


# ================================================================================================
# Reconstruction phase (§5.1.2) and the classical baseline
# ================================================================================================
@dataclass
class Reconstruction:
    """Result of :func:`reconstruct` / :func:`fit_moments_classical`.

    Attributes:
        v: real ``(n,)`` signal (real space, data units); rho: ``(n,)`` density on the shifts.
        v_hat: complex ``(n,)`` ``= fft1c(v)`` (library convention).
        loss: final eq. 26 value. shift: relative shift applied to ξ^v's output by the
            alignment (samples; 0 without).
        history: per iteration (0 = before any step): ``loss`` (eq. 26), ``m1_error``,
            ``m2_error`` (eq. 22 against the data moments) and, with ``truth``, ``v_error``,
            ``rho_error`` (eq. 21) and ``v_error_continuous``, ``rho_error_continuous``
            (:func:`continuous_orbit_error`).
        encoder: the refined encoder (None for the baseline). restart_losses: the baseline's
            final loss of every restart.
    """

    v: torch.Tensor
    rho: torch.Tensor
    v_hat: torch.Tensor
    loss: float
    shift: int = 0
    history: dict = field(default_factory=dict)
    encoder: MRAEncoder | None = None
    restart_losses: list = field(default_factory=list)


def _unitary_losses(M1_hat, M2_hat, M1, M2, lam: float) -> torch.Tensor:
    n = M1_hat.shape[-1]
    d1 = torch.linalg.vector_norm(M1 - M1_hat, dim=-1) / math.sqrt(n)
    d2 = torch.linalg.vector_norm((M2 - M2_hat).flatten(-2), dim=-1) / n
    return d1 + lam * d2


@torch.no_grad()
def align_to_moments(M1_hat, M2_hat, v, rho, lam: float = 1.0) -> tuple[int, torch.Tensor]:
    """The alignment of §5.1.2: the moments are invariant under the joint shift
    ``(t ∘ v, ρ(· + t))``, but separately trained ξ^v and ξ^ρ fix their own frames, so search
    the relative shift ``t`` of ``v`` against ``ρ`` that minimises eq. 26.

    Returns:
        ``(t, losses)``: the best shift (samples, content of ``v`` moved by ``+t``) and the
        ``(n,)`` eq. 26 values of ``(t ∘ v, ρ)`` for ``t = 0 … n−1`` (float64).
    """
    fn = "align_to_moments"
    M1, M2 = _moments_in(fn, M1_hat, M2_hat)
    v = _real(fn, "v", v)
    n = v.shape[0]
    if n != M1.shape[0]:
        fail(fn, f"v must have n = {M1.shape[0]} points to match the moments, got {tuple(v.shape)}")
    rho = _density(fn, "rho", rho, n, atol=1e-4)
    lam = check_float(fn, "lam", lam, minimum=0.0)
    t = torch.arange(n, device=v.device)
    cand = shift_signals(v.detach().double(), t)  # (n, n): row t is t ∘ v
    P1, P2 = population_moments(cand, rho.detach().double().expand(n, n))
    c = dict(device=v.device, dtype=torch.complex128)
    losses = _unitary_losses(M1.to(**c), M2.to(**c), P1, P2, lam)
    return int(losses.argmin()), losses.cpu()


def _new_history(truth) -> dict:
    """Empty per-iteration history: loss and eq. 22 errors, plus eq. 21 errors given the truth."""
    keys = ("loss", "m1_error", "m2_error")
    if truth is not None:
        keys += ("v_error", "rho_error", "v_error_continuous", "rho_error_continuous")
    return {k: [] for k in keys}


def _record(hist: dict, loss: float, M1, M2, v, rho, truth) -> None:
    with torch.no_grad():
        P1, P2 = population_moments(v.detach().double(), rho.detach().double())
        hist["loss"].append(loss)
        hist["m1_error"].append(moment_relative_error(P1, M1))
        hist["m2_error"].append(moment_relative_error(P2, M2))
        if truth is not None:
            e = instance_errors(v.detach(), rho.detach(), truth[0], truth[1], continuous=True)
            hist["v_error"].append(e["v"])
            hist["rho_error"].append(e["rho"])
            hist["v_error_continuous"].append(e["v_continuous"])
            hist["rho_error_continuous"].append(e["rho_continuous"])


def _truth(fn: str, truth, n: int):
    if truth is None:
        return None
    if not isinstance(truth, (tuple, list)) or len(truth) != 2:
        fail(fn, f"truth must be a (v, rho) pair, got {type(truth).__name__}", TypeError)
    v = _real(fn, "truth[0]", truth[0]).double()
    rho = _density(fn, "truth[1]", truth[1], n).double()
    if v.shape[0] != n:
        fail(fn, f"truth[0] must have n = {n} points, got {tuple(v.shape)}")
    return v, rho


def reconstruct(M1_hat, M2_hat, encoder: MRAEncoder | None = None, *, iters: int = 3000, lr: float = 1e-4,
                lam: float = 1.0, align: bool = True, truth=None, seed: int = 0, encoder_kwargs: dict | None = None,
                dtype=torch.float32, verbose: bool = False) -> Reconstruction:
    """The reconstruction phase (§5.1.2): refine the encoder's parameters θ on eq. 26.

    ``z_v, z_ρ = ξ_θ(M̂1, M̂2)``; after aligning ξ^v's output to ξ^ρ's over the relative shift
    (:func:`align_to_moments`, once, on the initial outputs), Adam minimises
    ``L_recon(θ) = eq. 26(M̂1, M̂2, t ∘ z_v(θ), z_ρ(θ))`` through the kernel-backed loss.

    Args:
        M1_hat, M2_hat: complex ``(n,)``, ``(n, n)`` data moments (e.g. :func:`simulate_moments`).
        encoder: a (pretrained) :class:`MRAEncoder` — copied, not modified; ``None``: a randomly
            initialised one (seeded by ``seed``, architecture ``encoder_kwargs``).
        iters: Adam steps. lr: Adam learning rate. lam: λ of eq. 26 (paper normalisation).
        align: do the alignment (otherwise ``t = 0``).
        truth: optional ``(v, rho)`` to record eq. 21 errors along the way.
        dtype: network dtype for a new random encoder.

    Returns:
        :class:`Reconstruction` (history has ``iters + 1`` entries).
    """
    from tqdm.auto import tqdm  # noqa: PLC0415

    fn = "reconstruct"
    M1, M2 = _moments_in(fn, M1_hat, M2_hat)
    n = M1.shape[0]
    iters = check_int(fn, "iters", iters, minimum=0)
    lr = check_float(fn, "lr", lr, positive=True)
    lam = check_float(fn, "lam", lam, minimum=0.0)
    truth = _truth(fn, truth, n)
    if encoder is None:
        enc = _seeded_encoder(n, check_int(fn, "seed", seed, minimum=0), dtype, dict(encoder_kwargs or {}))
    else:
        if not isinstance(encoder, MRAEncoder):
            fail(fn, f"encoder must be an MRAEncoder or None, got {type(encoder).__name__}", TypeError)
        if encoder.n != n:
            fail(fn, f"encoder was built for n = {encoder.n}, but the moments have n = {n}")
        enc = copy.deepcopy(encoder)
    enc.train()
    p0 = next(enc.parameters())
    cdt = torch.complex64 if p0.dtype == torch.float32 else torch.complex128
    Mi1, Mi2 = M1.to(device=p0.device, dtype=cdt), M2.to(device=p0.device, dtype=cdt)  # encoder input
    shift = 0
    if align:
        with torch.no_grad():
            v0, rho0 = enc(Mi1, Mi2)
        shift, _ = align_to_moments(M1, M2, v0, rho0, lam)
    opt = torch.optim.Adam(enc.parameters(), lr=lr, foreach=True)
    hist = _new_history(truth)
    for it in tqdm(range(iters + 1), desc="refine", disable=not verbose):
        z_v, z_rho = enc(Mi1, Mi2)
        v = torch.roll(z_v, shift)
        loss = reconstruction_loss(M1, M2, v, z_rho, lam)
        _record(hist, float(loss.detach()), M1, M2, v, z_rho, truth)
        if it == iters:
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    v = v.detach()
    return Reconstruction(v=v, rho=z_rho.detach(), v_hat=fourier.fft1c(v.double()), loss=hist["loss"][-1],
                          shift=shift, history=hist, encoder=enc.eval())


def fit_moments_classical(M1_hat, M2_hat, *, restarts: int = 5, iters: int = 1000, lam: float = 1.0,
                          lr: float = 0.01, truth=None, generator=None, verbose: bool = False) -> Reconstruction:
    """Classical (non-neural) method of moments: minimise eq. 26 directly over a real signal
    ``v`` and the softmax logits of ``ρ`` (``ρ = softmax(ℓ)``) from random starts; keep the
    restart with the lowest final loss.

    Starts: ``v ~ N(0, a²/n)`` per sample with ``a² = Re tr M̂2 / n`` (the data's ``E‖v_j‖²``),
    logits ``ℓ ~ N(0, 1)``. Optimiser: Adam (``lr``), float64. (L-BFGS with a strong-Wolfe line
    search was tried: it stalls in local minima from most random starts, where Adam's steps get
    through.)

    Returns:
        :class:`Reconstruction` of the best restart (its ``history`` is that restart's;
        ``restart_losses`` lists every restart's final loss).
    """
    from tqdm.auto import tqdm  # noqa: PLC0415

    fn = "fit_moments_classical"
    M1, M2 = _moments_in(fn, M1_hat, M2_hat)
    n = M1.shape[0]
    restarts = check_int(fn, "restarts", restarts, minimum=1)
    iters = check_int(fn, "iters", iters, minimum=0)
    lam = check_float(fn, "lam", lam, minimum=0.0)
    lr = check_float(fn, "lr", lr, positive=True)
    truth = _truth(fn, truth, n)
    gen = _generator(fn, generator)
    M1, M2 = M1.to(torch.complex128), M2.to(torch.complex128)
    a = math.sqrt(max(float(torch.diagonal(M2).real.sum()) / n, 1e-12))
    best = None
    finals = []
    for _ in tqdm(range(restarts), desc="restarts", disable=not verbose):
        v = (a / math.sqrt(n) * torch.randn(n, generator=gen, dtype=torch.float64)).requires_grad_()
        logits = torch.randn(n, generator=gen, dtype=torch.float64).requires_grad_()
        opt = torch.optim.Adam([v, logits], lr=lr)
        hist = _new_history(truth)
        for it in range(iters + 1):
            rho = torch.softmax(logits, 0)
            loss = reconstruction_loss(M1, M2, v, rho, lam)
            _record(hist, float(loss.detach()), M1, M2, v, rho, truth)
            if it == iters:
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        finals.append(hist["loss"][-1])
        if best is None or hist["loss"][-1] < best[0]:
            best = (hist["loss"][-1], v.detach().clone(), torch.softmax(logits, 0).detach(), hist)
    loss, v, rho, hist = best
    return Reconstruction(v=v, rho=rho, v_hat=fourier.fft1c(v), loss=loss, shift=0, history=hist,
                          restart_losses=finals)
