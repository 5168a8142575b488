"""Distributions of viewing directions and rotations (seeds/000 §5.2).

* von Mises–Fisher (vMF) on the sphere S²: density ``f(x) = κ / (4π sinh κ) · exp(κ μ·x)``
  with respect to the area measure (integrates to 1 over S²); ``κ = 0`` is uniform.
* :class:`VonMisesFisherMixture`: a mixture of vMF viewing directions times a uniform,
  independent in-plane angle, the non-uniform rotation distribution of seeds/000 §5.2.

Rotations follow ARCHITECTURE.md: the viewing direction of ``R`` is ``R @ e_z``. A rotation
with viewing direction ``d = (sin θ cos φ, sin θ sin φ, cos θ)`` and in-plane angle ``ψ`` is
``R = Rz(φ) · Ry(θ) · Rz(ψ)`` (active rotations about the coordinate axes).

Every sampler takes a ``torch.Generator``; results reproduce.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._validate import check_float, check_int, fail, from_tensor, to_tensor

__all__ = ["sample_vmf", "vmf_density", "rotations_from_directions", "VonMisesFisherMixture",
           "fibonacci_sphere"]


def _unit(fn: str, name: str, x) -> tuple[torch.Tensor, str]:
    t, kind = to_tensor(x, fn, name)
    if t.is_complex() or t.dim() < 1 or t.shape[-1] != 3:
        fail(fn, f"{name} must be real with shape (..., 3), got {t.dtype} {tuple(t.shape)}")
    t = t.to(torch.float64)
    nrm = t.norm(dim=-1, keepdim=True)
    if bool((nrm == 0).any()) or not bool(torch.isfinite(t).all()):
        fail(fn, f"{name} must be finite non-zero vectors (they are normalised), got a zero or non-finite one")
    return t / nrm, kind


def _orthonormal_frame(mu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two unit vectors (e1, e2) with (e1, e2, mu) a right-handed orthonormal frame."""
    helper = torch.where((mu[..., 2:3].abs() < 0.9), torch.tensor([0.0, 0.0, 1.0], dtype=mu.dtype, device=mu.device),
                         torch.tensor([1.0, 0.0, 0.0], dtype=mu.dtype, device=mu.device))
    e1 = torch.linalg.cross(helper, mu, dim=-1)
    e1 = e1 / e1.norm(dim=-1, keepdim=True)
    e2 = torch.linalg.cross(mu, e1, dim=-1)
    return e1, e2


def _sample_w(kappa: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Cosine ``w = μ·x`` of a vMF draw on S² by inversion of its CDF:
    ``w = 1 + log(1 + (1 - u)(exp(-2κ) - 1)) / κ`` (stable for small and large κ; uniform at κ = 0)."""
    k = kappa.clamp_min(1e-300)
    w = 1.0 + torch.log1p((1.0 - u) * torch.expm1(-2.0 * k)) / k
    w = torch.where(kappa < 1e-8, 2.0 * u - 1.0, w)
    return w.clamp(-1.0, 1.0)


def sample_vmf(mu, kappa: float, n: int, *, generator: torch.Generator | None = None,
               dtype=torch.float64):
    """``n`` unit vectors ``(n, 3)`` drawn from the vMF distribution with mean direction ``mu``
    ``(3,)`` (normalised here) and concentration ``kappa >= 0`` (exact sampler: the cosine to
    ``mu`` by inversion of its CDF, the azimuth uniform)."""
    fn = "sample_vmf"
    m, kind = _unit(fn, "mu", mu)
    if m.shape != (3,):
        fail(fn, f"mu must have shape (3,), got {tuple(m.shape)}")
    k = check_float(fn, "kappa", kappa, minimum=0.0)
    n = check_int(fn, "n", n, minimum=0)
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    phi = 2 * math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
    w = _sample_w(torch.full((n,), k, dtype=torch.float64), u)
    e1, e2 = _orthonormal_frame(m)
    r = torch.sqrt((1.0 - w * w).clamp_min(0.0))
    x = r[:, None] * (torch.cos(phi)[:, None] * e1 + torch.sin(phi)[:, None] * e2) + w[:, None] * m
    return from_tensor(x.to(dtype), kind)


def vmf_density(x, mu, kappa: float):
    """vMF density ``κ / (4π sinh κ) exp(κ μ·x)`` at unit vectors ``x`` ``(..., 3)`` (w.r.t.
    the area on S², integrates to 1; ``1/(4π)`` at κ = 0), evaluated stably for large κ."""
    fn = "vmf_density"
    xs, kind = _unit(fn, "x", x)
    m, _ = _unit(fn, "mu", mu)
    k = check_float(fn, "kappa", kappa, minimum=0.0)
    return from_tensor(_vmf_pdf(xs, m, torch.tensor(k, dtype=torch.float64)), kind)


def _vmf_pdf(x: torch.Tensor, mu: torch.Tensor, kappa: torch.Tensor) -> torch.Tensor:
    """x (..., 3), mu (..., 3), kappa (...) broadcastable; float64."""
    dot = (x * mu).sum(-1)
    k = kappa.clamp_min(1e-300)
    # κ / (2π (1 - e^{-2κ})) · exp(κ (μ·x - 1))
    norm = k / (2 * math.pi * (-torch.expm1(-2 * k)))
    pdf = norm * torch.exp(k * (dot - 1.0))
    return torch.where(kappa < 1e-8, torch.full_like(pdf, 1.0 / (4 * math.pi)), pdf)


def rotations_from_directions(directions, psi):
    """Rotations ``(..., 3, 3)`` with viewing direction ``R @ e_z = directions`` ``(..., 3)``
    (normalised here) and in-plane angle ``psi`` (radians, broadcast):
    ``R = Rz(φ) Ry(θ) Rz(ψ)`` with ``(θ, φ)`` the polar/azimuthal angles of the direction."""
    fn = "rotations_from_directions"
    d, kind = _unit(fn, "directions", directions)
    p, _ = to_tensor(psi, fn, "psi")
    p = p.to(torch.float64)
    theta = torch.acos(d[..., 2].clamp(-1.0, 1.0))
    phi = torch.atan2(d[..., 1], d[..., 0])
    theta, phi, p = torch.broadcast_tensors(theta, phi, p)

    def rz(a):
        c, s = torch.cos(a), torch.sin(a)
        z, o = torch.zeros_like(a), torch.ones_like(a)
        return torch.stack((c, -s, z, s, c, z, z, z, o), -1).reshape(*a.shape, 3, 3)

    def ry(a):
        c, s = torch.cos(a), torch.sin(a)
        z, o = torch.zeros_like(a), torch.ones_like(a)
        return torch.stack((c, z, s, z, o, z, -s, z, c), -1).reshape(*a.shape, 3, 3)

    return from_tensor(rz(phi) @ ry(theta) @ rz(p), kind)


def fibonacci_sphere(n: int, *, dtype=torch.float64) -> torch.Tensor:
    """``n`` nearly uniformly spread unit vectors ``(n, 3)`` (golden-angle spiral), deterministic."""
    n = check_int("fibonacci_sphere", "n", n, minimum=1)
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1.0 - 2.0 * i / n
    r = torch.sqrt((1.0 - z * z).clamp_min(0))
    phi = math.pi * (3.0 - math.sqrt(5.0)) * i
    return torch.stack((r * torch.cos(phi), r * torch.sin(phi), z), -1).to(dtype)


@dataclass
class VonMisesFisherMixture:
    """Mixture of vMF viewing directions times a uniform in-plane angle (seeds/000 §5.2).

    Attributes:
        means: ``(K, 3)`` unit mean directions (normalised at construction).
        kappas: ``(K,)`` concentrations ``>= 0``.
        weights: ``(K,)`` mixture weights (normalised to sum 1 at construction).

    Densities: :meth:`density` on S² (w.r.t. area, integrates to 1); :meth:`so3_density` on
    SO(3) w.r.t. the normalised Haar measure (uniform = 1), ``4π · density(R @ e_z)`` since the
    in-plane angle is uniform and independent.
    """

    means: torch.Tensor
    kappas: torch.Tensor
    weights: torch.Tensor

    def __post_init__(self):
        fn = "VonMisesFisherMixture"
        m, _ = _unit(fn, "means", self.means)
        if m.dim() != 2:
            fail(fn, f"means must have shape (K, 3), got {tuple(m.shape)}")
        K = m.shape[0]
        k, _ = to_tensor(self.kappas, fn, "kappas")
        w, _ = to_tensor(self.weights, fn, "weights")
        k, w = k.to(torch.float64).reshape(-1), w.to(torch.float64).reshape(-1)
        if k.numel() == 1 and K > 1:
            k = k.expand(K).clone()
        if k.shape != (K,) or w.shape != (K,):
            fail(fn, f"kappas and weights must have shape (K,) = ({K},), got {tuple(k.shape)} and {tuple(w.shape)}")
        if not bool(torch.isfinite(k).all()) or bool((k < 0).any()):
            fail(fn, f"kappas must be finite and >= 0, got {k.tolist()}")
        if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or float(w.sum()) <= 0:
            fail(fn, f"weights must be finite, >= 0 and not all 0, got {w.tolist()}")
        self.means, self.kappas, self.weights = m, k, w / w.sum()

    def __len__(self) -> int:
        return int(self.means.shape[0])

    @classmethod
    def random(cls, n_components: int = 8, kappa: tuple[float, float] = (2.0, 20.0), *,
               generator: torch.Generator | None = None) -> "VonMisesFisherMixture":
        """A random mixture like seeds/000 §5.2 (8 components by default): means uniform on S²,
        concentrations uniform in ``kappa`` = (low, high), weights uniform then normalised."""
        fn = "VonMisesFisherMixture.random"
        K = check_int(fn, "n_components", n_components, minimum=1)
        if len(kappa) != 2 or not (0 <= kappa[0] <= kappa[1]):
            fail(fn, f"kappa must be (low, high) with 0 <= low <= high, got {kappa!r}")
        means = torch.randn(K, 3, generator=generator, dtype=torch.float64)
        kap = kappa[0] + (kappa[1] - kappa[0]) * torch.rand(K, generator=generator, dtype=torch.float64)
        w = 0.5 + torch.rand(K, generator=generator, dtype=torch.float64)
        return cls(means, kap, w)

    def sample_directions(self, n: int, *, generator: torch.Generator | None = None):
        """``(directions (n, 3), component labels (n,))``."""
        n = check_int("VonMisesFisherMixture.sample_directions", "n", n, minimum=0)
        labels = torch.multinomial(self.weights, n, replacement=True, generator=generator) if n else \
            torch.zeros(0, dtype=torch.long)
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        phi = 2 * math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
        mu = self.means[labels]
        w = _sample_w(self.kappas[labels], u)
        e1, e2 = _orthonormal_frame(mu)
        r = torch.sqrt((1.0 - w * w).clamp_min(0.0))
        x = r[:, None] * (torch.cos(phi)[:, None] * e1 + torch.sin(phi)[:, None] * e2) + w[:, None] * mu
        return x, labels

    def sample_rotations(self, n: int, *, generator: torch.Generator | None = None, dtype=torch.float32):
        """``(rotations (n, 3, 3), labels (n,))``: vMF-mixture viewing directions times a uniform
        in-plane angle."""
        d, labels = self.sample_directions(n, generator=generator)
        psi = 2 * math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
        return rotations_from_directions(d, psi).to(dtype), labels

    def density(self, x):
        """Mixture density at unit vectors ``(..., 3)`` w.r.t. the area on S² (integrates to 1)."""
        xs, kind = _unit("VonMisesFisherMixture.density", "x", x)
        pdf = _vmf_pdf(xs[..., None, :], self.means, self.kappas)  # (..., K)
        return from_tensor((pdf * self.weights).sum(-1), kind)

    def so3_density(self, rotations):
        """Density on SO(3) w.r.t. the normalised Haar measure (uniform = 1) at ``(..., 3, 3)``."""
        R, kind = to_tensor(rotations, "VonMisesFisherMixture.so3_density", "rotations")
        if R.dim() < 2 or tuple(R.shape[-2:]) != (3, 3):
            fail("VonMisesFisherMixture.so3_density", f"rotations must have shape (..., 3, 3), got {tuple(R.shape)}")
        d = R.to(torch.float64)[..., :, 2]
        return from_tensor(4 * math.pi * self.density(d), kind)
