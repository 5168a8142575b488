"""Second moments: streaming data moments (kernel-backed) and differentiable model moments.

Data side (seeds/000 eqs. 24, 30): for real observations ``v_j`` (1-D signals or 2-D images)

    M̂1 = (1/N) Σ_j F v_j,        M̂2 = (1/N) Σ_j (F v_j)(F v_j)^* − n^d σ² I

on a set of ``m`` frequencies (all ``n^d`` of them, or a disk ``|k| <= radius``). ``F`` is the
centred, *unnormalised* DFT of ``orbitcore.fourier`` (``fft1c`` / ``fft2c``; DC at index
``n // 2``), so white noise of variance σ² per pixel has variance ``n^d σ²`` per frequency
(``E|Σ_x ε(x) e^{-2πi k·x/n}|² = Σ_x σ² = n^d σ²``, and distinct frequencies are uncorrelated
because ``Σ_x e^{-2πi (k−k')·x/n} = 0`` for ``k ≠ k' mod n``): that is the amount removed from the
diagonal. The paper's ``F`` is unitary (``F^*F = I``); to compare with its figures divide M̂1 by
``n^{d/2}`` and M̂2 by ``n^d``.

How it is computed (see ``src/orbitcore/moments.hpp``): each batch is real-FFT'd (torch.fft),
the ``p = m`` real numbers (real and imaginary parts of one representative of each pair
``{k, −k}``) are gathered, and the compiled kernel adds their real symmetric rank-B update
``G += Y^T Y`` (one triangle, a blocked SYRK with SIMD register tiles; float64 accumulation by
default) and ``s += Σ y``. ``result()`` turns ``(G, s)`` into the complex Hermitian M̂2 once.
Memory is ``O(m²)``, independent of N.

Model side (eqs. 20, 25, 26, 28): :func:`model_moments` forms ``M1 = Σ_j ρ_j S_j`` and
``M2 = Σ_j ρ_j S_j S_j^*``; :func:`moment_loss` evaluates ``‖M̂1 − M1‖ + λ ‖M̂2 − M2‖`` either
densely or through the ``q × q`` Gram form, whichever is cheaper, and (with ``conjugate=``) in
the real basis of Hermitian-symmetric slices. Both are custom ops with autograd.

Frequency order everywhere (:class:`MomentLayout`): the masked frequencies in row-major order
of the centred grid — for images ``[ky, kx]`` with ``kx`` fastest, i.e. the order of
``fft2c(img)[mask]``; ``layout.frequencies`` lists them as ``(kx, ky)`` integer pairs.
"""
from __future__ import annotations

import math
import numbers
import os
import pathlib
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
from torch import Tensor

from .. import _ext
from .._validate import (
    check_float,
    check_int,
    checking,
    fail,
    from_tensor,
    to_tensor,
)

__all__ = [
    "MomentLayout",
    "Moments",
    "MomentAccumulator",
    "moments_from_stack",
    "model_moments",
    "moment_loss",
]

_SIGMA2_MODES = ("corners", "high_frequency")


# ------------------------------------------------------------------------------------------------
# Which frequencies, in which order, and their real basis
# ------------------------------------------------------------------------------------------------
def _layout_args(fn: str, size, ndim, radius) -> tuple[int, int, float | None]:
    """The checked ``(size, ndim, radius)`` of a :class:`MomentLayout`, errors naming ``fn``."""
    n = check_int(fn, "size", size, minimum=1)
    ndim = check_int(fn, "ndim", ndim)
    if ndim not in (1, 2):
        fail(fn, f"ndim must be 1 (signals) or 2 (images), got {ndim}")
    return n, ndim, check_float(fn, "radius", radius, minimum=0.0, allow_none=True)


class MomentLayout:
    """The frequencies that enter the moments, their order, and their real half-spectrum basis.

    Args:
        size: side ``n`` of the observations (signals of length n, or n x n images).
        ndim: 1 (MRA signals) or 2 (images).
        radius: keep the frequencies with ``|k|² <= radius²`` (Fourier pixels; the predicate of
            ``fourier_slice(..., radius=)``); ``None`` keeps all ``n^ndim``.

    Attributes:
        mask: bool ``(n,)`` or ``(n, n)`` on the centred grid (DC at ``n // 2``).
        frequencies: int64 ``(m, ndim)``: the integer frequencies ``(kx[, ky])`` in moment order
            (row-major over the centred grid: ``ky`` outer, ``kx`` inner).
        conjugate: int64 ``(m,)``: position of ``−k`` (mod n) for each frequency (an involution;
            fixed points are the real coefficients: DC and, for even n, Nyquist). A disk is
            closed under ``k -> −k``.
        m: number of frequencies; the real basis has ``p == m`` coordinates.

    Real basis (internal, used by the kernels): ``columns`` (p,) offsets into the interleaved
    (re, im) rfft of the *uncentred* array, ``slots`` (m, 3) int32 and ``phase`` (m, 2) float64;
    see ``src/orbitcore/moments.hpp``.
    """

    def __init__(self, size: int, ndim: int = 2, radius: float | None = None):
        fn = "MomentLayout"
        n, ndim, r = _layout_args(fn, size, ndim, radius)
        self.size, self.ndim, self.radius = n, ndim, r
        c = n // 2
        k1 = np.arange(n, dtype=np.int64) - c
        if ndim == 1:
            K = k1[:, None]
        else:
            ky, kx = np.meshgrid(k1, k1, indexing="ij")
            K = np.stack([kx.ravel(), ky.ravel()], axis=-1)
        r2 = (K * K).sum(axis=1)
        sel = np.ones(len(K), dtype=bool) if r is None else r2 <= r * r
        freqs = K[sel]
        m = len(freqs)
        self.m = m
        self._flat = np.nonzero(sel)[0]  # positions in the flattened centred grid

        def flat_of(k):  # centred frequency -> flat index on the centred grid
            idx = k + c
            return idx[:, 0] if ndim == 1 else idx[:, 1] * n + idx[:, 0]

        pos = np.full(n**ndim, -1, dtype=np.int64)
        pos[self._flat] = np.arange(m)
        neg = (-freqs + c) % n - c  # −k wrapped onto the grid
        conj = pos[flat_of(neg)]
        if (conj < 0).any():  # cannot happen for a disk; guards future masks
            fail(fn, "the frequency mask must be closed under k -> -k")

        # Half-spectrum (rfft of the uncentred array) location of k, when k is stored there.
        nh = n // 2 + 1
        def loc_of(k):
            u = k % n
            ok = u[:, 0] < nh
            loc = u[:, 0] if ndim == 1 else u[:, 1] * nh + u[:, 0]
            return np.where(ok, loc, np.iinfo(np.int64).max)

        loc_k, loc_n = loc_of(freqs), loc_of(neg)
        rep = np.minimum(loc_k, loc_n)  # canonical representative of {k, -k}
        sign = np.where(loc_k <= loc_n, 1, -1)
        selfc = conj == np.arange(m)
        col_re = 2 * rep
        col_im = 2 * rep + 1
        columns = np.unique(np.concatenate([col_re, col_im[~selfc]]))
        re_idx = np.searchsorted(columns, col_re)
        im_idx = np.where(selfc, -1, np.searchsorted(columns, col_im))
        theta_num = ((freqs.sum(axis=1) * c) % n).astype(np.float64)
        theta = 2.0 * math.pi * theta_num / n
        self.p = len(columns)
        self.half_shape = (nh,) if ndim == 1 else (n, nh)
        self.columns = torch.from_numpy(columns.astype(np.int64))
        self.slots = torch.from_numpy(np.stack([re_idx, im_idx, sign], axis=1).astype(np.int32))
        self.phase = torch.from_numpy(np.stack([np.cos(theta), np.sin(theta)], axis=1))
        self.frequencies = torch.from_numpy(freqs.copy())
        self.conjugate = torch.from_numpy(conj.astype(np.int64))
        self.mask = torch.from_numpy(sel.reshape((n,) * ndim).copy())
        self._flat_t = torch.from_numpy(self._flat.copy())

    def __repr__(self) -> str:
        return f"MomentLayout(size={self.size}, ndim={self.ndim}, radius={self.radius}, m={self.m})"

    def key(self) -> tuple:
        return (self.size, self.ndim, self.radius)

    def gather(self, x):
        """Pick the masked frequencies: ``(..., n[, n]) -> (..., m)`` in moment order.

        Use it on centred spectra (``fft2c(images)``, ``fourier_slice(...)``) to get slices in
        the order the moments use. Differentiable; same array kind as ``x``.
        """
        fn = "MomentLayout.gather"
        t, kind = to_tensor(x, fn, "x")
        d = self.ndim
        if t.dim() < d or tuple(t.shape[-d:]) != (self.size,) * d:
            fail(fn, f"x must have shape (..., {', '.join(['n'] * d)}) with n = {self.size}, got {tuple(t.shape)}")
        flat = t.reshape(*t.shape[: t.dim() - d], self.size**d)
        return from_tensor(flat[..., self._flat_t.to(t.device)], kind)

    def scatter(self, v):
        """Inverse of :meth:`gather`: ``(..., m) -> (..., n[, n])`` with zeros off the mask."""
        fn = "MomentLayout.scatter"
        t, kind = to_tensor(v, fn, "v")
        if t.dim() < 1 or t.shape[-1] != self.m:
            fail(fn, f"v must have shape (..., m) with m = {self.m}, got {tuple(t.shape)}")
        out = t.new_zeros(*t.shape[:-1], self.size**self.ndim)
        out[..., self._flat_t.to(t.device)] = t
        return from_tensor(out.reshape(*t.shape[:-1], *((self.size,) * self.ndim)), kind)


# ------------------------------------------------------------------------------------------------
# Data side: the accumulator
# ------------------------------------------------------------------------------------------------
@dataclass
class Moments:
    """Empirical Fourier moments (the output of :meth:`MomentAccumulator.result`).

    Attributes:
        M1: complex ``(m,)``: ``(1/N) Σ_j F v_j`` at ``layout.frequencies``.
        M2: complex ``(m, m)`` Hermitian: ``(1/N) Σ_j (F v_j)(F v_j)^* − n^d sigma2 I``.
        count: N, the number of observations.
        sigma2: the per-pixel (real-space) noise variance that was removed (0 if none).
        layout: the :class:`MomentLayout` (frequencies, order, ``conjugate``).
    Units: those of the unnormalised centred DFT of the data (``fft1c`` / ``fft2c``).
    """

    M1: Tensor
    M2: Tensor
    count: int
    sigma2: float
    layout: MomentLayout

    @property
    def conjugate(self) -> Tensor:
        """``layout.conjugate`` on the moments' device (pass it to :func:`moment_loss`)."""
        return self.layout.conjugate.to(self.M1.device)

    @property
    def frequencies(self) -> Tensor:
        return self.layout.frequencies

    @property
    def m(self) -> int:
        """Number of frequencies."""
        return self.layout.m


class MomentAccumulator:
    """Streaming first and second Fourier moments of real 1-D signals or 2-D images.

    ``update(batch)`` as often as needed (memory ``O(m²)``, independent of the number of
    observations N), ``merge`` partial accumulators or ``all_reduce`` them across processes,
    then ``result()``. Conventions, units and the computation: see the module docstring.

    Args:
        size: side ``n`` of the observations.
        ndim: 2 for images ``(..., n, n)`` indexed ``[y, x]``, 1 for signals ``(..., n)``.
            Real-space origin at index ``n // 2`` (it only sets the phase convention of M1, M2).
        radius: frequency disk ``|k| <= radius`` (Fourier pixels) entering the moments; ``None``
            keeps all ``n^ndim`` frequencies. M2 is ``m × m`` for the ``m`` kept frequencies.
        sigma2: noise debiasing of M2: ``None`` (none), a number (known per-pixel noise
            variance σ², in squared data units), ``"corners"`` (estimated from the real-space
            pixels farther than ``noise_radius`` from the centre — the image corners, where a
            centred particle has no signal: ``mean(x²) − mean(x)²`` over those pixels of every
            observation), or ``"high_frequency"`` (estimated from the power at frequencies
            ``|k| > noise_radius``, assumed signal-free: ``mean |F v(k)|² / n^d``).
        noise_radius: radius in pixels (``"corners"``) or Fourier pixels (``"high_frequency"``);
            default ``n / 2`` for images (the corners outside the inscribed disk); required for
            signals.
        dtype: accumulator precision, ``torch.float64`` (default; for very large N) or
            ``torch.float32``. float32 data are multiplied in float32 either way, in blocks of
            at most 384 observations (256 on the GPU) whose sums are added in the accumulator
            precision, so the rounding error does not grow with N.
        device: ``"cpu"`` or a CUDA device (the CUDA kernel runs there; batches are moved).
    """

    def __init__(self, size: int, ndim: int = 2, *, radius: float | None = None, sigma2=None,
                 noise_radius: float | None = None, dtype: torch.dtype = torch.float64,
                 device: str | torch.device = "cpu"):
        fn = "MomentAccumulator"
        self.layout = MomentLayout(*_layout_args(fn, size, ndim, radius))
        if dtype not in (torch.float32, torch.float64):
            fail(fn, f"dtype must be torch.float32 or torch.float64, got {dtype}", TypeError)
        self.dtype = dtype
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            fail(fn, f"device must be 'cpu' or a CUDA device, got {device!r} ({exc})")
        if self.device.type not in ("cpu", "cuda"):
            fail(fn, f"device must be 'cpu' or a CUDA device, got {self.device}")
        if self.device.type == "cuda" and not _ext.built_with_cuda():
            fail(fn, f"device is {self.device}, but this orbitcore build has no CUDA kernels "
                     "(reinstall with nvcc on PATH, or ORBITCORE_CUDA=ON)", RuntimeError)
        self.sigma2_mode = self._check_sigma2(fn, sigma2)
        self.noise_radius = check_float(fn, "noise_radius", noise_radius, minimum=0.0, allow_none=True)
        self._noise_sel = None
        if isinstance(self.sigma2_mode, str):
            self._noise_sel = self._noise_region(fn)
        p = self.layout.p
        self._gram = torch.zeros(p, p, dtype=dtype, device=self.device)
        self._sums = torch.zeros(p, dtype=dtype, device=self.device)
        # [count, noise sum, noise sum of squares, noise sample count] in float64
        self._stats = torch.zeros(4, dtype=torch.float64, device=self.device)
        self._columns = self.layout.columns.to(self.device)

    # -- configuration helpers ------------------------------------------------------------------
    @staticmethod
    def _check_sigma2(fn: str, sigma2):
        if sigma2 is None or isinstance(sigma2, str):
            if isinstance(sigma2, str) and sigma2 not in _SIGMA2_MODES:
                fail(fn, f"sigma2 must be None, a number >= 0, 'corners' or 'high_frequency', got {sigma2!r}")
            return sigma2
        return check_float(fn, "sigma2", sigma2, minimum=0.0)

    def _noise_region(self, fn: str) -> Tensor:
        n, d = self.layout.size, self.layout.ndim
        r = self.noise_radius
        if r is None:
            if d == 1:
                fail(fn, f"sigma2={self.sigma2_mode!r} for 1-D signals needs noise_radius (the signal-free "
                         "region is problem-specific)")
            r = n / 2
        c = n // 2
        if self.sigma2_mode == "corners":
            x = np.arange(n) - c
            if d == 1:
                rr = x.astype(np.float64) ** 2
            else:
                yy, xx = np.meshgrid(x, x, indexing="ij")
                rr = (xx * xx + yy * yy).astype(np.float64)
            sel = rr > r * r
            what = "pixels"
        else:  # high_frequency, on the uncentred half spectrum (rfft layout)
            nh = n // 2 + 1
            kx = (np.arange(nh) + c) % n - c
            if d == 1:
                rr = (kx * kx).astype(np.float64)
            else:
                ky = (np.arange(n) + c) % n - c
                yy, xx = np.meshgrid(ky, kx, indexing="ij")
                rr = (xx * xx + yy * yy).astype(np.float64)
            sel = rr > r * r
            what = "frequencies"
        if not sel.any():
            fail(fn, f"sigma2={self.sigma2_mode!r}: no {what} beyond noise_radius = {r} for size {n}")
        return torch.from_numpy(sel).to(self.device)

    # -- state ----------------------------------------------------------------------------------
    @property
    def count(self) -> int:
        """Number of observations accumulated so far."""
        return int(round(float(self._stats[0])))

    @property
    def m(self) -> int:
        return self.layout.m

    def _compatible(self, other: "MomentAccumulator", fn: str) -> None:
        if not isinstance(other, MomentAccumulator):
            fail(fn, f"other must be a MomentAccumulator, got {type(other).__name__}", TypeError)
        mine = (self.layout.key(), self.dtype, self.sigma2_mode, self.noise_radius)
        theirs = (other.layout.key(), other.dtype, other.sigma2_mode, other.noise_radius)
        if mine != theirs:
            fail(fn, f"accumulators differ: (layout, dtype, sigma2, noise_radius) {mine} vs {theirs}")

    def merge(self, other: "MomentAccumulator") -> "MomentAccumulator":
        """Add the partial sums of another accumulator with the same configuration (in place).

        The result is that of one accumulator fed both data sets, up to floating-point
        summation order (float64 by default: ~1e-16 relative)."""
        fn = "MomentAccumulator.merge"
        self._compatible(other, fn)
        self._gram += other._gram.to(self.device)
        self._sums += other._sums.to(self.device)
        self._stats += other._stats.to(self.device)
        return self

    def all_reduce(self, group=None) -> "MomentAccumulator":
        """Sum the partial moments of every process of a ``torch.distributed`` group (in place).

        Every process must call it (a collective); afterwards each holds the moments of all
        the data. Needs an initialised process group whose backend supports the accumulator's
        device (gloo for CPU, nccl for CUDA)."""
        from .._distributed import all_reduce_sum_, require_group  # noqa: PLC0415

        require_group("MomentAccumulator.all_reduce")
        all_reduce_sum_([self._gram, self._sums, self._stats], group=group)
        return self

    def state_dict(self) -> dict:
        """Configuration and partial sums (for checkpoints or shipping between processes)."""
        return {
            "size": self.layout.size, "ndim": self.layout.ndim, "radius": self.layout.radius,
            "sigma2": self.sigma2_mode, "noise_radius": self.noise_radius, "dtype": str(self.dtype),
            "gram": self._gram.cpu(), "sums": self._sums.cpu(), "stats": self._stats.cpu(),
        }

    @classmethod
    def from_state_dict(cls, state: dict, device: str | torch.device = "cpu") -> "MomentAccumulator":
        """Rebuild an accumulator from :meth:`state_dict`."""
        dtype = torch.float64 if state["dtype"] == "torch.float64" else torch.float32
        acc = cls(state["size"], state["ndim"], radius=state["radius"], sigma2=state["sigma2"],
                  noise_radius=state["noise_radius"], dtype=dtype, device=device)
        fn = "MomentAccumulator.from_state_dict"
        p = acc.layout.p
        if tuple(state["gram"].shape) != (p, p) or tuple(state["sums"].shape) != (p,):
            fail(fn, f"state sums have shapes {tuple(state['gram'].shape)}, {tuple(state['sums'].shape)}; "
                     f"expected ({p}, {p}), ({p},)")
        acc._gram.copy_(state["gram"])
        acc._sums.copy_(state["sums"])
        acc._stats.copy_(state["stats"])
        return acc

    # -- accumulation ---------------------------------------------------------------------------
    def update(self, batch) -> "MomentAccumulator":
        """Add a batch of real observations: ``(B, n, n)`` images / ``(B, n)`` signals (any
        leading shape, or a single observation). Accepts torch, NumPy or CuPy arrays; integer
        and half-precision data are converted to float32. Returns self."""
        fn = "MomentAccumulator.update"
        x, _ = to_tensor(batch, fn, "batch")
        n, d = self.layout.size, self.layout.ndim
        if x.is_complex():
            fail(fn, f"batch must be real observations (real space), got {x.dtype}", TypeError)
        if x.dim() < d or tuple(x.shape[-d:]) != (n,) * d:
            lay = "(B, n, n)" if d == 2 else "(B, n)"
            fail(fn, f"batch must have shape {lay} with n = {n}, got {tuple(x.shape)}")
        if x.dtype == torch.bool:
            fail(fn, "batch must be numeric, got torch.bool", TypeError)
        x = x.reshape(-1, *((n,) * d))
        if x.shape[0] == 0:
            return self
        if x.dtype not in (torch.float32, torch.float64):
            x = x.to(torch.float32)
        cdt = torch.float32 if (x.dtype == torch.float32 or self.dtype == torch.float32) else torch.float64
        x = x.to(device=self.device, dtype=cdt)
        # One reduction (no boolean temporary) finds NaN/inf; the exact test only confirms.
        if checking() and not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
            fail(fn, "batch must be finite, got NaN or inf values")
        dims = tuple(range(-d, 0))
        X = torch.fft.rfftn(x, dim=dims)  # uncentred half spectrum (phases fixed in result())
        Xr = torch.view_as_real(X).reshape(x.shape[0], -1)
        _ext.C.moments_accumulate(_ext.arg(Xr), _ext.arg(self._columns), _ext.arg(self._gram),
                                  _ext.arg(self._sums), _ext.threads(), _ext.simd(), _ext.stream(Xr))
        stats = torch.zeros(4, dtype=torch.float64, device=self.device)
        stats[0] = x.shape[0]
        if self.sigma2_mode == "corners":
            v = x[..., self._noise_sel].double()
            stats[1], stats[2], stats[3] = v.sum(), (v * v).sum(), v.numel()
        elif self.sigma2_mode == "high_frequency":
            v = X[..., self._noise_sel]
            stats[2] = (v.real.double().square() + v.imag.double().square()).sum() / float(n**d)
            stats[3] = v.numel()
        self._stats += stats
        return self

    def noise_estimate(self) -> float | None:
        """The σ² estimate of the configured mode so far (None without one)."""
        mode = self.sigma2_mode
        if not isinstance(mode, str):
            return mode
        s = self._stats.cpu()
        if s[3] <= 0:
            return None
        if mode == "corners":
            mean = float(s[1] / s[3])
            return max(float(s[2] / s[3]) - mean * mean, 0.0)
        return float(s[2] / s[3])

    def result(self, *, sigma2="configured", dtype: torch.dtype | None = None) -> Moments:
        """Finalise: M̂1 ``(m,)`` and Hermitian M̂2 ``(m, m)`` (see :class:`Moments`).

        Args:
            sigma2: override the noise variance removed (a number, or None for none); default
                the configured mode (known value or estimate).
            dtype: complex dtype of the output (default complex128 for a float64 accumulator,
                complex64 for float32).
        """
        fn = "MomentAccumulator.result"
        N = self.count
        if N == 0:
            fail(fn, "no observations were accumulated (call update first)")
        if isinstance(sigma2, str) and sigma2 == "configured":
            s2 = self.noise_estimate()
        else:
            s2 = check_float(fn, "sigma2", sigma2, minimum=0.0, allow_none=True)
        s2 = 0.0 if s2 is None else float(s2)
        lay = self.layout
        cdt = torch.complex128 if self.dtype == torch.float64 else torch.complex64
        M1 = torch.empty(lay.m, dtype=cdt, device=self.device)
        M2 = torch.empty(lay.m, lay.m, dtype=cdt, device=self.device)
        # Keep every tensor handed to the kernel referenced until it returns (descriptors hold
        # raw pointers).
        slots = lay.slots.to(self.device)
        phase = lay.phase.to(device=self.device, dtype=self.dtype).contiguous()
        _ext.C.moments_finalize(
            _ext.arg(self._gram), _ext.arg(self._sums), _ext.arg(slots), _ext.arg(phase),
            float(self._stats[0]), float(lay.size**lay.ndim) * s2, _ext.arg(M1), _ext.arg(M2),
            _ext.threads(), _ext.stream(M1))
        if dtype is not None:
            if dtype not in (torch.complex64, torch.complex128):
                fail(fn, f"dtype must be torch.complex64 or torch.complex128, got {dtype}", TypeError)
            M1, M2 = M1.to(dtype), M2.to(dtype)
        return Moments(M1, M2, N, s2, lay)


# ------------------------------------------------------------------------------------------------
# Data side: moments straight from a stack, a dataset or an iterable of batches
# ------------------------------------------------------------------------------------------------
def _as_image(item):
    """A dataset item: an array, or the first element of a tuple/list, or item['image']."""
    if isinstance(item, dict):
        for key in ("image", "images", "img"):
            if key in item:
                return item[key]
        raise KeyError("dataset items that are dicts must have an 'image' entry")
    if isinstance(item, (tuple, list)):
        return item[0]
    return item


def _star_batch_loaders(stack, batch_size: int):
    """Iterator of ``(count, load)`` over an :class:`orbitcore.io.ParticleStack` in order:
    ``load()`` reads one batch ``(count, n, n)``, only when called (a process of a data-parallel
    pass reads only its own batches)."""
    N = len(stack)
    return ((min(batch_size, N - s), lambda s=s: stack.images(np.arange(s, min(s + batch_size, N))))
            for s in range(0, N, batch_size))


def _star_batches(path: pathlib.Path, batch_size: int, fn: str):
    """(total, iterator of batches) over the images named by a STAR file's rlnImageName, through
    orbitcore.io.ParticleStack (matched by name, never by row order; clear errors for missing
    stacks or out-of-range indices)."""
    from ..io import ParticleStack  # noqa: PLC0415

    stack = ParticleStack(path)
    return len(stack), (load() for _, load in _star_batch_loaders(stack, batch_size))


def _mrc_batch_loaders(path: pathlib.Path, batch_size: int):
    """``(total, iterator of (count, load))``: ``load()`` reads one batch of the memory-mapped
    stack as float32 ``(count, n, n)``, only when called (a process of a data-parallel pass
    reads only its own batches). Each ``load`` must be called before the iterator advances."""
    import mrcfile  # noqa: PLC0415

    with mrcfile.mmap(path, mode="r", permissive=True) as mrc:
        total = 1 if mrc.data.ndim == 2 else mrc.data.shape[0]

    def gen():
        with mrcfile.mmap(path, mode="r", permissive=True) as mrc:
            arr = mrc.data if mrc.data.ndim == 3 else mrc.data[None]
            for s in range(0, arr.shape[0], batch_size):
                e = min(s + batch_size, arr.shape[0])
                yield e - s, lambda s=s, e=e: np.array(arr[s:e], dtype=np.float32)  # a copy: mmaps are read-only

    return total, gen()


def _mrc_batches(path: pathlib.Path, batch_size: int):
    total, loaders = _mrc_batch_loaders(path, batch_size)
    return total, (load() for _, load in loaders)


def moments_from_stack(source, *, ndim: int = 2, radius: float | None = None, sigma2=None,
                       noise_radius: float | None = None, batch_size: int = 1024,
                       dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu",
                       limit: int | None = None, verbose: bool = True) -> Moments:
    """Empirical moments M̂1, M̂2 of a whole data set in one streaming pass (see
    :class:`MomentAccumulator` for the conventions and the noise options).

    The images are used as they are: **CTF-free** observations (no CTF correction or phase
    flipping is applied; correct or select them beforehand). Memory is ``O(m²)`` plus one
    batch, whatever the data set size.

    Args:
        source: one of
            * a path to an ``.mrcs``/``.mrc`` stack (memory-mapped, read in chunks);
            * a path to a RELION ``.star`` file whose ``rlnImageName`` column (``index@stack``,
              1-based, stack paths relative to the STAR file's directory or the working
              directory) names the images;
            * a ``(N, n, n)`` (or ``(N, n)`` with ``ndim=1``) torch/NumPy array;
            * a map-style dataset (``len`` and integer indexing; items are arrays, tuples whose
              first element is the image, or dicts with an ``'image'`` entry);
            * any other iterable of batches ``(B, n, n)`` (or single images).
        ndim: 2 (images) or 1 (signals).
        radius, sigma2, noise_radius, dtype, device: as in :class:`MomentAccumulator`.
        batch_size: observations per kernel call (memory ~ batch_size × n² × 8 bytes).
        limit: use at most this many observations.
        verbose: show a progress bar (tqdm).

    Returns:
        :class:`Moments`.
    """
    from tqdm.auto import tqdm  # noqa: PLC0415

    fn = "moments_from_stack"
    batch_size = check_int(fn, "batch_size", batch_size, minimum=1)
    limit = None if limit is None else check_int(fn, "limit", limit, minimum=1)
    total = None
    if isinstance(source, (str, os.PathLike)):
        path = pathlib.Path(source)
        if not path.is_file():
            fail(fn, f"{path}: no such file", FileNotFoundError)
        suffix = path.suffix.lower()
        if suffix == ".star":
            total, batches = _star_batches(path, batch_size, fn)
        elif suffix in (".mrcs", ".mrc", ".st", ".map"):
            total, batches = _mrc_batches(path, batch_size)
        else:
            fail(fn, f"{path}: expected an .mrcs/.mrc stack or a .star file, got suffix {suffix!r}")
    elif isinstance(source, (torch.Tensor, np.ndarray)) or hasattr(source, "__dlpack__"):
        t, _ = to_tensor(source, fn, "source")
        if t.dim() < ndim + 1:
            t = t.reshape(1, *t.shape)
        total = t.shape[0]
        batches = (t[s:s + batch_size] for s in range(0, total, batch_size))
    elif hasattr(source, "__len__") and hasattr(source, "__getitem__"):
        total = len(source)

        def gen():
            for s in range(0, total, batch_size):
                items = [_as_image(source[i]) for i in range(s, min(s + batch_size, total))]
                yield torch.stack([to_tensor(it, fn, "dataset item")[0] for it in items])

        batches = gen()
    elif isinstance(source, Iterable):
        batches = iter(source)
    else:
        fail(fn, f"source must be a path, an array, a dataset or an iterable of batches, got "
                 f"{type(source).__name__}", TypeError)
    if limit is not None:
        total = limit if total is None else min(total, limit)

    acc = None
    done = 0
    with tqdm(total=total, unit="img", desc="moments", disable=not verbose) as bar:
        for batch in batches:
            x, _ = to_tensor(batch, fn, "batch")
            if x.dim() == ndim:
                x = x[None]
            if acc is None:
                n = x.shape[-1]
                if x.dim() < ndim or any(s != n for s in x.shape[-ndim:]):
                    fail(fn, f"observations must be {'square images (..., n, n)' if ndim == 2 else 'signals (..., n)'}, "
                             f"got a batch of shape {tuple(x.shape)}")
                acc = MomentAccumulator(n, ndim, radius=radius, sigma2=sigma2, noise_radius=noise_radius,
                                        dtype=dtype, device=device)
            x = x.reshape(-1, *x.shape[-ndim:])
            if limit is not None and done + x.shape[0] > limit:
                x = x[: limit - done]
            acc.update(x)
            done += x.shape[0]
            bar.update(x.shape[0])
            if limit is not None and done >= limit:
                break
    if acc is None or acc.count == 0:
        fail(fn, "the source yielded no observations")
    return acc.result()


# ------------------------------------------------------------------------------------------------
# Model side: shared validation
# ------------------------------------------------------------------------------------------------
def _real_of(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype == torch.complex64 else torch.float64


def _slices_weights(fn: str, slices, weights, check: bool) -> tuple[Tensor, Tensor, str]:
    S, kind = to_tensor(slices, fn, "slices")
    if S.dtype not in (torch.complex64, torch.complex128):
        fail(fn, f"slices must be complex64 or complex128 (q Fourier slices over m frequencies), got {S.dtype}",
             TypeError)
    if S.dim() != 2:
        fail(fn, f"slices must have shape (q, m), got {tuple(S.shape)} (use MomentLayout.gather to pick "
                 "the m masked frequencies of (q, n, n) slices)")
    w, _ = to_tensor(weights, fn, "weights")
    if not w.is_floating_point():
        fail(fn, f"weights must be a real floating-point array, got {w.dtype}", TypeError)
    if w.dim() != 1 or w.shape[0] != S.shape[0]:
        fail(fn, f"weights must have shape (q,) = ({S.shape[0]},) to match slices {tuple(S.shape)}, "
                 f"got {tuple(w.shape)}")
    if w.dtype != _real_of(S.dtype):
        fail(fn, f"weights must have dtype {_real_of(S.dtype)} to match slices ({S.dtype}), got {w.dtype}",
             TypeError)
    if w.device != S.device:
        fail(fn, f"weights must be on the same device as slices ({S.device}), got {w.device}")
    if check and checking():
        if not bool(torch.isfinite(w).all()):
            fail(fn, "weights must be finite, got NaN or inf values")
        if bool((w < 0).any()):
            i = int((w < 0).nonzero()[0, 0])
            fail(fn, f"weights must be >= 0 (a density on the group; e.g. softmax of logits), got "
                     f"weights[{i}] = {float(w[i]):.6g} (pass check=False to allow signed weights)")
    return S, w, kind


def _diagnose_non_finite(fn: str, **arrays) -> None:
    """After a non-finite result: name the input that has NaN/inf values (costs nothing when
    the result is finite, so value checks need no extra pass over large inputs)."""
    for name, t in arrays.items():
        v = torch.view_as_real(t) if t.is_complex() else t
        if not bool(torch.isfinite(v).all()):
            fail(fn, f"{name} must be finite, got {int((~torch.isfinite(v)).sum())} NaN or inf value(s)")


def _cj(t: Tensor) -> Tensor:
    """Materialised complex conjugate. Inside the custom ops never use the lazy ``.conj()`` /
    ``.mH`` views in elementwise arithmetic: under torch.compile (AOT autograd, torch 2.13) the
    op body runs where elementwise kernels ignore the conjugate bit (``x.conj() * 1`` returns x),
    silently dropping the conjugation. ``torch.conj_physical`` is correct in both modes."""
    return torch.conj_physical(t)


def _rdot(a: Tensor, b: Tensor) -> Tensor:
    """Re Σ conj(a) b over the last axis, row by row (no lazy conjugation; see _cj)."""
    if a.is_complex():
        return torch.einsum("ijk,ijk->i", torch.view_as_real(a), torch.view_as_real(b))
    return torch.einsum("ij,ij->i", a, b)


def _no_double_backward(ctx, *grads):
    raise RuntimeError(
        "orbitcore: double backward (second derivatives) through model_moments / moment_loss is not "
        "supported. Use first-order gradients, or the pure-torch reference (orbitcore.ops._reference) "
        "for Hessian-vector products.")


def _no_double_setup(ctx, inputs, output):
    pass


# ------------------------------------------------------------------------------------------------
# Model side: model_moments (eqs. 20, 25)
# ------------------------------------------------------------------------------------------------
@torch.library.custom_op("orbitcore::model_moments", mutates_args=())
def _model_moments(slices: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """slices (q, m) complex, weights (q,) real -> M1 (m,), M2 (m, m)."""
    w = weights.to(slices.dtype)
    M1 = w @ slices
    M2 = (slices.mT * w) @ _cj(slices)
    return M1, M2.resolve_conj()


@_model_moments.register_fake
def _(slices, weights):
    m = slices.shape[1]
    return slices.new_empty((m,)), slices.new_empty((m, m))


@torch.library.custom_op("orbitcore::model_moments_backward", mutates_args=())
def _model_moments_backward(g1: Tensor, g2: Tensor, slices: Tensor, weights: Tensor, need_slices: bool,
                            need_weights: bool) -> tuple[Tensor, Tensor]:
    """Gradients of model_moments: (grad_slices (q, m) or empty, grad_weights (q,) or empty)."""
    w = weights.to(slices.dtype)[:, None]
    T = slices @ (g2.mT + _cj(g2))  # (q, m): the M2 part of both gradients
    gS = w * (g1[None, :] + T) if need_slices else slices.new_empty((0,))
    if need_weights:
        gw = (slices @ _cj(g1)).real + 0.5 * _rdot(slices, T)
    else:
        gw = weights.new_empty((0,))
    return gS, gw.to(weights.dtype)


@_model_moments_backward.register_fake
def _(g1, g2, slices, weights, need_slices, need_weights):
    gS = torch.empty_like(slices) if need_slices else slices.new_empty((0,))
    gw = torch.empty_like(weights) if need_weights else weights.new_empty((0,))
    return gS, gw


def _mm_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _mm_bwd(ctx, g1, g2):
    slices, weights = ctx.saved_tensors
    ns, nw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if g1 is None:
        g1 = slices.new_zeros(slices.shape[1])
    if g2 is None:
        g2 = slices.new_zeros(slices.shape[1], slices.shape[1])
    gS, gw = torch.ops.orbitcore.model_moments_backward(g1, g2, slices, weights, ns, nw)
    return (gS if ns else None, gw if nw else None)


torch.library.register_autograd("orbitcore::model_moments", _mm_bwd, setup_context=_mm_setup)
torch.library.register_autograd("orbitcore::model_moments_backward", _no_double_backward,
                                setup_context=_no_double_setup)


def model_moments(slices, weights, *, check: bool = True):
    """Moments of a model over ``q`` group elements (eqs. 20, 25): ``M1 = Σ_j ρ_j S_j`` and
    ``M2 = Σ_j ρ_j S_j S_j^*``.

    Args:
        slices: complex ``(q, m)``: the model's observation ``S_j`` (Fourier coefficients at the
            moment frequencies, e.g. ``layout.gather(fourier_slice(V, Q))`` for cryo-EM, or the
            shifted signal's spectrum for MRA), same units as the data moments.
        weights: real ``(q,)``, dtype = the slices' real dtype: the density ρ on the group
            elements (quadrature weights included). Used as given — not renormalised; pass a
            normalised density (e.g. a softmax) for moments of a distribution. Negative values
            raise unless ``check=False``.
        check: validate values (finite, non-negative weights); skipped under torch.compile.

    Returns:
        ``(M1 (m,), M2 (m, m))`` complex, same kind as ``slices``; M2 is Hermitian (PSD for
        non-negative weights). Differentiable with respect to ``slices`` and ``weights``.
    """
    S, w, kind = _slices_weights("model_moments", slices, weights, check)
    M1, M2 = torch.ops.orbitcore.model_moments(S, w)
    if check and checking() and not bool(torch.isfinite(torch.view_as_real(M1)).all()):
        _diagnose_non_finite("model_moments", slices=S)
    return from_tensor(M1, kind), from_tensor(M2, kind)


# ------------------------------------------------------------------------------------------------
# Model side: moment_loss (eqs. 26, 28)
# ------------------------------------------------------------------------------------------------
_SQRT_HALF = math.sqrt(0.5)


def _real_basis(conj: Tensor) -> tuple[Tensor, Tensor, int, int]:
    """Permutation of the m frequencies into [representatives u < conj[u], their partners,
    self-conjugate ones], its inverse, and the counts (P pairs, Z self-conjugate).

    The real basis of Hermitian-symmetric slices (p == m coordinates, orthonormal):
        a_u = (e_u + e_ū) / √2,   b_u = i (e_u − e_ū) / √2,   z = e_z,
    so s = Ũ ŷ with ŷ = Re(Ũ^H s) and |s| = |ŷ| for every s with s(−k) = conj(s(k))."""
    m = conj.shape[0]
    u = torch.arange(m, device=conj.device)
    r = u[u < conj]
    z = u[conj == u]
    perm = torch.cat([r, conj[r], z])
    inv = torch.empty_like(perm)
    inv[perm] = u
    return perm, inv, r.numel(), z.numel()


def _to_real(S: Tensor, basis) -> Tensor:
    """ŷ = Re(Ũ^H s) for each slice: (q, m) complex -> (q, p) real (p == m)."""
    perm, _, P, _ = basis
    V = torch.view_as_real(S.index_select(1, perm))  # (q, m, 2)
    a = (V[:, :P, 0] + V[:, P:2 * P, 0]) * _SQRT_HALF
    b = (V[:, :P, 1] - V[:, P:2 * P, 1]) * _SQRT_HALF
    return torch.cat([a, b, V[:, 2 * P:, 0]], dim=1)


def _from_real_grad(gY: Tensor, basis) -> Tensor:
    """Adjoint of _to_real in torch's complex-gradient convention: gŶ (q, p) -> Ũ gŶ (q, m)."""
    _, inv, P, _ = basis
    ga, gb, gz = gY[:, :P] * _SQRT_HALF, gY[:, P:2 * P] * _SQRT_HALF, gY[:, 2 * P:]
    gpi = torch.cat([torch.complex(ga, gb), torch.complex(ga, -gb), torch.complex(gz, torch.zeros_like(gz))], 1)
    return gpi.index_select(1, inv)


def _hermitian_vec(v: Tensor, conj: Tensor) -> Tensor:
    """P(v) = (v + conj(v[conj])) / 2 on the last axis (self-adjoint projection)."""
    return 0.5 * (v + _cj(v.index_select(-1, conj)))


def _target_real(A: Tensor, basis) -> Tensor:
    """Â = Re(Ũ^H A_h Ũ) (p, p), A_h = (A + A^H)/2: s^H A s = ŷ^T Â ŷ for every
    Hermitian-symmetric s = Ũ ŷ (the compiled kernel moments_real_target; ../moments.hpp)."""
    perm, _, P, Z = basis
    r, pr, z = perm[:P], perm[P:2 * P], perm[2 * P:]
    real = _real_of(A.dtype)
    idx = torch.cat([torch.stack([r, pr], 1), torch.stack([r, pr], 1), torch.stack([z, z], 1)]).contiguous()
    coef = torch.zeros(2 * P + Z, 2, 2, dtype=real, device=A.device)
    coef[:P, 0, 0] = _SQRT_HALF  # a
    coef[:P, 1, 0] = _SQRT_HALF
    coef[P:2 * P, 0, 1] = _SQRT_HALF  # b
    coef[P:2 * P, 1, 1] = -_SQRT_HALF
    coef[2 * P:, 0, 0] = 1.0  # z
    Ad = _ext.dense(A)
    out = torch.empty(2 * P + Z, 2 * P + Z, dtype=real, device=A.device)
    _ext.C.moments_real_target(_ext.arg(Ad), _ext.arg(idx), _ext.arg(coef), _ext.arg(out), _ext.threads(),
                               _ext.stream(Ad))
    return out


def _sq_norm(x: Tensor) -> Tensor:
    """‖x‖² as float64: row norms in x's precision (short, accurate sums), their squares summed
    in float64 (a single float32 reduction over millions of terms loses ~1e-3 relative)."""
    v = torch.view_as_real(x) if x.is_complex() else x[..., None]
    dims = (-2, -1) if x.dim() >= 2 else (-1,)
    if x.dim() < 2:
        return torch.linalg.vector_norm(v.double()).square()
    return torch.linalg.vector_norm(v, dim=dims).double().square().sum()


def _fprime(e: Tensor, squared: bool) -> float:
    if squared:
        return 1.0
    v = float(e)
    return 0.0 if v <= 0.0 else 0.5 / math.sqrt(v)


def _loss_forward(M1h, M2h, S, w, lam, conj, form, squared):
    """(loss, e1, e2, aux_a, aux_b, aux_c) — see moment_loss; e1, e2 are squared norms (float64).

    aux: complex path, gram: (S A_h^T (q, m), H = conj(S) S^T (q, q)); dense: (R = M̂2 − M2, -);
    real path, gram: (Ŷ Â (q, p), H = Ŷ Ŷ^T); dense: (Γ = ∂e2/∂G = 2 (G − Â) (p, p), -);
    aux_c: the real coordinates Ŷ (q, p) on the real path (empty otherwise)."""
    real_path = conj.numel() > 0
    wc = w.to(S.dtype)
    M1 = wc @ S
    if real_path:
        M1 = _hermitian_vec(M1, conj)
    r1 = M1h - M1
    e1 = _sq_norm(r1)
    A2 = _sq_norm(M2h)
    wd = w.double()
    aux_c = w.new_empty((0,))
    if real_path:
        basis = _real_basis(conj)
        Y = _to_real(S, basis)
        aux_c = Y
        At = _target_real(M2h, basis)
        if form == "gram":
            TT = Y @ At  # (q, p) = (Â Ŷ^T)^T
            c = _rdot(Y, TT)
            H = Y @ Y.mT  # (q, q), symmetric
            e2 = A2 - 2.0 * (wd @ c.double()) + wd @ ((H * H).double() @ wd)
            aux_a, aux_b = TT, H
        else:
            G = (Y.mT * w) @ Y  # (p, p)
            e2 = A2 - 2.0 * _rdot(At.reshape(1, -1), G.reshape(1, -1))[0].double() + _sq_norm(G)
            aux_a, aux_b = 2.0 * (G - At), Y.new_empty((0,))
    else:
        if form == "gram":
            Ah = 0.5 * (M2h + _cj(M2h.mT))
            TT = S @ Ah.mT  # (q, m) = (A_h S^T)^T
            c = _rdot(S, TT)  # s_j^H A_h s_j
            H = _cj(S) @ S.mT  # (q, q): H_ij = s_i^H s_j
            H2 = (H.real.square() + H.imag.square()).double()
            e2 = A2 - 2.0 * (wd @ c.double()) + wd @ (H2 @ wd)
            aux_a, aux_b = TT, H
        else:
            R = M2h - (S.mT * wc) @ _cj(S)
            e2 = _sq_norm(R)
            aux_a, aux_b = R, S.new_empty((0,))
    e2 = torch.clamp(e2, min=0.0)  # the Gram form can round slightly below 0 at a perfect fit
    f = (lambda e: e) if squared else torch.sqrt
    loss = (f(e1) + lam * f(e2)).to(w.dtype)
    return loss, e1.reshape(()), e2.reshape(()), aux_a, aux_b, aux_c


def _loss_backward(grad, M1h, M2h, S, w, lam, conj, form, squared, e1, e2, aux_a, aux_b, aux_c, need):
    need_m1, need_m2, need_s, need_w = need
    real_path = conj.numel() > 0
    g = float(grad)
    k1 = g * _fprime(e1, squared)
    k2 = g * lam * _fprime(e2, squared)
    wc = w.to(S.dtype)
    M1 = wc @ S
    if real_path:
        M1 = _hermitian_vec(M1, conj)
    r1 = M1h - M1
    gM1 = 2.0 * k1 * r1 if need_m1 else M1h.new_empty((0,))
    gM2 = M2h.new_empty((0,))
    if need_m2:
        if not real_path and form == "dense":
            R = aux_a
        else:
            Sp = _hermitian_vec(S, conj) if real_path else S
            R = M2h - (Sp.mT * wc) @ _cj(Sp)
        gM2 = 2.0 * k2 * R
    gS, gw = S.new_empty((0,)), w.new_empty((0,))
    if not (need_s or need_w):
        return gM1, gM2, gS, gw
    # e1 = ‖M̂1 − Σ w_j P(s_j)‖²: ∂/∂s_j = −2 w_j P*(r1) (P = identity off the real path)
    r1p = _hermitian_vec(r1, conj) if real_path else r1
    gw = -2.0 * k1 * (S @ _cj(r1p)).real
    if real_path:
        basis = _real_basis(conj)
        Y = aux_c
        if form == "gram":
            TT, H = aux_a, aux_b
            gY = (4.0 * k2) * w[:, None] * (H @ (w[:, None] * Y) - TT)
            gw = gw + k2 * (-2.0 * _rdot(Y, TT) + 2.0 * (H * H) @ w)
        else:
            YG = Y @ aux_a  # Ŷ Γ
            gY = (2.0 * k2) * w[:, None] * YG
            gw = gw + k2 * _rdot(YG, Y)
        if need_s:
            # P(r1) is Hermitian-symmetric: P(r1) = Ũ ρ̂, so both terms go through one Ũ map.
            rho = _to_real(r1p[None, :], basis)[0]
            gS = _from_real_grad(gY - (2.0 * k1) * w[:, None] * rho[None, :], basis)
    else:
        if form == "gram":
            TT, H = aux_a, aux_b
            gS2 = (4.0 * k2) * wc[:, None] * (H.mT @ (wc[:, None] * S) - TT)
            H2 = H.real.square() + H.imag.square()
            gw = gw + k2 * (-2.0 * _rdot(S, TT) + 2.0 * H2 @ w)
        else:
            Rs = aux_a + _cj(aux_a.mT)
            T = S @ Rs.mT  # S (R + R^H)^T
            gS2 = (-2.0 * k2) * wc[:, None] * T
            gw = gw - k2 * _rdot(S, T)
        if need_s:
            gS = gS2 - (2.0 * k1) * wc[:, None] * r1p[None, :]
    if not need_s:
        gS = S.new_empty((0,))
    gw = gw.to(w.dtype) if need_w else w.new_empty((0,))
    return gM1, gM2, gS, gw


@torch.library.custom_op("orbitcore::moment_loss", mutates_args=())
def _moment_loss(M1_hat: Tensor, M2_hat: Tensor, slices: Tensor, weights: Tensor, lam: float,
                 conjugate: Tensor, form: str, squared: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(loss, e1 = ‖r1‖², e2 = ‖R2‖² (float64), aux_a, aux_b, aux_c): see moment_loss."""
    return _loss_forward(M1_hat, M2_hat, slices, weights, lam, conjugate, form, squared)


def _aux_shapes(M2_hat, slices, conjugate, form):
    q, m = slices.shape
    real_dt = _real_of(slices.dtype)
    if conjugate.numel() > 0:
        if form == "gram":
            return (q, m), real_dt, (q, q), real_dt
        return (m, m), real_dt, (0,), real_dt
    if form == "gram":
        return (q, m), slices.dtype, (q, q), slices.dtype
    return (m, m), slices.dtype, (0,), slices.dtype


@_moment_loss.register_fake
def _(M1_hat, M2_hat, slices, weights, lam, conjugate, form, squared):
    sa, da, sb, db = _aux_shapes(M2_hat, slices, conjugate, form)
    f64 = weights.new_empty((), dtype=torch.float64)
    sc = (slices.shape[0], slices.shape[1]) if conjugate.numel() > 0 else (0,)
    return (weights.new_empty(()), f64, f64.clone(), slices.new_empty(sa, dtype=da),
            slices.new_empty(sb, dtype=db), weights.new_empty(sc))


@torch.library.custom_op("orbitcore::moment_loss_backward", mutates_args=())
def _moment_loss_backward(grad: Tensor, M1_hat: Tensor, M2_hat: Tensor, slices: Tensor, weights: Tensor,
                          lam: float, conjugate: Tensor, form: str, squared: bool, e1: Tensor, e2: Tensor,
                          aux_a: Tensor, aux_b: Tensor, aux_c: Tensor, need_m1: bool, need_m2: bool,
                          need_slices: bool, need_weights: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of moment_loss w.r.t. (M1_hat, M2_hat, slices, weights); empty when not needed."""
    return _loss_backward(grad, M1_hat, M2_hat, slices, weights, lam, conjugate, form, squared, e1, e2,
                          aux_a, aux_b, aux_c, (need_m1, need_m2, need_slices, need_weights))


@_moment_loss_backward.register_fake
def _(grad, M1_hat, M2_hat, slices, weights, lam, conjugate, form, squared, e1, e2, aux_a, aux_b, aux_c,
      need_m1, need_m2, need_slices, need_weights):
    def maybe(flag, ref):
        return torch.empty_like(ref) if flag else ref.new_empty((0,))
    return maybe(need_m1, M1_hat), maybe(need_m2, M2_hat), maybe(need_slices, slices), maybe(need_weights, weights)


def _ml_setup(ctx, inputs, output):
    M1_hat, M2_hat, slices, weights, lam, conjugate, form, squared = inputs
    loss, e1, e2, aux_a, aux_b, aux_c = output
    ctx.mark_non_differentiable(e1, e2, aux_a, aux_b, aux_c)
    ctx.save_for_backward(M1_hat, M2_hat, slices, weights, conjugate, e1, e2, aux_a, aux_b, aux_c)
    ctx.lam, ctx.form, ctx.squared = lam, form, squared


def _ml_bwd(ctx, g_loss, *unused):
    M1_hat, M2_hat, slices, weights, conjugate, e1, e2, aux_a, aux_b, aux_c = ctx.saved_tensors
    need = tuple(bool(x) for x in ctx.needs_input_grad[:4])
    gM1, gM2, gS, gw = torch.ops.orbitcore.moment_loss_backward(
        g_loss, M1_hat, M2_hat, slices, weights, ctx.lam, conjugate, ctx.form, ctx.squared, e1, e2,
        aux_a, aux_b, aux_c, *need)
    out = [gM1, gM2, gS, gw]
    return tuple(o if n else None for o, n in zip(out, need)) + (None, None, None, None)


torch.library.register_autograd("orbitcore::moment_loss", _ml_bwd, setup_context=_ml_setup)
torch.library.register_autograd("orbitcore::moment_loss_backward", _no_double_backward,
                                setup_context=_no_double_setup)


def gram_is_cheaper(q: int, m: int) -> bool:
    """The rule of ``form="auto"``: the Gram form costs ``~q m² + 2 q² m`` multiply-adds (one
    product with M̂2, the q × q Gram matrix and its use in the backward), the dense form
    ``~2 q m²`` (forming M2 and back-propagating through it) plus several passes over an
    m × m matrix. Gram wins when ``2 q < m``."""
    return 2 * q < m


def moment_loss(M1_hat, M2_hat, slices, weights, lam: float = 1.0, *, conjugate=None, form: str = "auto",
                squared: bool = False, check: bool = True):
    """Moment-matching loss (eqs. 26, 28):
    ``L = ‖M̂1 − M1‖ + λ ‖M̂2 − M2‖`` (Frobenius norms) with ``M1 = Σ_j ρ_j S_j``,
    ``M2 = Σ_j ρ_j S_j S_j^*`` — differentiable in the slices, the weights and the targets.

    Two evaluations, chosen by ``form``:
        ``"dense"``: form the ``m × m`` model matrix M2;
        ``"gram"``: never form it, use
        ``‖A − Σ ρ_j s_j s_j^*‖² = ‖A‖² − 2 Σ_j ρ_j s_j^* A s_j + Σ_ij ρ_i ρ_j |s_i^* s_j|²``
        (a ``q × q`` Gram matrix); ``"auto"`` picks the cheaper (:func:`gram_is_cheaper`:
        Gram when ``2q < m``). Both agree with the direct formula to rounding; the Gram form
        computes the squared residual as a difference of large terms, so its *value* loses
        relative accuracy ``~ eps (‖A‖ / ‖A − M2‖)²`` when the fit is very close (gradients
        do not suffer this): use ``form="dense"`` or float64 when the loss value itself matters
        at relative residuals below ~1e-3 in float32.

    Args:
        M1_hat: complex ``(m,)``; M2_hat: complex ``(m, m)`` (data moments, e.g.
            :meth:`MomentAccumulator.result`; same dtype and device as ``slices``).
        slices: complex ``(q, m)``: the model's slices at the moment frequencies (see
            :func:`model_moments`).
        weights: real ``(q,)`` (the slices' real dtype): the density ρ, used as given (not
            renormalised); negative values raise unless ``check=False``.
        lam: λ >= 0, the weight of the second-moment term.
        conjugate: optional int64 ``(m,)`` (``Moments.conjugate`` / ``MomentLayout.conjugate``):
            the position of ``−k`` for each frequency. Then the slices are taken to be the FT
            of real objects (Hermitian symmetric, ``S[:, conjugate] == conj(S)``, as slices of
            real volumes and spectra of real signals are) and the loss is computed in the real
            basis of that symmetry — real GEMMs of the same sizes, ~4× fewer flops. The loss is
            that of the Hermitian part ``(S + conj(S[:, conjugate])) / 2`` of the slices (equal
            to ``S`` for such slices), and so is its gradient.
        form: ``"auto"``, ``"gram"`` or ``"dense"``.
        squared: use squared norms ``‖·‖² + λ‖·‖²`` instead (smooth at a perfect fit). With
            plain norms the gradient of a term whose residual is exactly 0 is taken as 0.
        check: validate values (finite, non-negative weights, the conjugate map).

    Returns:
        0-d real tensor (the slices' real dtype).
    """
    fn = "moment_loss"
    S, w, _ = _slices_weights(fn, slices, weights, check)
    q, m = S.shape
    A1, _ = to_tensor(M1_hat, fn, "M1_hat")
    A2, _ = to_tensor(M2_hat, fn, "M2_hat")
    for name, t, shape in (("M1_hat", A1, (m,)), ("M2_hat", A2, (m, m))):
        if t.dtype != S.dtype:
            fail(fn, f"{name} must have dtype {S.dtype} to match slices, got {t.dtype}", TypeError)
        if tuple(t.shape) != shape:
            fail(fn, f"{name} must have shape {shape} for slices with m = {m} frequencies, got {tuple(t.shape)}")
        if t.device != S.device:
            fail(fn, f"{name} must be on the same device as slices ({S.device}), got {t.device}")
    if isinstance(lam, bool) or not isinstance(lam, numbers.Real):
        fail(fn, f"lam must be a real number, got {type(lam).__name__} {lam!r}", TypeError)
    lam = float(lam)
    if not math.isfinite(lam) or lam < 0:
        fail(fn, f"lam must be finite and >= 0, got {lam}")
    if form not in ("auto", "gram", "dense"):
        fail(fn, f"form must be 'auto', 'gram' or 'dense', got {form!r}")
    if form == "auto":
        form = "gram" if gram_is_cheaper(q, m) else "dense"
    if conjugate is None:
        conj = torch.empty(0, dtype=torch.int64, device=S.device)
    else:
        conj, _ = to_tensor(conjugate, fn, "conjugate")
        if conj.dtype != torch.int64 or tuple(conj.shape) != (m,):
            fail(fn, f"conjugate must be an int64 array of shape ({m},), got {conj.dtype} {tuple(conj.shape)}")
        conj = conj.to(S.device)
        if check and checking():
            if bool(((conj < 0) | (conj >= m)).any()):
                fail(fn, f"conjugate values must lie in [0, {m})")
            if not bool((conj[conj] == torch.arange(m, device=conj.device)).all()):
                fail(fn, "conjugate must be an involution (conjugate[conjugate[u]] == u): the position of "
                         "-k for each frequency k (MomentLayout.conjugate)")
    loss, *_ = torch.ops.orbitcore.moment_loss(A1, A2, S, w, lam, conj, form, bool(squared))
    if check and checking() and not math.isfinite(float(loss.detach())):
        _diagnose_non_finite(fn, M1_hat=A1, M2_hat=A2, slices=S)
    return loss
