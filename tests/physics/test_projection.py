"""project / backproject: accuracy against analytic projections, shifts, CTF, the 180° pose
identity, Wiener back-projection with a CTF, gradients, bad inputs, and the demo."""
import math

import pytest
import torch

from orbitcore import fourier
from orbitcore.geometry import axis_angle_to_matrix, random_rotations
from orbitcore.ops import fourier_slice
from orbitcore.physics import (
    CTFParams,
    Projector,
    backproject,
    gaussian_mixture_volume,
    prepare_volume_ft,
    project,
    rotate180,
    shift_images,
)

CENTERS = torch.tensor([[3.0, 0.0, -1.0], [-2.0, 2.5, 1.0], [0.0, -3.0, 2.0], [4.0, 3.0, 3.0]], dtype=torch.float64)
AMPS = torch.tensor([1.0, 0.7, 0.4, 0.6], dtype=torch.float64)


def analytic_projection(D, centers, sigma, amps, R, shift=(0.0, 0.0)):
    """Σ_z of Gaussians = Σ a σ √(2π) exp(-|(x, y) - (Rᵀ c)_xy - t|² / 2σ²) (the line integral)."""
    k = torch.arange(D, dtype=torch.float64) - D // 2
    y, x = torch.meshgrid(k, k, indexing="ij")
    img = torch.zeros(D, D, dtype=torch.float64)
    for c, a in zip(centers, amps):
        m = R.T @ c
        img += a * math.sqrt(2 * math.pi) * sigma * torch.exp(
            -((x - m[0] - shift[0]) ** 2 + (y - m[1] - shift[1]) ** 2) / (2 * sigma ** 2))
    return img


@pytest.mark.parametrize("D", [32, 33])
def test_projection_accuracy_against_analytic(D, gen):
    sigma = 1.5
    vol = gaussian_mixture_volume(D, CENTERS, sigma, AMPS, dtype=torch.float64)
    R = random_rotations(6, generator=gen, dtype=torch.float64)
    want = torch.stack([analytic_projection(D, CENTERS, sigma, AMPS, r) for r in R])
    err2 = ((project(vol, R) - want).norm(dim=(-1, -2)) / want.norm(dim=(-1, -2))).max()
    err1 = ((project(vol, R, pad=1) - want).norm(dim=(-1, -2)) / want.norm(dim=(-1, -2))).max()
    assert err2 < 0.01, float(err2)
    assert err1 > 3 * err2  # padding matters (ARCHITECTURE.md: ~15–20% off RELION without it)


def test_grid_aligned_rotations_stay_accurate(gen):
    # At R = I (samples on grid points) trilinear interpolation attenuates nothing, so the
    # gridding correction over-compensates a little: bounded, and documented (~2% at D = 32).
    D = 32
    vol = gaussian_mixture_volume(D, CENTERS, 1.5, AMPS, dtype=torch.float64)
    eye = torch.eye(3, dtype=torch.float64)
    want = analytic_projection(D, CENTERS, 1.5, AMPS, eye)
    assert float((project(vol, eye) - want).norm() / want.norm()) < 0.025
    # without padding or correction the identity is exact: the slice theorem on the grid
    from orbitcore.fourier import fft3c, ifft2c
    import orbitcore as oc
    torch.testing.assert_close(ifft2c(oc.fourier_slice(fft3c(vol), eye)).real, vol.sum(0), rtol=0, atol=1e-10)


def test_shifts_follow_the_convention(gen):
    D, sigma = 32, 1.6
    vol = gaussian_mixture_volume(D, CENTERS, sigma, AMPS, dtype=torch.float64)
    R = random_rotations(3, generator=gen, dtype=torch.float64)
    t = torch.tensor([[1.5, -2.25], [0.0, 0.5], [-3.2, 1.1]], dtype=torch.float64)
    got = project(vol, R, t)
    torch.testing.assert_close(got, shift_images(project(vol, R), t), rtol=0, atol=1e-10)
    for i in range(3):  # content moves by +t
        want = analytic_projection(D, CENTERS, sigma, AMPS, R[i], t[i])
        assert (got[i] - want).norm() / want.norm() < 0.01


def test_ctf_is_applied_on_the_image_box(gen):
    D = 24
    vol = gaussian_mixture_volume(D, CENTERS, 1.5, AMPS, dtype=torch.float64)
    R = random_rotations(2, generator=gen, dtype=torch.float64)
    c = CTFParams.create([8000.0, 12000.0], [7000.0, 12500.0], astigmatism_angle=[15.0, 100.0], pixel_size=2.0,
                         phase_shift=[0.0, 30.0], b_factor=[0.0, 40.0])
    got = project(vol, R, ctf=c)
    want = fourier.ifft2c(c.evaluate(D) * fourier.fft2c(project(vol, R))).real
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    # CTF values given directly are the same thing; one CTFParams entry applies to all images
    torch.testing.assert_close(project(vol, R, ctf=c.evaluate(D)), got)
    torch.testing.assert_close(project(vol, R, ctf=c[0])[1], project(vol, R[1], ctf=c[0]))


def test_rotate180_is_the_pose_rz_pi(gen):
    # image of R · Rz(π) == rotate180(image of R), exactly for odd sizes
    D = 25
    vol = gaussian_mixture_volume(D, CENTERS, 1.5, AMPS, dtype=torch.float64)
    R = random_rotations(4, generator=gen, dtype=torch.float64)
    Rz = axis_angle_to_matrix(torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), torch.tensor(math.pi, dtype=torch.float64))
    torch.testing.assert_close(project(vol, R @ Rz), rotate180(project(vol, R)), rtol=0, atol=1e-9)


def test_projector_fourier_and_single_rotation(gen):
    D = 16
    vol = torch.randn(D, D, D, generator=gen, dtype=torch.float64)
    R = random_rotations(3, generator=gen, dtype=torch.float64)
    P = Projector(vol)
    torch.testing.assert_close(fourier.ifft2c(P.fourier(R)).real, P(R))
    torch.testing.assert_close(P(R[1]), P(R)[1])
    torch.testing.assert_close(project(vol.numpy(), R.numpy()), P(R).numpy())
    # batching does not change results
    torch.testing.assert_close(project(vol, R, batch_size=1), P(R))


def test_gradients(gen):
    D = 5
    vol = torch.randn(D, D, D, generator=gen, dtype=torch.float64, requires_grad=True)
    R = random_rotations(2, generator=gen, dtype=torch.float64)
    t = torch.tensor([[0.3, -0.4], [1.2, 0.1]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v, tt: project(v, R, tt), (vol, t), fast_mode=True)


@pytest.mark.parametrize("use_ctf", [False, True])
def test_backproject_recovers_the_volume(use_ctf, gen):
    D, n = 24, 1500
    vol = gaussian_mixture_volume(D, CENTERS, 1.6, AMPS, dtype=torch.float64)
    R = random_rotations(n, generator=gen, dtype=torch.float64)
    t = 2.0 * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    c = None
    if use_ctf:
        # defocus small enough that the CTF's point-spread (λ Δf s_max ≈ 7 Å) fits in the 48 Å box;
        # with larger defocus the signal is delocalised out of the box and lost (physics, not us)
        d = 500.0 + 1000.0 * torch.rand(n, generator=gen, dtype=torch.float64)
        c = CTFParams.create(d, d - 100.0, astigmatism_angle=30.0, pixel_size=2.0, amplitude_contrast=0.1)
    imgs = project(vol, R, t, ctf=c)
    rec = backproject(imgs, R, t, ctf=c, regularization=1e-3)
    err = float((rec - vol).norm() / vol.norm())
    assert err < 0.05, err
    if use_ctf:  # ignoring the CTF ruins it: the test can fail
        bad = backproject(imgs, R, t, regularization=1e-3)
        assert float((bad - vol).norm() / vol.norm()) > 0.5


@pytest.mark.parametrize("call, exc, match", [
    (lambda: project(torch.zeros(4, 4), torch.eye(3)), ValueError, r"project: volume must have shape \(D, D, D\)"),
    (lambda: project(torch.zeros(4, 4, 5), torch.eye(3)), ValueError, r"project: volume must be a cube"),
    (lambda: project(torch.zeros(4, 4, 4), torch.zeros(2, 3)), ValueError, r"project: rotations must have shape"),
    (lambda: project(torch.zeros(4, 4, 4), 2 * torch.eye(3)), ValueError, r"project: rotations must be rotation matrices"),
    (lambda: project(torch.zeros(4, 4, 4), torch.eye(3)[None].repeat(2, 1, 1), torch.zeros(3, 2)), ValueError,
     r"project: shifts must have shape \(2, 2\)"),
    (lambda: project(torch.zeros(4, 4, 4), torch.eye(3)[None].repeat(2, 1, 1), ctf=torch.zeros(2, 5, 5)), ValueError,
     r"project: ctf must be a CTFParams or real CTF values"),
    (lambda: project(torch.zeros(4, 4, 4), torch.eye(3)[None].repeat(2, 1, 1), ctf=CTFParams.create([1e4] * 3)),
     ValueError, r"project: ctf must have 2 entries"),
    (lambda: project(torch.zeros(4, 4, 4), torch.eye(3), pad=0), ValueError, r"project: pad must be >= 1"),
    (lambda: backproject(torch.zeros(2, 4, 4), torch.eye(3)[None]), ValueError, r"backproject: rotations must have shape \(2, 3, 3\)"),
    (lambda: backproject(torch.zeros(0, 4, 4), torch.zeros(0, 3, 3)), ValueError, r"backproject: images must contain at least one"),
    (lambda: project(torch.full((4, 4, 4), float("nan")), torch.eye(3)), ValueError, r"project: volume must be finite"),
])
def test_bad_inputs(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_demo_still_runs(tmp_path):
    from orbitcore.demo import run_demo

    s = run_demo(size=24, n_images=400, snr=1.0, out=tmp_path / "demo", quiet=True)
    assert (tmp_path / "demo" / "reconstruction.mrc").is_file()
    assert (tmp_path / "demo" / "summary.json").is_file()
    assert s["resolution_05_A"] < 4 * 2.0 * 2  # far better than a quarter of Nyquist


@pytest.mark.parametrize("D", [8, 9])
def test_projector_half_volume_equals_full_volume(D, gen):
    # even padded sides keep the kx >= 0 half of the FT: same images and gradients as the full FT
    v = torch.randn(D, D, D, generator=gen, dtype=torch.float64, requires_grad=True)
    R = random_rotations(6, generator=gen, dtype=torch.float64)
    proj = Projector(v, pad=2)
    assert proj.half and proj.volume_ft.shape == (2 * D, 2 * D, D + 1)
    full = fourier_slice(prepare_volume_ft(v, 2), 2 * R, size=D, radius=proj.radius, hermitian=True, check=False)
    got = proj.fourier(R)
    torch.testing.assert_close(got, full, rtol=0, atol=1e-12 * float(full.detach().abs().max()))
    w = torch.randn(6, D, D, generator=gen, dtype=torch.complex128)
    g1, = torch.autograd.grad((got * w).real.sum(), v)
    g2, = torch.autograd.grad((full * w).real.sum(), v)
    torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-12)
    assert not Projector(v.detach()[:7, :7, :7], pad=1).half  # odd padded side: the full FT
    with pytest.raises(ValueError, match="prepare_volume_ft: half=True needs an even padded side"):
        prepare_volume_ft(v.detach()[:7, :7, :7], 1, half=True)
