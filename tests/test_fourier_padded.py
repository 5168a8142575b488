"""fft3c_padded: the centred FT of a zero-padded real volume with pruned real FFTs, against the
plain definition fft3c(pad(v)), and its gradient."""
import numpy as np
import pytest
import torch

from orbitcore import fourier


def _pad(x, N):
    D = x.shape[-1]
    o = N // 2 - D // 2
    out = x.new_zeros(x.shape[:-3] + (N, N, N))
    out[..., o:o + D, o:o + D, o:o + D] = x
    return out


@pytest.mark.parametrize("D,N", [(8, 16), (9, 18), (7, 14), (8, 8), (9, 9), (5, 12), (6, 11), (1, 4), (4, 10)])
def test_matches_the_definition(D, N):
    x = torch.randn(2, D, D, D, dtype=torch.float64, generator=torch.Generator().manual_seed(D * N))
    out = fourier.fft3c_padded(x, N)
    ref = fourier.fft3c(_pad(x, N))
    assert out.shape == (2, N, N, N)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12 * float(ref.abs().max()))


@pytest.mark.parametrize("D,N", [(6, 12), (5, 8), (4, 7)])
def test_gradient(D, N):
    x = torch.randn(D, D, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: torch.view_as_real(fourier.fft3c_padded(v, N)), (x,), fast_mode=True)
    # and the backward equals the plain definition's backward for a random upstream gradient
    G = torch.randn(N, N, N, dtype=torch.complex128, generator=torch.Generator().manual_seed(2))
    g1, = torch.autograd.grad(fourier.fft3c_padded(x, N), x, G)
    g2, = torch.autograd.grad(fourier.fft3c(_pad(x, N)), x, G)
    torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-12)


def test_float32_and_numpy_and_errors():
    x = np.random.default_rng(0).standard_normal((8, 8, 8)).astype(np.float32)
    out = fourier.fft3c_padded(x, 16)
    assert isinstance(out, np.ndarray) and out.dtype == np.complex64
    ref = fourier.fft3c(_pad(torch.from_numpy(x).double(), 16)).numpy()
    np.testing.assert_allclose(out, ref, atol=2e-6 * np.abs(ref).max())
    with pytest.raises(ValueError, match=r"fft3c_padded: N must be >= the volume side 8, got 6"):
        fourier.fft3c_padded(x, 6)
    with pytest.raises(TypeError, match="fft3c_padded: volume must be real"):
        fourier.fft3c_padded(torch.zeros(4, 4, 4, dtype=torch.complex64), 8)
    with pytest.raises(ValueError, match=r"fft3c_padded: volume must have shape \(\.\.\., D, D, D\)"):
        fourier.fft3c_padded(torch.zeros(4, 4, 5), 8)


def _half(F):
    """The kx >= 0 half of a centred FT (kx = N/2 is kx = -N/2: the DFT is N-periodic)."""
    N = F.shape[-1]
    return torch.cat((F[..., N // 2:], F[..., :1]), -1)


@pytest.mark.parametrize("D,N", [(8, 16), (9, 18), (7, 14), (8, 8), (5, 12), (1, 4), (4, 10)])
def test_half_matches_the_definition(D, N):
    x = torch.randn(2, D, D, D, dtype=torch.float64, generator=torch.Generator().manual_seed(D + N))
    out = fourier.fft3c_padded(x, N, half=True)
    ref = _half(fourier.fft3c(_pad(x, N)))
    assert out.shape == (2, N, N, N // 2 + 1) and out.is_contiguous()
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12 * float(ref.abs().max()))


@pytest.mark.parametrize("D,N", [(6, 12), (5, 8), (3, 4)])
def test_half_gradient(D, N):
    x = torch.randn(D, D, D, dtype=torch.float64, generator=torch.Generator().manual_seed(3), requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: torch.view_as_real(fourier.fft3c_padded(v, N, half=True)), (x,))
    G = torch.randn(N, N, N // 2 + 1, dtype=torch.complex128, generator=torch.Generator().manual_seed(4))
    g1, = torch.autograd.grad(fourier.fft3c_padded(x, N, half=True), x, G)
    g2, = torch.autograd.grad(_half(fourier.fft3c(_pad(x, N))), x, G)
    torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-12)


def test_half_errors():
    x = torch.zeros(4, 4, 4)
    with pytest.raises(ValueError, match="fft3c_padded: half=True needs an even N >= 4, got 9"):
        fourier.fft3c_padded(x, 9, half=True)
    with pytest.raises(TypeError, match="fft3c_padded: half must be a bool, got int"):
        fourier.fft3c_padded(x, 8, half=1)
