"""von Mises–Fisher sampling and densities on S², and the vMF-mixture rotation distribution,
against closed forms (the law of μ·x, the mean resultant length, normalisation by quadrature)."""
import math

import numpy as np
import pytest
import torch

from orbitcore.geometry import (
    VonMisesFisherMixture,
    fibonacci_sphere,
    rotations_from_directions,
    sample_vmf,
    vmf_density,
)


def cdf_w(w, k):
    """P(μ·x <= w) for the vMF on S²: (e^{κw} - e^{-κ}) / (e^{κ} - e^{-κ})."""
    return (np.exp(k * (w - 1)) - np.exp(-2 * k)) / (1 - np.exp(-2 * k))


@pytest.mark.parametrize("kappa", [0.5, 5.0, 60.0])
def test_vmf_law_of_the_cosine(kappa):
    g = torch.Generator().manual_seed(1)
    mu = torch.tensor([0.3, -0.5, 0.8], dtype=torch.float64)
    x = sample_vmf(mu, kappa, 20000, generator=g)
    assert torch.allclose(x.norm(dim=1), torch.ones(20000, dtype=torch.float64))
    w = (x @ (mu / mu.norm())).numpy()
    # mean resultant length coth κ - 1/κ
    assert w.mean() == pytest.approx(1 / math.tanh(kappa) - 1 / kappa, abs=4 * w.std() / math.sqrt(len(w)))
    # Kolmogorov–Smirnov distance to the exact law of μ·x
    ws = np.sort(w)
    F = cdf_w(ws, kappa)
    ks = np.max(np.maximum(np.arange(1, len(ws) + 1) / len(ws) - F, F - np.arange(len(ws)) / len(ws)))
    assert ks < 1.63 / math.sqrt(len(ws))  # 1% level
    # the azimuth around μ is uniform: the perpendicular component averages to 0
    perp = x - torch.from_numpy(w)[:, None] * (mu / mu.norm())
    assert float(perp.mean(0).norm()) < 0.02


def test_kappa_zero_is_uniform():
    g = torch.Generator().manual_seed(2)
    x = sample_vmf([0, 0, 1.0], 0.0, 20000, generator=g)
    assert float(x.mean(0).norm()) < 0.03
    assert float(vmf_density(torch.tensor([1.0, 0, 0]), [0, 0, 1.0], 0.0)) == pytest.approx(1 / (4 * math.pi))


def _sphere_integral(f, n=400):
    """∫_{S²} f dA by the midpoint rule in (cos θ, φ) (area element d(cos θ) dφ)."""
    u = (np.arange(n) + 0.5) / n * 2 - 1
    phi = (np.arange(2 * n) + 0.5) / (2 * n) * 2 * np.pi
    U, P = np.meshgrid(u, phi, indexing="ij")
    r = np.sqrt(1 - U ** 2)
    X = np.stack([r * np.cos(P), r * np.sin(P), U], -1)
    vals = f(torch.from_numpy(X)).numpy()
    return vals.sum() * (2 / n) * (np.pi / n)


@pytest.mark.parametrize("kappa", [0.0, 1.0, 10.0, 40.0])
def test_density_normalised_and_formula(kappa):
    mu = torch.tensor([1.0, 2.0, -2.0], dtype=torch.float64)
    assert _sphere_integral(lambda X: vmf_density(X, mu, kappa)) == pytest.approx(1.0, abs=2e-3)
    if 0 < kappa < 30:
        x = torch.tensor([0.6, 0.0, 0.8], dtype=torch.float64)
        want = kappa / (4 * math.pi * math.sinh(kappa)) * math.exp(kappa * float(x @ (mu / mu.norm())))
        assert float(vmf_density(x, mu, kappa)) == pytest.approx(want, rel=1e-12)


def test_cap_probability_matches_density():
    # fraction of samples in the cap μ·x > c equals its exact probability
    g = torch.Generator().manual_seed(3)
    k, c = 8.0, 0.9
    x = sample_vmf([0, 1.0, 0], k, 40000, generator=g)
    frac = float((x[:, 1] > c).double().mean())
    want = 1 - cdf_w(c, k)
    assert frac == pytest.approx(want, abs=4 * math.sqrt(want * (1 - want) / 40000))


def test_rotations_from_directions():
    g = torch.Generator().manual_seed(4)
    d = torch.randn(50, 3, generator=g, dtype=torch.float64)
    d = d / d.norm(dim=1, keepdim=True)
    d[0] = torch.tensor([0, 0, 1.0])
    d[1] = torch.tensor([0, 0, -1.0])
    psi = torch.rand(50, generator=g, dtype=torch.float64) * 6.28
    R = rotations_from_directions(d, psi)
    eye = torch.eye(3, dtype=torch.float64)
    torch.testing.assert_close(R.transpose(-1, -2) @ R, eye.expand(50, 3, 3))
    torch.testing.assert_close(torch.det(R), torch.ones(50, dtype=torch.float64))
    torch.testing.assert_close(R[..., :, 2], d)  # viewing direction R e_z
    # psi is the in-plane angle: R(ψ) = R(0) Rz(ψ)
    R0 = rotations_from_directions(d, torch.zeros(50, dtype=torch.float64))
    c, s = torch.cos(psi), torch.sin(psi)
    Rz = torch.zeros(50, 3, 3, dtype=torch.float64)
    Rz[:, 0, 0], Rz[:, 0, 1], Rz[:, 1, 0], Rz[:, 1, 1], Rz[:, 2, 2] = c, -s, s, c, 1
    torch.testing.assert_close(R, R0 @ Rz)


def test_mixture_sampling_and_densities():
    means = torch.tensor([[1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]], dtype=torch.float64)
    mix = VonMisesFisherMixture(means, torch.tensor([30.0, 10.0, 3.0]), torch.tensor([2.0, 1.0, 1.0]))
    torch.testing.assert_close(mix.weights, torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64))
    g = torch.Generator().manual_seed(5)
    R, labels = mix.sample_rotations(30000, generator=g, dtype=torch.float64)
    counts = torch.bincount(labels, minlength=3).double() / 30000
    torch.testing.assert_close(counts, mix.weights, atol=0.015, rtol=0)
    d = R[..., :, 2]
    for k in range(3):
        m = d[labels == k].mean(0)
        want = (1 / math.tanh(float(mix.kappas[k])) - 1 / float(mix.kappas[k])) * means[k]
        torch.testing.assert_close(m, want, atol=0.02, rtol=0)
    # in-plane angle uniform and independent: the image x axis averages to 0 within each component
    assert float(R[labels == 0][..., :, 0].mean(0).norm()) < 0.03
    assert _sphere_integral(mix.density) == pytest.approx(1.0, abs=2e-3)
    # SO(3) density w.r.t. the normalised Haar measure: 4π f(R e_z); uniform mixture gives 1
    torch.testing.assert_close(mix.so3_density(R[:5]), 4 * math.pi * mix.density(d[:5]))
    uni = VonMisesFisherMixture(means[:1], torch.tensor([0.0]), torch.tensor([1.0]))
    torch.testing.assert_close(uni.so3_density(R[:5]), torch.ones(5, dtype=torch.float64))


def test_random_mixture_is_seeded():
    a = VonMisesFisherMixture.random(8, generator=torch.Generator().manual_seed(7))
    b = VonMisesFisherMixture.random(8, generator=torch.Generator().manual_seed(7))
    assert len(a) == 8 and torch.equal(a.means, b.means) and torch.equal(a.kappas, b.kappas)
    assert bool(((a.kappas >= 2) & (a.kappas <= 20)).all())


def test_fibonacci_sphere_is_spread():
    x = fibonacci_sphere(200)
    torch.testing.assert_close(x.norm(dim=1), torch.ones(200, dtype=torch.float64))
    assert float(x.mean(0).norm()) < 1e-2
    d = torch.cdist(x, x) + 10 * torch.eye(200, dtype=torch.float64)
    assert float(d.min()) > 0.5 * math.sqrt(4 * math.pi / 200)


@pytest.mark.parametrize("call, match", [
    (lambda: sample_vmf([0, 0, 0], 1.0, 5), r"sample_vmf: mu must be finite non-zero vectors"),
    (lambda: sample_vmf([0, 0, 1.0], -1.0, 5), r"sample_vmf: kappa must be >= 0"),
    (lambda: VonMisesFisherMixture(torch.ones(2, 3), torch.ones(3), torch.ones(2)),
     r"VonMisesFisherMixture: kappas and weights must have shape \(K,\) = \(2,\)"),
    (lambda: VonMisesFisherMixture(torch.ones(2, 3), torch.ones(2), torch.zeros(2)),
     r"VonMisesFisherMixture: weights must be finite, >= 0 and not all 0"),
    (lambda: VonMisesFisherMixture.random(3, kappa=(5.0, 1.0)), r"kappa must be \(low, high\)"),
])
def test_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call()
