"""The Fourier convention (ARCHITECTURE.md): centred, unnormalised forward, DC at n // 2."""
import numpy as np
import pytest
import torch

from orbitcore import fourier


@pytest.mark.parametrize("n", [6, 7])
def test_dc_at_center_and_exact_inverse(n, gen):
    x = torch.randn(3, n, n, generator=gen, dtype=torch.float64)
    X = fourier.fft2c(x)
    torch.testing.assert_close(X[:, n // 2, n // 2].real, x.sum((-1, -2)))
    torch.testing.assert_close(fourier.ifft2c(X).real, x)
    v = torch.randn(n, n, n, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(fourier.ifft3c(fourier.fft3c(v)).real, v)
    torch.testing.assert_close(fourier.fft3c(v)[n // 2, n // 2, n // 2].real, v.sum())


@pytest.mark.parametrize("n", [6, 7])
def test_definition_matches_explicit_dft(n, gen):
    # X[k] = sum_r x[r] exp(-2 pi i k.r / n), with r and k both centred at index n // 2.
    x = torch.randn(n, n, generator=gen, dtype=torch.float64)
    k = torch.arange(n, dtype=torch.float64) - n // 2
    E = torch.exp(-2j * torch.pi * k[:, None] * k[None, :] / n)  # [k, r]
    want = E @ x.to(torch.complex128) @ E.T  # rows: ky over y, cols: kx over x
    torch.testing.assert_close(fourier.fft2c(x), want)


def test_frequency_grids():
    assert fourier.frequencies(6).tolist() == [-3, -2, -1, 0, 1, 2]
    assert fourier.frequencies(7).tolist() == [-3, -2, -1, 0, 1, 2, 3]
    torch.testing.assert_close(fourier.frequencies(4, pixel_size=2.0), torch.tensor([-2.0, -1, 0, 1], dtype=torch.float64) / 8)
    g = fourier.frequency_grid_2d(5)
    assert g.shape == (5, 5, 2)
    assert g[2, 4].tolist() == [2, 0]  # [iy, ix] holds (kx, ky)
    assert g[0, 2].tolist() == [0, -2]
    g3 = fourier.frequency_grid_3d(4)
    assert g3[0, 1, 3].tolist() == [1, -1, -2]


def test_shift_convention(gen):
    # A shift t moves content by +t: multiplies the centred FT by exp(-2 pi i k.t / n).
    n = 8
    x = torch.zeros(n, n, dtype=torch.float64)
    x[n // 2, n // 2] = 1.0
    t = (2, -1)  # (tx, ty)
    moved = torch.roll(x, shifts=(t[1], t[0]), dims=(0, 1))
    g = fourier.frequency_grid_2d(n)
    phase = torch.exp(-2j * torch.pi * (g[..., 0] * t[0] + g[..., 1] * t[1]) / n)
    torch.testing.assert_close(fourier.fft2c(moved), fourier.fft2c(x) * phase)


def test_crop_pad_and_downsample(gen):
    x = torch.randn(2, 12, 12, generator=gen, dtype=torch.float64)
    X = fourier.fft2c(x)
    torch.testing.assert_close(fourier.fourier_crop(fourier.fourier_pad(X, 20, 2), 12, 2), X)
    small = fourier.downsample(x, 6)
    assert small.shape == (2, 6, 6)
    torch.testing.assert_close(small.mean((-1, -2)), x.mean((-1, -2)))
    # a band-limited image is reproduced exactly by downsample -> upsample
    lp = fourier.ifft2c(fourier.fourier_pad(fourier.fourier_crop(X, 5, 2), 12, 2)).real
    up = fourier.ifft2c(fourier.fourier_pad(fourier.fft2c(fourier.downsample(lp, 6)), 12, 2)).real * 4
    torch.testing.assert_close(up, lp)
    assert isinstance(fourier.downsample(x.numpy(), 6), np.ndarray)
    with pytest.raises(ValueError, match="downsample: m must be <="):
        fourier.downsample(x, 13)
    with pytest.raises(TypeError, match="downsample: x must be real"):
        fourier.downsample(X, 6)
