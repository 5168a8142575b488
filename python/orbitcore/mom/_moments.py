"""The moment primitives the method of moments stands on, in one place.

This module is the **single switch-over point** between orbitcore's compiled moment kernels
(issue 4: ``orbitcore.MomentAccumulator``, ``orbitcore.model_moments``,
``orbitcore.moment_loss``) and plain PyTorch implementations of the same formulas:

* data side (eq. 24): ``M̂1 = (1/N) Σ_j F v_j``, ``M̂2 = (1/N) Σ_j (F v_j)(F v_j)^* − n σ² I``;
* model side (eq. 25): ``M1 = Σ_j ρ_j S_j``, ``M2 = Σ_j ρ_j S_j S_j^*``;
* loss (eq. 26): ``‖M̂1 − M1‖_F + λ ‖M̂2 − M2‖_F``.

``F`` here is the library's centred, *unnormalised* DFT (``orbitcore.fourier.fft1c``), hence the
``n σ²`` on the diagonal (white noise of variance σ² per sample has variance ``n σ²`` per
frequency). The ``torch_*`` functions are always available: they are the test reference and
the "plain PyTorch" baseline of ``benchmarks/bench_mom_mra.py``. :func:`accumulator`,
:func:`model_moments` and :func:`moment_loss` use the kernels when this build has them
(:data:`USING_KERNELS`) and fall back to the ``torch_*`` versions otherwise.
"""
from __future__ import annotations

import torch

from .. import fourier

__all__ = [
    "USING_KERNELS", "accumulator", "model_moments", "moment_loss", "conjugate_map",
    "TorchMomentAccumulator", "torch_model_moments", "torch_moment_loss",
]


def _kernels():
    import orbitcore  # noqa: PLC0415

    names = ("MomentAccumulator", "model_moments", "moment_loss")
    if all(hasattr(orbitcore, n) for n in names):
        return orbitcore
    return None


_OC = _kernels()
#: True when orbitcore's compiled moment kernels (issue 4) are present and used.
USING_KERNELS: bool = _OC is not None


# ------------------------------------------------------------------------------------------------
# Plain PyTorch implementations (reference and baseline)
# ------------------------------------------------------------------------------------------------
class TorchMomentAccumulator:
    """Streaming M̂1, M̂2 of real signals ``(B, n)`` in plain PyTorch: FFT each batch
    (``fft1c``) and add the complex outer products ``X^T conj(X)`` in complex128.

    Same contract as the kernel-backed accumulator as used here: ``update(batch)``, ``count``,
    ``result() -> (M1 (n,), M2 (n, n))`` complex128 with ``n σ²`` removed from the diagonal.
    """

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


# ------------------------------------------------------------------------------------------------
# The switch
# ------------------------------------------------------------------------------------------------
class _KernelAccumulator:
    """Adapter: the kernel accumulator behind the ``update / count / result() -> (M1, M2)`` contract."""

    def __init__(self, n: int, sigma2: float):
        self._acc = _OC.MomentAccumulator(n, 1, sigma2=float(sigma2), dtype=torch.float64)

    @property
    def count(self) -> int:
        return self._acc.count

    def update(self, batch: torch.Tensor) -> "_KernelAccumulator":
        self._acc.update(batch)
        return self

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        r = self._acc.result()
        return r.M1, r.M2


def accumulator(n: int, sigma2: float = 0.0):
    """A streaming accumulator of the MRA moments (eq. 24) of signals of length ``n`` with known
    per-sample noise variance ``sigma2``: the kernel one when available."""
    if USING_KERNELS:
        return _KernelAccumulator(n, sigma2)
    return TorchMomentAccumulator(n, sigma2)


def conjugate_map(n: int, device=None) -> torch.Tensor:
    """int64 ``(n,)``: index of ``−k`` for each centred frequency index (mod n)."""
    c = n // 2
    i = torch.arange(n, device=device)
    return ((-(i - c)) % n + c) % n if n else i


def model_moments(slices: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 25, differentiable: the kernel op when available."""
    if USING_KERNELS:
        return _OC.model_moments(slices, weights)
    return torch_model_moments(slices, weights)


def moment_loss(M1_hat, M2_hat, slices, weights, lam: float = 1.0, *, hermitian: bool = False) -> torch.Tensor:
    """Eq. 26, differentiable: the kernel op when available.

    ``hermitian=True`` declares the slices to be spectra of real signals
    (``S[:, −k] = conj(S[:, k])``); the kernel then works in the real basis of that symmetry
    (same value, fewer flops).
    """
    if USING_KERNELS:
        conj = conjugate_map(slices.shape[-1], slices.device) if hermitian else None
        return _OC.moment_loss(M1_hat, M2_hat, slices, weights, lam, conjugate=conj)
    return torch_moment_loss(M1_hat, M2_hat, slices, weights, lam)
