"""CTF: RELION's convention (ARCHITECTURE.md) against hand computations and exact identities."""
import math

import numpy as np
import pytest
import torch

from orbitcore.physics import CTFParams, ctf, electron_wavelength, frequency_grid


def hand_ctf(sx, sy, dU, dV, ang_deg, kv, cs_mm, w, phase_deg=0.0, B=0.0):
    """The formula of ARCHITECTURE.md written out with the math module, one point at a time."""
    V = kv * 1000.0
    lam = 12.2643247 / math.sqrt(V * (1.0 + 0.978466e-6 * V))
    s2 = sx * sx + sy * sy
    theta = math.atan2(sy, sx)
    df = 0.5 * (dU + dV) + 0.5 * (dU - dV) * math.cos(2.0 * (theta - math.radians(ang_deg)))
    chi = (-math.pi * lam * df * s2 + 0.5 * math.pi * (cs_mm * 1e7) * lam ** 3 * s2 ** 2
           - math.radians(phase_deg) - math.atan(w / math.sqrt(1 - w * w)))
    return -math.sin(chi) * math.exp(-B * s2 / 4.0)


def test_wavelength_textbook_values():
    # relativistic electron wavelengths: 1.9687 pm at 300 kV, 2.5079 pm at 200 kV, 3.3492 pm at 120 kV
    assert electron_wavelength(300) == pytest.approx(0.019687, abs=2e-6)
    assert electron_wavelength(200) == pytest.approx(0.025079, abs=2e-6)
    assert electron_wavelength(120) == pytest.approx(0.033492, abs=2e-6)


PARAM_SETS = [
    # dU, dV, angle, kV, Cs, w, phase, B
    (15000.0, 15000.0, 0.0, 300.0, 2.7, 0.1, 0.0, 0.0),        # isotropic
    (13108.08, 12845.58, -160.39, 300.0, 0.01, 0.1, 0.0, 0.0),  # relion31.star particle 1 (astigmatic)
    (21186.8, 21363.1, 7.476, 200.0, 2.7, 0.1, 0.0, 50.0),      # RELION 3.0 sample row, B-factor
    (5000.0, 4000.0, 33.0, 300.0, 2.7, 0.07, 90.0, 0.0),        # phase plate, astigmatic
]


@pytest.mark.parametrize("p", PARAM_SETS)
def test_against_hand_computed_values(p):
    rng = np.random.default_rng(0)
    pts = rng.uniform(-0.3, 0.3, size=(50, 2))
    got = ctf(torch.from_numpy(pts), *p)
    want = torch.tensor([hand_ctf(x, y, *p) for x, y in pts], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_hand_numbers_at_chosen_frequencies():
    # Cs = 0, w = 0, no phase: CTF = sin(π λ Δf s²). Choose s with π λ Δf s² = π/2 -> 1, = π -> 0,
    # = 3π/2 -> -1.
    lam = electron_wavelength(300)
    df = 20000.0
    for target, value in ((0.5, 1.0), (1.0, 0.0), (1.5, -1.0), (1 / 6, 0.5)):
        s = math.sqrt(target / (lam * df))
        got = float(ctf(torch.tensor([[s, 0.0]], dtype=torch.float64), df, df, 0.0, 300.0, 0.0, 0.0))
        assert got == pytest.approx(value, abs=1e-12)


@pytest.mark.parametrize("w", [0.0, 0.07, 0.1, 0.5])
def test_ctf_at_zero_is_amplitude_contrast(w):
    got = ctf(torch.zeros(1, 2, dtype=torch.float64), 15000.0, 14000.0, 10.0, 300.0, 2.7, w)
    assert float(got) == pytest.approx(w, abs=1e-15)


def test_phase_shift_90_degrees_gives_one_at_zero():
    # φ = 90°, w = 0: CTF(0) = -sin(-π/2) = 1
    got = ctf(torch.zeros(1, 2, dtype=torch.float64), 15000.0, 15000.0, 0.0, 300.0, 2.7, 0.0, 90.0)
    assert float(got) == pytest.approx(1.0, abs=1e-15)


def test_astigmatism_axes():
    # along the U axis (angle θ_ast) the CTF is the isotropic one with defocus U; along the
    # perpendicular axis, with defocus V
    dU, dV, a = 16000.0, 12000.0, 37.0
    s = np.array([0.02, 0.05, 0.11, 0.17])
    u = np.stack([s * math.cos(math.radians(a)), s * math.sin(math.radians(a))], 1)
    v = np.stack([s * math.cos(math.radians(a + 90)), s * math.sin(math.radians(a + 90))], 1)
    args = (300.0, 2.7, 0.1)
    torch.testing.assert_close(ctf(torch.from_numpy(u), dU, dV, a, *args), ctf(torch.from_numpy(u), dU, dU, 0.0, *args))
    torch.testing.assert_close(ctf(torch.from_numpy(v), dU, dV, a, *args), ctf(torch.from_numpy(v), dV, dV, 0.0, *args))
    # and the astigmatism is invisible when dU = dV (the angle does not matter)
    torch.testing.assert_close(ctf(torch.from_numpy(u), dU, dU, a, *args), ctf(torch.from_numpy(u), dU, dU, 0.0, *args))


def test_b_factor_envelope():
    pts = torch.tensor([[0.1, 0.05], [0.2, -0.1]], dtype=torch.float64)
    base = ctf(pts, 15000.0, 15000.0, 0.0, 300.0, 2.7, 0.1)
    damp = ctf(pts, 15000.0, 15000.0, 0.0, 300.0, 2.7, 0.1, b_factor=80.0)
    s2 = (pts ** 2).sum(-1)
    torch.testing.assert_close(damp, base * torch.exp(-80.0 * s2 / 4))


def test_negative_of_cryodrgn_convention():
    # cryoDRGN's CTF is the negative of RELION's: at s = 0 it gives -w. Ours gives +w (checked
    # above); and the sign of the first lobe is positive for underfocus (Δf > 0).
    lam = electron_wavelength(300)
    s = math.sqrt(0.25 / (lam * 15000.0))  # χ ≈ -π/4 - atan(w)... inside the first lobe
    v = float(ctf(torch.tensor([[s, 0.0]], dtype=torch.float64), 15000.0, 15000.0, 0.0, 300.0, 0.0, 0.1))
    assert v > 0


def test_batch_broadcasting_and_grid():
    n, px = 16, 2.0
    grid = frequency_grid(n, px)
    assert grid.shape == (n, n, 2)
    assert torch.equal(grid[n // 2, n // 2], torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(grid[n // 2, n // 2 + 3], torch.tensor([3 / (n * px), 0.0], dtype=torch.float64))
    dU = torch.tensor([10000.0, 20000.0, 30000.0], dtype=torch.float64)
    out = ctf(grid, dU, dU - 500, 30.0, 300.0, 2.7, 0.1)
    assert out.shape == (3, n, n)
    for i in range(3):
        torch.testing.assert_close(out[i], ctf(grid, float(dU[i]), float(dU[i]) - 500, 30.0, 300.0, 2.7, 0.1))
    # numpy in, numpy out
    assert isinstance(ctf(grid.numpy(), 1e4, 1e4, 0.0, 300.0, 2.7, 0.1), np.ndarray)


def test_ctfparams_evaluate_matches_function_and_per_image_pixel_size():
    c = CTFParams.create([12000.0, 18000.0], [11000.0, 17500.0], astigmatism_angle=[10.0, -40.0],
                         pixel_size=[1.5, 2.5])
    out = c.evaluate(12)
    assert out.shape == (2, 12, 12)
    for i, px in enumerate((1.5, 2.5)):
        want = ctf(frequency_grid(12, px), float(c.defocus_u[i]), float(c.defocus_v[i]), float(c.astigmatism_angle[i]),
                   300.0, 2.7, 0.1)
        torch.testing.assert_close(out[i], want)
    assert len(c[1:]) == 1 and float(c[1].defocus_u) == 18000.0
    assert len(CTFParams.cat([c, c])) == 4


def test_differentiable_in_defocus():
    pts = torch.rand(20, 2, dtype=torch.float64) * 0.2
    dU = torch.tensor([14000.0, 9000.0], dtype=torch.float64, requires_grad=True)
    dV = torch.tensor([13000.0, 9500.0], dtype=torch.float64, requires_grad=True)
    ang = torch.tensor([20.0, -70.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: ctf(pts, a, b, c, 300.0, 2.7, 0.1), (dU, dV, ang))


@pytest.mark.parametrize("kwargs, match", [
    ({"freqs": torch.zeros(4, 3)}, r"ctf: freqs must have shape \(\.\.\., 2\)"),
    ({"amplitude_contrast": 1.0}, r"ctf: amplitude_contrast must be in \[0, 1\), got 1"),
    ({"voltage": 0.0}, r"ctf: voltage must be > 0 kV, got 0"),
    ({"cs": -1.0}, r"ctf: cs must be >= 0 mm"),
    ({"defocus_u": float("nan")}, r"ctf: defocus_u must be finite"),
    ({"defocus_u": torch.ones(3), "defocus_v": torch.ones(4)}, r"ctf: per-image parameters must have the same length"),
    ({"defocus_u": torch.ones(2, 2)}, r"ctf: defocus_u must be a number or a 1-D array"),
])
def test_bad_inputs(kwargs, match):
    args = dict(freqs=torch.zeros(4, 2), defocus_u=1e4, defocus_v=1e4, astigmatism_angle=0.0, voltage=300.0,
                cs=2.7, amplitude_contrast=0.1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ctf(**args)


def test_ctfparams_bad_inputs():
    with pytest.raises(ValueError, match=r"CTFParams: pixel_size must be > 0"):
        CTFParams.create(1e4, pixel_size=0.0)
    with pytest.raises(ValueError, match=r"CTFParams: amplitude_contrast must be in \[0, 1\)"):
        CTFParams.create(1e4, amplitude_contrast=-0.1)
    with pytest.raises(ValueError, match=r"per-image parameters must have the same length"):
        CTFParams.create([1e4, 2e4], pixel_size=[1.0, 2.0, 3.0])
    with pytest.raises(KeyError, match=r"batch has no CTF entries"):
        CTFParams.from_batch({"image": torch.zeros(2)})
