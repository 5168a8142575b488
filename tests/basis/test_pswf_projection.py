"""The projection operator of seeds/002 eq. 14-16 against two independent paths:

(a) direct quadrature of the disk inner product b = <image, psi> through the eigen-equation,
    b_{N,n} = R conj(alpha_{N,n}) / 4 int_{|k|<=1} G(k/2) conj(psi_{N,n}(-k)) dk, with
    G(nu) = V(R (nu, 0)) evaluated straight from the volume basis at rotated points (no Wigner
    matrices, no beta): agreement to ~1e-14 pins the Wigner convention, beta and the rotation
    convention together;
(b) the volume on an oversampled Fourier grid, orbitcore.fourier_slice, and a Riemann sum over the
    slice: agreement to the trilinear interpolation error (second order in the grid step);
plus the real-space images against the exact band-limited projection, adjoints and symmetries.
"""
import math

import numpy as np
import pytest
import torch

import orbitcore as oc
from orbitcore import fourier
from orbitcore.basis import PSWF2D, Projector, VolumeBasis, project, project_coefficients
from orbitcore.basis._special import gauss_legendre
from orbitcore.geometry import axis_angle_to_matrix, random_rotations

F64 = torch.float64


@pytest.fixture(scope="module")
def setup11():
    vb = VolumeBasis(11, 10)
    return vb, Projector(vb)


def quadrature_coefficients(vb, pswf, x, R, nr=48, nphi=40):
    """Path (a): b by direct polar quadrature of G against psi(-k)."""
    kr, wr = gauss_legendre(nr, 0.0, 1.0)
    phi = np.arange(nphi) * 2 * np.pi / nphi
    KR, PH = np.meshgrid(kr, phi, indexing="ij")
    w = torch.from_numpy((wr[:, None] * KR * (2 * np.pi / nphi)).ravel())
    k = torch.from_numpy(np.stack([(KR * np.cos(PH)).ravel(), (KR * np.sin(PH)).ravel()], -1))
    Rp = pswf.radius
    psi_neg = pswf.basis_at(-k * Rp, complex=True) * Rp  # psi_{N,n}(-k), unit-disk normalisation
    nu = torch.cat([k / 2, torch.zeros(k.shape[0], 1, dtype=F64)], -1)  # (nu, 0), cycles per pixel
    out = []
    for Rk in R:
        G = vb.evaluate_at(x, (nu * vb.L) @ Rk.T)  # V(R (nu, 0)); points in grid units of L
        out.append(Rp * pswf.alpha.conj() / 4 * ((w * G) @ psi_neg.conj()))
    return torch.stack(out)


def rel(a, b):
    return ((a - b).abs().pow(2).sum(-1) / b.abs().pow(2).sum(-1)).sqrt()


@pytest.mark.parametrize("L, ell_max", [(11, 10), (12, 8)])
def test_two_paths_direct_quadrature(L, ell_max, gen):
    vb = VolumeBasis(L, ell_max)
    P = Projector(vb)
    x = vb.random(generator=gen)
    special = torch.stack([torch.eye(3, dtype=F64),
                           axis_angle_to_matrix(torch.tensor([0, 0, 1.0], dtype=F64), torch.tensor(0.4, dtype=F64)),
                           axis_angle_to_matrix(torch.tensor([1.0, 0, 0], dtype=F64), torch.tensor(math.pi / 2, dtype=F64))])
    R = torch.cat([special, random_rotations(17, generator=gen, dtype=F64)])
    b = P.coefficients(x, R)
    bq = quadrature_coefficients(vb, P.pswf, x, R)
    assert float(rel(b, bq).max()) < 1e-12
    # a complex (non-real) volume and a batch of volumes go through the same algebra
    z = vb.random(2, generator=gen, real=False)
    bz = P.coefficients(z, R[:5])
    assert bz.shape == (2, 5, P.pswf.count)
    assert float(rel(bz[1], quadrature_coefficients(vb, P.pswf, z[1], R[:5])).max()) < 1e-12


def test_two_paths_fourier_slice(setup11, gen):
    """Path (b): oversampled Fourier grid + fourier_slice (trilinear) + Riemann sum over the slice.
    The error is the interpolation error, second order in the grid step: ~12% at 2x, ~3% at 4x
    (~0.8% at 8x) oversampling; the transposed rotation convention is off by > 100%."""
    vb, P = setup11
    pswf, Rp = P.pswf, P.pswf.radius
    x = vb.random(generator=gen)
    R = random_rotations(30, generator=gen, dtype=F64)
    b = P.coefficients(x, R)
    errs = {}
    for s in (2, 4):
        n = s * vb.L
        Vh = vb.evaluate_fourier(x, n)
        i = torch.arange(n, dtype=F64) - n // 2
        ky, kx = torch.meshgrid(i, i, indexing="ij")
        inside = 4 * (kx ** 2 + ky ** 2) <= n ** 2
        k = torch.stack([kx[inside], ky[inside]], -1) * (2.0 / n)  # k = 2 nu in the unit disk
        psi_neg = pswf.basis_at(-k * Rp, complex=True) * Rp

        def bsl(rot):
            S = oc.fourier_slice(Vh, rot)  # S[ky, kx] = V(rot (kx, ky, 0) / n)
            return Rp * pswf.alpha.conj() / 4 * (S[:, inside] @ psi_neg.conj()) * (2.0 / n) ** 2

        errs[s] = float(rel(bsl(R), b).max())
        if s == 4:
            assert float(rel(bsl(R.transpose(-1, -2)), b).median()) > 0.8
    assert errs[2] < 0.15
    assert errs[4] < 0.05
    assert errs[4] < errs[2] / 3  # second-order convergence


def test_images_against_exact_band_limited_projection(setup11, gen):
    """Real space: the PSWF images approximate the exact band-limited projection
    (ifft2c of the exact central slice) inside the disk up to the PSWF truncation error."""
    vb, P = setup11
    x = vb.random(generator=gen)
    R = random_rotations(10, generator=gen, dtype=F64)
    imgs = P.images(x, R)
    assert imgs.shape == (10, 11, 11) and imgs.dtype == F64
    i = torch.arange(11, dtype=F64) - 5
    ky, kx = torch.meshgrid(i, i, indexing="ij")
    plane = torch.stack([kx, ky, torch.zeros_like(kx)], -1).reshape(-1, 3)
    exact = torch.stack([fourier.ifft2c(vb.evaluate_at(x, plane @ Rk.T).reshape(11, 11)).real for Rk in R])
    m = P.pswf.disk_mask
    err = ((imgs - exact)[:, m].pow(2).sum(-1) / exact[:, m].pow(2).sum(-1)).sqrt()
    assert float(err.max()) < 0.15  # measured ~0.07 median (lambda > 1/2 truncation at L = 11)
    assert torch.all(imgs[:, ~m] == 0)
    # the least-squares expansion of the exact image is close to the projection's coefficients
    a_ls = P.pswf.expand(exact)
    a_pr = P.pswf.to_real(P.coefficients(x, R)).real
    assert float(rel(a_ls, a_pr).max()) < 0.15


def test_real_volume_gives_real_images(setup11, gen):
    vb, P = setup11
    x = vb.random(generator=gen)
    R = random_rotations(5, generator=gen, dtype=F64)
    b = P.coefficients(x, R)
    torch.testing.assert_close(b[:, P.pswf._partner], b.conj(), rtol=0, atol=1e-13)
    Nidx = P.pswf.indices["N"]
    assert b[:, Nidx.abs() > vb.ell_max].abs().max() == 0  # only |N| <= ell_max occur


def test_in_plane_rotation_is_a_phase(setup11, gen):
    """R -> R Rz(t) rotates the image by -t: b_{N,n} -> b_{N,n} e^{i N t} (steerability, which
    ties the Wigner matrices to the PSWF phases)."""
    vb, P = setup11
    x = vb.random(generator=gen)
    R = random_rotations(6, generator=gen, dtype=F64)
    t = 0.9
    Rz = axis_angle_to_matrix(torch.tensor([0, 0, 1.0], dtype=F64), torch.tensor(t, dtype=F64))
    b = P.coefficients(x, R)
    b2 = P.coefficients(x, R @ Rz)
    N = P.pswf.indices["N"].to(F64)
    torch.testing.assert_close(b2, b * torch.exp(1j * N * t), rtol=0, atol=1e-12)
    torch.testing.assert_close(b2, P.pswf.rotate(b, -t), rtol=0, atol=1e-12)


def test_beta_quadrature_converged(setup11, gen):
    vb, P = setup11
    P2 = Projector(vb, quadrature=2 * P.quadrature)
    x = vb.random(generator=gen)
    R = random_rotations(4, generator=gen, dtype=F64)
    torch.testing.assert_close(P2.coefficients(x, R), P.coefficients(x, R), rtol=0, atol=1e-13)


def test_matrices_and_adjoint(setup11, gen):
    vb, P = setup11
    R = random_rotations(7, generator=gen, dtype=F64)
    D = P.wigner(R)
    x = vb.random(3, generator=gen, real=False)
    Bm = P.matrices(wigner=D)
    assert Bm.shape == (7, P.pswf.count, vb.count)
    torch.testing.assert_close(torch.einsum("kpm,vm->vkp", Bm, x), P.coefficients(x, wigner=D), rtol=0, atol=1e-12)
    y = torch.randn(3, 7, P.pswf.count, generator=gen, dtype=torch.complex128)
    lhs = (P.coefficients(x, wigner=D).conj() * y).sum()
    rhs = (x.conj() * P.adjoint(y, wigner=D)).sum()
    assert abs(complex(lhs - rhs)) < 1e-12 * abs(complex(lhs))
    torch.testing.assert_close(P.adjoint(y, wigner=D), torch.einsum("kpm,vkp->vm", Bm.conj(), y), rtol=0, atol=1e-12)


def test_functional_api_and_autograd(setup11, gen):
    vb, P = setup11
    x = vb.random(generator=gen)
    R = random_rotations(3, generator=gen, dtype=F64)
    torch.testing.assert_close(project_coefficients(x, R, vb), P.coefficients(x, R))
    torch.testing.assert_close(project(x, R, vb), P.images(x, R))
    xr = x.clone().requires_grad_()
    loss = P.coefficients(xr, R).abs().pow(2).sum()
    (g,) = torch.autograd.grad(loss, xr)
    # d/d conj(x) of |B x|^2 is B^H B x; torch returns its conjugate-convention gradient 2 B^H B x
    want = 2 * P.adjoint(P.coefficients(x, R), R)
    torch.testing.assert_close(g, want, rtol=0, atol=1e-10)


def test_bad_inputs(setup11, gen):
    vb, P = setup11
    R = random_rotations(2, generator=gen, dtype=F64)
    cases = [
        (lambda: Projector(vb, PSWF2D(12)), ValueError, r"Projector: pswf.L \(12\) must equal volume_basis.L \(11\)"),
        (lambda: Projector(vb, PSWF2D(11, bandlimit=10.0)), ValueError, "Projector: pswf must have the Nyquist band limit"),
        (lambda: Projector("vb"), TypeError, "Projector: volume_basis must be a VolumeBasis"),
        (lambda: P.coefficients(torch.zeros(5, dtype=torch.complex128), R), ValueError,
         rf"Projector.coefficients: x must have shape \(\.\.\., M\) with M = {vb.count}"),
        (lambda: P.coefficients(vb.random(), R[:, :2]), ValueError, r"Projector.coefficients: rotations must have shape \(K, 3, 3\)"),
        (lambda: P.coefficients(vb.random(), R * 3), ValueError, "rotations must be rotation matrices"),
        (lambda: P.coefficients(vb.random(), wigner=P.wigner(R)[:3]), ValueError, "Projector.coefficients: wigner must be a list of 11"),
        (lambda: P.adjoint(torch.zeros(3, 5, dtype=torch.complex128), R), ValueError, r"Projector.adjoint: b must have shape \(\.\.\., K, M_pswf\)"),
        (lambda: project_coefficients(vb.random(), R, "basis"), TypeError, "project_coefficients: basis must be a VolumeBasis"),
    ]
    for fn, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            fn()
