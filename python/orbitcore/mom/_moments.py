"""The moment primitives the method of moments stands on, in one place.

* data side (eq. 24): ``M̂1 = (1/N) Σ_j F v_j``, ``M̂2 = (1/N) Σ_j (F v_j)(F v_j)^* − n σ² I``;
* model side (eq. 25): ``M1 = Σ_j ρ_j S_j``, ``M2 = Σ_j ρ_j S_j S_j^*``;
* loss (eq. 26): ``‖M̂1 − M1‖_F + λ ‖M̂2 − M2‖_F``.

``F`` here is the library's centred, *unnormalised* DFT (``orbitcore.fourier.fft1c``), hence the
``n σ²`` on the diagonal (white noise of variance σ² per sample has variance ``n σ²`` per
frequency).

:func:`accumulator`, :func:`model_moments` and :func:`moment_loss` run on orbitcore's compiled
moment kernels (``orbitcore.MomentAccumulator``, ``orbitcore.model_moments``,
``orbitcore.moment_loss``). The ``torch_*`` versions are the same formulas in plain PyTorch:
the independent reference of the tests and the baseline of ``benchmarks/bench_mom_mra.py``.
"""
from __future__ import annotations

import torch

from .. import fourier
from ..ops.moments import MomentAccumulator
from ..ops.moments import model_moments as _kernel_model_moments
from ..ops.moments import moment_loss as _kernel_moment_loss

__all__ = [
    "accumulator", "model_moments", "moment_loss", "conjugate_map",
    "TorchMomentAccumulator", "torch_model_moments", "torch_moment_loss",
]


# ------------------------------------------------------------------------------------------------
# The kernels, behind the small contract the MRA code uses
# ------------------------------------------------------------------------------------------------
class _KernelAccumulator:
    """``MomentAccumulator`` for signals (ndim 1, all n frequencies, float64 accumulation) behind
    ``update(batch)``, ``count``, ``result() -> (M1, M2)``."""

    def __init__(self, n: int, sigma2: float):
        self._acc = MomentAccumulator(n, 1, sigma2=float(sigma2), dtype=torch.float64)

    @property
    def count(self) -> int:
        return self._acc.count

    def update(self, batch: torch.Tensor) -> "_KernelAccumulator":
        self._acc.update(batch)
        return self

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        r = self._acc.result()
        return r.M1, r.M2


def accumulator(n: int, sigma2: float = 0.0) -> _KernelAccumulator:
    """A streaming accumulator of the MRA moments (eq. 24) of signals of length ``n`` with known
    per-sample noise variance ``sigma2`` (kernel-backed; memory independent of N)."""
    return _KernelAccumulator(n, sigma2)


def conjugate_map(n: int, device=None) -> torch.Tensor:
    """int64 ``(n,)``: index of ``−k`` for each centred frequency index (mod n)."""
    c = n // 2
    i = torch.arange(n, device=device)
    return ((c - i) % n + c) % n


def model_moments(slices: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 25 through the kernel op (differentiable)."""
    return _kernel_model_moments(slices, weights)


def moment_loss(M1_hat, M2_hat, slices, weights, lam: float = 1.0, *, hermitian: bool = False) -> torch.Tensor:
    """Eq. 26 through the kernel op (differentiable).

    ``hermitian=True`` declares the slices to be spectra of real signals
    (``S[:, −k] = conj(S[:, k])``); the kernel then works in the real basis of that symmetry
    (same value, fewer flops, a larger fixed cost per call).
    """
    conj = conjugate_map(slices.shape[-1], slices.device) if hermitian else None
    return _kernel_moment_loss(M1_hat, M2_hat, slices, weights, lam, conjugate=conj)


# ------------------------------------------------------------------------------------------------
# Plain PyTorch (test reference and benchmark baseline)
# ------------------------------------------------------------------------------------------------
class TorchMomentAccumulator:
    """Streaming M̂1, M̂2 of real signals ``(B, n)`` in plain PyTorch: FFT each batch
    (``fft1c``) and add the complex outer products ``X^T conj(X)`` in complex128.
    Same contract as :func:`accumulator`."""

    def __init__(self, n: int, sigma2: float = 0.0):
        self.n = int(n)
        self.sigma2 = float(sigma2)
        self._s1 = torch.zeros(self.n, dtype=torch.complex128)
        self._s2 = torch.zeros(self.n, self.n, dtype=torch.complex128)
        self.count = 0

    def update(self, batch: torch.Tensor) -> "TorchMomentAccumulator":
        X = fourier.fft1c(batch.reshape(-1, self.n).to(torch.float64))
        self._s1 += X.sum(0)
        self._s2 += X.mT @ X.conj()
        self.count += X.shape[0]
        return self

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        N = max(self.count, 1)
        M2 = self._s2 / N - self.n * self.sigma2 * torch.eye(self.n, dtype=torch.complex128)
        return self._s1 / N, M2


def torch_model_moments(slices: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 25 densely: ``M1 = Σ_j w_j S_j`` ``(m,)``, ``M2 = Σ_j w_j S_j S_j^*`` ``(m, m)``."""
    w = weights.to(slices.dtype)
    return w @ slices, (slices.mT * w) @ slices.conj()


def torch_moment_loss(M1_hat, M2_hat, slices, weights, lam: float = 1.0) -> torch.Tensor:
    """Eq. 26 densely with autograd: ``‖M̂1 − M1‖_F + λ ‖M̂2 − M2‖_F``."""
    M1, M2 = torch_model_moments(slices, weights)
    return torch.linalg.vector_norm(M1_hat - M1) + lam * torch.linalg.vector_norm(M2_hat - M2)
