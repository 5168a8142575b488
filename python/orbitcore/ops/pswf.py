"""Custom ops of the PSWF family: orbit fold/unfold (the symmetry-adapted change of pixel basis
that makes the PSWF evaluation matrix block diagonal), basis values at arbitrary points, and the
blocked CPU product the benchmark compares with BLAS.

The public API is :class:`orbitcore.basis.PSWF2D`; these ops are its building blocks. Fold and
unfold are exact adjoints of each other (the orbit matrices are orthogonal), so each is the
other's backward; both are linear, so second derivatives work too. ``pswf_eval_points`` is not
differentiable with respect to the points (the basis values are constants of a plan).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import _ext
from .._validate import check_int, check_torch_tensor, fail

__all__ = ["fold", "unfold", "eval_points", "gemm"]

_FOLD_KEYS = ("pix", "Q", "size", "feat")
_EVAL_KEYS = ("group_N", "group_K", "group_offsets", "item_group", "item_row", "coefficients", "col_cos", "col_sin")


def _check_args(fn: str, name: str, x, layout: str, tables: dict, keys: tuple, size_name: str, size) -> int:
    """A 2-D tensor ``x``, the PSWF2D ``tables`` with ``keys`` and an integer size, errors naming ``fn``."""
    check_torch_tensor(fn, name, x, layout)
    if x.dim() != 2:
        fail(fn, f"{name} must have shape {layout}, got {tuple(x.shape)}")
    if not isinstance(tables, dict):
        fail(fn, f"tables must be a dict of PSWF2D's tables, got {type(tables).__name__}", TypeError)
    missing = [k for k in keys if k not in tables]
    if missing:
        fail(fn, f"tables must hold PSWF2D's tables {', '.join(keys)}; missing {', '.join(missing)}")
    return check_int(fn, size_name, size, minimum=0)


# ----------------------------------------------------------------------------------------------
# fold / unfold
# ----------------------------------------------------------------------------------------------
@torch.library.custom_op("orbitcore::pswf_fold", mutates_args=())
def _pswf_fold(images: Tensor, pix: Tensor, Q: Tensor, size: Tensor, feat: Tensor, F: int) -> Tensor:
    """images (B, npix) real -> features (B, F)."""
    images = _ext.dense(images)
    out = images.new_empty((images.shape[0], F))
    _ext.C.pswf_fold(_ext.arg(images), _ext.arg(pix), _ext.arg(Q), _ext.arg(size), _ext.arg(feat),
                     _ext.arg(out), _ext.threads(), _ext.stream(images))
    return out


@_pswf_fold.register_fake
def _(images, pix, Q, size, feat, F):
    return images.new_empty((images.shape[0], F))


@torch.library.custom_op("orbitcore::pswf_unfold", mutates_args=())
def _pswf_unfold(features: Tensor, pix: Tensor, Q: Tensor, size: Tensor, feat: Tensor, npix: int) -> Tensor:
    """features (B, F) real -> images (B, npix) (pixels outside every orbit are 0)."""
    features = _ext.dense(features)
    out = features.new_empty((features.shape[0], npix))
    _ext.C.pswf_unfold(_ext.arg(features), _ext.arg(pix), _ext.arg(Q), _ext.arg(size), _ext.arg(feat),
                       _ext.arg(out), _ext.threads(), _ext.stream(features))
    return out


@_pswf_unfold.register_fake
def _(features, pix, Q, size, feat, npix):
    return features.new_empty((features.shape[0], npix))


def _fold_setup(ctx, inputs, output):
    images, pix, Q, size, feat, F = inputs
    ctx.save_for_backward(pix, Q, size, feat)
    ctx.npix = images.shape[1]


def _fold_bwd(ctx, grad):
    pix, Q, size, feat = ctx.saved_tensors
    return torch.ops.orbitcore.pswf_unfold(grad, pix, Q, size, feat, ctx.npix), None, None, None, None, None


def _unfold_setup(ctx, inputs, output):
    features, pix, Q, size, feat, npix = inputs
    ctx.save_for_backward(pix, Q, size, feat)
    ctx.F = features.shape[1]


def _unfold_bwd(ctx, grad):
    pix, Q, size, feat = ctx.saved_tensors
    return torch.ops.orbitcore.pswf_fold(grad, pix, Q, size, feat, ctx.F), None, None, None, None, None


torch.library.register_autograd("orbitcore::pswf_fold", _fold_bwd, setup_context=_fold_setup)
torch.library.register_autograd("orbitcore::pswf_unfold", _unfold_bwd, setup_context=_unfold_setup)


def fold(images: Tensor, tables: dict, F: int) -> Tensor:
    """Symmetry-adapted features ``(B, F)`` of flattened images ``(B, npix)`` (see PSWF2D)."""
    F = _check_args("fold", "images", images, "(B, npix)", tables, _FOLD_KEYS, "F", F)
    return torch.ops.orbitcore.pswf_fold(images, tables["pix"], tables["Q"], tables["size"], tables["feat"], F)


def unfold(features: Tensor, tables: dict, npix: int) -> Tensor:
    """Adjoint of :func:`fold`: images ``(B, npix)`` from features ``(B, F)``."""
    npix = _check_args("unfold", "features", features, "(B, F)", tables, _FOLD_KEYS, "npix", npix)
    return torch.ops.orbitcore.pswf_unfold(features, tables["pix"], tables["Q"], tables["size"], tables["feat"],
                                           npix)


# ----------------------------------------------------------------------------------------------
# basis values at points
# ----------------------------------------------------------------------------------------------
@torch.library.custom_op("orbitcore::pswf_eval_points", mutates_args=())
def _pswf_eval_points(points: Tensor, group_N: Tensor, group_K: Tensor, group_offsets: Tensor,
                      item_group: Tensor, item_row: Tensor, coefficients: Tensor, col_cos: Tensor,
                      col_sin: Tensor, M: int) -> Tensor:
    """points (P, 2) in unit-disk coordinates -> (P, M) real basis values."""
    points = _ext.dense(points)
    out = points.new_zeros((points.shape[0], M))
    _ext.C.pswf_eval_points(_ext.arg(points), _ext.arg(group_N), _ext.arg(group_K), _ext.arg(group_offsets),
                            _ext.arg(item_group), _ext.arg(item_row), _ext.arg(coefficients),
                            _ext.arg(col_cos), _ext.arg(col_sin), _ext.arg(out), _ext.threads(),
                            _ext.stream(points))
    return out


@_pswf_eval_points.register_fake
def _(points, group_N, group_K, group_offsets, item_group, item_row, coefficients, col_cos, col_sin, M):
    return points.new_empty((points.shape[0], M))


def _eval_points_bwd(ctx, grad):
    raise RuntimeError("orbitcore: PSWF basis values are not differentiable with respect to the "
                       "evaluation points (pass points without requires_grad)")


def _eval_points_setup(ctx, inputs, output):
    pass


torch.library.register_autograd("orbitcore::pswf_eval_points", _eval_points_bwd,
                                setup_context=_eval_points_setup)


def eval_points(points: Tensor, tables: dict, M: int) -> Tensor:
    """Real-convention basis values ``(P, M)`` at ``points (P, 2)`` of the unit disk."""
    M = _check_args("eval_points", "points", points, "(P, 2)", tables, _EVAL_KEYS, "M", M)
    if points.shape[1] != 2:
        fail("eval_points", f"points must have shape (P, 2), got {tuple(points.shape)}")
    return torch.ops.orbitcore.pswf_eval_points(points, tables["group_N"], tables["group_K"],
                                                tables["group_offsets"], tables["item_group"],
                                                tables["item_row"], tables["coefficients"],
                                                tables["col_cos"], tables["col_sin"], M)


# ----------------------------------------------------------------------------------------------
# the blocked CPU product (benchmark alternative to torch.matmul)
# ----------------------------------------------------------------------------------------------
@torch.library.custom_op("orbitcore::pswf_gemm", mutates_args=())
def _pswf_gemm(A: Tensor, B: Tensor) -> Tensor:
    """A (m, k) @ B (k, n) with orbitcore's blocked CPU kernel."""
    A, B = _ext.dense(A), _ext.dense(B)
    out = A.new_empty((A.shape[0], B.shape[1]))
    _ext.C.pswf_gemm(_ext.arg(A), _ext.arg(B), _ext.arg(out), _ext.threads())
    return out


@_pswf_gemm.register_fake
def _(A, B):
    return A.new_empty((A.shape[0], B.shape[1]))


def _gemm_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _gemm_bwd(ctx, grad):
    A, B = ctx.saved_tensors
    gA = torch.ops.orbitcore.pswf_gemm(grad, B.t().contiguous()) if ctx.needs_input_grad[0] else None
    gB = torch.ops.orbitcore.pswf_gemm(A.t().contiguous(), grad) if ctx.needs_input_grad[1] else None
    return gA, gB


torch.library.register_autograd("orbitcore::pswf_gemm", _gemm_bwd, setup_context=_gemm_setup)


def gemm(A: Tensor, B: Tensor) -> Tensor:
    """``A @ B`` through orbitcore's blocked CPU kernel (CPU tensors only)."""
    for name, x in (("A", A), ("B", B)):
        check_torch_tensor("gemm", name, x, "(2-D)")
    if A.dim() != 2 or B.dim() != 2 or A.shape[1] != B.shape[0]:
        fail("gemm", f"A and B must be matrices (m, k) and (k, n), got {tuple(A.shape)} and {tuple(B.shape)}")
    return torch.ops.orbitcore.pswf_gemm(A, B)
