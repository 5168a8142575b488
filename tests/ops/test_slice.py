"""fourier_slice / fourier_insert / fourier_sample against the pure-torch reference, autograd,
opcheck, torch.compile, conventions and bad inputs."""
import math

import numpy as np
import pytest
import torch

import orbitcore as oc
from orbitcore import fourier
from orbitcore.geometry import axis_angle_to_matrix, random_rotations
from orbitcore.ops import _reference as ref

C128 = torch.complex128


def rand_vol(D, gen, B=None, dtype=C128):
    shape = (D, D, D) if B is None else (B, D, D, D)
    return torch.randn(shape, generator=gen, dtype=dtype)


def rots(B, gen, dtype=torch.float64):
    return random_rotations(B, generator=gen, dtype=dtype)


# ------------------------------------------------------------------------------------------------
# Forward against the reference
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("D", [6, 7])
@pytest.mark.parametrize("radius", [None, 2.5])
@pytest.mark.parametrize("hermitian", [False, True])
@pytest.mark.parametrize("batched", [False, True])
def test_forward_matches_reference(D, radius, hermitian, batched, gen):
    B = 4
    v = rand_vol(D, gen, B if batched else None)
    R = rots(B, gen)
    got = oc.fourier_slice(v, R, radius=radius, hermitian=hermitian)
    want = ref.fourier_slice(v, R, radius=radius, hermitian=hermitian)
    assert got.shape == (B, D, D)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-13)


@pytest.mark.parametrize("n", [1, 4, 5, 10, 13])
def test_output_size_differs_from_volume(n, gen):
    v = rand_vol(8, gen)
    R = rots(3, gen)
    got = oc.fourier_slice(v, R, size=n)
    torch.testing.assert_close(got, ref.fourier_slice(v, R, n=n), rtol=0, atol=1e-13)


def test_float32_matches_float64_reference(gen):
    v = rand_vol(16, gen)
    R = rots(8, gen)
    got = oc.fourier_slice(v.to(torch.complex64), R.float(), radius=7.0)
    want = ref.fourier_slice(v, R, radius=7.0)
    err = (got.to(C128) - want).abs().max() / want.abs().max()
    assert err < 1e-5


def test_hermitian_half_equals_full_slice_for_real_volume(gen):
    # For the FT of a real volume (odd D) the Hermitian fill is exact.
    vol = torch.randn(11, 11, 11, generator=gen, dtype=torch.float64)
    V = fourier.fft3c(vol)
    R = rots(6, gen)
    full = oc.fourier_slice(V, R)
    half = oc.fourier_slice(V, R, hermitian=True)
    torch.testing.assert_close(half, full, rtol=0, atol=1e-10)


def test_single_rotation_gives_single_slice(gen):
    v = rand_vol(7, gen)
    R = rots(1, gen)
    torch.testing.assert_close(oc.fourier_slice(v, R[0]), oc.fourier_slice(v, R)[0])


def test_points_outside_grid_are_zero(gen):
    # A slice larger than the volume: frequencies beyond the cube's corner sample 0.
    v = rand_vol(6, gen)
    S = oc.fourier_slice(v, torch.eye(3, dtype=torch.float64), size=20)
    k = torch.arange(20) - 10
    outside = (k[:, None].abs() > 4) | (k[None, :].abs() > 4)
    assert torch.all(S[outside] == 0)


def test_radius_mask_zero_outside(gen):
    v = rand_vol(9, gen)
    S = oc.fourier_slice(v, rots(3, gen), radius=3.0)
    mask = ref.disk_mask(9, 3.0)
    assert torch.all(S[:, ~mask] == 0)
    assert torch.all(S[:, mask] != 0)


# ------------------------------------------------------------------------------------------------
# Gradients
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("D", [6, 7])
@pytest.mark.parametrize("radius", [None, 2.5])
@pytest.mark.parametrize("hermitian", [False, True])
@pytest.mark.parametrize("batched", [False, True])
def test_gradients_match_reference(D, radius, hermitian, batched, gen):
    B = 3
    v = rand_vol(D, gen, B if batched else None).requires_grad_()
    R = rots(B, gen).requires_grad_()
    g = torch.randn(B, D, D, generator=gen, dtype=C128)
    out = oc.fourier_slice(v, R, radius=radius, hermitian=hermitian, check=False)
    gv, gr = torch.autograd.grad(out, (v, R), g)
    out_ref = ref.fourier_slice(v, R, radius=radius, hermitian=hermitian)
    gv_ref, gr_ref = torch.autograd.grad(out_ref, (v, R), g)
    torch.testing.assert_close(gv, gv_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(gr, gr_ref, rtol=1e-11, atol=1e-11)
    assert torch.all(gr[:, :, 2] == 0)  # the plane has kz = 0


def test_gradcheck_slice_volume_and_rotations(gen):
    v = rand_vol(5, gen).requires_grad_()
    R = rots(2, gen).requires_grad_()
    for herm in (False, True):
        assert torch.autograd.gradcheck(
            lambda v, R: oc.fourier_slice(v, R, radius=2.2, hermitian=herm, check=False), (v, R))


def test_gradcheck_through_s2s2(gen):
    # The path CryoAI uses: network output (6-D) -> rotation -> slice.
    from orbitcore.geometry import s2s2_to_matrix
    v = rand_vol(5, gen).requires_grad_()
    x = torch.randn(2, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v, x: oc.fourier_slice(v, s2s2_to_matrix(x), check=False), (v, x))


def test_gradcheck_sample(gen):
    v = rand_vol(5, gen).requires_grad_()
    # keep points off the integer lattice (the trilinear weights have kinks there)
    c = (torch.rand(7, 3, generator=gen, dtype=torch.float64) * 5 - 2.5 + 0.37).requires_grad_()
    assert torch.autograd.gradcheck(oc.fourier_sample, (v, c))
    vb = rand_vol(5, gen, B=2).requires_grad_()
    cb = (torch.rand(2, 4, 3, generator=gen, dtype=torch.float64) * 4 - 2 + 0.21).requires_grad_()
    assert torch.autograd.gradcheck(oc.fourier_sample, (vb, cb))


def test_gradcheck_insert(gen):
    B, n, D = 2, 5, 6
    S = torch.randn(B, n, n, generator=gen, dtype=C128, requires_grad=True)
    R = rots(B, gen).requires_grad_()
    W = torch.rand(B, n, n, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda S, R: oc.fourier_insert(S, R, D, check=False), (S, R))
    assert torch.autograd.gradcheck(
        lambda S, R, W: oc.fourier_insert(S, R, D, weights=W, check=False), (S, R, W))
    assert torch.autograd.gradcheck(
        lambda S, R: oc.fourier_insert(S, R, D, radius=2.0, hermitian=True, check=False), (S, R))


def test_sample_matches_reference_and_grads(gen):
    v = rand_vol(7, gen).requires_grad_()
    c = (torch.randn(3, 4, 3, generator=gen, dtype=torch.float64) * 3).requires_grad_()
    out = oc.fourier_sample(v, c)
    want = ref.trilinear_sample(v, c)
    torch.testing.assert_close(out, want, rtol=0, atol=1e-13)
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (v, c), g), torch.autograd.grad(want, (v, c), g)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_double_backward_raises_clear_error(gen):
    v = rand_vol(5, gen).requires_grad_()
    R = rots(2, gen).requires_grad_()
    out = oc.fourier_slice(v, R, check=False)
    (gv,) = torch.autograd.grad(out.abs().pow(2).sum(), (v,), create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(gv.abs().sum(), (R,))


# ------------------------------------------------------------------------------------------------
# Insert: the adjoint
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("D,n", [(8, 8), (9, 9), (8, 11)])
def test_insert_matches_reference(D, n, gen):
    B = 5
    S = torch.randn(B, n, n, generator=gen, dtype=C128)
    R = rots(B, gen)
    W = torch.rand(B, n, n, generator=gen, dtype=torch.float64)
    vol, wvol = oc.fourier_insert(S, R, D, weights=W, radius=3.5)
    vol_ref, wvol_ref = ref.fourier_insert(S, R, D, weights=W, radius=3.5)
    torch.testing.assert_close(vol, vol_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(wvol, wvol_ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("D", [16, 17])
def test_adjointness_float32(D, gen):
    # <slice(V, R), S> == <V, insert(S, R)> to 1e-5 relative in float32.
    B = 12
    V = rand_vol(D, gen, dtype=torch.complex64)
    S = torch.randn(B, D, D, generator=gen, dtype=torch.complex64)
    R = rots(B, gen, torch.float32)
    lhs = torch.vdot(oc.fourier_slice(V, R).reshape(-1).to(C128), S.reshape(-1).to(C128))
    rhs = torch.vdot(V.reshape(-1).to(C128), oc.fourier_insert(S, R, D).reshape(-1).to(C128))
    assert abs(lhs - rhs) / abs(lhs) < 1e-5


def test_adjointness_hermitian_real_inner_product(gen):
    D, B = 9, 6
    V = rand_vol(D, gen)
    S = torch.randn(B, D, D, generator=gen, dtype=C128)
    R = rots(B, gen)
    lhs = torch.vdot(oc.fourier_slice(V, R, hermitian=True, radius=4.0).reshape(-1), S.reshape(-1)).real
    rhs = torch.vdot(V.reshape(-1), oc.fourier_insert(S, R, D, hermitian=True, radius=4.0).reshape(-1)).real
    assert abs(lhs - rhs) / abs(lhs) < 1e-12


def test_insert_weights_scalar_is_sampling_density(gen):
    B, D = 4, 8
    S = torch.randn(B, D, D, generator=gen, dtype=C128)
    R = rots(B, gen)
    _, w1 = oc.fourier_insert(S, R, D, weights=1.0)
    _, w_ref = ref.fourier_insert(S, R, D, weights=torch.ones(B, D, D, dtype=torch.float64))
    torch.testing.assert_close(w1, w_ref)
    # total weight = number of points whose stencil lies fully inside the grid (weights sum to 1)
    assert float(w1.sum()) <= B * D * D + 1e-9


# ------------------------------------------------------------------------------------------------
# Conventions (ARCHITECTURE.md)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("D", [8, 9])
def test_discrete_slice_theorem_identity(D, gen):
    vol = torch.randn(D, D, D, generator=gen, dtype=torch.float64)
    V = fourier.fft3c(vol)
    proj_ft = fourier.fft2c(vol.sum(0))
    torch.testing.assert_close(V[D // 2], proj_ft, rtol=0, atol=1e-10)
    S = oc.fourier_slice(V, torch.eye(3, dtype=torch.float64))
    torch.testing.assert_close(S, proj_ft, rtol=0, atol=1e-10)


def _permuted_projection(vol, R, wrap=False):
    """image(x, y) = sum_z vol(R @ (x, y, z)) for a signed-permutation R, by exact indexing
    (periodically wrapped, for even sizes, when ``wrap``)."""
    D = vol.shape[-1]
    c = D // 2
    k = torch.arange(D) - c
    z, y, x = torch.meshgrid(k, k, k, indexing="ij")  # grid of (x, y, z) in the image frame
    q = torch.stack((x, y, z), -1).to(torch.float64)
    p = (q @ R.T).round().long()  # R @ q
    pi = (p + c) % D if wrap else p + c
    return vol[pi[..., 2], pi[..., 1], pi[..., 0]].sum(0)  # sum over z


def _rot90(axis, angle):
    R = axis_angle_to_matrix(torch.tensor(axis, dtype=torch.float64), torch.tensor(angle, dtype=torch.float64))
    return R.round()  # exact signed permutation


AXES = [(1, 0, 0), (0, 1, 0), (0, 0, 1)]
ANGLES = [math.pi / 2, -math.pi / 2, math.pi]


@pytest.mark.parametrize("D", [8, 9])
@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("angle", ANGLES)
def test_90_degree_rotations_permute_the_ft_exactly(D, axis, angle, gen):
    # slice(V, R)[ky, kx] = V[R (kx, ky, 0)] by exact index lookup. Odd D: always; even D: for
    # volumes vanishing on the first index plane of each axis (the Nyquist plane).
    V = rand_vol(D, gen)
    if D % 2 == 0:
        V[0], V[:, 0], V[:, :, 0] = 0, 0, 0
    R = _rot90(axis, angle)
    c = D // 2
    k = torch.arange(D) - c
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    q = torch.stack((kx, ky, torch.zeros_like(kx)), -1).to(torch.float64)
    p = (q @ R.T).round().long()
    inside = ((p >= -c) & (p <= D - 1 - c)).all(-1)
    pi = (p + c).clamp(0, D - 1)
    want = torch.where(inside, V[pi[..., 2], pi[..., 1], pi[..., 0]], torch.zeros((), dtype=C128))
    torch.testing.assert_close(oc.fourier_slice(V, R), want, rtol=0, atol=1e-14)


def test_90_degree_projection_theorem_is_off_for_even_size(gen):
    # The documented limitation (ARCHITECTURE.md): for D = 8 the real-space statement is exact
    # only up to the Nyquist plane, which a 90-degree rotation moves out of the grid.
    D = 8
    vol = torch.randn(D, D, D, generator=gen, dtype=torch.float64)
    R = _rot90((0, 1, 0), math.pi / 2)
    S = oc.fourier_slice(fourier.fft3c(vol), R)
    want = fourier.fft2c(_permuted_projection(vol, R, wrap=True))
    diff = (S - want).abs()
    assert diff.max() > 1e-3
    # ...and the disagreement is confined to the Nyquist column/row (kx or ky = -D/2).
    assert diff[1:, 1:].max() < 1e-10


@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("angle", ANGLES)
def test_90_degree_projection_theorem_real_space(axis, angle, gen):
    # fft2c(sum_z v(R (x, y, z))) == fourier_slice(fft3c(v), R), exactly, for odd D.
    D = 9
    vol = torch.randn(D, D, D, generator=gen, dtype=torch.float64)
    R = _rot90(axis, angle)
    S = oc.fourier_slice(fourier.fft3c(vol), R)
    torch.testing.assert_close(S, fourier.fft2c(_permuted_projection(vol, R)), rtol=0, atol=1e-10)


def _gaussian_volume(D, centers, sigma):
    k = torch.arange(D, dtype=torch.float64) - D // 2
    z, y, x = torch.meshgrid(k, k, k, indexing="ij")
    v = torch.zeros(D, D, D, dtype=torch.float64)
    for (cx, cy, cz), a in centers:
        v += a * torch.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * sigma ** 2))
    return v


def _gaussian_projection(D, centers, sigma, R):
    # sum_z v(R (x, y, z)) = sum over blobs of sqrt(2 pi) sigma exp(-|(x, y) - (R^T mu)_xy|^2 / 2 sigma^2)
    k = torch.arange(D, dtype=torch.float64) - D // 2
    y, x = torch.meshgrid(k, k, indexing="ij")
    img = torch.zeros(D, D, dtype=torch.float64)
    for mu, a in centers:
        m = R.T @ torch.tensor(mu, dtype=torch.float64)
        img += a * math.sqrt(2 * math.pi) * sigma * torch.exp(-((x - m[0]) ** 2 + (y - m[1]) ** 2) / (2 * sigma ** 2))
    return img


def test_real_space_projection_convention(gen):
    # image(x, y) = sum_z v(R [x, y, z]) against the analytic projection of an asymmetric
    # band-limited Gaussian volume, through slice of the 2x zero-padded, gridding-corrected FT.
    D, pad, sigma = 24, 2, 1.6
    centers = [((3.0, 0.0, -1.0), 1.0), ((-2.0, 2.5, 1.0), 0.7), ((0.0, -3.0, 2.0), 0.4)]
    vol = _gaussian_volume(D, centers, sigma)
    N = pad * D
    big = torch.zeros(N, N, N, dtype=torch.float64)
    o = N // 2 - D // 2
    big[o:o + D, o:o + D, o:o + D] = vol
    # gridding correction: trilinear interpolation in Fourier space multiplies real space by sinc²
    k = (torch.arange(N, dtype=torch.float64) - N // 2) / N
    s2 = torch.special.sinc(k) ** 2
    big = big / (s2[:, None, None] * s2[None, :, None] * s2[None, None, :])
    V = fourier.fft3c(big)
    for R in rots(5, gen):
        img = fourier.ifft2c(oc.fourier_slice(V, R)).real[o:o + D, o:o + D]
        want = _gaussian_projection(D, centers, sigma, R)
        rel = (img - want).norm() / want.norm()
        assert rel < 1e-2, float(rel)


# ------------------------------------------------------------------------------------------------
# Array kinds, strides, dtypes
# ------------------------------------------------------------------------------------------------
def test_numpy_in_numpy_out(gen):
    v = rand_vol(6, gen)
    R = rots(3, gen)
    out = oc.fourier_slice(v.numpy(), R.numpy())
    assert isinstance(out, np.ndarray) and out.dtype == np.complex128
    np.testing.assert_allclose(out, oc.fourier_slice(v, R).numpy(), atol=0)
    vol = oc.fourier_insert(out, R.numpy(), 6)
    assert isinstance(vol, np.ndarray) and vol.shape == (6, 6, 6)
    smp = oc.fourier_sample(v.numpy(), np.zeros((2, 3)))
    assert isinstance(smp, np.ndarray) and smp.shape == (2,)


def test_strided_and_lazy_inputs(gen):
    D, B = 7, 4
    base = torch.randn(D, D, 2 * D, generator=gen, dtype=C128)
    v_strided = base[:, :, ::2]  # non-contiguous
    assert not v_strided.is_contiguous()
    Rt = rots(B, gen).transpose(1, 2)  # non-contiguous rotations (transposes are rotations too)
    want = ref.fourier_slice(v_strided.contiguous(), Rt.contiguous())
    torch.testing.assert_close(oc.fourier_slice(v_strided, Rt), want, rtol=0, atol=1e-13)
    # lazily conjugated / negated views must be resolved, not read raw
    vc = v_strided.conj()
    torch.testing.assert_close(oc.fourier_slice(vc, Rt), ref.fourier_slice(vc.resolve_conj().contiguous(), Rt.contiguous()),
                               rtol=0, atol=1e-13)
    # gradients arriving as a conj view
    vv = v_strided.contiguous().requires_grad_()
    out = oc.fourier_slice(vv, Rt)
    g = torch.randn(B, D, D, generator=gen, dtype=C128)
    (gv,) = torch.autograd.grad(out, (vv,), g.conj())
    (gv_ref,) = torch.autograd.grad(ref.fourier_slice(vv, Rt.contiguous()), (vv,), g.conj().resolve_conj())
    torch.testing.assert_close(gv, gv_ref, rtol=0, atol=1e-12)


def test_rotation_dtype_follows_volume(gen):
    v = rand_vol(6, gen, dtype=torch.complex64)
    R64 = rots(2, gen)
    out = oc.fourier_slice(v, R64)
    assert out.dtype == torch.complex64
    torch.testing.assert_close(out, oc.fourier_slice(v, R64.float()))


# ------------------------------------------------------------------------------------------------
# torch.library: opcheck and torch.compile
# ------------------------------------------------------------------------------------------------
def test_opcheck_all_ops(gen):
    D, B, n = 5, 2, 5
    v = rand_vol(D, gen)[None].requires_grad_()
    R = rots(B, gen).requires_grad_()
    g = torch.randn(B, n, n, generator=gen, dtype=C128)
    torch.library.opcheck(torch.ops.orbitcore.slice_forward.default, (v, R, n, 2.0, False))
    torch.library.opcheck(torch.ops.orbitcore.slice_forward.default, (v, R, n, -1.0, True))
    torch.library.opcheck(torch.ops.orbitcore.slice_backward.default,
                          (g, v.detach(), R.detach(), -1.0, False, True, True))
    S = g.clone().requires_grad_()
    W = torch.rand(B, n, n, generator=gen, dtype=torch.float64)
    torch.library.opcheck(torch.ops.orbitcore.insert_forward.default, (S, R, W, D, -1.0, False, True))
    c = (torch.rand(1, 6, 3, generator=gen, dtype=torch.float64) * 3 - 1.4).requires_grad_()
    torch.library.opcheck(torch.ops.orbitcore.sample_forward.default, (v, c))
    torch.library.opcheck(torch.ops.orbitcore.sample_backward.default,
                          (torch.randn(1, 6, generator=gen, dtype=C128), v.detach(), c.detach(), True, True))


def test_torch_compile_fullgraph(gen):
    torch._dynamo.reset()
    D, B = 6, 3
    v = rand_vol(D, gen, dtype=torch.complex64).requires_grad_()
    x = torch.randn(B, 6, generator=gen, requires_grad=True)
    target = torch.randn(B, D, D, generator=gen, dtype=torch.complex64)

    def loss_fn(v, x):
        from orbitcore.geometry import s2s2_to_matrix
        S = oc.fourier_slice(v, s2s2_to_matrix(x), radius=2.5)
        return (S - target).abs().pow(2).sum()

    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    l_c = compiled(v, x)
    gv_c, gx_c = torch.autograd.grad(l_c, (v, x))
    l_e = loss_fn(v, x)
    gv_e, gx_e = torch.autograd.grad(l_e, (v, x))
    torch.testing.assert_close(l_c, l_e)
    torch.testing.assert_close(gv_c, gv_e)
    torch.testing.assert_close(gx_c, gx_e)


@pytest.mark.slow
# torch 2.13's inductor import path calls its own deprecated torch.jit.script_method (not orbitcore code)
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
# the slice's complex output makes inductor fall back to eager for the complex .abs() (its own notice;
# the custom op itself is opaque to inductor either way): expected, not a fault of the op
@pytest.mark.filterwarnings("ignore:Torchinductor does not support code generation for complex operators:UserWarning")
def test_torch_compile_inductor(gen):
    torch._dynamo.reset()
    v = rand_vol(6, gen, dtype=torch.complex64)
    R = rots(3, gen, torch.float32)
    f = torch.compile(lambda v, R: oc.fourier_slice(v, R).abs().sum(), fullgraph=True)
    torch.testing.assert_close(f(v, R), oc.fourier_slice(v, R).abs().sum())


# ------------------------------------------------------------------------------------------------
# Bad inputs: every validation rule, with the function and argument named
# ------------------------------------------------------------------------------------------------
def test_bad_inputs_fourier_slice(gen):
    v = rand_vol(6, gen)
    R = rots(2, gen)
    cases = [
        (lambda: oc.fourier_slice(v[0], R), ValueError, "fourier_slice: volume_ft must have shape"),
        (lambda: oc.fourier_slice(v[:, :, :5], R), ValueError, "volume_ft must be a cube"),
        (lambda: oc.fourier_slice(v.real, R), TypeError, "volume_ft must be complex64 or complex128"),
        (lambda: oc.fourier_slice(v, R[:, :2]), ValueError, r"rotations must have shape \(B, 3, 3\) or \(3, 3\), got \(2, 2, 3\)"),
        (lambda: oc.fourier_slice(v, R.long()), TypeError, "rotations must be a real floating-point"),
        (lambda: oc.fourier_slice(v, R * float("nan")), ValueError, "rotations must be finite"),
        (lambda: oc.fourier_slice(v, R * 1.1), ValueError, "rotation matrices"),
        (lambda: oc.fourier_slice(v, -R), ValueError, "det = \\+1"),
        (lambda: oc.fourier_slice(v, R, size=0), ValueError, "size must be >= 1"),
        (lambda: oc.fourier_slice(v, R, size=2.5), TypeError, "size must be an integer"),
        (lambda: oc.fourier_slice(v, R, radius=-1.0), ValueError, "radius must be >= 0"),
        (lambda: oc.fourier_slice(torch.stack([v, v, v]), R), ValueError, "batch \\(3\\) must match"),
        (lambda: oc.fourier_slice(v.to("meta"), R.to("meta")), ValueError, "must be on a CPU or CUDA device"),
        (lambda: oc.fourier_slice(v, R.to("meta")), ValueError, "rotations must be on the same device"),
        (lambda: oc.fourier_slice("volume", R), TypeError, "volume_ft must be a torch.Tensor"),
        (lambda: oc.fourier_slice(rand_vol(1, gen), R), ValueError, "at least 2"),
    ]
    for call, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            call()


def test_bad_inputs_insert_and_sample(gen):
    R = rots(2, gen)
    S = torch.randn(2, 6, 6, generator=gen, dtype=C128)
    v = rand_vol(6, gen)
    cases = [
        (lambda: oc.fourier_insert(S.real, R, 6), TypeError, "fourier_insert: slices must be complex"),
        (lambda: oc.fourier_insert(S[:, :, :5], R, 6), ValueError, "slices must be square"),
        (lambda: oc.fourier_insert(S[:1], R, 6), ValueError, "slices batch \\(1\\) must match"),
        (lambda: oc.fourier_insert(S, R, 1), ValueError, "D must be >= 2"),
        (lambda: oc.fourier_insert(S, R, 6, weights=torch.ones(2, 5, 5)), ValueError, "weights must have the shape"),
        (lambda: oc.fourier_insert(S, R, 6, weights=torch.ones(2, 6, 6) * float("inf")), ValueError, "weights must be finite"),
        (lambda: oc.fourier_sample(v, torch.zeros(4, 2)), ValueError, r"fourier_sample: coords must have shape \(..., 3\)"),
        (lambda: oc.fourier_sample(v, torch.full((4, 3), float("nan"))), ValueError, "coords must be finite"),
        (lambda: oc.fourier_sample(v[None].expand(2, 6, 6, 6), torch.zeros(3, 4, 3)), ValueError, "with B = 2"),
    ]
    for call, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            call()


def test_binding_validates_raw_calls(gen):
    # The binding is the last line of defence: wrong descriptors give errors naming op and argument.
    from orbitcore import _ext
    v = rand_vol(6, gen)[None]
    R = rots(2, gen)
    out = torch.empty(2, 5, 6, dtype=C128)
    with pytest.raises(ValueError, match=r"slice_forward: out must have shape \(B, n, n\)"):
        _ext.C.slice_forward(_ext.arg(v), _ext.arg(R), _ext.arg(out), 6, -1.0, False, 1, 0)
    with pytest.raises(ValueError, match="slice_forward: rotations must have dtype float64, got float32"):
        _ext.C.slice_forward(_ext.arg(v), _ext.arg(R.float()), _ext.arg(torch.empty(2, 6, 6, dtype=C128)), 6, -1.0, False, 1, 0)
    with pytest.raises(ValueError, match="slice_forward: volume must be contiguous"):
        _ext.C.slice_forward(_ext.arg(v.transpose(1, 3)), _ext.arg(R), _ext.arg(torch.empty(2, 6, 6, dtype=C128)), 6, -1.0, False, 1, 0)
    with pytest.raises(ValueError, match="slice_backward: grad_rotations requires volume"):
        _ext.C.slice_backward(_ext.arg(torch.empty(2, 6, 6, dtype=C128)), None, None, _ext.arg(R), None, None,
                              _ext.arg(torch.empty(2, 3, 3, dtype=torch.float64)), 6, -1.0, False, 1, 0)


# ------------------------------------------------------------------------------------------------
# Fuzz: random sizes, batches, radii, modes, points near and outside the boundary
# ------------------------------------------------------------------------------------------------
def test_fuzz_against_reference():
    g = torch.Generator().manual_seed(7)
    for trial in range(25):
        D = int(torch.randint(2, 10, (1,), generator=g))
        n = int(torch.randint(1, 14, (1,), generator=g))
        B = int(torch.randint(1, 5, (1,), generator=g))
        radius = None if trial % 3 == 0 else float(torch.rand(1, generator=g)) * n
        herm = bool(trial % 2)
        batched = trial % 4 == 1
        v = torch.randn((B, D, D, D) if batched else (D, D, D), generator=g, dtype=C128)
        R = random_rotations(B, generator=g, dtype=torch.float64)
        got = oc.fourier_slice(v, R, size=n, radius=radius, hermitian=herm)
        want = ref.fourier_slice(v, R, n=n, radius=radius, hermitian=herm)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12, msg=f"trial {trial}: D={D} n={n} B={B}")
        S = torch.randn(B, n, n, generator=g, dtype=C128)
        got_i = oc.fourier_insert(S, R, D, radius=radius)
        torch.testing.assert_close(got_i, ref.fourier_insert(S, R, D, radius=radius), rtol=0, atol=1e-12)
        pts = (torch.rand(B if batched else 1, 9, 3, generator=g, dtype=torch.float64) - 0.5) * (D + 4)
        pts = pts if batched else pts[0]
        want_s = (torch.stack([ref.trilinear_sample(v[b], pts[b]) for b in range(B)]) if batched
                  else ref.trilinear_sample(v, pts))
        torch.testing.assert_close(oc.fourier_sample(v, pts), want_s, rtol=0, atol=1e-12)


@pytest.mark.cuda
def test_cuda_matches_cpu(gen):
    D, B = 16, 9
    v = rand_vol(D, gen, dtype=torch.complex64)
    R = rots(B, gen, torch.float32)
    for herm, rad in ((False, None), (True, 7.0)):
        cpu = oc.fourier_slice(v, R, radius=rad, hermitian=herm)
        gpu = oc.fourier_slice(v.cuda(), R.cuda(), radius=rad, hermitian=herm).cpu()
        torch.testing.assert_close(gpu, cpu, rtol=1e-5, atol=1e-5)
        vc = v.cuda().requires_grad_()
        Rc = R.cuda().requires_grad_()
        gc = torch.autograd.grad(oc.fourier_slice(vc, Rc, radius=rad, hermitian=herm).abs().sum(), (vc, Rc))
        vv = v.clone().requires_grad_()
        RR = R.clone().requires_grad_()
        gcpu = torch.autograd.grad(oc.fourier_slice(vv, RR, radius=rad, hermitian=herm).abs().sum(), (vv, RR))
        for a, b in zip(gc, gcpu):
            torch.testing.assert_close(a.cpu(), b, rtol=1e-4, atol=1e-4)
    S = torch.randn(B, D, D, generator=gen, dtype=torch.complex64)
    torch.testing.assert_close(oc.fourier_insert(S.cuda(), R.cuda(), D).cpu(), oc.fourier_insert(S, R, D),
                               rtol=1e-4, atol=1e-4)
    c = torch.randn(50, 3, generator=gen) * 5
    torch.testing.assert_close(oc.fourier_sample(v.cuda(), c.cuda()).cpu(), oc.fourier_sample(v, c), rtol=1e-5, atol=1e-5)
    # half volumes (kx >= 0 of a real volume's FT), rim and outside points included
    H = fourier.fft3c_padded(torch.randn(D // 2, D // 2, D // 2, generator=gen), D, half=True)
    M = 1.9 * R
    for herm, rad in ((False, None), (True, 7.5)):
        cpu = oc.fourier_slice(H, M, radius=rad, hermitian=herm, half=True, check=False)
        gpu = oc.fourier_slice(H.cuda(), M.cuda(), radius=rad, hermitian=herm, half=True, check=False).cpu()
        torch.testing.assert_close(gpu, cpu, rtol=1e-5, atol=1e-5)
        Hc, Mc = H.cuda().requires_grad_(), M.cuda().requires_grad_()
        gc = torch.autograd.grad(oc.fourier_slice(Hc, Mc, radius=rad, hermitian=herm, half=True, check=False)
                                 .abs().sum(), (Hc, Mc))
        Hh, Mh = H.clone().requires_grad_(), M.clone().requires_grad_()
        gcpu = torch.autograd.grad(oc.fourier_slice(Hh, Mh, radius=rad, hermitian=herm, half=True, check=False)
                                   .abs().sum(), (Hh, Mh))
        for a, b in zip(gc, gcpu):
            torch.testing.assert_close(a.cpu(), b, rtol=1e-4, atol=1e-4)


def test_scatter_is_deterministic_and_thread_count_independent(gen):
    # Private per-thread accumulators reduced in a fixed order: bitwise reproducible run to run;
    # across thread counts equal to rounding. B * n² is above the single-thread threshold
    # (orbitcore::cpu::kMinParallelWork = 32768), so two threads really share the work.
    D, B = 12, 256
    S = torch.randn(B, D, D, generator=gen, dtype=torch.complex64)
    R = rots(B, gen, torch.float32)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        a = oc.fourier_insert(S, R, D)
        b = oc.fourier_insert(S, R, D)
        torch.set_num_threads(1)
        c = oc.fourier_insert(S, R, D)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(a, b)
    torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-5)


def test_general_linear_map_with_check_false(gen):
    # Documented: with check=False the plane is M (kx, ky, 0) for any 3x3 M (e.g. pad * R).
    v = rand_vol(9, gen)
    R = rots(3, gen)
    M = 2.0 * R
    torch.testing.assert_close(oc.fourier_slice(v, M, size=5, check=False),
                               ref.fourier_slice(v, M, n=5), rtol=0, atol=1e-13)
    with pytest.raises(ValueError, match="rotation matrices"):
        oc.fourier_slice(v, M)


# ------------------------------------------------------------------------------------------------
# Half volumes: the kx >= 0 half of the FT of a real volume (fourier_slice(..., half=True))
# ------------------------------------------------------------------------------------------------
def hermitian_pair(D, gen, B=None):
    """The centred FT of a real volume (full, differentiable in x) and its kx >= 0 half, built by
    slicing the full one (index D/2 + j holds kx = j; kx = D/2 is kx = -D/2 by periodicity)."""
    shape = (D, D, D) if B is None else (B, D, D, D)
    x = torch.randn(shape, generator=gen, dtype=torch.float64, requires_grad=True)
    F = fourier.fft3c(x.to(C128))
    h = D // 2
    return x, F, torch.cat((F[..., h:], F[..., :1]), -1)


@pytest.mark.parametrize("D", [4, 8, 10])
@pytest.mark.parametrize("scale", [1.0, 1.9, 2.6])  # 2.6 R: points on the rim and outside the grid
@pytest.mark.parametrize("hermitian", [False, True])
@pytest.mark.parametrize("batched", [False, True])
def test_half_volume_equals_full_volume(D, scale, hermitian, batched, gen):
    B = 5
    x, F, H = hermitian_pair(D, gen, B if batched else None)
    M = scale * rots(B, gen)
    for radius in (None, D / 2 - 0.7):
        want = oc.fourier_slice(F, M, size=D + 1, radius=radius, hermitian=hermitian, check=False)
        got = oc.fourier_slice(H, M, size=D + 1, radius=radius, hermitian=hermitian, half=True, check=False)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12 * float(want.detach().abs().max()))
    # the gradients, to the real volume behind both layouts and to the rotations, agree too
    Mr = M.clone().requires_grad_()
    w = torch.randn(B, D + 1, D + 1, generator=gen, dtype=C128)

    def grads(layout):
        F2 = fourier.fft3c(x.to(C128))
        V = F2 if layout == "full" else torch.cat((F2[..., D // 2:], F2[..., :1]), -1)
        S = oc.fourier_slice(V, Mr, size=D + 1, radius=D / 2 - 0.7, hermitian=hermitian,
                             half=layout == "half", check=False)
        return torch.autograd.grad((S * w).real.sum() + S.abs().square().sum(), (x, Mr))

    for a, b in zip(grads("half"), grads("full")):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10 * float(b.abs().max()))


def test_half_volume_gradcheck_and_opcheck(gen):
    D, B, n = 6, 3, 5
    _, _, H = hermitian_pair(D, gen)
    H = H.detach().requires_grad_()
    R = (1.7 * rots(B, gen)).requires_grad_()
    f = lambda v, r: torch.view_as_real(oc.fourier_slice(v, r, size=n, radius=2.6, hermitian=True,  # noqa: E731
                                                         half=True, check=False))
    assert torch.autograd.gradcheck(f, (H, R))
    torch.library.opcheck(torch.ops.orbitcore.slice_forward.default, (H.detach()[None], R.detach(), n, 2.0, True))
    g = torch.randn(B, n, n, generator=gen, dtype=C128)
    torch.library.opcheck(torch.ops.orbitcore.slice_backward.default,
                          (g, H.detach()[None], R.detach(), -1.0, False, True, True))


def test_half_volume_bad_inputs(gen):
    from orbitcore import _ext
    R = rots(2, gen)
    with pytest.raises(ValueError, match=r"fourier_slice: with half=True volume_ft must be a half volume "
                                         r"\(\.\.\., D, D, D // 2 \+ 1\) of even D >= 4"):
        oc.fourier_slice(rand_vol(6, gen), R, half=True)
    with pytest.raises(ValueError, match="even D >= 4"):  # odd D has no half layout here
        oc.fourier_slice(torch.zeros(7, 7, 4, dtype=C128), R, half=True)
    with pytest.raises(ValueError, match=r"fourier_slice: volume_ft must be a cube"):
        oc.fourier_slice(torch.zeros(6, 6, 4, dtype=C128), R)  # a half volume without half=True
    # the binding: neither a cube nor a half volume; weights (back-projection) with a half volume
    out = torch.empty(2, 6, 6, dtype=C128)
    with pytest.raises(ValueError, match=r"slice_forward: volume must be a cube \(\.\., D, D, D\) or a half volume"):
        _ext.C.slice_forward(_ext.arg(torch.zeros(1, 6, 6, 5, dtype=C128)), _ext.arg(R), _ext.arg(out), 6, -1.0,
                             False, 1, 0)
    g = torch.zeros(2, 6, 6, dtype=C128)
    with pytest.raises(ValueError, match="slice_backward: weights are not supported with half volumes"):
        _ext.C.slice_backward(_ext.arg(g), _ext.arg(torch.ones(2, 6, 6, dtype=torch.float64)), None, _ext.arg(R),
                              _ext.arg(torch.zeros(1, 6, 6, 4, dtype=C128)), None, None, 6, -1.0, False, 1, 0)


def test_fuzz_half_volume_against_reference():
    g = torch.Generator().manual_seed(11)
    for trial in range(20):
        D = 2 * int(torch.randint(2, 7, (1,), generator=g))
        n = int(torch.randint(1, 14, (1,), generator=g))
        B = int(torch.randint(1, 5, (1,), generator=g))
        radius = None if trial % 3 == 0 else float(torch.rand(1, generator=g)) * n
        herm = bool(trial % 2)
        x = torch.randn((B, D, D, D) if trial % 4 == 1 else (D, D, D), generator=g, dtype=torch.float64)
        F = fourier.fft3c(x.to(C128))
        H = torch.cat((F[..., D // 2:], F[..., :1]), -1)
        M = (0.5 + 2.5 * float(torch.rand(1, generator=g))) * random_rotations(B, generator=g, dtype=torch.float64)
        want = ref.fourier_slice(F, M, n=n, radius=radius, hermitian=herm)
        got = oc.fourier_slice(H, M, size=n, radius=radius, hermitian=herm, half=True, check=False)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-11 * max(1.0, float(want.abs().max())),
                                   msg=f"trial {trial}: D={D} n={n} B={B}")
