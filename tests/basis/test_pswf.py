"""PSWF2D: the PSWFs satisfy the eigen-equation (10) and are orthonormal on the disk (quadrature,
independent of how they were computed), agree with an independent Nystrom discretisation of the
Hankel operator, and the transforms are exact least squares / exact adjoints / steerable."""
import math

import numpy as np
import pytest
import torch
from scipy.special import jv

import orbitcore as oc
from orbitcore.basis import PSWF2D
from orbitcore.basis._special import gauss_legendre
from orbitcore.ops import _reference as ref

F64 = torch.float64


@pytest.fixture(scope="module")
def bases():
    return {L: PSWF2D(L) for L in (11, 12, 32)}


def psi_unit(b, pts_unit, complex=True):
    """psi_{N,n} on the unit disk (orthonormal there): basis_at takes pixel offsets and returns
    psi(p/R)/R."""
    return b.basis_at(pts_unit * b.radius, complex=complex) * b.radius


def polar_rule(nr, nphi):
    r, wr = gauss_legendre(nr, 0.0, 1.0)
    phi = np.arange(nphi) * 2 * np.pi / nphi
    R, P = np.meshgrid(r, phi, indexing="ij")
    w = (wr[:, None] * R * (2 * np.pi / nphi)).ravel()
    pts = np.stack([(R * np.cos(P)).ravel(), (R * np.sin(P)).ravel()], -1)
    return torch.from_numpy(pts), torch.from_numpy(w)


# ------------------------------------------------------------------------------------------------
# eigen-equation and orthonormality by quadrature on the disk
# ------------------------------------------------------------------------------------------------
def eigen_equation_residual(b, nr, nphi, npts=10, seed=0, chunk=4096):
    """max over kept (N, n) and test points k of |alpha psi(k) - int_disk psi(r) e^{i c <r,k>} dr|,
    relative to max |alpha psi|; the integral by a polar product rule (Gauss-Legendre x trapezoid)."""
    rng = np.random.default_rng(seed)
    rad = np.sqrt(rng.uniform(0, 1, npts))
    ang = rng.uniform(0, 2 * np.pi, npts)
    k = torch.from_numpy(np.stack([rad * np.cos(ang), rad * np.sin(ang)], -1))
    pts, w = polar_rule(nr, nphi)
    rhs = torch.zeros(npts, b.count, dtype=torch.complex128)
    for i in range(0, pts.shape[0], chunk):
        p = pts[i:i + chunk]
        E = torch.exp(1j * b.bandlimit * (k @ p.T)) * w[i:i + chunk]  # (npts, chunk)
        rhs += E @ psi_unit(b, p)
    lhs = b.alpha[None, :] * psi_unit(b, k)
    return float((lhs - rhs).abs().max() / lhs.abs().max())


@pytest.mark.parametrize("L", [11, 32])
def test_eigen_equation_on_disk(L, bases):
    b = bases[L]
    c = b.bandlimit
    nphi = 2 * int(c + len(b.n_max) + 40)  # exact for the angular orders that occur
    nr = int(c) + 80
    assert eigen_equation_residual(b, nr, nphi) < 1e-11


@pytest.mark.slow
def test_eigen_equation_on_disk_L64():
    b = PSWF2D(64)
    c = b.bandlimit
    assert eigen_equation_residual(b, int(c) + 80, 2 * int(c + len(b.n_max) + 40), npts=6) < 1e-11


@pytest.mark.parametrize("L", [11, 32, 64])
def test_radial_eigen_equation_hankel(L):
    """The radial form of (10): int_0^1 J_N(c k r) Phi(r) r dr = mu Phi(k), alpha = 2 pi i^|N| mu,
    by 1-D quadrature (cheap enough for L = 64 in the default suite)."""
    b = PSWF2D(L)
    c = b.bandlimit
    r, w = gauss_legendre(int(c) + 120, 0.0, 1.0)
    Phi = b.radial(r).numpy()
    kk = np.linspace(0.03, 1.0, 9)
    Phik = b.radial(kk).numpy()
    N = b.indices["N"].numpy()
    mu = (b.alpha.numpy() / (2 * np.pi * 1j ** np.abs(N))).real
    worst = 0.0
    for Nv in range(len(b.n_max)):
        cols = np.nonzero(N == Nv)[0]
        H = (jv(Nv, c * np.outer(kk, r)) * (w * r)) @ Phi[:, cols]
        worst = max(worst, np.abs(H - mu[cols] * Phik[:, cols]).max())
    assert worst < 1e-12
    # |alpha| is consistent with the concentrations lambda = (c / 2 pi)^2 |alpha|^2 > truncation
    lam = (c / (2 * np.pi)) ** 2 * np.abs(b.alpha.numpy()) ** 2
    np.testing.assert_allclose(lam, b.concentration.numpy(), rtol=1e-12)
    assert lam.min() > 0.5 and lam.max() < 1.0 + 1e-12


@pytest.mark.parametrize("L", [11, 32])
def test_orthonormal_on_disk_2d(L, bases):
    b = bases[L]
    kmax = max(r.shape[1] for r in b.radial_coefficients)
    nr = len(b.n_max) + 2 * kmax + 4  # exact for the polynomial radial products
    nphi = 4 * len(b.n_max) + 8
    pts, w = polar_rule(nr, nphi)
    Psi = psi_unit(b, pts)
    G = (Psi.conj().T * w) @ Psi
    assert (G - torch.eye(b.count)).abs().max() < 1e-12
    # the real convention is orthonormal too
    U = psi_unit(b, pts, complex=False)
    Gr = (U.T * w) @ U
    assert (Gr - torch.eye(b.count, dtype=F64)).abs().max() < 1e-12


@pytest.mark.parametrize("L", [11, 32, 64])
def test_orthonormal_radial(L):
    b = PSWF2D(L)
    kmax = max(r.shape[1] for r in b.radial_coefficients)
    r, w = gauss_legendre(len(b.n_max) + 2 * kmax + 4, 0.0, 1.0)
    Phi = b.radial(r)
    N = b.indices["N"]
    for Nv in range(len(b.n_max)):
        cols = torch.nonzero(N == Nv).squeeze(1)
        G = (Phi[:, cols].T * torch.from_numpy(w * r)) @ Phi[:, cols]
        assert (G - torch.eye(len(cols), dtype=F64)).abs().max() < 1e-12


# ------------------------------------------------------------------------------------------------
# independent construction: Nystrom discretisation of the Hankel operator
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("L", [11, 32])
def test_matches_nystrom_hankel_operator(L, bases):
    b = bases[L]
    c = b.bandlimit
    r, w = gauss_legendre(int(1.5 * c) + 60, 0.0, 1.0)
    s = np.sqrt(w * r)
    Phi = b.radial(r).numpy()
    N = b.indices["N"].numpy()
    n = b.indices["n"].numpy()
    mu = (b.alpha.numpy() / (2 * np.pi * 1j ** np.abs(N))).real
    counts, compared = {}, 0
    Ns = list(range(len(b.n_max) + 2))
    if L > 11:  # a subset of angular indices, including the last kept ones and the first empty one
        Ns = Ns[:4] + Ns[10:-1:10] + Ns[-4:]
    for Nv in Ns:
        K = s[:, None] * jv(Nv, c * np.outer(r, r)) * s[None, :]
        ev, evec = np.linalg.eigh(K)
        kept = (c * ev) ** 2 > b.truncation
        counts[Nv] = int(kept.sum())
        cols = np.nonzero(N == Nv)[0]
        if not len(cols):
            continue
        # the kept eigenvalues agree as a multiset (|mu| ~ 1/c ties make any index order ambiguous)
        np.testing.assert_allclose(np.sort(ev[kept]), np.sort(mu[cols]), rtol=1e-10, atol=1e-13)
        for j in cols:
            i = int(np.argmin(np.abs(ev - mu[j])))
            # eigenvectors are determined only up to the gap to the nearest eigenvalue: the most
            # concentrated ones (lambda = 1 - O(1e-15), same sign every other n) are numerically
            # degenerate for any discretisation of the integral operator; compare the others
            gap = np.abs(np.delete(ev, i) - ev[i]).min()
            if gap < 1e-5 * abs(ev[i]):
                continue
            f = evec[:, i] / s  # Nystrom eigenfunction at the nodes, unit L2(r dr)
            f *= np.sign(f @ (w * r * Phi[:, j]))
            assert np.abs(f - Phi[:, j]).max() < 1e-7 * np.abs(Phi[:, j]).max()
            compared += 1
    assert all(counts[Nv] == (b.n_max[Nv] if Nv < len(b.n_max) else 0) for Nv in Ns)
    assert counts[len(b.n_max)] == 0
    assert compared > 0.3 * sum(counts.values())  # a good part of the kept (N, n) compared


def test_counts_match_aspire_and_shannon():
    # ASPIRE 0.14.3 PSWFBasis2D(L).count (real coefficients), the same truncation rule
    # (gamma_trunc = 1 <=> lambda > 1/2): an external reference for the (N, n) set.
    for L, aspire_count in ((32, 634), (64, 2522)):
        b = PSWF2D(L)
        assert b.count == aspire_count
        assert abs(b.count - b.bandlimit ** 2 / 4) < 0.1 * b.count  # close to the Shannon number
    b = PSWF2D(32)
    assert b.n_max[:6] == [16, 16, 15, 15, 14, 14]  # ASPIRE's max_ns for L = 32


def test_truncation_parameter_monotone():
    n_small = PSWF2D(16, truncation=0.9).count
    n_mid = PSWF2D(16).count
    n_big = PSWF2D(16, truncation=0.3).count
    assert n_small < n_mid < n_big
    b = PSWF2D(16, truncation=0.9)
    assert float(b.concentration.min()) > 0.9


# ------------------------------------------------------------------------------------------------
# transforms: least squares, adjoints, conventions
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("L", [11, 12, 21])
def test_expand_is_least_squares_on_disk(L, gen):
    b = PSWF2D(L)
    A = ref.pswf_basis_values(b, b.pixel_points())
    m = b.disk_mask
    assert int(m.sum()) == A.shape[0] == int(((torch.arange(L) - L // 2) ** 2).add(
        ((torch.arange(L) - L // 2) ** 2)[:, None]).le((L // 2) ** 2).sum())  # every pixel with r <= L // 2
    x = torch.randn(2, 3, L, L, generator=gen, dtype=F64)
    want = torch.linalg.lstsq(A, x[..., m].reshape(-1, A.shape[0]).T).solution.T.reshape(2, 3, -1)
    got = b.expand(x)
    assert got.shape == (2, 3, b.count)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12 * float(want.abs().max()))
    # pixels outside the disk are ignored
    x2 = x.clone()
    x2[..., ~m] = 1e3
    torch.testing.assert_close(b.expand(x2), got, rtol=0, atol=1e-9)
    # exact recovery of band-limited images
    c = torch.randn(4, b.count, generator=gen, dtype=F64)
    torch.testing.assert_close(b.expand(b.evaluate(c)), c, rtol=0, atol=1e-11)


@pytest.mark.parametrize("L", [11, 12])
def test_adjoint_identity(L, gen):
    b = PSWF2D(L)
    a = torch.randn(5, b.count, generator=gen, dtype=F64)
    x = torch.randn(5, L, L, generator=gen, dtype=F64)
    lhs = (b.evaluate(a) * x).sum()
    rhs = (a * b.evaluate_adjoint(x)).sum()
    assert abs(float(lhs - rhs)) < 1e-12 * float(lhs.abs())
    # complex convention, complex images: <A c, y> = <c, A^H y> (Hermitian inner products)
    c = torch.randn(5, b.count, generator=gen, dtype=torch.complex128)
    y = torch.randn(5, L, L, generator=gen, dtype=torch.complex128)
    lhs = (b.evaluate(c).conj() * y).sum()
    rhs = (c.conj() * b.evaluate_adjoint(y, complex=True)).sum()
    assert abs(complex(lhs - rhs)) < 1e-12 * abs(complex(lhs))
    # and the adjoint is the dense transpose
    A = ref.pswf_basis_values(b, b.pixel_points())
    torch.testing.assert_close(b.evaluate_adjoint(x), x[:, b.disk_mask] @ A, rtol=0, atol=1e-12)


def test_real_and_complex_conventions(bases, gen):
    b = bases[12]
    x = torch.randn(3, 12, 12, generator=gen, dtype=F64)
    a = b.expand(x)
    c = b.expand(x, complex=True)
    torch.testing.assert_close(c, b.to_complex(a))
    torch.testing.assert_close(b.to_real(c).real, a)
    assert b.to_real(c).imag.abs().max() < 1e-14
    # real images: c_{-N,n} = conj(c_{N,n})
    partner = b._partner
    torch.testing.assert_close(c[:, partner], c.conj())
    # the complex basis evaluates to the same (real) image
    torch.testing.assert_close(b.evaluate(c).real, b.evaluate(a))
    assert b.evaluate(c).imag.abs().max() < 1e-13
    # unitary conversion
    z = torch.randn(4, b.count, generator=gen, dtype=torch.complex128)
    torch.testing.assert_close(b.to_complex(b.to_real(z)), z)
    torch.testing.assert_close(b.to_complex(z).norm(dim=-1), z.norm(dim=-1))
    # complex images expand linearly: real part and imaginary part
    y = torch.randn(2, 12, 12, generator=gen, dtype=torch.complex128)
    torch.testing.assert_close(b.expand(y, complex=True),
                               b.expand(y.real, complex=True) + 1j * b.expand(y.imag, complex=True))
    # complex-convention basis functions: psi_N = Phi e^{iN phi} / sqrt(2 pi) (pixel-normalised)
    p = torch.tensor([[1.3, -2.1], [0.4, 0.2]], dtype=F64)
    vals = b.basis_at(p, complex=True)
    r = p.norm(dim=-1) / b.radius
    phi = torch.atan2(p[:, 1], p[:, 0])
    N = b.indices["N"].to(F64)
    want = b.radial(r) * torch.exp(1j * N[None] * phi[:, None]) / math.sqrt(2 * math.pi) / b.radius
    torch.testing.assert_close(vals, want)


def test_steerability_exact_on_grid_odd_L(bases, gen):
    b = bases[11]
    x = torch.randn(3, 11, 11, generator=gen, dtype=F64)
    a = b.expand(x)
    # rot90 of an array indexed [y, x] by +90 degrees counter-clockwise in (x, y):
    # new(x, y) = old(Rot(-90) (x, y)) = old(y, -x)  ->  new[y, x] = old[-x, y]
    rot = torch.rot90(x, k=1, dims=(-1, -2))
    yy, xx = torch.meshgrid(torch.arange(11) - 5, torch.arange(11) - 5, indexing="ij")
    torch.testing.assert_close(rot[0, yy + 5, xx + 5], x[0, -xx + 5, yy + 5])
    torch.testing.assert_close(b.expand(rot), b.rotate(a, math.pi / 2), rtol=0, atol=1e-12)
    # the phases themselves: c_{N,n} -> c_{N,n} e^{-i N theta}
    c = b.to_complex(a)
    N = b.indices["N"].to(F64)
    torch.testing.assert_close(b.expand(rot, complex=True), c * torch.exp(-1j * N * math.pi / 2), rtol=0, atol=1e-12)
    # mirror y -> -y: c_{N,n} -> c_{-N,n}
    flip = torch.flip(x, dims=(-2,))
    torch.testing.assert_close(b.expand(flip, complex=True), c[:, b._partner], rtol=0, atol=1e-12)


@pytest.mark.parametrize("L", [11, 12])
def test_steerability_continuous(L, gen):
    b = PSWF2D(L)
    a = torch.randn(2, b.count, generator=gen, dtype=F64)
    theta = torch.tensor([0.37, -2.0], dtype=F64)
    pts = (torch.rand(40, 2, generator=gen, dtype=F64) - 0.5) * L
    rotated = b.rotate(a, theta)
    for i in range(2):
        t = float(theta[i])
        Rm = torch.tensor([[math.cos(-t), -math.sin(-t)], [math.sin(-t), math.cos(-t)]], dtype=F64)
        torch.testing.assert_close(b.evaluate_at(rotated[i], pts), b.evaluate_at(a[i], pts @ Rm.T),
                                   rtol=0, atol=1e-12)


def test_float32_paths(bases, gen):
    for L, tol in ((11, 1e-5), (12, 5e-5)):
        b = bases[L]
        x = torch.randn(6, L, L, generator=gen, dtype=F64)
        a64 = b.expand(x)
        a32 = b.expand(x.float())
        assert a32.dtype == torch.float32
        assert (a32.double() - a64).abs().max() < tol * a64.abs().max()
        i32 = b.evaluate(a64.float())
        assert (i32.double() - b.evaluate(a64)).abs().max() < 1e-5 * x.abs().max()
        c32 = b.expand(x.float(), complex=True)
        assert c32.dtype == torch.complex64


def test_numpy_in_numpy_out(bases, gen):
    b = bases[11]
    x = np.random.default_rng(0).standard_normal((2, 11, 11))
    a = b.expand(x)
    assert isinstance(a, np.ndarray) and a.shape == (2, b.count)
    assert isinstance(b.evaluate(a), np.ndarray)


def test_gemm_kernel_backend_agrees(gen):
    b = PSWF2D(16)
    bk = PSWF2D(16, gemm="kernel")
    x = torch.randn(5, 16, 16, generator=gen, dtype=F64)
    torch.testing.assert_close(bk.expand(x), b.expand(x), rtol=0, atol=1e-12)
    a = b.expand(x)
    torch.testing.assert_close(bk.evaluate(a), b.evaluate(a), rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# autograd, torch.compile
# ------------------------------------------------------------------------------------------------
def test_gradcheck_transforms(gen):
    b = PSWF2D(7)
    x = torch.randn(1, 7, 7, generator=gen, dtype=F64, requires_grad=True)
    a = torch.randn(2, b.count, generator=gen, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(b.expand, (x,), fast_mode=True)
    assert torch.autograd.gradcheck(b.evaluate, (a,), fast_mode=True)
    assert torch.autograd.gradcheck(b.evaluate_adjoint, (x,), fast_mode=True)
    assert torch.autograd.gradcheck(lambda x: b.expand(x, complex=True), (x,), fast_mode=True)
    b8 = PSWF2D(8)  # even size: the extra-pixel correction
    x8 = torch.randn(1, 8, 8, generator=gen, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(b8.expand, (x8,), fast_mode=True)
    a8 = torch.randn(1, b8.count, generator=gen, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(b8.evaluate, (a8,), fast_mode=True)


def test_torch_compile(gen):
    torch._dynamo.reset()
    b = PSWF2D(9)
    x = torch.randn(3, 9, 9, generator=gen, requires_grad=True)

    def f(x):
        return (b.evaluate(b.expand(x)) - x).pow(2).sum()

    g = torch.compile(f, backend="aot_eager")
    lc = g(x)
    (gc,) = torch.autograd.grad(lc, x)
    le = f(x)
    (ge,) = torch.autograd.grad(le, x)
    torch.testing.assert_close(lc, le)
    torch.testing.assert_close(gc, ge)


# ------------------------------------------------------------------------------------------------
# bad inputs
# ------------------------------------------------------------------------------------------------
def test_bad_inputs(bases):
    b = bases[11]
    x = torch.zeros(2, 11, 11)
    cases = [
        (lambda: PSWF2D(2), ValueError, "PSWF2D: L must be >= 3"),
        (lambda: PSWF2D(11.0), TypeError, "PSWF2D: L must be an integer"),
        (lambda: PSWF2D(4), ValueError, "PSWF2D: L = 4 has fewer disk pixels than PSWFs"),
        (lambda: PSWF2D(11, truncation=1.5), ValueError, r"PSWF2D: truncation must be in \(0, 1\)"),
        (lambda: PSWF2D(11, bandlimit=-1.0), ValueError, "PSWF2D: bandlimit must be > 0"),
        (lambda: PSWF2D(11, gemm="mkl"), ValueError, "PSWF2D: gemm must be 'blas' or 'kernel'"),
        (lambda: b.expand(torch.zeros(2, 12, 12)), ValueError, r"PSWF2D.expand: images must have side L = 11 \(this basis\), got \(2, 12, 12\)"),
        (lambda: b.expand(torch.zeros(2, 11, 10)), ValueError, r"PSWF2D.expand: images must be square \(\.\.\., L, L\)"),
        (lambda: b.expand(torch.zeros(11)), ValueError, "PSWF2D.expand: images must be square"),
        (lambda: b.expand(x.long()), TypeError, "PSWF2D.expand: images must be float32/float64"),
        (lambda: b.expand(x.to(torch.complex64)), ValueError, "PSWF2D.expand: complex images need complex coefficients"),
        (lambda: b.evaluate(torch.zeros(3, b.count + 1)), ValueError, rf"PSWF2D.evaluate: coefficients must have shape \(\.\.\., M\) with M = {b.count}"),
        (lambda: b.evaluate(torch.zeros(3, b.count, dtype=torch.int32)), TypeError, "PSWF2D.evaluate: coefficients must be float32/float64"),
        (lambda: b.evaluate_adjoint(torch.zeros(2, 13, 13)), ValueError, "PSWF2D.evaluate_adjoint: images must have side L = 11"),
        (lambda: b.basis_at(torch.zeros(3, 3)), ValueError, r"PSWF2D.basis_at: points must have shape \(\.\.\., 2\)"),
        (lambda: b.basis_at(torch.full((3, 2), float("nan"))), ValueError, "PSWF2D.basis_at: points must be finite"),
        (lambda: b.basis_at(torch.zeros(3, 2, dtype=torch.int64)), TypeError, "PSWF2D.basis_at: points must be a real floating-point"),
        (lambda: b.evaluate_at(torch.zeros(b.count), torch.zeros(3, 3)), ValueError, r"PSWF2D.evaluate_at: points must have shape \(P, 2\)"),
        (lambda: b.expand("images"), TypeError, "PSWF2D.expand: images must be a torch.Tensor"),
        (lambda: b.expand(x.to("meta")), ValueError, "must be on a CPU or CUDA device"),
    ]
    for fn, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            fn()


def test_repr_and_attributes(bases):
    b = bases[11]
    assert "PSWF2D(L=11" in repr(b)
    assert b.radius == 5 and math.isclose(b.bandlimit, 5 * math.pi)
    assert b.indices["N"].shape == (b.count,) and b.alpha.dtype == torch.complex128
    assert sum(b.n_max) * 2 - b.n_max[0] == b.count
    assert oc.basis.PSWF2D is PSWF2D
