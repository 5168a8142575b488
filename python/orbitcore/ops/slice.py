"""Fourier-slice interpolation, its adjoint (insertion / back-projection) and trilinear sampling.

Conventions (ARCHITECTURE.md): a Fourier volume is the centred FT of a real-space volume
indexed ``[z, y, x]`` with DC at index ``D // 2``; points are ``(x, y, z)`` in Fourier-pixel
units relative to DC; trilinear interpolation, zero outside the grid; the central slice of a
rotation ``R`` is ``S[ky, kx] = V(R @ (kx, ky, 0))`` with ``kx, ky`` over the centred grid of
the slice side ``n`` (DC at ``n // 2``). By the projection-slice theorem,
``fourier_slice(fft3c(v), R) == fft2c(image)`` where ``image(x, y) = sum_z v(R @ (x, y, z))``
(exact for R = I; for other rotations up to the interpolation error).

Layers: the public functions below validate and normalise arguments and accept torch, NumPy
or CuPy arrays; the ``torch.ops.orbitcore.*`` custom ops (fake and autograd registered, usable
under ``torch.compile``) call the compiled drivers through ``orbitcore._C``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import _ext
from .._validate import (
    check_complex,
    check_finite,
    check_float,
    check_floating,
    check_int,
    check_kernel_device,
    check_ndim,
    check_rotations,
    check_same_device,
    fail,
    from_tensor,
    to_tensor,
)

__all__ = ["fourier_slice", "fourier_sample", "fourier_insert"]


def _r2(radius: float) -> float:
    """Kernel encoding of the disk radius: radius < 0 means no mask."""
    return -1.0 if radius < 0 else float(radius) ** 2


def _empty_like_none(ref: Tensor) -> Tensor:
    return ref.new_empty((0,))


# ----------------------------------------------------------------------------------------------
# Custom ops: slice
# ----------------------------------------------------------------------------------------------
@torch.library.custom_op("orbitcore::slice_forward", mutates_args=())
def _slice_forward(volume: Tensor, rotations: Tensor, size: int, radius: float, hermitian: bool) -> Tensor:
    """volume (V, D, D, D) complex, or a half volume (V, D, D, D // 2 + 1) (the kernel tells them
    apart by the last axis), rotations (B, 3, 3) -> (B, size, size) complex."""
    volume, rotations = _ext.dense(volume), _ext.dense(rotations)
    out = volume.new_empty((rotations.shape[0], size, size))
    _ext.C.slice_forward(_ext.arg(volume), _ext.arg(rotations), _ext.arg(out), size, _r2(radius),
                         hermitian, _ext.threads(), _ext.stream(volume))
    return out


@_slice_forward.register_fake
def _(volume, rotations, size, radius, hermitian):
    return volume.new_empty((rotations.shape[0], size, size))


@torch.library.custom_op("orbitcore::slice_backward", mutates_args=())
def _slice_backward(grad: Tensor, volume: Tensor, rotations: Tensor, radius: float, hermitian: bool,
                    need_volume: bool, need_rotations: bool) -> tuple[Tensor, Tensor]:
    """Gradients of slice_forward: (grad_volume shaped like volume, or empty; grad_rotations (B, 3, 3) or empty)."""
    grad, volume, rotations = _ext.dense(grad), _ext.dense(volume), _ext.dense(rotations)
    gv = torch.empty_like(volume) if need_volume else _empty_like_none(volume)
    gr = torch.empty_like(rotations) if need_rotations else _empty_like_none(rotations)
    _ext.C.slice_backward(_ext.arg(grad), None, _ext.arg(volume) if need_rotations else None,
                          _ext.arg(rotations), _ext.arg(gv) if need_volume else None, None,
                          _ext.arg(gr) if need_rotations else None, volume.shape[-2], _r2(radius),
                          hermitian, _ext.threads(), _ext.stream(grad))
    return gv, gr


@_slice_backward.register_fake
def _(grad, volume, rotations, radius, hermitian, need_volume, need_rotations):
    gv = torch.empty_like(volume) if need_volume else volume.new_empty((0,))
    gr = torch.empty_like(rotations) if need_rotations else rotations.new_empty((0,))
    return gv, gr


def _slice_setup(ctx, inputs, output):
    volume, rotations, size, radius, hermitian = inputs
    ctx.save_for_backward(volume, rotations)
    ctx.radius, ctx.hermitian = radius, hermitian


def _slice_bwd(ctx, grad):
    volume, rotations = ctx.saved_tensors
    need_v, need_r = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    gv, gr = torch.ops.orbitcore.slice_backward(grad, volume, rotations, ctx.radius, ctx.hermitian,
                                                need_v, need_r)
    return (gv if need_v else None, gr if need_r else None, None, None, None)


torch.library.register_autograd("orbitcore::slice_forward", _slice_bwd, setup_context=_slice_setup)


def _no_double_backward(ctx, *grads):
    raise RuntimeError(
        "orbitcore: double backward (second derivatives) through fourier_slice / fourier_sample / "
        "fourier_insert is not supported. Use first-order gradients, or a pure-torch "
        "reference (orbitcore.ops._reference) for Hessian-vector products.")


def _no_double_setup(ctx, inputs, output):
    pass


torch.library.register_autograd("orbitcore::slice_backward", _no_double_backward,
                                setup_context=_no_double_setup)


# ----------------------------------------------------------------------------------------------
# Custom ops: insert (the adjoint of slice, with a real weight channel)
# ----------------------------------------------------------------------------------------------
@torch.library.custom_op("orbitcore::insert_forward", mutates_args=())
def _insert_forward(slices: Tensor, rotations: Tensor, weights: Tensor, D: int, radius: float,
                    hermitian: bool, with_weights: bool) -> tuple[Tensor, Tensor]:
    """slices (B, n, n) complex -> (volume (D, D, D) complex, weight volume (D, D, D) or empty)."""
    slices, rotations = _ext.dense(slices), _ext.dense(rotations)
    vol = slices.new_empty((D, D, D))
    real = rotations.dtype
    wvol = slices.new_empty((D, D, D), dtype=real) if with_weights else slices.new_empty((0,), dtype=real)
    weights = _ext.dense(weights) if with_weights else None
    _ext.C.slice_backward(_ext.arg(slices), _ext.arg(weights), None, _ext.arg(rotations),
                          _ext.arg(vol.view(1, D, D, D)), _ext.arg(wvol) if with_weights else None, None,
                          D, _r2(radius), hermitian, _ext.threads(), _ext.stream(slices))
    return vol, wvol


@_insert_forward.register_fake
def _(slices, rotations, weights, D, radius, hermitian, with_weights):
    real = rotations.dtype
    wvol = slices.new_empty((D, D, D), dtype=real) if with_weights else slices.new_empty((0,), dtype=real)
    return slices.new_empty((D, D, D)), wvol


def _insert_setup(ctx, inputs, output):
    slices, rotations, weights, D, radius, hermitian, with_weights = inputs
    ctx.save_for_backward(slices, rotations, weights)
    ctx.n, ctx.radius, ctx.hermitian, ctx.with_weights = slices.shape[-1], radius, hermitian, with_weights
    ctx.D = D


def _insert_bwd(ctx, g_vol, g_wvol):
    slices, rotations, weights = ctx.saved_tensors
    need_s, need_r, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
    n, radius, herm = ctx.n, ctx.radius, ctx.hermitian
    g_s = g_r = g_w = None
    if g_vol is None:
        g_vol = slices.new_zeros((ctx.D,) * 3)
    use_w = ctx.with_weights and g_wvol is not None and g_wvol.numel() > 0
    g_wc = g_wvol.to(slices.dtype)[None] if use_w else None
    if need_s:
        # The adjoint of insertion is slicing.
        g_s = torch.ops.orbitcore.slice_forward(g_vol[None], rotations, n, radius, herm)
    if need_w and use_w:
        g_w = torch.ops.orbitcore.slice_forward(g_wc, rotations, n, radius, herm).real
    if need_r:
        # d<G, insert(S)>/dR has the form of the slice rotation gradient with upstream S and volume G.
        _, g_r = torch.ops.orbitcore.slice_backward(slices, g_vol[None], rotations, radius, herm, False, True)
        if use_w:
            _, g_r2 = torch.ops.orbitcore.slice_backward(weights.to(slices.dtype), g_wc, rotations, radius,
                                                         herm, False, True)
            g_r = g_r + g_r2
    return g_s, g_r, g_w, None, None, None, None


torch.library.register_autograd("orbitcore::insert_forward", _insert_bwd, setup_context=_insert_setup)


# ----------------------------------------------------------------------------------------------
# Custom ops: sample at arbitrary points
# ----------------------------------------------------------------------------------------------
@torch.library.custom_op("orbitcore::sample_forward", mutates_args=())
def _sample_forward(volume: Tensor, coords: Tensor) -> Tensor:
    """volume (V, D, D, D) complex, coords (V, P, 3) -> (V, P) complex."""
    volume, coords = _ext.dense(volume), _ext.dense(coords)
    out = volume.new_empty(coords.shape[:2])
    _ext.C.sample_forward(_ext.arg(volume), _ext.arg(coords), _ext.arg(out), _ext.threads(),
                          _ext.stream(volume))
    return out


@_sample_forward.register_fake
def _(volume, coords):
    return volume.new_empty(coords.shape[:2])


@torch.library.custom_op("orbitcore::sample_backward", mutates_args=())
def _sample_backward(grad: Tensor, volume: Tensor, coords: Tensor, need_volume: bool,
                     need_coords: bool) -> tuple[Tensor, Tensor]:
    grad, volume, coords = _ext.dense(grad), _ext.dense(volume), _ext.dense(coords)
    gv = torch.empty_like(volume) if need_volume else _empty_like_none(volume)
    gc = torch.empty_like(coords) if need_coords else _empty_like_none(coords)
    _ext.C.sample_backward(_ext.arg(grad), _ext.arg(volume), _ext.arg(coords),
                           _ext.arg(gv) if need_volume else None, _ext.arg(gc) if need_coords else None,
                           _ext.threads(), _ext.stream(grad))
    return gv, gc


@_sample_backward.register_fake
def _(grad, volume, coords, need_volume, need_coords):
    gv = torch.empty_like(volume) if need_volume else volume.new_empty((0,))
    gc = torch.empty_like(coords) if need_coords else coords.new_empty((0,))
    return gv, gc


def _sample_setup(ctx, inputs, output):
    volume, coords = inputs
    ctx.save_for_backward(volume, coords)


def _sample_bwd(ctx, grad):
    volume, coords = ctx.saved_tensors
    need_v, need_c = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    gv, gc = torch.ops.orbitcore.sample_backward(grad, volume, coords, need_v, need_c)
    return (gv if need_v else None, gc if need_c else None)


torch.library.register_autograd("orbitcore::sample_forward", _sample_bwd, setup_context=_sample_setup)
torch.library.register_autograd("orbitcore::sample_backward", _no_double_backward,
                                setup_context=_no_double_setup)


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------
def _volume_arg(fn: str, volume_ft, half: bool = False) -> tuple[Tensor, str, bool]:
    vol, kind = to_tensor(volume_ft, fn, "volume_ft")
    check_complex(fn, "volume_ft", vol, hint=" (the centred FT of a volume: orbitcore.fourier.fft3c)")
    if half:
        check_ndim(fn, "volume_ft", vol, (3, 4), "(D, D, D // 2 + 1) or (B, D, D, D // 2 + 1)")
        D = vol.shape[-2]
        if vol.shape[-3] != D or D % 2 or D < 4 or vol.shape[-1] != D // 2 + 1:
            fail(fn, "with half=True volume_ft must be a half volume (..., D, D, D // 2 + 1) of even D >= 4 "
                     f"(orbitcore.fourier.fft3c_padded(..., half=True)), got {tuple(vol.shape)}")
        check_kernel_device(fn, "volume_ft", vol)
        batched = vol.dim() == 4
        return (vol if batched else vol[None]), kind, batched
    check_ndim(fn, "volume_ft", vol, (3, 4), "(D, D, D) or (B, D, D, D)")
    D = vol.shape[-1]
    if vol.shape[-3] != D or vol.shape[-2] != D:
        fail(fn, f"volume_ft must be a cube (..., D, D, D), got {tuple(vol.shape)}")
    if D < 2:
        fail(fn, f"volume_ft side D must be at least 2, got {D}")
    check_kernel_device(fn, "volume_ft", vol)
    batched = vol.dim() == 4
    return (vol if batched else vol[None]), kind, batched


def _real_dtype(t: Tensor) -> torch.dtype:
    return torch.float32 if t.dtype == torch.complex64 else torch.float64


def _rotations_arg(fn: str, rotations, ref: Tensor, ref_name: str, check: bool) -> tuple[Tensor, bool]:
    R, _ = to_tensor(rotations, fn, "rotations")
    check_floating(fn, "rotations", R)
    if R.dim() not in (2, 3) or tuple(R.shape[-2:]) != (3, 3):
        fail(fn, f"rotations must have shape (B, 3, 3) or (3, 3), got {tuple(R.shape)}")
    check_same_device(fn, ref_name, ref, "rotations", R)
    if check:
        check_rotations(fn, "rotations", R)
    single = R.dim() == 2
    R = R[None] if single else R
    return R.to(_real_dtype(ref)), single


def _radius_arg(fn: str, radius) -> float:
    r = check_float(fn, "radius", radius, minimum=0.0, allow_none=True)
    return -1.0 if r is None else r


def fourier_slice(volume_ft, rotations, size: int | None = None, radius: float | None = None, *,
                  hermitian: bool = False, half: bool = False, check: bool = True):
    """Central slices of a centred Fourier volume: ``S[b, ky, kx] = V_b(R_b @ (kx, ky, 0))``.

    Args:
        volume_ft: complex ``(D, D, D)`` (one volume for every rotation) or ``(B, D, D, D)``
            (one per rotation), the centred FT (``orbitcore.fourier.fft3c``) of a volume indexed
            ``[z, y, x]``; DC at index ``D // 2``.
        rotations: ``(B, 3, 3)`` or ``(3, 3)`` rotation matrices acting on column vectors
            ``(x, y, z)``. The viewing direction of ``R`` is ``R @ e_z``.
        size: side ``n`` of the output slices (default ``D``); frequencies
            ``k in [-(n // 2), (n - 1) // 2]`` Fourier pixels, DC at index ``n // 2``.
        radius: optional disk mask radius in Fourier pixels: points with ``kx² + ky² > radius²``
            are 0 and cost nothing.
        hermitian: the volume is the FT of a *real* volume. Only half of each slice is
            interpolated, the other half is ``S(-k) = conj(S(k))``. Exact for odd ``D`` (and for
            even ``D`` inside ``radius < D/2 - 1``); about 2x faster.
        half: ``volume_ft`` holds only the ``kx >= 0`` half of the centred FT of a *real* volume
            of even side ``D >= 4``: shape ``(D, D, D // 2 + 1)`` or ``(B, D, D, D // 2 + 1)``,
            ``kz, ky`` centred (DC at ``D // 2``) and the last index equal to ``kx`` (what
            :func:`orbitcore.fourier.fft3c_padded` returns with ``half=True``). Points with
            ``kx < 0`` read ``conj V(-k)``. The slices and the gradients to the rotations equal
            those of the full volume; the gradient to the volume is a half volume. Half the
            memory, and no Hermitian completion of the volume.
        check: validate rotation values (finite, orthogonal). Skipped under ``torch.compile``.
            With ``check=False`` any real 3×3 matrices are accepted: the plane is
            ``M @ (kx, ky, 0)`` for a general linear map ``M``. For example ``pad * R`` samples a
            ``pad``-fold zero-padded volume at the frequencies of the un-padded image box
            (what :class:`orbitcore.physics.Projector` does); gradients flow to ``M`` as well.

    Returns:
        complex ``(B, n, n)`` (or ``(n, n)`` for a single ``(3, 3)`` rotation), same kind
        (torch / NumPy / CuPy) as ``volume_ft``. Differentiable with respect to ``volume_ft``
        (adjoint: :func:`fourier_insert`) and ``rotations`` (through the derivative of the
        trilinear weights). Points farther than one voxel outside the grid sample 0.
    """
    fn = "fourier_slice"
    vol, kind, _ = _volume_arg(fn, volume_ft, bool(half))
    R, single = _rotations_arg(fn, rotations, vol, "volume_ft", check)
    D = vol.shape[-2]
    n = D if size is None else check_int(fn, "size", size, minimum=1)
    r = _radius_arg(fn, radius)
    if vol.shape[0] != 1 and vol.shape[0] != R.shape[0]:
        fail(fn, f"volume_ft batch ({vol.shape[0]}) must match the number of rotations ({R.shape[0]})")
    out = torch.ops.orbitcore.slice_forward(vol, R, n, r, bool(hermitian))
    return from_tensor(out[0] if single else out, kind)


def fourier_insert(slices, rotations, D: int, weights=None, *, radius: float | None = None,
                   hermitian: bool = False, check: bool = True):
    """Insert central slices into a Fourier volume: the adjoint of :func:`fourier_slice`.

    ``V = sum_b sum_k w_tri(R_b @ (kx, ky, 0)) S_b[k]``, trilinear weights scattered onto the
    DC-centred ``D³`` grid, so that ``<fourier_slice(V, R), S> == <V, fourier_insert(S, R, D)>``.
    With ``weights`` it also returns the weight volume ``W = sum_b sum_k w_tri(...) weights_b[k]``,
    the denominator of a back-projection ``V / W`` (pass ``weights=1.0`` for the sampling
    density, or ``|CTF|²`` for a Wiener-style reconstruction).

    Args:
        slices: complex ``(B, n, n)`` (or ``(n, n)`` with a single rotation), centred.
        rotations: ``(B, 3, 3)`` (or ``(3, 3)``), as in :func:`fourier_slice`.
        D: side of the output volume.
        weights: optional real ``(B, n, n)`` array, or a number (broadcast to every point).
        radius, hermitian: as in :func:`fourier_slice`; with ``hermitian=True`` this is the
            exact adjoint of the Hermitian slice (only half of the volume is filled), so use the
            default ``False`` for back-projection.

    Returns:
        complex ``(D, D, D)``, or ``(volume, weight_volume)`` with a real ``(D, D, D)`` weight
        volume when ``weights`` is given. Differentiable with respect to ``slices``,
        ``rotations`` and ``weights``.
    """
    fn = "fourier_insert"
    S, kind = to_tensor(slices, fn, "slices")
    check_complex(fn, "slices", S)
    check_ndim(fn, "slices", S, (2, 3), "(B, n, n) or (n, n)")
    if S.shape[-1] != S.shape[-2]:
        fail(fn, f"slices must be square (B, n, n), got {tuple(S.shape)}")
    check_kernel_device(fn, "slices", S)
    R, single = _rotations_arg(fn, rotations, S, "slices", check)
    D = check_int(fn, "D", D, minimum=2)
    S3 = S[None] if S.dim() == 2 else S
    if S3.shape[0] != R.shape[0]:
        fail(fn, f"slices batch ({S3.shape[0]}) must match the number of rotations ({R.shape[0]})")
    r = _radius_arg(fn, radius)
    real = _real_dtype(S)
    with_w = weights is not None
    if with_w:
        if isinstance(weights, (int, float)) and not isinstance(weights, bool):
            W = torch.full(S3.shape, float(weights), dtype=real, device=S.device)
        else:
            W, _ = to_tensor(weights, fn, "weights")
            check_floating(fn, "weights", W)
            check_same_device(fn, "slices", S, "weights", W)
            if tuple(W.shape) != tuple(S.shape):
                fail(fn, f"weights must have the shape of slices {tuple(S.shape)}, got {tuple(W.shape)}")
            W = (W[None] if W.dim() == 2 else W).to(real)
            check_finite(fn, "weights", W)
    else:
        W = S3.new_empty((0,), dtype=real)
    vol, wvol = torch.ops.orbitcore.insert_forward(S3, R, W, D, r, bool(hermitian), with_w)
    if with_w:
        return from_tensor(vol, kind), from_tensor(wvol, kind)
    return from_tensor(vol, kind)


def fourier_sample(volume_ft, coords, *, check: bool = True):
    """Trilinear samples of a centred Fourier volume at arbitrary points.

    Args:
        volume_ft: complex ``(D, D, D)``, or a batch ``(B, D, D, D)``.
        coords: real ``(..., 3)`` points ``(x, y, z)`` in Fourier pixels relative to DC (grid
            position ``coord + D // 2``); for a batched volume ``(B, ..., 3)``, one set per
            volume.
        check: validate that coordinates are finite (skipped under ``torch.compile``).

    Returns:
        complex ``(...)`` (``(B, ...)`` for a batch). Zero outside the grid; differentiable with
        respect to the volume and the coordinates.
    """
    fn = "fourier_sample"
    vol, kind, batched = _volume_arg(fn, volume_ft)
    C, _ = to_tensor(coords, fn, "coords")
    check_floating(fn, "coords", C)
    check_same_device(fn, "volume_ft", vol, "coords", C)
    if C.dim() < 1 or C.shape[-1] != 3:
        fail(fn, f"coords must have shape (..., 3), got {tuple(C.shape)}")
    if batched and (C.dim() < 2 or C.shape[0] != vol.shape[0]):
        fail(fn, f"coords must have shape (B, ..., 3) with B = {vol.shape[0]} for a batched volume, "
                 f"got {tuple(C.shape)}")
    if check:
        check_finite(fn, "coords", C)
    C = C.to(_real_dtype(vol))
    lead = C.shape[:-1]
    C3 = C.reshape(vol.shape[0], -1, 3)
    out = torch.ops.orbitcore.sample_forward(vol, C3).reshape(lead)
    return from_tensor(out, kind)
