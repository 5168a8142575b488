"""FSC: identities, the theory of independent noise, resolution arithmetic, masks, plots."""
import math

import numpy as np
import pytest
import torch

from orbitcore import fourier
from orbitcore.metrics import fsc, spherical_mask
from orbitcore.metrics.fsc import _crossing
from orbitcore.physics import pseudo_molecule


def shell_counts(D):
    r = torch.round(fourier.radial_frequency(D, 3)).long().reshape(-1)
    return torch.bincount(r[r <= D // 2], minlength=D // 2 + 1).numpy()


@pytest.mark.parametrize("D", [32, 33])
def test_fsc_with_itself_is_one(D, gen):
    v = torch.randn(D, D, D, generator=gen, dtype=torch.float64)
    r = fsc(v, v, 1.5)
    np.testing.assert_allclose(r.curve, 1.0, rtol=0, atol=1e-12)
    assert len(r.curve) == D // 2 + 1
    np.testing.assert_allclose(r.frequencies, np.arange(D // 2 + 1) / (D * 1.5))
    # never crosses: reported at the last shell
    assert r.resolution_05 == pytest.approx(D * 1.5 / (D // 2)) and r.shell_05 == D // 2


def test_independent_noise_follows_theory(gen):
    # white signal of variance S plus independent white noise of variance N in each map:
    # E FSC(k) = S / (S + N) in every shell; map vs map + noise: sqrt(S / (S + N))
    D, S, N = 48, 1.0, 0.6
    v = math.sqrt(S) * torch.randn(D, D, D, generator=gen, dtype=torch.float64)
    a = v + math.sqrt(N) * torch.randn(D, D, D, generator=gen, dtype=torch.float64)
    b = v + math.sqrt(N) * torch.randn(D, D, D, generator=gen, dtype=torch.float64)
    n = shell_counts(D)
    for got, want in ((fsc(a, b).curve, S / (S + N)), (fsc(v, a).curve, math.sqrt(S / (S + N)))):
        k = np.arange(3, D // 2 + 1)
        tol = 5 * (1 - want ** 2) / np.sqrt(n[k] / 2)  # standard error of a correlation (Hermitian pairs)
        assert np.all(np.abs(got[k] - want) < tol), (got[k] - want)


def test_crossing_where_signal_power_equals_noise(gen):
    # signal with radial power P(k) = 10 exp(-k / 4); noise power 1 in each half-map:
    # E FSC(k) = P / (P + 1) crosses 0.5 at P = 1, i.e. k = 4 ln 10 = 9.21; 0.143 at P = 1/6
    D = 48
    k = fourier.radial_frequency(D, 3)
    amp = torch.sqrt(10 * torch.exp(-k / 4))
    white = torch.randn(D, D, D, generator=gen, dtype=torch.float64)
    v = fourier.ifft3c(fourier.fft3c(white) * amp).real
    a = v + torch.randn(D, D, D, generator=gen, dtype=torch.float64)
    b = v + torch.randn(D, D, D, generator=gen, dtype=torch.float64)
    r = fsc(a, b, pixel_size=2.0)
    assert r.shell_05 == pytest.approx(4 * math.log(10), abs=0.5)
    assert r.shell_0143 == pytest.approx(4 * math.log(60), abs=0.7)
    assert r.resolution_05 == pytest.approx(D * 2.0 / r.shell_05)
    assert r.resolution_05_px == pytest.approx(D / r.shell_05)


def test_crossing_arithmetic_odd_box():
    # linear interpolation between shells 2 (0.7) and 3 (0.4): k = 2 + 2/3; Å = D · px / k with
    # the true D (odd boxes included)
    curve = np.array([1.0, 0.9, 0.7, 0.4, 0.1, 0.0])
    res, k = _crossing(curve, np.arange(6.0), 0.5, 1.7, 11)
    assert k == pytest.approx(8 / 3) and res == pytest.approx(11 * 1.7 / (8 / 3))


def test_mask(gen):
    D = 24
    v = pseudo_molecule(D, n_atoms=80).double()
    w = v + 0.1 * torch.randn(D, D, D, generator=gen, dtype=torch.float64)
    m = spherical_mask(D, 9.0, soft_width=2.0)
    np.testing.assert_allclose(fsc(v, w, mask=m).curve, fsc(v * m, w * m).curve)
    assert float(m[12, 12, 12]) == 1.0 and float(m[0, 0, 0]) == 0.0
    assert float(m[12, 12, 12 + 10]) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))


def test_plot(tmp_path, gen):
    pytest.importorskip("matplotlib")
    from orbitcore.metrics.plots import plot_fsc

    v = torch.randn(16, 16, 16, generator=gen)
    p = plot_fsc(fsc(v, v + torch.randn(16, 16, 16, generator=gen)), tmp_path / "f.png", title="t")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("a, b, kw, match", [
    (torch.zeros(4, 4, 5), torch.zeros(4, 4, 5), {}, r"fsc: volume1 must have shape \(D, D, D\)"),
    (torch.zeros(4, 4, 4), torch.zeros(5, 5, 5), {}, r"fsc: volume2 must have the shape of volume1"),
    (torch.zeros(4, 4, 4), torch.zeros(4, 4, 4), {"mask": torch.zeros(3, 3, 3)}, r"fsc: mask must be real with shape"),
    (torch.zeros(4, 4, 4), torch.zeros(4, 4, 4), {"pixel_size": 0.0}, r"fsc: pixel_size must be > 0"),
    (torch.full((4, 4, 4), float("nan")), torch.zeros(4, 4, 4), {}, r"fsc: volume1 must be finite"),
])
def test_bad_inputs(a, b, kw, match):
    with pytest.raises(ValueError, match=match):
        fsc(a, b, **kw)
