"""VolumeBasis: the Nyquist rule (the paper's S(ell) and count), zeros and orthonormality of the
radial functions, exact expand/evaluate round trips, the real-volume symmetry, grid units, and
rotation of coefficients against an exactly rotated smooth volume (real space, no slicing)."""
import math

import numpy as np
import pytest
import torch
from scipy.special import jv, spherical_jn

from orbitcore import fourier
from orbitcore.basis import VolumeBasis, max_ell, nyquist_radial_counts
from orbitcore.basis._special import gauss_legendre
from orbitcore.geometry import random_rotations

F64 = torch.float64


def test_nyquist_rule_paper_example():
    # seeds/002 reference implementation: L = 11, ell_max = 10 -> S = [4,4,4,3,3,2,2,2,1,1,1], 219 coefficients
    vb = VolumeBasis(11, 10)
    assert vb.S == [4, 4, 4, 3, 3, 2, 2, 2, 1, 1, 1]
    assert vb.count == 219
    assert max_ell(11) == 10
    # independent count: sign changes of J_{ell + 1/2} on a fine grid below pi * (L // 2)
    for L in (11, 12, 20):
        t = np.linspace(1e-6, math.pi * (L // 2) - 1e-9, 20001)
        for ell, S in enumerate(nyquist_radial_counts(L, max_ell(L))):
            v = jv(ell + 0.5, t)
            assert S == int(np.sum(v[:-1] * v[1:] < 0)), (L, ell)


def test_zeros_and_radial_orthonormality():
    vb = VolumeBasis(16, max_ell(16))
    for ell, z in enumerate(vb.zeros):
        assert np.abs(spherical_jn(ell, z)).max() < 1e-13
        assert np.all(np.diff(z) > 3.0)
    k, w = gauss_legendre(200, 0.0, 1.0)
    for ell in range(vb.ell_max + 1):
        F = vb.radial(ell, k).numpy()
        G = (F * (w * k * k)[:, None]).T @ F
        np.testing.assert_allclose(G, np.eye(vb.S[ell]), rtol=0, atol=1e-13)
        assert float(vb.radial(ell, torch.tensor([1.001], dtype=F64)).abs().max()) == 0.0


@pytest.mark.parametrize("L, ell_max", [(11, 10), (12, 8), (9, 5)])
def test_round_trips(L, ell_max, gen):
    vb = VolumeBasis(L, ell_max)
    x = vb.random(3, generator=gen)
    vol = vb.evaluate(x)
    assert vol.shape == (3, L, L, L) and vol.dtype == F64
    # real-volume symmetry gives real volumes
    assert vb.evaluate(x, real=False).imag.abs().max() < 1e-13 * vol.abs().max()
    torch.testing.assert_close(vb.expand(vol), x, rtol=0, atol=1e-11)
    torch.testing.assert_close(vb.expand_fourier(vb.evaluate_fourier(x)), x, rtol=0, atol=1e-11)
    # a complex (non-symmetric) coefficient vector round-trips too (complex volume)
    z = vb.random(generator=gen, real=False)
    torch.testing.assert_close(vb.expand(vb.evaluate(z, real=False)), z, rtol=0, atol=1e-11)


def test_real_volume_symmetry(gen):
    vb = VolumeBasis(11, 10)
    vol = torch.randn(11, 11, 11, generator=gen, dtype=F64)
    x = vb.expand(vol)
    torch.testing.assert_close(vb.conjugate_mirror(x), x, rtol=0, atol=1e-12)
    ell, m, s = vb.indices["ell"], vb.indices["m"], vb.indices["s"]
    i = int(torch.nonzero((ell == 3) & (m == 2) & (s == 1))[0, 0])
    j = int(torch.nonzero((ell == 3) & (m == -2) & (s == 1))[0, 0])
    torch.testing.assert_close(x[j], (-1) ** (3 + 2) * x[i].conj())
    # m = 0 coefficients of even ell are real, of odd ell imaginary
    zero = m == 0
    assert x[zero & (ell % 2 == 0)].imag.abs().max() < 1e-12
    assert x[zero & (ell % 2 == 1)].real.abs().max() < 1e-12


def test_fourier_grid_units(gen):
    vb = VolumeBasis(9, 6)
    x = vb.random(generator=gen)
    V1 = vb.evaluate_fourier(x)
    V2 = vb.evaluate_fourier(x, 18)  # index j <-> nu = (j - 9) / 18; V1: index q <-> nu = (q - 4) / 9
    torch.testing.assert_close(V2[1::2, 1::2, 1::2], V1, rtol=0, atol=1e-13)
    k = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0], [3.0, 3.0, 3.0]], dtype=F64)
    got = vb.evaluate_at(x, k)
    # (kx, ky, kz) = (1, -2, 0.5) in grid units of L = 9 is nu = (2, -4, 1) / 18: V2[kz, ky, kx]
    torch.testing.assert_close(got[0:2], torch.stack([V2[9 + 1, 9 - 4, 9 + 2], V1[4, 4, 4]]))
    assert got[2] == 0  # |k| > L / 2: outside the ball
    # the real-space volume is ifft3c of the grid samples
    torch.testing.assert_close(fourier.fft3c(vb.evaluate(x)), V1, rtol=0, atol=1e-12)


def test_index_order():
    vb = VolumeBasis(11, 3)
    ell, m, s = (vb.indices[k].tolist() for k in ("ell", "m", "s"))
    assert (ell[:4], m[:4], s[:4]) == ([0] * 4, [0] * 4, [1, 2, 3, 4])
    assert (ell[4:8], m[4:8], s[4:8]) == ([1] * 4, [-1] * 4, [1, 2, 3, 4])
    assert vb.offsets == [0, 4, 16, 36, 57]


def gaussians_ft(centres, amps, sigma, freqs):
    """Analytic FT (cycles/pixel) of sum_i a_i exp(-|r - c_i|^2 / (2 sigma^2)); freqs in grid units of L."""
    nu = freqs
    out = torch.zeros(freqs.shape[:-1], dtype=torch.complex128)
    for c, a in zip(centres, amps):
        out = out + a * (2 * math.pi * sigma ** 2) ** 1.5 * torch.exp(
            -2 * math.pi ** 2 * sigma ** 2 * (nu * nu).sum(-1)) * torch.exp(-2j * math.pi * (nu @ c))
    return out


def test_rotation_of_coefficients_equals_rotation_of_volume(gen):
    """A smooth volume (Gaussians) rotated in real space, v_Q(r) = v(Q^T r) (centres c -> Q c),
    has the coefficients D(Q) x: checks the Wigner convention with no slicing involved."""
    L, ell_max, sigma = 13, 12, 1.5
    vb = VolumeBasis(L, ell_max)
    centres = [torch.tensor(c, dtype=F64) for c in ([1.5, -0.5, 0.8], [-1.0, 1.2, -1.4], [0.3, 0.4, 2.0])]
    amps = [1.0, 0.7, -0.5]
    k = torch.arange(L, dtype=F64) - L // 2
    kz, ky, kx = torch.meshgrid(k, k, k, indexing="ij")
    grid = torch.stack([kx, ky, kz], -1) / L  # cycles per pixel

    def coef(cs):
        return vb.expand_fourier(gaussians_ft(cs, amps, sigma, grid))

    x = coef(centres)
    Q = random_rotations(3, generator=gen, dtype=F64)
    rotated = vb.rotate(x, Q)
    hi = vb.indices["ell"] > 0  # the ell = 0 part is rotation invariant
    for i in range(3):
        xq = coef([Q[i] @ c for c in centres])
        err = float((rotated[i] - xq)[hi].norm() / xq[hi].norm())
        wrong = float((vb.rotate(x, Q[i].T) - xq)[hi].norm() / xq[hi].norm())
        assert err < 5e-3, err  # expansion error of the Gaussians (~2e-3 here, 6e-4 at L = 15)
        assert wrong > 20 * err, (wrong, err)  # the transposed convention is far off
    # and exactly, pointwise: V_Q(k) = V(Q^T k)
    pts = torch.randn(30, 3, generator=gen, dtype=F64) * 3
    for i in range(3):
        torch.testing.assert_close(vb.evaluate_at(rotated[i], pts), vb.evaluate_at(x, pts @ Q[i]), rtol=0, atol=1e-12)


def test_bad_inputs(gen):
    vb = VolumeBasis(11, 4)
    cases = [
        (lambda: VolumeBasis(11, 11), ValueError, r"VolumeBasis: ell_max = 11 is too large for L = 11.*use ell_max <= 10"),
        (lambda: VolumeBasis(2, 0), ValueError, "VolumeBasis: L must be >= 3"),
        (lambda: VolumeBasis(11, -1), ValueError, "VolumeBasis: ell_max must be >= 0"),
        (lambda: VolumeBasis(11.5, 2), TypeError, "VolumeBasis: L must be an integer"),
        (lambda: vb.evaluate(torch.zeros(vb.count + 1, dtype=torch.complex128)), ValueError,
         rf"VolumeBasis.evaluate: x must have shape \(\.\.\., M\) with M = {vb.count}"),
        (lambda: vb.expand(torch.zeros(11, 11, 12)), ValueError, r"VolumeBasis.expand: volume must have shape \(\.\.\., L, L, L\) with L = 11"),
        (lambda: vb.expand(torch.zeros(11, 11, 11, dtype=torch.int64)), TypeError, "VolumeBasis.expand: volume must be a floating-point"),
        (lambda: vb.expand_fourier(torch.zeros(10, 10, 10, dtype=torch.complex128)), ValueError, "VolumeBasis.expand_fourier: volume_ft must have shape"),
        (lambda: vb.evaluate_at(vb.random(), torch.zeros(4, 2)), ValueError, r"VolumeBasis.evaluate_at: freqs must have shape \(P, 3\)"),
        (lambda: vb.evaluate_fourier(vb.random(), 0), ValueError, "VolumeBasis.evaluate_fourier: size must be >= 1"),
        (lambda: vb.evaluate(torch.zeros(vb.count, dtype=torch.int64)), TypeError, "VolumeBasis.evaluate: x must be complex"),
    ]
    for fn, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            fn()
