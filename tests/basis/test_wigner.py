"""wigner_d: closed forms for ell = 1, 2 (from the rotation matrix, no Euler angles), the defining
identity Y(R^T n) = Y(n) D(R) against SciPy's spherical harmonics, unitarity and the group law to
ell = 30, rotations at the poles, bad inputs."""
import math

import numpy as np
import pytest
import torch
from scipy.special import sph_harm_y

from orbitcore.basis import euler_zyz, wigner_d
from orbitcore.basis._special import sh_index, spherical_harmonics
from orbitcore.basis.wigner import wigner_d_small
from orbitcore.geometry import axis_angle_to_matrix, random_rotations

F64 = torch.float64


def rot(axis, angle):
    return axis_angle_to_matrix(torch.tensor(axis, dtype=F64), torch.tensor(angle, dtype=F64))


def tricky_rotations():
    """Rotations at and near the poles of the Euler parametrisation, and half turns."""
    Rz = rot([0.0, 0.0, 1.0], 0.7)
    out = [torch.eye(3, dtype=F64), Rz, Rz @ rot([1.0, 0, 0], 1e-9), rot([1.0, 0, 0], 1e-9) @ Rz,
           Rz @ rot([1.0, 0, 0], math.pi - 1e-9), rot([0.3, 1, 0], math.pi), rot([1.0, 0, 0], math.pi),
           rot([1.0, 1, 0], 1e-13), rot([0.0, 1, 0], math.pi / 2), rot([0.0, 0, 1], math.pi)]
    return torch.stack(out)


def test_spherical_harmonics_match_scipy(gen):
    n = torch.randn(60, 3, generator=gen, dtype=F64)
    n = torch.cat([n, torch.tensor([[0, 0, 1.0], [0, 0, -2.0], [1.0, 0, 0]], dtype=F64)])
    Y = spherical_harmonics(30, n)
    r = n.norm(dim=-1)
    th = torch.arccos(n[:, 2] / r).numpy()
    ph = torch.atan2(n[:, 1], n[:, 0]).numpy()
    for ell in range(31):
        for m in range(-ell, ell + 1):
            np.testing.assert_allclose(Y[:, sh_index(ell, m)].numpy(), sph_harm_y(ell, m, th, ph), rtol=0,
                                       atol=1e-13)


def test_ell1_closed_form(gen):
    # Y_1^m(n) = sqrt(3/4pi) u_m . n with u_{-1} = (1, -i, 0)/sqrt2, u_0 = e_z, u_1 = -(1, i, 0)/sqrt2,
    # so D^1(R) = U^H R U with U = [u_{-1}, u_0, u_1]
    U = torch.tensor([[1, 0, -1], [-1j, 0, -1j], [0, math.sqrt(2), 0]], dtype=torch.complex128) / math.sqrt(2)
    R = torch.cat([random_rotations(20, generator=gen, dtype=F64), tricky_rotations()])
    want = U.conj().T @ R.to(torch.complex128) @ U
    torch.testing.assert_close(wigner_d(1, R)[1], want, rtol=0, atol=1e-14)


def test_ell2_closed_form(gen):
    # Y_2^m(n) = n^T T_m n on the sphere with traceless symmetric T_m; Y_2^m(R^T n) = n^T R T_m R^T n,
    # so D^2_{m'm} = <T_m', R T_m R^T>_F / <T_m', T_m'>_F (Hermitian Frobenius product)
    a = math.sqrt(15 / (2 * math.pi)) / 4
    e = math.sqrt(5 / math.pi) / 4
    T = {
        2: a * torch.tensor([[1, 1j, 0], [1j, -1, 0], [0, 0, 0]], dtype=torch.complex128),
        1: -a * torch.tensor([[0, 0, 1], [0, 0, 1j], [1, 1j, 0]], dtype=torch.complex128),
        0: e * torch.tensor([[-1, 0, 0], [0, -1, 0], [0, 0, 2]], dtype=torch.complex128),
    }
    T[-2] = T[2].conj()
    T[-1] = -T[1].conj()
    # sanity: these quadratic forms are the spherical harmonics
    n = torch.nn.functional.normalize(torch.randn(10, 3, generator=gen, dtype=F64), dim=-1).to(torch.complex128)
    Y = spherical_harmonics(2, n.real)
    for m in range(-2, 3):
        torch.testing.assert_close(torch.einsum("pi,ij,pj->p", n, T[m], n), Y[:, sh_index(2, m)])
    R = torch.cat([random_rotations(10, generator=gen, dtype=F64), tricky_rotations()]).to(torch.complex128)
    want = torch.zeros(R.shape[0], 5, 5, dtype=torch.complex128)
    for m in range(-2, 3):
        RTR = R @ T[m] @ R.transpose(-1, -2)
        for mp in range(-2, 3):
            want[:, mp + 2, m + 2] = (T[mp].conj() * RTR).sum((-1, -2)) / (T[mp].conj() * T[mp]).sum()
    torch.testing.assert_close(wigner_d(2, R.real)[2], want, rtol=0, atol=1e-14)


def test_small_d_closed_forms():
    b = torch.linspace(0, math.pi, 7, dtype=F64)
    c, s = torch.cos(b), torch.sin(b)
    d = wigner_d_small(2, b)
    d1 = d[1]
    torch.testing.assert_close(d1[:, 2, 2], (1 + c) / 2)
    torch.testing.assert_close(d1[:, 2, 1], -s / math.sqrt(2))
    torch.testing.assert_close(d1[:, 2, 0], (1 - c) / 2)
    torch.testing.assert_close(d1[:, 1, 1], c)
    d2 = d[2]  # a few entries of the standard d^2 table
    torch.testing.assert_close(d2[:, 4, 4], ((1 + c) / 2) ** 2)
    torch.testing.assert_close(d2[:, 4, 3], -(1 + c) * s / 2)
    torch.testing.assert_close(d2[:, 4, 2], math.sqrt(3 / 8) * s ** 2)
    torch.testing.assert_close(d2[:, 3, 3], (1 + c) * (2 * c - 1) / 2)
    torch.testing.assert_close(d2[:, 2, 2], (3 * c ** 2 - 1) / 2)
    torch.testing.assert_close(d2[:, 3, 2], -math.sqrt(3 / 2) * s * c)


def test_defining_identity_against_scipy(gen):
    """Y_ell^m(R^T n) = sum_m' Y_ell^m'(n) D_{m', m}(R), with SciPy's Y, up to ell = 30."""
    L = 30
    R = torch.cat([random_rotations(6, generator=gen, dtype=F64), tricky_rotations()])
    D = wigner_d(L, R)
    n = torch.randn(25, 3, generator=gen, dtype=F64)

    def Y(points):  # SciPy reference, (P, (L+1)^2)
        r = points.norm(dim=-1)
        th = torch.arccos((points[:, 2] / r).clamp(-1, 1)).numpy()
        ph = torch.atan2(points[:, 1], points[:, 0]).numpy()
        out = np.zeros((points.shape[0], (L + 1) ** 2), complex)
        for ell in range(L + 1):
            for m in range(-ell, ell + 1):
                out[:, sh_index(ell, m)] = sph_harm_y(ell, m, th, ph)
        return torch.from_numpy(out)

    Yn = Y(n)
    for k in range(R.shape[0]):
        Yr = Y(n @ R[k])  # rows: (R^T n)^T = n^T R
        for ell in range(L + 1):
            sl = slice(ell * ell, (ell + 1) ** 2)
            torch.testing.assert_close(Yr[:, sl], Yn[:, sl] @ D[ell][k], rtol=0, atol=5e-13)


def test_unitary_and_group_law(gen):
    L = 30
    R1 = torch.cat([random_rotations(15, generator=gen, dtype=F64), tricky_rotations()])
    R2 = torch.cat([tricky_rotations(), random_rotations(15, generator=gen, dtype=F64)])
    D1, D2, D12 = wigner_d(L, R1), wigner_d(L, R2), wigner_d(L, R1 @ R2)
    Dt = wigner_d(L, R1.transpose(-1, -2))
    for ell in range(L + 1):
        eye = torch.eye(2 * ell + 1, dtype=torch.complex128)
        torch.testing.assert_close(D1[ell] @ D1[ell].conj().transpose(-1, -2), eye.expand_as(D1[ell]), rtol=0, atol=2e-14)
        torch.testing.assert_close(D1[ell] @ D2[ell], D12[ell], rtol=0, atol=5e-14)
        torch.testing.assert_close(Dt[ell], D1[ell].conj().transpose(-1, -2), rtol=0, atol=2e-14)


def test_special_rotations():
    L = 6
    for ell, D in enumerate(wigner_d(L, torch.eye(3, dtype=F64))):
        torch.testing.assert_close(D, torch.eye(2 * ell + 1, dtype=torch.complex128))
    t = 0.83
    for ell, D in enumerate(wigner_d(L, rot([0, 0, 1.0], t))):
        m = torch.arange(-ell, ell + 1, dtype=F64)
        torch.testing.assert_close(D, torch.diag(torch.exp(-1j * m * t)), rtol=0, atol=1e-14)


def test_euler_roundtrip(gen):
    R = torch.cat([random_rotations(50, generator=gen, dtype=F64), tricky_rotations()])
    a, b, g = euler_zyz(R)

    def Rz(t):
        c, s = torch.cos(t), torch.sin(t)
        z, o = torch.zeros_like(t), torch.ones_like(t)
        return torch.stack([c, -s, z, s, c, z, z, z, o], -1).reshape(-1, 3, 3)

    def Ry(t):
        c, s = torch.cos(t), torch.sin(t)
        z, o = torch.zeros_like(t), torch.ones_like(t)
        return torch.stack([c, z, s, z, o, z, -s, z, c], -1).reshape(-1, 3, 3)

    torch.testing.assert_close(Rz(a) @ Ry(b) @ Rz(g), R, rtol=0, atol=1e-14)
    assert bool(((b >= 0) & (b <= math.pi)).all())


def test_float32_rotations_and_numpy(gen):
    R = random_rotations(3, generator=gen, dtype=torch.float32)
    D = wigner_d(3, R)
    assert D[3].dtype == torch.complex128 and D[3].shape == (3, 7, 7)
    Dn = wigner_d(2, R.double().numpy())
    assert isinstance(Dn[2], np.ndarray)
    single = wigner_d(2, R[0].double())
    assert single[2].shape == (5, 5)


def test_bad_inputs(gen):
    R = random_rotations(2, generator=gen, dtype=F64)
    cases = [
        (lambda: wigner_d(-1, R), ValueError, "wigner_d: ell_max must be >= 0"),
        (lambda: wigner_d(2.5, R), TypeError, "wigner_d: ell_max must be an integer"),
        (lambda: wigner_d(2, R[:, :2]), ValueError, r"wigner_d: rotations must have shape \(B, 3, 3\) or \(3, 3\)"),
        (lambda: wigner_d(2, R * 2), ValueError, "wigner_d: rotations must be rotation matrices"),
        (lambda: wigner_d(2, -R), ValueError, "det = \\+1"),
        (lambda: wigner_d(2, R.long()), TypeError, "wigner_d: rotations must be a real floating-point"),
    ]
    for fn, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            fn()
