"""Amortized model: decoders against the forward model, the losses, the symmetric path choice,
gradients through the rotations. References are independent: the physics projector (tested
against analytic projections), brute-force network queries, hand-written phase factors,
Parseval, true poses."""
import math

import pytest
import torch
from torch import nn

import orbitcore as oc
from orbitcore.amortized import AmortizedModel, ModelConfig, fourier_l2, form_images, symmetric_loss
from orbitcore.geometry import random_rotations, s2s2_to_matrix
from orbitcore.nn import RotationLayer
from orbitcore.ops import _reference as reference
from orbitcore.physics import CTFParams, Projector, rotate180


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _disk(n, r):
    return oc.fourier.radial_frequency(n, 2) <= r


class FixedPoses(nn.Module):
    """A stand-in encoder returning given poses (learnable, to watch where gradients go)."""

    def __init__(self, R, t):
        super().__init__()
        self.a = nn.Parameter(oc.geometry.matrix_to_s2s2(R).clone())
        self.t = nn.Parameter(t.clone())

    def forward(self, x):
        assert x.shape[0] == self.a.shape[0]
        return s2s2_to_matrix(self.a), self.t


def test_voxel_decoder_reproduces_the_projector():
    # X̂ = T_t C S[V̂](R) of the decoder equals the physics forward model (independently tested
    # against analytic projections) for the same volume, poses, shifts and CTF, inside the disk
    n = 24
    vol = oc.physics.pseudo_molecule(n, n_atoms=60, seed=3).double()
    R = random_rotations(5, generator=_gen(1), dtype=torch.float64)
    t = torch.randn(5, 2, generator=_gen(2), dtype=torch.float64)
    ctf = CTFParams.create(torch.linspace(8000, 20000, 5), pixel_size=2.0).to(dtype=torch.float64)
    C = ctf.evaluate(n)
    model = AmortizedModel.create(n, decoder="voxel").double()
    with torch.no_grad():
        model.decoder.volume_real.copy_(vol)
    X = model.decode(R, t, C)
    ref = Projector(vol, pad=2).fourier(R, t, ctf)
    m = _disk(n, model.config.radius)
    assert m.sum() > 300
    err = (X - ref)[:, m].abs().max() / ref[:, m].abs().max()
    assert err < 1e-10
    assert X[:, ~m].abs().max() == 0  # nothing outside the disk


def test_fouriernet_decoder_is_the_network_on_the_rotated_plane():
    n = 12
    model = AmortizedModel.create(n, decoder="fouriernet", fourier_hidden=16, channels=(4, 8), hidden=(8,)).double()
    R = random_rotations(3, generator=_gen(4), dtype=torch.float64)
    t = torch.tensor([[0.5, -1.25], [2.0, 0.0], [-0.3, 0.7]], dtype=torch.float64)
    C = 0.3 + torch.rand(3, n, n, generator=_gen(5), dtype=torch.float64)
    X = model.decode(R, t, C)
    k = oc.fourier.frequencies(n, dtype=torch.float64)
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    plane = torch.stack((kx, ky, torch.zeros_like(kx)), -1)
    with torch.no_grad():
        V = n * model.decoder.net(torch.einsum("bij,yxj->byxi", R, plane))  # scale = D
    phase = torch.exp(-2j * math.pi * (kx * t[:, 0, None, None] + ky * t[:, 1, None, None]) / n)  # eq. 9
    ref = phase * C * V * _disk(n, model.config.radius)
    torch.testing.assert_close(X.detach(), ref, rtol=1e-10, atol=1e-10)


def test_fourier_l2_is_real_space_mse_by_parseval():
    a = torch.randn(4, 16, 16, generator=_gen(6), dtype=torch.float64)
    b = torch.randn(4, 16, 16, generator=_gen(7), dtype=torch.float64)
    d = fourier_l2(oc.fourier.fft2c(a), oc.fourier.fft2c(b))
    torch.testing.assert_close(d, (a - b).pow(2).mean((-1, -2)), rtol=1e-12, atol=0)


def test_symmetric_loss_selects_and_routes_gradient():
    la = torch.tensor([1.0, 3.0, 2.0], requires_grad=True)
    lb = torch.tensor([2.0, 1.0, 2.0], requires_grad=True)
    loss, flipped = symmetric_loss(la, lb)
    assert flipped.tolist() == [False, True, False]  # ties go to the direct path
    assert loss.tolist() == [1.0, 1.0, 2.0]
    loss.sum().backward()
    assert la.grad.tolist() == [1.0, 0.0, 1.0] and lb.grad.tolist() == [0.0, 1.0, 0.0]


def test_rotation_layer_is_exact_pose_change():
    # rotate180 of the image of pose (R, t) is the image of pose (R Rz(pi), -t), exactly
    n = 16
    vol = oc.physics.pseudo_molecule(n, n_atoms=40, seed=1).double()
    R = random_rotations(2, generator=_gen(8), dtype=torch.float64)
    t = torch.tensor([[1.5, -0.5], [0.25, 2.0]], dtype=torch.float64)
    P = Projector(vol)
    img = P(R, t)
    dup = RotationLayer()(img)
    Rz = torch.diag(torch.tensor([-1.0, -1.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(dup[:2], img)
    torch.testing.assert_close(dup[2:], P(R @ Rz, -t), rtol=0, atol=1e-12)


@pytest.mark.parametrize("good_path", ["direct", "rotated"])
def test_symmetric_loss_picks_the_right_branch_and_reports_its_pose(good_path):
    # Constructed example: one image of a known pose; the stand-in encoder predicts the true
    # pose on one path and a wrong one on the other. The loss must pick the true path, report
    # the true pose of the *input* image, and send gradient only through that path.
    n = 20
    vol = oc.physics.pseudo_molecule(n, n_atoms=80, seed=5).double()
    R = random_rotations(1, generator=_gen(9), dtype=torch.float64)
    t = torch.tensor([[1.25, -0.75]], dtype=torch.float64)
    image = Projector(vol)(R, t)
    Rz = torch.diag(torch.tensor([-1.0, -1.0, 1.0], dtype=torch.float64))
    wrong = random_rotations(1, generator=_gen(10), dtype=torch.float64)
    if good_path == "direct":
        Rs, ts = torch.cat((R, wrong)), torch.cat((t, -t + 2.0))
    else:  # the rotated copy has pose (R Rz(pi), -t)
        Rs, ts = torch.cat((wrong, R @ Rz)), torch.cat((t + 1.0, -t))
    model = AmortizedModel.create(n, decoder="voxel").double()
    with torch.no_grad():
        model.decoder.volume_real.copy_(vol)
    model.encoder = FixedPoses(Rs, ts).double()
    out = model(image)
    flipped = good_path == "rotated"
    assert out.flipped.tolist() == [flipped]
    good, bad = (out.loss_rotated, out.loss_direct) if flipped else (out.loss_direct, out.loss_rotated)
    assert good.item() < 1e-20 * bad.item() + 1e-24 and bad.item() > 1e-3
    torch.testing.assert_close(out.rotations, R, rtol=0, atol=1e-10)
    torch.testing.assert_close(out.shifts, t, rtol=0, atol=1e-10)
    # push the chosen path off the optimum so it has a gradient; the other path must get none
    with torch.no_grad():
        model.encoder.t.add_(0.1)
    model(image).loss.backward()
    g = model.encoder.a.grad
    chosen, other = (1, 0) if flipped else (0, 1)
    assert g[chosen].abs().sum() > 0 and model.encoder.t.grad[chosen].abs().sum() > 0
    assert g[other].abs().sum() == 0 and model.encoder.t.grad[other].abs().sum() == 0


@pytest.mark.parametrize("decoder", ["voxel", "fouriernet"])
def test_gradient_through_the_rotations_is_exact(decoder):
    # d loss / d (s2s2) through slice -> CTF -> shift -> Fourier L2, against finite differences
    n = 10
    model = AmortizedModel.create(n, decoder=decoder, fourier_hidden=12, init_scale=1.0, channels=(4,), hidden=(8,)).double()
    R0 = random_rotations(2, generator=_gen(11), dtype=torch.float64)
    Y = oc.fourier.fft2c(torch.randn(2, n, n, generator=_gen(12), dtype=torch.float64))
    C = 0.5 + torch.rand(2, n, n, generator=_gen(13), dtype=torch.float64)
    t = torch.tensor([[0.3, -0.2], [1.0, 0.5]], dtype=torch.float64)

    def loss(a):
        return fourier_l2(Y, model.decode(s2s2_to_matrix(a), t, C), model.mask).sum()

    a = oc.geometry.matrix_to_s2s2(R0).clone().requires_grad_()
    assert torch.autograd.gradcheck(loss, (a,), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_gradients_reach_every_encoder_weight_through_the_rotations():
    # With shifts switched off, the encoder influences the loss only through the rotations.
    torch.manual_seed(0)
    n = 16
    model = AmortizedModel.create(n, decoder="voxel", shifts="none", channels=(4, 8), hidden=(16,),
                                  init_scale=0.05)
    vol = oc.physics.pseudo_molecule(n, n_atoms=40, seed=2)
    images = Projector(vol)(random_rotations(4, generator=_gen(14)))
    out = model(images)
    out.loss.backward()
    rot_head = [p.grad for p in model.encoder.rotation_head.parameters()]
    conv = [p.grad for p in model.encoder.features.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in rot_head + conv)
    # the translation head is unused with shifts="none": no gradient at all
    assert all(p.grad is None for p in model.encoder.translation_head.parameters())
    assert model.decoder.volume_real.grad.abs().sum() > 0


def test_forward_validates_inputs():
    model = AmortizedModel.create(16)
    with pytest.raises(ValueError, match=r"AmortizedModel: images must be a real tensor \(B, 16, 16\)"):
        model(torch.zeros(2, 15, 15))
    with pytest.raises(ValueError, match=r"AmortizedModel: ctf must be real CTF values \(2, 16, 16\)"):
        model(torch.zeros(2, 16, 16), torch.zeros(2, 8, 8))
    known = AmortizedModel.create(16, shifts="known")
    with pytest.raises(ValueError, match="shifts='known' needs"):
        known(torch.zeros(2, 16, 16))


def test_model_config_validation():
    with pytest.raises(ValueError, match="ModelConfig: decoder must be one of"):
        ModelConfig(n=32, decoder="mlp")
    with pytest.raises(ValueError, match="ModelConfig: radius must be <= n/2 - 1"):
        ModelConfig(n=32, radius=16)
    with pytest.raises(ValueError, match="ModelConfig: encoder_size must be <= n"):
        ModelConfig(n=32, encoder_size=64)
    with pytest.raises(ValueError, match="ModelConfig: shifts must be one of"):
        ModelConfig(n=32, shifts="guess")
    with pytest.raises(TypeError, match="ModelConfig: symmetric must be True or False"):
        ModelConfig(n=32, symmetric="yes")
    with pytest.raises(ValueError, match="ModelConfig.from_dict: unknown fields"):
        ModelConfig.from_dict({"n": 32, "colour": "blue"})
    c = ModelConfig(n=32, encoder_size=16)
    assert ModelConfig.from_dict(c.to_dict()) == c


def test_encoder_size_crops_for_the_encoder_only():
    model = AmortizedModel.create(32, encoder_size=16, channels=(4, 8), hidden=(8,))
    assert model.encoder.n == 16
    R, t = model.encode(torch.randn(3, 32, 32))
    assert R.shape == (3, 3, 3) and t.shape == (3, 2)
    assert model.decode(R, t).shape == (3, 32, 32)


def test_ctf_corrected_encoder_inputs():
    """encoder_input="phase_flipped": the encoder sees F⁻¹[sign(CTF) F Y], "wiener": F⁻¹[CTF/(CTF²+ε) F Y], both computed by hand
    with numpy; the decoder and the loss are those of the raw images."""
    import numpy as np

    g = _gen(3)
    n, B = 16, 3
    images = torch.randn(B, n, n, generator=g, dtype=torch.float64)
    ctf = CTFParams.create(torch.tensor([8000.0, 15000.0, 25000.0]), pixel_size=3.0).evaluate(n, dtype=torch.float64)
    raw = AmortizedModel.create(n, channels=(4, 8), hidden=(8,), symmetric=False).double()
    flip = AmortizedModel.create(n, channels=(4, 8), hidden=(8,), symmetric=False,
                                 encoder_input="phase_flipped").double()
    flip.load_state_dict(raw.state_dict())
    raw.eval()
    flip.eval()
    # by hand: centred FFT, multiply by the CTF's sign, inverse
    F = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(images.numpy(), axes=(-2, -1))), axes=(-2, -1))
    x = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(F * np.sign(ctf.numpy()), axes=(-2, -1))), axes=(-2, -1))
    assert np.abs(x.imag).max() < 1e-12  # the CTF is centrosymmetric: a real image
    R_want, t_want = raw.encode(torch.from_numpy(x.real))
    R_got, t_got = flip.encode(images, ctf)
    torch.testing.assert_close(R_got, R_want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(t_got, t_want, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(R_got, raw.encode(images)[0])  # the flip changes what the encoder sees
    # the loss models the raw images: with the poses the flipped encoder gives, the same decoder loss
    out = flip(images, ctf)
    want = fourier_l2(oc.fourier.fft2c(images), raw.decode(R_want, t_want, ctf), raw.mask)
    torch.testing.assert_close(out.per_image, want, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match=r"AmortizedModel.encode: encoder_input='phase_flipped' needs the images' CTF"):
        flip(images)
    with pytest.raises(ValueError, match=r"ModelConfig: encoder_input must be one of \['raw', 'phase_flipped', 'wiener'\]"):
        ModelConfig(n=16, encoder_input="deconvolved")
    with pytest.raises(ValueError, match=r"ModelConfig: wiener_eps must be > 0"):
        ModelConfig(n=16, encoder_input="wiener", wiener_eps=0.0)
    # the Wiener input: F⁻¹[CTF / (CTF² + ε) F Y], by hand
    wien = AmortizedModel.create(n, channels=(4, 8), hidden=(8,), symmetric=False, encoder_input="wiener",
                                 wiener_eps=0.2).double()
    wien.load_state_dict(raw.state_dict())
    wien.eval()
    c = ctf.numpy()
    xw = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(F * c / (c * c + 0.2), axes=(-2, -1))), axes=(-2, -1))
    torch.testing.assert_close(wien.encode(images, ctf)[0], raw.encode(torch.from_numpy(xw.real))[0], rtol=1e-10,
                               atol=1e-10)
    # the symmetric model flips both copies with the same (centrosymmetric) CTF
    sym = AmortizedModel.create(n, channels=(4, 8), hidden=(8,), encoder_input="phase_flipped").double().eval()
    assert torch.isfinite(sym(images, ctf).loss)


def test_form_images_order_of_operations():
    S = torch.randn(2, 8, 8, dtype=torch.complex128, generator=_gen(15))
    C = torch.rand(2, 8, 8, dtype=torch.float64, generator=_gen(16))
    t = torch.tensor([[1.0, 0.0], [0.0, -2.0]], dtype=torch.float64)
    # a whole-pixel shift is an exact circular shift of the real image
    X = form_images(S, C, t)
    img = oc.fourier.ifft2c(S * C)
    torch.testing.assert_close(oc.fourier.ifft2c(X)[0], torch.roll(img[0], 1, dims=-1))
    torch.testing.assert_close(oc.fourier.ifft2c(X)[1], torch.roll(img[1], -2, dims=-2))


def test_reported_pose_of_rotated_path_maps_back():
    # rotate180(image of R) is the image of R Rz(pi): so the map back is an involution
    assert torch.equal(rotate180(rotate180(torch.arange(25.0).reshape(1, 5, 5))), torch.arange(25.0).reshape(1, 5, 5))


@pytest.mark.parametrize("decoder,heads,symmetric", [("voxel", 4, True), ("voxel", 1, True), ("voxel", 3, False),
                                                     ("fouriernet", 3, True)])
def test_winner_only_gradients_equal_differentiating_every_path(decoder, heads, symmetric):
    """The forward scores every path without gradients and renders only the winners again with
    them. Reference: every path rendered with gradients, min over the hypotheses, eq. 10 by
    symmetric_loss, as written in the paper. Same loss, same gradients to every parameter."""
    torch.manual_seed(3)
    n, B = 12, 5
    m = AmortizedModel.create(n, decoder=decoder, channels=(4, 8), symmetric=symmetric, pose_heads=heads,
                              fourier_hidden=16, seed=3).double()
    if decoder == "voxel":
        with torch.no_grad():
            m.decoder.volume_real.copy_(oc.physics.pseudo_molecule(n).double())
    m.eval()  # batch statistics out of the picture: both computations see the same network
    images = torch.randn(B, n, n, generator=_gen(4), dtype=torch.float64)
    ctf = 1 + 0.1 * torch.randn(B, n, n, generator=_gen(5), dtype=torch.float64)
    params = [p for p in m.parameters() if p.requires_grad]

    out = m(images, ctf)
    g = torch.autograd.grad(out.loss, params, allow_unused=True)

    Y = oc.fourier.fft2c(images)
    x, C = images, ctf
    if symmetric:
        x, Y, C = torch.cat((images, rotate180(images))), torch.cat((Y, rotate180(Y))), torch.cat((ctf, ctf))
    R, t = m.encode(x)
    R = R.reshape(-1, 3, 3)
    X = m.decode(R, t.repeat_interleave(heads, 0), C.repeat_interleave(heads, 0))
    d = fourier_l2(Y.repeat_interleave(heads, 0), X, m.mask).view(x.shape[0], heads).min(1).values
    ref = symmetric_loss(d[:B], d[B:])[0].mean() if symmetric else d.mean()
    g_ref = torch.autograd.grad(ref, params, allow_unused=True)

    torch.testing.assert_close(out.loss, ref, rtol=1e-12, atol=0)
    for p, a, b in zip(params, g, g_ref):
        if b is None:
            assert a is None or float(a.abs().max()) == 0.0
        else:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert sum(float(a.abs().sum()) for a in g if a is not None) > 0


# ----------------------------------------------------------------------------------------------
# FourierNet scored on an oversampled grid (ModelConfig.fourier_scoring="grid")
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [12, 13])
def test_fouriernet_grid_renderer_is_trilinear_interpolation_of_the_network(n):
    """Reference: the network queried point by point at every grid point of the ball
    (``scale · net(q / 2)``, its own Hermitian rule, none of ``grid_ft``'s half-space and mirror
    indexing), zero elsewhere, sliced by the pure-torch trilinear reference at ``2 · R k`` in
    float64; the grid renderer must give the same, zero outside the disk, and ``grid_ft`` must
    be that grid."""
    m = AmortizedModel.create(n, decoder="fouriernet", fourier_hidden=16, channels=(4, 8), hidden=(8,), w0=5.0,
                              seed=2).double()
    dec = m.decoder
    r = m.config.radius
    R = random_rotations(4, generator=_gen(8), dtype=torch.float64)
    g = oc.fourier.frequency_grid_3d(2 * dec.D, dtype=torch.float64)
    ball = g.norm(dim=-1) <= 2 * r + 3 ** 0.5
    with torch.no_grad():
        Vref = torch.zeros(g.shape[:-1], dtype=torch.complex128)
        Vref[ball] = dec.scale * dec.net(g[ball] / 2)
        ref = reference.trilinear_sample(Vref, 2 * reference.plane_coords(R, n)) * _disk(n, r)
        got = dec.grid_renderer(r)(R, n, r)
        V = dec.grid_ft(r)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(V, Vref, rtol=1e-12, atol=1e-12)


def test_fouriernet_grid_scoring_is_close_to_the_exact_slices_once_fitted():
    """The grid is an approximation: trilinear on a 2x-oversampled grid, as the voxel decoder.
    For a network fitted to a real volume's transform (a compact object: a smooth transform),
    the grid slices agree with the exact ones to a few percent (float64, 300 Adam steps against
    the projector's slices of the pseudo-molecule)."""
    torch.manual_seed(0)
    n = 16
    r = n // 2 - 1
    proj = Projector(oc.physics.pseudo_molecule(n).double())
    m = AmortizedModel.create(n, decoder="fouriernet", fourier_hidden=32, channels=(4, 8), hidden=(8,)).double()
    opt = torch.optim.Adam(m.decoder.parameters(), 3e-4)
    disk = _disk(n, r)
    for it in range(300):
        R = random_rotations(16, generator=_gen(100 + it), dtype=torch.float64)
        loss = ((m.decoder.slices(R, n, r) - proj.fourier(R)) * disk).abs().square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    R = random_rotations(32, generator=_gen(9), dtype=torch.float64)
    with torch.no_grad():
        exact, grid, truth = m.decoder.slices(R, n, r), m.decoder.grid_renderer(r)(R, n, r), proj.fourier(R) * disk

    def rel(a, b):
        return float((a - b).norm() / b.norm())

    assert rel(exact, truth) < 0.15          # it did fit
    assert rel(grid, exact) < 0.05           # and the grid follows the fitted network closely


def test_fouriernet_grid_scoring_keeps_the_exact_loss_and_gradients_of_the_winner():
    """Images rendered (exactly) at known rotations plus noise; hypothesis 2 of each direct path
    is the true rotation, the rest random. Exact and grid scoring must choose the same paths,
    and then give identical losses, per-image losses and gradients (the winners are rendered
    exactly in both); the grid's scores themselves differ from the exact ones."""
    n, B, K = 12, 4, 4
    models = [AmortizedModel.create(n, decoder="fouriernet", fourier_hidden=16, channels=(4, 8), hidden=(8,),
                                    pose_heads=K, shifts="none", fourier_scoring=s, seed=5).double()
              for s in ("exact", "grid")]
    models[1].load_state_dict(models[0].state_dict())
    Rtrue = random_rotations(B, generator=_gen(11), dtype=torch.float64)
    Rk = random_rotations(2 * B * K, generator=_gen(12), dtype=torch.float64).reshape(2 * B, K, 3, 3)
    Rk[:B, 2] = Rtrue
    with torch.no_grad():
        clean = oc.fourier.ifft2c(models[0].decode(Rtrue)).real
    images = clean + 0.05 * clean.std() * torch.randn(B, n, n, generator=_gen(13), dtype=torch.float64)
    outs, grads = [], []
    for m in models:
        m.encode = lambda x, ctf=None, R=Rk: (R.reshape(-1, 3, 3), torch.zeros(x.shape[0], 2, dtype=x.dtype))
        out = m(images)
        params = list(m.decoder.parameters())
        grads.append(torch.autograd.grad(out.loss, params))
        outs.append(out)
    ex, gr = outs
    assert torch.equal(ex.head, gr.head) and torch.equal(ex.flipped, gr.flipped)
    assert bool((ex.head == 2).all()) and not bool(ex.flipped.any())
    torch.testing.assert_close(gr.per_image, ex.per_image, rtol=1e-12, atol=0)
    for a, b in zip(grads[1], grads[0]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)
    assert float((gr.loss_direct - ex.loss_direct).abs().max()) > 0  # the scores were approximate
    with torch.no_grad():  # without gradients too, per_image is the winner's exact loss
        torch.testing.assert_close(models[1](images).per_image, ex.per_image.detach(), rtol=1e-12, atol=0)


def test_fouriernet_grid_scoring_validation():
    with pytest.raises(ValueError, match="ModelConfig: fourier_scoring must be one of"):
        ModelConfig(n=16, fourier_scoring="fast")
    c = ModelConfig(n=16, decoder="fouriernet", fourier_scoring="grid")
    assert ModelConfig.from_dict(c.to_dict()) == c
    dec = AmortizedModel(c).decoder
    with pytest.raises(ValueError, match=r"FourierNetDecoder.grid_ft: radius must be <= D/2 - 1 = 7"):
        dec.grid_ft(7.5)
    with pytest.raises(ValueError, match="FourierNetDecoder.grid_ft: pad must be >= 2"):
        dec.grid_ft(5.0, pad=1)
    with pytest.raises(ValueError, match=r"FourierNetDecoder.grid_renderer: radius must be <= 5"):
        dec.grid_renderer(5.0)(torch.eye(3)[None], 16, 6.0)
