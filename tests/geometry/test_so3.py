"""Spherical t-designs and the SO(3) quadrature (seeds/000 §5.2).

Independent references: scipy's complex spherical harmonics (design exactness), Legendre
polynomials (the addition-theorem form of the design energy), the Hardin–Sloane 100-point
13-design from ../shared/data, the octahedron / icosahedron, and a product Gauss rule in ZYZ
Euler angles (Gauss–Legendre in cos β × uniform in α, γ), exact for polynomials in the
entries of R of known degree, for the Haar integrals.
"""
import math

import numpy as np
import pytest
import torch
from scipy.special import sph_harm_y

from orbitcore.geometry import (
    DesignNotFoundError,
    axis_angle_to_matrix,
    design_residual,
    plot_directions,
    quadrature_exact_degree,
    relion_euler_to_matrix,
    shipped_designs,
    so3_quadrature,
    spherical_design,
    viewing_direction,
)
from orbitcore.geometry import so3

F64 = torch.float64


# ------------------------------------------------------------------------------ references

def harmonic_errors(points, degrees):
    """max_m |mean_i Y_ℓ^m(x_i)| for each ℓ in degrees, with scipy's complex harmonics scaled to
    unit RMS on the sphere (√(4π) Y)."""
    X = np.asarray(points, dtype=np.float64)
    X = X / np.linalg.norm(X, axis=1, keepdims=True)
    theta = np.arccos(np.clip(X[:, 2], -1, 1))
    phi = np.arctan2(X[:, 1], X[:, 0])
    out = {}
    for ell in degrees:
        m = np.arange(-ell, ell + 1)[:, None]
        Y = math.sqrt(4 * math.pi) * sph_harm_y(ell, m, theta[None], phi[None])
        out[ell] = float(np.abs(Y.mean(1)).max())
    return out


def Rz(a):
    c, s, o, z = np.cos(a), np.sin(a), np.ones_like(a), np.zeros_like(a)
    return np.stack([np.stack([c, -s, z], -1), np.stack([s, c, z], -1), np.stack([z, z, o], -1)], -2)


def Ry(b):
    c, s, o, z = np.cos(b), np.sin(b), np.ones_like(b), np.zeros_like(b)
    return np.stack([np.stack([c, z, s], -1), np.stack([z, o, z], -1), np.stack([-s, z, c], -1)], -2)


def haar_rule(degree):
    """Rotations and weights of a product rule exact for polynomials of degree <= `degree` in the
    entries of R: R = Rz(α) Ry(β) Rz(γ), Haar measure sin β dα dβ dγ / 8π². Uniform α, γ with
    degree+1 points kill every D^ℓ_{m'm} with (m', m) ≠ (0, 0), ℓ ≤ degree; what is left,
    d^ℓ_00(β) = P_ℓ(cos β), is integrated exactly by Gauss–Legendre in cos β with
    degree//2 + 1 nodes."""
    na = degree + 1
    nb = degree // 2 + 1
    a = 2 * np.pi * np.arange(na) / na
    u, w = np.polynomial.legendre.leggauss(nb)
    A, B, G = np.meshgrid(a, np.arange(nb), a, indexing="ij")
    R = Rz(A.ravel()) @ Ry(np.arccos(u[B.ravel()])) @ Rz(G.ravel())
    W = w[B.ravel()] / 2 / na / na
    return R, W


def product_function(T, rng):
    """f(R) = Π_{k<T} a_kᵀ R b_k: a polynomial of degree T in the entries of R, generic."""
    ab = rng.normal(size=(T, 2, 3))
    ab /= np.linalg.norm(ab, axis=-1, keepdims=True)

    def f(R):
        out = np.ones(R.shape[0])
        for a, b in ab:
            out = out * np.einsum("i,qij,j->q", a, R, b)
        return out
    return f


def relative_quadrature_error(f, R, w, T):
    Rr, Wr = haar_rule(2 * T)   # exact for f (degree T) and f² (degree 2T)
    vals = f(Rr)
    return abs(float(w @ f(R)) - float(Wr @ vals)) / math.sqrt(float(Wr @ vals ** 2))


# ------------------------------------------------------------------------------ designs

def test_reference_rule_is_exact_and_not_trivially_so():
    # Sanity of the reference itself: ∫ R_22² = 1/3, ∫ R_00 R_11 = 0, ∫ (tr R)² = 1 (Haar), and a
    # rule of too low degree gets ∫ R_22² wrong.
    R, W = haar_rule(2)
    assert abs(W.sum() - 1) < 1e-15
    assert abs(W @ R[:, 2, 2] ** 2 - 1 / 3) < 1e-15
    assert abs(W @ (R[:, 0, 0] * R[:, 1, 1])) < 1e-15
    assert abs(W @ np.trace(R, axis1=1, axis2=2) ** 2 - 1) < 1e-14
    R1, W1 = haar_rule(1)
    assert abs(W1 @ R1[:, 2, 2] ** 2 - 1 / 3) > 0.1


def test_shipped_list():
    assert shipped_designs() == sorted(so3.SHIPPED, key=lambda p: (p[1], p[0]))
    assert (100, 13) in shipped_designs()


@pytest.mark.parametrize("n,t", so3.SHIPPED)
def test_shipped_designs_are_exact(n, t):
    X = spherical_design(n, t)
    assert X.shape == (n, 3) and X.dtype == F64
    torch.testing.assert_close(X.norm(dim=1), torch.ones(n, dtype=F64), rtol=0, atol=1e-15)
    err = harmonic_errors(X.numpy(), range(1, t + 2))
    assert max(err[ell] for ell in range(1, t + 1)) < 1e-13, err
    assert err[t + 1] > 1e-3          # not a (t+1)-design: the check can fail
    assert design_residual(X, t) < 1e-15
    assert len(np.unique(np.round(X.numpy(), 6), axis=0)) == n   # distinct points


def test_tight_designs_are_the_platonic_solids():
    # The tight 3- and 5-designs are unique: the octahedron and the icosahedron.
    X = spherical_design(6, 3).numpy()
    G = X @ X.T
    off = G[~np.eye(6, dtype=bool)]
    assert np.allclose(np.sort(off), np.sort(np.r_[np.zeros(24), -np.ones(6)]), atol=1e-12)
    X = spherical_design(12, 5).numpy()
    off = (X @ X.T)[~np.eye(12, dtype=bool)]
    s5 = 1 / math.sqrt(5)
    want = np.sort(np.r_[np.full(60, s5), np.full(60, -s5), -np.ones(12)])
    assert np.allclose(np.sort(off), want, atol=1e-12)


def test_residual_is_the_gegenbauer_energy(gen):
    # Σ_k r_k² = (1/N²) Σ_ij Σ_{ℓ=1..t} (2ℓ+1) P_ℓ(x_i·x_j) (addition theorem), for random points:
    # pins the normalisation (unit RMS) and completeness of the harmonics used by the generator.
    X = torch.nn.functional.normalize(torch.randn(37, 3, generator=gen, dtype=F64), dim=1).numpy()
    for t in (1, 4, 13):
        r = so3._residual(X, t)
        assert r.shape == ((t + 1) ** 2 - 1,)
        c = np.r_[0.0, 2 * np.arange(1, t + 1) + 1.0]
        E = np.polynomial.legendre.legval(np.clip(X @ X.T, -1, 1), c).sum() / len(X) ** 2
        assert abs(r @ r - E) < 1e-12 * max(1.0, E)
    # degree by degree against scipy's complex harmonics (Σ_m |mean Y_ℓm|² is basis-independent)
    X = X[:9]
    theta, phi = np.arccos(X[:, 2]), np.arctan2(X[:, 1], X[:, 0])
    prev = 0.0
    for ell in range(1, 9):
        r = so3._residual(X, ell)
        m = np.arange(-ell, ell + 1)[:, None]
        Y = math.sqrt(4 * math.pi) * sph_harm_y(ell, m, theta[None], phi[None])
        want = float((np.abs(Y.mean(1)) ** 2).sum())
        assert abs((r @ r - prev) - want) < 1e-13 * max(1.0, want), ell
        prev = r @ r


def test_generate_from_scratch_reproduces_shipped():
    so3._design_cached.cache_clear()
    X = spherical_design(100, 13, precomputed=False)
    err = harmonic_errors(X.numpy(), range(1, 14))
    assert max(err.values()) < 1e-13
    # the shipped file was made by this very computation
    assert float((X - spherical_design(100, 13)).abs().max()) < 1e-8


def test_generated_designs_deterministic_and_seeded():
    so3._design_cached.cache_clear()
    a = spherical_design(38, 7, seed=3)
    so3._design_cached.cache_clear()
    b = spherical_design(38, 7, seed=3)
    assert torch.equal(a, b)
    c = spherical_design(38, 7, seed=4)
    assert float((a - c).abs().max()) > 1e-3
    for X in (a, c):
        assert max(harmonic_errors(X.numpy(), range(1, 8)).values()) < 1e-13
    # even strength, and an unshipped size with precomputed=True: generated
    d = spherical_design(26, 6)
    assert max(harmonic_errors(d.numpy(), range(1, 7)).values()) < 1e-13
    assert spherical_design(12, 5, dtype=torch.float32).dtype == torch.float32


def test_missing_data_file_regenerates(monkeypatch):
    shipped = spherical_design(34, 7)
    monkeypatch.setattr(so3, "_shipped_arrays", lambda: {})
    so3._design_cached.cache_clear()
    try:
        assert shipped_designs() == []
        again = spherical_design(34, 7)
        assert float((again - shipped).abs().max()) < 1e-8
        R, w = so3_quadrature(exact_degree=7, dtype=F64)
        assert R.shape == (34 * 8, 3, 3)
    finally:
        so3._design_cached.cache_clear()


def test_hardin_sloane_design(shared_data):
    H = np.loadtxt(shared_data / "des3-100-13.txt", delimiter=",")
    assert H.shape == (100, 3)
    X = spherical_design(100, 13).numpy()
    eh = harmonic_errors(H, range(1, 15))
    ex = harmonic_errors(X, range(1, 15))
    # both are 13-designs; the file's 16 printed digits carry about 1e-12 of design accuracy
    assert max(eh[ell] for ell in range(1, 14)) < 1e-11
    assert max(ex[ell] for ell in range(1, 14)) < 1e-13
    assert eh[14] > 1e-2 and ex[14] > 1e-2
    # our polisher takes the Hardin–Sloane points to machine precision, moving them by < 1e-9
    P, res = so3._levenberg_marquardt(H / np.linalg.norm(H, axis=1, keepdims=True), 13)
    assert res < 1e-15 and np.abs(P - H).max() < 1e-9
    # not congruent: the multisets of inner products differ, so no rotation (or reflection) maps
    # one to the other. Hardin–Sloane has chiral tetrahedral symmetry (12 signed permutations of
    # the coordinates map it to itself); ours has no such symmetry.
    iu = np.triu_indices(100, 1)
    assert np.abs(np.sort((H @ H.T)[iu]) - np.sort((X @ X.T)[iu])).max() > 1e-2

    def sym(A, M):
        d = np.abs((A @ M.T)[:, None, :] - A[None]).sum(-1).min(1)
        return d.max() < 1e-8
    cyc = np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]], dtype=float)
    assert sym(H, cyc) and sym(H, np.diag([1.0, -1.0, -1.0]))
    assert not sym(X, cyc)


def test_design_bad_inputs():
    with pytest.raises(ValueError, match=r"spherical_design: n_points must be >= 1, got 0"):
        spherical_design(0, 3)
    with pytest.raises(ValueError, match=r"spherical_design: strength must be >= 1, got 0"):
        spherical_design(10, 0)
    with pytest.raises(TypeError, match=r"spherical_design: n_points must be an integer, got float 10.5"):
        spherical_design(10.5, 3)
    with pytest.raises(TypeError, match=r"spherical_design: strength must be an integer"):
        spherical_design(10, "3")
    with pytest.raises(TypeError, match=r"spherical_design: n_points must be an integer, got bool"):
        spherical_design(True, 1)
    with pytest.raises(ValueError, match=r"spherical_design: seed must be >= 0"):
        spherical_design(12, 5, seed=-1)
    with pytest.raises(ValueError, match=r"spherical_design: tol must be > 0"):
        spherical_design(12, 5, tol=0.0)
    # below the Delsarte–Goethals–Seidel bound: no design exists, refused without a search
    with pytest.raises(ValueError, match=r"no spherical 3-design with n_points=5 exists.*at least 6 points"):
        spherical_design(5, 3)
    with pytest.raises(ValueError, match=r"at least 196 points"):
        spherical_design(100, 26)
    # above the bound but (believed / known) not to exist: the search reports its residual
    for n, t in ((5, 2), (7, 3)):
        with pytest.raises(DesignNotFoundError, match=rf"could not reach a spherical {t}-design with {n} points: "
                                                      r"best residual .* after 2 attempt") as info:
            spherical_design(n, t, max_attempts=2)
        assert info.value.residual > 1e-6 and info.value.points.shape == (n, 3)
        assert (info.value.n_points, info.value.strength) == (n, t)
    with pytest.raises(ValueError, match=r"design_residual: points must have shape \(N, 3\)"):
        design_residual(np.zeros((4, 2)), 2)
    with pytest.raises(ValueError, match=r"design_residual: strength must be >= 1"):
        design_residual(np.ones((4, 3)), 0)


# ------------------------------------------------------------------------------ SO(3) quadrature

def test_paper_rule_construction():
    R, w = so3_quadrature()
    assert R.shape == (1200, 3, 3) and w.shape == (1200,)
    assert R.dtype == torch.float32 and w.dtype == torch.float32
    R, w = so3_quadrature(dtype=F64)
    assert torch.all(w == 1 / 1200) and abs(float(w.sum()) - 1) < 1e-14
    eye = torch.eye(3, dtype=F64)
    torch.testing.assert_close(R.transpose(1, 2) @ R, eye.expand(1200, 3, 3), rtol=0, atol=1e-14)
    assert torch.all(torch.linalg.det(R) > 0)
    d = spherical_design(100, 13)
    Rg = R.reshape(100, 12, 3, 3)
    # viewing directions R e_z are the design points, direction-major
    torch.testing.assert_close(viewing_direction(Rg), d[:, None].expand(100, 12, 3), rtol=0, atol=1e-14)
    # in-plane angle ψ_k = 2πk/12: right-multiplication by Rz(ψ) = left-multiplication by the
    # rotation about the viewing axis
    psi = 2 * math.pi * torch.arange(12, dtype=F64) / 12
    Rzpsi = axis_angle_to_matrix(torch.tensor([0.0, 0.0, 1.0], dtype=F64).expand(12, 3), psi)
    torch.testing.assert_close(Rg, Rg[:, :1] @ Rzpsi, rtol=0, atol=1e-14)
    about_d = axis_angle_to_matrix(d[:, None].expand(100, 12, 3), psi.expand(100, 12))
    torch.testing.assert_close(Rg, about_d @ Rg[:, :1], rtol=0, atol=1e-14)
    # = RELION ZYZ Euler angles (rot, tilt, psi) = (azimuth, polar angle, in-plane angle)
    theta = torch.rad2deg(torch.atan2(d[:, :2].norm(dim=1), d[:, 2]))
    phi = torch.rad2deg(torch.atan2(d[:, 1], d[:, 0]))
    want = relion_euler_to_matrix(phi[:, None], theta[:, None], torch.rad2deg(psi)[None])
    torch.testing.assert_close(Rg, want, rtol=0, atol=1e-14)
    # the in-plane offset shifts every angle
    R2, _ = so3_quadrature(inplane_offset=0.1, dtype=F64)
    Rz01 = axis_angle_to_matrix(torch.tensor([0.0, 0.0, 1.0], dtype=F64), torch.tensor(0.1, dtype=F64))
    torch.testing.assert_close(R2, R @ Rz01, rtol=0, atol=1e-14)


def test_paper_rule_exact_to_degree_11_only():
    R, w = (x.numpy() for x in so3_quadrature(dtype=F64))
    assert quadrature_exact_degree(13, 12) == 11
    rng = np.random.default_rng(11)
    for T in range(0, 12):
        for _ in range(3):
            assert relative_quadrature_error(product_function(T, rng), R, w, T) < 1e-12, T
    for T in (12, 13):
        errs = [relative_quadrature_error(product_function(T, rng), R, w, T) for _ in range(4)]
        assert max(errs) > 1e-6, (T, errs)
    # explicit degree-12 failure: f = Re (R20 + i R21)^12 = sin^12 β cos 12γ has Haar integral 0,
    # the rule gives mean_j sin^12 θ_j = ∫ (1 - z²)^6 = 1024/3003 (exact on a 13-design)
    Rr, Wr = haar_rule(12)
    f = lambda R: ((R[:, 2, 0] + 1j * R[:, 2, 1]) ** 12).real  # noqa: E731
    assert abs(Wr @ f(Rr)) < 1e-15
    assert abs(w @ f(R) - 1024 / 3003) < 1e-13


@pytest.mark.parametrize("kwargs,n_rot,exact", [
    (dict(exact_degree=13), 1400, 13),
    (dict(exact_degree=12), 1300, 12),
    (dict(exact_degree=7), 34 * 8, 7),
    (dict(n_directions=34, n_inplane=5), 34 * 5, 4),
    (dict(exact_degree=5), 72, 5),
    (dict(n_directions=38, n_inplane=9, strength=7, seed=3), 38 * 9, 7),
])
def test_exact_rules(kwargs, n_rot, exact):
    R, w = (x.numpy() for x in so3_quadrature(dtype=F64, **kwargs))
    assert R.shape == (n_rot, 3, 3) and np.allclose(w, 1 / n_rot, rtol=0, atol=1e-18)
    rng = np.random.default_rng(exact)
    for T in range(0, exact + 1):
        for _ in range(2):
            assert relative_quadrature_error(product_function(T, rng), R, w, T) < 1e-12, T
    errs = [relative_quadrature_error(product_function(exact + 1, rng), R, w, exact + 1) for _ in range(4)]
    assert max(errs) > 1e-6, errs


def test_quadrature_bad_inputs():
    with pytest.raises(ValueError, match=r"so3_quadrature: n_inplane must be >= exact_degree \+ 1 = 14 for a rule exact to degree 13.*got 12"):
        so3_quadrature(n_inplane=12, exact_degree=13)
    with pytest.raises(ValueError, match=r"so3_quadrature: strength must be >= exact_degree=9.*got 7"):
        so3_quadrature(strength=7, exact_degree=9)
    with pytest.raises(ValueError, match=r"so3_quadrature: strength is required: no shipped design has n_directions=77"):
        so3_quadrature(n_directions=77)
    with pytest.raises(ValueError, match=r"so3_quadrature: no shipped spherical design has strength >= 40"):
        so3_quadrature(exact_degree=40)
    with pytest.raises(ValueError, match=r"so3_quadrature: n_inplane must be >= 1, got 0"):
        so3_quadrature(n_inplane=0)
    with pytest.raises(TypeError, match=r"so3_quadrature: n_directions must be an integer, got float"):
        so3_quadrature(n_directions=100.0)
    with pytest.raises(ValueError, match=r"so3_quadrature: exact_degree must be >= 0, got -1"):
        so3_quadrature(exact_degree=-1)
    with pytest.raises(ValueError, match=r"so3_quadrature: no spherical 13-design with n_directions=50 exists: "
                                         r"it needs at least 56 points"):
        so3_quadrature(n_directions=50, strength=13)
    with pytest.raises(TypeError, match=r"so3_quadrature: inplane_offset must be a real number"):
        so3_quadrature(inplane_offset="0")


def test_plot_directions(tmp_path):
    R, w = so3_quadrature(dtype=F64)
    p = plot_directions(R[::12], tmp_path / "dirs.png", values=w.reshape(100, 12).sum(1), label="density")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    p2 = plot_directions(spherical_design(34, 7), tmp_path / "sub" / "d.png", title="34-point 7-design")
    assert p2.stat().st_size > 1000
    with pytest.raises(ValueError, match=r"plot_directions: values must have shape \(34,\)"):
        plot_directions(spherical_design(34, 7), tmp_path / "x.png", values=np.ones(5))
    with pytest.raises(ValueError, match=r"plot_directions: directions must have shape \(N, 3\)"):
        plot_directions(np.ones((4, 2)), tmp_path / "x.png")
