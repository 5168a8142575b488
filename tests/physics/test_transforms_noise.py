"""Shift phases, the exact 180° rotation, and noise at a requested SNR."""
import math

import numpy as np
import pytest
import torch

from orbitcore import fourier
from orbitcore.physics import (
    add_noise,
    db_to_snr,
    measured_snr,
    noise_sigma,
    phase_shift,
    rotate180,
    shift_images,
    shift_phases,
    snr_to_db,
)


@pytest.mark.parametrize("n", [8, 9])
def test_integer_shift_is_a_roll(n, gen):
    # content moves by +t: shifted[y + ty, x + tx] = image[y, x] (circularly)
    img = torch.randn(3, n, n, generator=gen, dtype=torch.float64)
    t = torch.tensor([[2.0, -1.0], [0.0, 3.0], [-4.0, 5.0]], dtype=torch.float64)
    out = shift_images(img, t)
    for i in range(3):
        want = torch.roll(img[i], shifts=(int(t[i, 1]), int(t[i, 0])), dims=(0, 1))
        torch.testing.assert_close(out[i], want, rtol=0, atol=1e-12)


def test_phase_factor_formula():
    n = 7
    P = shift_phases(n, torch.tensor([0.3, -1.7], dtype=torch.float64), dtype=torch.complex128)
    k = np.arange(n) - n // 2
    ky, kx = np.meshgrid(k, k, indexing="ij")
    want = np.exp(-2j * np.pi * (kx * 0.3 + ky * -1.7) / n)
    np.testing.assert_allclose(P.numpy(), want, rtol=0, atol=1e-14)


def test_subpixel_shift_of_a_gaussian(gen):
    # a band-limited Gaussian blob moved by a sub-pixel t equals the blob drawn at centre + t
    n, s = 32, 2.0
    k = torch.arange(n, dtype=torch.float64) - n // 2
    y, x = torch.meshgrid(k, k, indexing="ij")

    def blob(cx, cy):
        return torch.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * s ** 2))

    t = torch.tensor([1.37, -2.61], dtype=torch.float64)
    # (σ = 2 px: the Gaussian is band-limited to ~1e-9, its aliasing at Nyquist)
    torch.testing.assert_close(shift_images(blob(0.5, -0.25), t), blob(0.5 + 1.37, -0.25 - 2.61), rtol=0, atol=1e-8)
    # shifting back undoes it exactly
    F = fourier.fft2c(blob(0.0, 0.0))
    torch.testing.assert_close(phase_shift(phase_shift(F, t), -t), F)


def test_shift_gradient():
    img = torch.randn(2, 9, 9, dtype=torch.float64)
    t = torch.tensor([[0.3, -0.2], [1.1, 0.4]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda tt: shift_images(img, tt), (t,), fast_mode=True)


@pytest.mark.parametrize("n", [8, 9])
def test_rotate180_real_and_fourier(n, gen):
    img = torch.randn(2, n, n, generator=gen, dtype=torch.float64)
    r = rotate180(img)
    c = n // 2
    # x -> -x about the centre pixel: r[c + dy, c + dx] = img[c - dy, c - dx] (circular)
    for dy in range(-(n // 2), (n + 1) // 2):
        for dx in range(-(n // 2), (n + 1) // 2):
            assert r[0, (c + dy) % n, (c + dx) % n] == img[0, (c - dy) % n, (c - dx) % n]
    torch.testing.assert_close(rotate180(r), img, rtol=0, atol=0)
    F = fourier.fft2c(img)
    torch.testing.assert_close(fourier.fft2c(r), rotate180(F), rtol=0, atol=1e-12)
    torch.testing.assert_close(rotate180(F), F.conj(), rtol=0, atol=1e-12)


def test_snr_definition_and_db():
    assert snr_to_db(10.0) == pytest.approx(10.0)
    assert db_to_snr(-10.0) == pytest.approx(0.1)
    assert db_to_snr(snr_to_db(0.37)) == pytest.approx(0.37)
    clean = torch.ones(4, 10, 10, dtype=torch.float64) * 2.0  # E||clean||² / n² = 4
    assert noise_sigma(clean, 4.0) == pytest.approx(1.0)
    assert noise_sigma(clean, snr_db=0.0) == pytest.approx(2.0)
    assert noise_sigma(clean, math.inf) == 0.0


def test_add_noise_reaches_the_snr(gen):
    clean = torch.randn(200, 32, 32, generator=gen, dtype=torch.float64) * 3.0
    noisy, sigma = add_noise(clean, snr_db=-10.0, generator=gen)
    assert sigma == pytest.approx(math.sqrt(float(clean.pow(2).mean()) / 0.1))
    assert measured_snr(clean, noisy) == pytest.approx(0.1, rel=0.02)
    noise = noisy - clean
    assert float(noise.mean()) == pytest.approx(0.0, abs=0.02 * sigma)
    # reproducible with the same generator state
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    torch.testing.assert_close(add_noise(clean, 1.0, generator=g1)[0], add_noise(clean, 1.0, generator=g2)[0])


def test_noise_bad_inputs():
    x = torch.ones(2, 4, 4)
    with pytest.raises(ValueError, match=r"add_noise: give exactly one of snr, snr_db or sigma"):
        add_noise(x, 1.0, sigma=0.3)
    with pytest.raises(ValueError, match=r"noise_sigma: snr must be > 0"):
        noise_sigma(x, 0.0)
    with pytest.raises(ValueError, match=r"noise_sigma: clean images are all zero"):
        noise_sigma(torch.zeros(2, 4, 4), 1.0)
    with pytest.raises(ValueError, match=r"shift_phases: shifts must have shape \(\.\.\., 2\)"):
        shift_phases(8, torch.zeros(3, 3))
    with pytest.raises(TypeError, match=r"phase_shift: images_ft must be complex"):
        phase_shift(torch.zeros(8, 8), torch.zeros(2))
