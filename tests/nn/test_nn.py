"""Shared networks: SIREN init, FourierNet Hermitian symmetry and half-plane slicing, encoders."""
import numpy as np
import pytest
import torch

import orbitcore as oc
from orbitcore.nn import SIREN, FourierNet, GaussianFilterBank, PoseEncoder, canonical_half


def test_siren_activation_statistics():
    # SIREN's initialisation keeps pre-activations ~ N(0, 1)-like through depth (Sitzmann et al.)
    torch.manual_seed(0)
    net = SIREN(3, 1, hidden=256, hidden_layers=4)
    x = torch.rand(4096, 3) * 2 - 1
    h = x
    for layer in net.body:
        pre = layer.w0 * layer.linear(h)
        h = layer(h)
    assert 0.5 < float(pre.detach().std()) < 2.0
    assert abs(float(h.detach().mean())) < 0.1


def test_fouriernet_parameter_count_matches_paper():
    net = FourierNet(64, hidden=256, amplitude_layers=2, modulation_layers=3)
    weights = sum(p.numel() for name, p in net.named_parameters() if name.endswith("weight"))
    assert weights == 330240  # seeds/003 supp. C counts the weight matrices
    assert sum(p.numel() for p in net.parameters()) == 330240 + 5 * 256 + 2 * 256 + 2 * 2


def test_fouriernet_is_hermitian_exactly():
    torch.manual_seed(1)
    net = FourierNet(16, hidden=32).double()
    k = torch.randint(-8, 8, (500, 3)).double()
    k[:50, 0] = 0  # the kx = 0 plane, where eq. 7 alone leaves freedom
    v, vm = net(k), net(-k)
    torch.testing.assert_close(vm, v.conj(), rtol=0, atol=0)
    assert canonical_half(torch.zeros(1, 3)).item()
    # DC is its own mirror, evaluated once (value of the canonical branch)
    assert torch.isfinite(net(torch.zeros(3, dtype=torch.float64))).all()
    # the query for points known to be canonical (grid scoring's) is forward without the mirror
    kc = torch.cat((k[canonical_half(k)], torch.zeros(1, 3, dtype=torch.float64)))
    torch.testing.assert_close(net.canonical(kc), net(kc), rtol=0, atol=0)
    assert net.canonical(torch.zeros(1, 3, dtype=torch.float64)).imag.item() == 0.0


@pytest.mark.parametrize("n", [8, 9])
def test_fouriernet_half_plane_slice_equals_full_query(n):
    torch.manual_seed(2)
    net = FourierNet(n, hidden=32).double()
    R = oc.geometry.random_rotations(3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    S = net.slice(R)
    k = oc.fourier.frequencies(n)
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    q = torch.stack((kx, ky, torch.zeros_like(kx)), -1)
    full = net(torch.einsum("bij,yxj->byxi", R, q))
    torch.testing.assert_close(S, full, rtol=1e-12, atol=1e-12)
    Sr = net.slice(R, radius=2.5)
    mask = (kx ** 2 + ky ** 2) <= 2.5 ** 2
    torch.testing.assert_close(Sr, full * mask, rtol=1e-12, atol=1e-12)
    # gradients flow to the parameters through the half-plane query
    S.abs().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_fouriernet_volume_is_real_space_real():
    net = FourierNet(9, hidden=16).double()
    V = net.to_volume_ft()
    assert V.shape == (9, 9, 9)
    vol = oc.fourier.ifft3c(V)
    assert vol.imag.abs().max() < 1e-10 * vol.real.abs().max()  # Hermitian => real volume (odd D)


def test_gaussian_filter_bank():
    fb = GaussianFilterBank(5, 11, 0.1, 10.0)
    x = torch.randn(2, 1, 32, 32)
    y = fb(x)
    assert y.shape == (2, 5, 32, 32)
    torch.testing.assert_close(y[:, 0], x[:, 0], atol=1e-6, rtol=0)  # sigma 0.1: identity
    assert y[:, -1].std() < 0.3 * x.std()  # sigma 10: strong low-pass
    const = torch.ones(1, 1, 16, 16)
    torch.testing.assert_close(fb(const), torch.ones(1, 5, 16, 16), atol=1e-6, rtol=0)  # unit DC gain


def _gaussian_bank_reference(x, sigmas, size, mode):
    """Float64 reference written from the definition: pad (NumPy reflect/edge, the same rule as
    torch's reflect/replicate), then correlate with the normalised 2-D Gaussian of each σ."""
    h = size // 2
    xp = np.pad(x, ((0, 0), (h, h), (h, h)), mode={"reflect": "reflect", "replicate": "edge"}[mode])
    r = np.arange(size) - h
    out = np.zeros((x.shape[0], len(sigmas)) + x.shape[1:])
    for f, s in enumerate(sigmas):
        k = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * s * s))
        k /= k.sum()
        for i in range(size):
            for j in range(size):
                out[:, f] += k[i, j] * xp[:, i:i + x.shape[1], j:j + x.shape[2]]
    return out


@pytest.mark.parametrize("n", [3, 4, 9, 16, 33])  # 3: replicated border
def test_gaussian_filter_bank_matches_direct_convolution(n):
    # forward() is G X Gᵀ (separable); check it against the definition, in float64
    fb = GaussianFilterBank(4, 7, 0.3, 5.0).double()
    x = torch.randn(3, 1, n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    sig = np.logspace(np.log10(0.3), np.log10(5.0), 4)
    ref = _gaussian_bank_reference(x[:, 0].numpy(), sig, 7, "reflect" if n > 3 else "replicate")
    np.testing.assert_allclose(fb(x).numpy(), ref, atol=1e-12, rtol=0)
    # the direct convolution path (the benchmark's baseline) agrees to the float32 kernel rounding
    np.testing.assert_allclose(fb.dense(x).numpy(), ref, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"GaussianFilterBank: x must have shape \(B, 1, n, n\)"):
        fb(x[:, 0])


@pytest.mark.parametrize("head", ["s2s2", "quaternion", "euler"])
def test_pose_encoder_outputs_rotations(head):
    torch.manual_seed(3)
    enc = PoseEncoder(32, channels=(8, 16), rotation=head, hidden=(32,), max_shift=4.0)
    R, t = enc(torch.randn(5, 32, 32))
    assert R.shape == (5, 3, 3) and t.shape == (5, 2)
    eye = torch.eye(3).expand(5, 3, 3)
    torch.testing.assert_close(R.transpose(1, 2) @ R, eye, atol=1e-5, rtol=0)
    assert torch.all(torch.linalg.det(R) > 0.99) and torch.all(t.abs() <= 4.0)
    (R.sum() + t.sum()).backward()


def test_bad_inputs():
    with pytest.raises(ValueError, match="PoseEncoder: rotation must be one of"):
        PoseEncoder(32, rotation="matrix")
    with pytest.raises(ValueError, match="PoseEncoder: channels must have"):
        PoseEncoder(8, channels=(4, 4, 4, 4))
    enc = PoseEncoder(16, channels=(4,), hidden=(8,))
    with pytest.raises(ValueError, match=r"images must have shape \(B, 16, 16\)"):
        enc(torch.zeros(2, 15, 15))
    with pytest.raises(ValueError, match="GaussianFilterBank: size must be odd"):
        GaussianFilterBank(3, 10)
    with pytest.raises(ValueError, match=r"FourierNet: k must have shape \(\.\.\., 3\)"):
        FourierNet(8, hidden=8)(torch.zeros(4, 2))


def test_batch_whitening_gives_identity_covariance_and_tracks_statistics():
    from orbitcore.nn import BatchWhitening

    g = torch.Generator().manual_seed(0)
    A = torch.randn(6, 6, generator=g, dtype=torch.float64)
    x = torch.randn(512, 6, generator=g, dtype=torch.float64) @ A.T + torch.arange(6.0, dtype=torch.float64)
    w = BatchWhitening(6, momentum=1.0, eps=0.0).double()
    y = w(x)
    torch.testing.assert_close(y.mean(0), torch.zeros(6, dtype=torch.float64), atol=1e-10, rtol=0)
    torch.testing.assert_close(torch.cov(y.T), torch.eye(6, dtype=torch.float64), atol=1e-10, rtol=0)
    # momentum 1: the running estimates are this batch's, so evaluation mode gives the same map
    w.eval()
    torch.testing.assert_close(w(x), y)
    # differentiable (through the Cholesky factor) in training mode
    w.train()
    xr = x[:20].clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda v: BatchWhitening(6, eps=1e-3).double()(v), (xr,), fast_mode=True)
    with pytest.raises(ValueError, match=r"BatchWhitening: input must have shape \(B, 6\)"):
        w(torch.zeros(3, 5, dtype=torch.float64))


def test_whitened_s2s2_head_spreads_initial_poses():
    # Gram-Schmidt of whitened 6-vectors: the predicted viewing directions of different images
    # are spread over the sphere from the start (mean direction far from unit length)
    torch.manual_seed(0)
    x = torch.randn(256, 16, 16)
    enc = PoseEncoder(16, channels=(4, 8), hidden=(16,), whiten_rotation=True)
    R, _ = enc(x)
    assert float(R.detach()[:, :, 2].mean(0).norm()) < 0.3
    eye = torch.eye(3).expand(256, 3, 3)
    torch.testing.assert_close(R.transpose(1, 2) @ R, eye, atol=1e-5, rtol=0)
