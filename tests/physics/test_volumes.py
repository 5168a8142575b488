"""Built-in volumes: Gaussian mixtures (seeds/000 §5.2), the chiral pseudo-molecule, Shepp–Logan."""
import math

import pytest
import torch

from orbitcore.physics import (
    four_gaussians,
    gaussian_mixture_volume,
    pseudo_molecule,
    pseudo_molecule_atoms,
    random_gaussian_mixture,
    shepp_logan_3d,
)
from orbitcore.physics.volumes import _FOUR_GAUSSIANS


def direct_gaussians(D, centers, sigmas, amps):
    k = torch.arange(D, dtype=torch.float64) - D // 2
    z, y, x = torch.meshgrid(k, k, k, indexing="ij")
    v = torch.zeros(D, D, D, dtype=torch.float64)
    for (cx, cy, cz), s, a in zip(centers, sigmas, amps):
        v += a * torch.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * s ** 2))
    return v


def test_gaussian_mixture_matches_direct_formula():
    c = [(1.0, -2.0, 3.5), (-4.0, 0.5, 0.0)]
    got = gaussian_mixture_volume(15, c, [1.5, 2.5], [1.0, 0.3], dtype=torch.float64)
    torch.testing.assert_close(got, direct_gaussians(15, c, [1.5, 2.5], [1.0, 0.3]), rtol=0, atol=1e-12)
    # [z, y, x] indexing with the origin at D // 2: the peak of one narrow blob is where it should be
    v = gaussian_mixture_volume(16, [(3.0, -2.0, 5.0)], 1.0, dtype=torch.float64)
    assert tuple(int(i) for i in torch.nonzero(v == v.max())[0]) == (8 + 5, 8 - 2, 8 + 3)


def test_four_gaussians_seeds000():
    v = four_gaussians()
    assert v.shape == (25, 25, 25)
    c = torch.tensor([g[0] for g in _FOUR_GAUSSIANS], dtype=torch.float64)
    s = [g[1] for g in _FOUR_GAUSSIANS]
    a = [g[2] for g in _FOUR_GAUSSIANS]
    torch.testing.assert_close(v.double(), direct_gaussians(25, c, s, a), rtol=0, atol=1e-6)
    # four Gaussians not lying on one plane: the tetrahedron of centres has volume
    assert abs(float(torch.det(c[1:] - c[0]))) / 6 > 10.0
    # all inside the box with a margin of 3 sigma
    assert float((c.abs() + 3 * torch.tensor(s)[:, None]).max()) < 12
    # other sizes keep the shape: the mass centre scales with D
    big = four_gaussians(50).double()
    k = torch.arange(50, dtype=torch.float64) - 25
    m25 = (v.double().sum((0, 1)) * (torch.arange(25) - 12)).sum() / v.double().sum()
    m50 = (big.sum((0, 1)) * k).sum() / big.sum()
    assert float(m50) == pytest.approx(2 * float(m25), rel=1e-3)


def test_random_gaussian_mixture_seeded():
    a = random_gaussian_mixture(24, 3, generator=torch.Generator().manual_seed(1))
    b = random_gaussian_mixture(24, 3, generator=torch.Generator().manual_seed(1))
    c = random_gaussian_mixture(24, 3, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_pseudo_molecule_properties():
    x, w = pseudo_molecule_atoms(300, seed=0)
    assert x.shape == (300, 3) and w.shape == (300,)
    assert float(x.norm(dim=1).max()) == pytest.approx(1.0)
    assert float(x.mean(0).norm()) < 1e-12
    # a globule, not a rod: the inertia tensor is not degenerate
    ev = torch.linalg.eigvalsh(x.T @ x / 300)
    assert float(ev.min() / ev.max()) > 0.3
    v = pseudo_molecule(48, seed=0)
    assert v.shape == (48, 48, 48) and float(v.max()) == pytest.approx(1.0) and float(v.min()) >= 0
    # inside the inscribed sphere: the projector's periodic box never wraps it
    r = torch.arange(48, dtype=torch.float64) - 24
    rr = torch.sqrt(r[:, None, None] ** 2 + r[None, :, None] ** 2 + r[None, None, :] ** 2)
    assert float(v.double()[rr > 23].sum() / v.double().sum()) < 1e-4
    assert torch.equal(v, pseudo_molecule(48, seed=0))
    assert not torch.equal(v, pseudo_molecule(48, seed=1))


def test_pseudo_molecule_helices_are_right_handed():
    # consecutive atoms inside a helix turn by +100° about the helix axis: the signed volume
    # (a × b) · c of three consecutive bonds is positive for a right-handed helix, so most
    # bond triples (helices dominate the chain) have a positive triple product
    x, _ = pseudo_molecule_atoms(300, seed=3)
    b = x[1:] - x[:-1]
    trip = (torch.linalg.cross(b[:-2], b[1:-1], dim=1) * b[2:]).sum(1)
    assert float((trip > 0).double().mean()) > 0.7


def test_shepp_logan():
    v = shepp_logan_3d(32)
    assert v.shape == (32, 32, 32) and float(v.max()) == pytest.approx(1.0) and float(v.min()) >= 0


@pytest.mark.parametrize("call, match", [
    (lambda: gaussian_mixture_volume(8, [(0, 0)], 1.0), r"gaussian_mixture_volume: centers must have shape \(K, 3\)"),
    (lambda: gaussian_mixture_volume(8, [(0, 0, 0)], 0.0), r"gaussian_mixture_volume: sigmas must be > 0"),
    (lambda: gaussian_mixture_volume(8, [(0, 0, 0)], [1.0, 2.0]), r"sigmas and amplitudes must have shape \(K,\)"),
    (lambda: pseudo_molecule(64, n_atoms=2), r"pseudo_molecule_atoms: n_atoms must be >= 4"),
    (lambda: four_gaussians(4), r"four_gaussians: D must be >= 8"),
])
def test_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call()
