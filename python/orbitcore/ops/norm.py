"""Custom ops of the norm family: batch normalisation with batch statistics, fused with ReLU.

``batch_norm_relu(x, ...)`` is ``relu(batch_norm(x, ...))`` (the ``BatchNorm → ReLU`` pair of
every convolution block of the pose encoder, :mod:`orbitcore.nn.encoders`) in one kernel pass
over the activations forward and one backward instead of four (element math:
``src/orbitcore/norm.hpp``). In training mode it normalises with the batch statistics and
updates the running estimates in place exactly as ``torch.nn.functional.batch_norm`` does; in
evaluation mode (running statistics) it is the plain PyTorch pair.

``batch_norm_relu_max_pool2d(x, ...)`` is ``max_pool2d(relu(batch_norm(x, ...)), 2)``, the end of
each encoder block: it writes only the pooled output and keeps no pooling indices (the backward
recomputes each window's maximum from ``x``), so neither the full-size activations, the indices
nor the full-size gradient of the pooling are ever stored.

Layout: the kernels read the activations as an ``(M, C)`` array, channels fastest. A
channels-last ``(N, C, H, W)`` tensor is that array without a copy, and so is the output; any
other layout is copied once. Differentiable once (to ``x``, ``weight`` and ``bias``).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import _ext
from .._validate import fail

__all__ = ["batch_norm_relu", "batch_norm_relu_max_pool2d"]


def _workspace(x: Tensor) -> Tensor | None:
    return x.new_empty((8 * x.shape[-1],), dtype=torch.float64) if x.device.type == "cuda" else None  # 8 C


def _forward_impl(kernel, x: Tensor, weight: Tensor, bias: Tensor, eps: float, out_shape) -> tuple[Tensor, Tensor, Tensor]:
    x, weight, bias = _ext.dense(x), _ext.dense(weight), _ext.dense(bias)
    C = x.shape[-1]
    y, mean, var = x.new_empty(out_shape), x.new_empty((C,)), x.new_empty((C,))
    kernel(_ext.arg(x), _ext.arg(weight), _ext.arg(bias), float(eps), _ext.arg(y), _ext.arg(mean), _ext.arg(var),
           _ext.arg(_workspace(x)), _ext.threads(), _ext.simd(), _ext.stream(x))
    return y, mean, var


def _backward_impl(kernel, grad: Tensor, x: Tensor, weight: Tensor, bias: Tensor, mean: Tensor, var: Tensor,
                   eps: float) -> tuple[Tensor, Tensor, Tensor]:
    grad, x = _ext.dense(grad), _ext.dense(x)
    weight, bias, mean, var = (_ext.dense(t) for t in (weight, bias, mean, var))
    C = x.shape[-1]
    dx, dw, db = torch.empty_like(x), x.new_empty((C,)), x.new_empty((C,))
    kernel(_ext.arg(grad), _ext.arg(x), _ext.arg(weight), _ext.arg(bias), _ext.arg(mean), _ext.arg(var), float(eps),
           _ext.arg(dx), _ext.arg(dw), _ext.arg(db), _ext.arg(_workspace(x)), _ext.threads(), _ext.simd(),
           _ext.stream(x))
    return dx, dw, db


def _pooled_shape(x: Tensor) -> tuple[int, int, int, int]:
    N, H, W, C = x.shape
    return (N, H // 2, W // 2, C)


@torch.library.custom_op("orbitcore::batch_norm_relu_forward", mutates_args=())
def _bnr_forward(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """x (M, C) real -> (y (M, C), batch mean (C,), biased batch variance (C,))."""
    return _forward_impl(_ext.C.batch_norm_relu_forward, x, weight, bias, eps, x.shape)


@torch.library.custom_op("orbitcore::batch_norm_relu_pool2_forward", mutates_args=())
def _bnrp_forward(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """x (N, H, W, C) real -> (y (N, H//2, W//2, C) after 2×2 max pooling, batch mean, biased variance)."""
    return _forward_impl(_ext.C.batch_norm_relu_pool2_forward, x, weight, bias, eps, _pooled_shape(x))


@_bnr_forward.register_fake
def _(x, weight, bias, eps):
    C = x.shape[1]
    return x.new_empty(x.shape), x.new_empty((C,)), x.new_empty((C,))


@_bnrp_forward.register_fake
def _(x, weight, bias, eps):
    C = x.shape[3]
    return x.new_empty(_pooled_shape(x)), x.new_empty((C,)), x.new_empty((C,))


@torch.library.custom_op("orbitcore::batch_norm_relu_backward", mutates_args=())
def _bnr_backward(grad: Tensor, x: Tensor, weight: Tensor, bias: Tensor, mean: Tensor, var: Tensor,
                  eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """-> (grad_x (M, C), grad_weight (C,), grad_bias (C,))."""
    return _backward_impl(_ext.C.batch_norm_relu_backward, grad, x, weight, bias, mean, var, eps)


@torch.library.custom_op("orbitcore::batch_norm_relu_pool2_backward", mutates_args=())
def _bnrp_backward(grad: Tensor, x: Tensor, weight: Tensor, bias: Tensor, mean: Tensor, var: Tensor,
                   eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """grad (N, H//2, W//2, C) -> (grad_x (N, H, W, C), grad_weight (C,), grad_bias (C,))."""
    return _backward_impl(_ext.C.batch_norm_relu_pool2_backward, grad, x, weight, bias, mean, var, eps)


def _backward_fake(grad, x, weight, bias, mean, var, eps):
    C = x.shape[-1]
    return x.new_empty(x.shape), x.new_empty((C,)), x.new_empty((C,))


_bnr_backward.register_fake(_backward_fake)
_bnrp_backward.register_fake(_backward_fake)


def _bnr_setup(ctx, inputs, output):
    x, weight, bias, eps = inputs
    _, mean, var = output
    ctx.save_for_backward(x, weight, bias, mean, var)
    ctx.eps = eps
    ctx.mark_non_differentiable(mean, var)


def _autograd_backward(backward_op):
    def bwd(ctx, grad_y, grad_mean, grad_var):
        x, weight, bias, mean, var = ctx.saved_tensors
        if grad_y is None:
            return None, None, None, None
        dx, dw, db = backward_op(grad_y, x, weight, bias, mean, var, ctx.eps)
        return dx, dw, db, None
    return bwd


def _no_double_backward(ctx, *grads):
    raise RuntimeError("orbitcore: double backward (second derivatives) through batch_norm_relu is not "
                       "supported; use torch.relu(torch.nn.functional.batch_norm(...)) where you need them")


def _no_double_setup(ctx, inputs, output):
    pass


torch.library.register_autograd("orbitcore::batch_norm_relu_forward",
                                _autograd_backward(torch.ops.orbitcore.batch_norm_relu_backward),
                                setup_context=_bnr_setup)
torch.library.register_autograd("orbitcore::batch_norm_relu_pool2_forward",
                                _autograd_backward(torch.ops.orbitcore.batch_norm_relu_pool2_backward),
                                setup_context=_bnr_setup)
for _name in ("batch_norm_relu_backward", "batch_norm_relu_pool2_backward"):
    torch.library.register_autograd(f"orbitcore::{_name}", _no_double_backward, setup_context=_no_double_setup)


def _check(x: Tensor, running_mean, running_var, weight, bias, momentum, eps, fn: str = "batch_norm_relu") -> None:
    if not isinstance(x, Tensor) or x.dim() < 2:
        fail(fn, f"x must be a tensor of shape (N, C, ...), got {tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    if x.dtype not in (torch.float32, torch.float64):
        fail(fn, f"x must be float32 or float64, got {x.dtype}")
    C = x.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight), ("bias", bias)):
        if t is None:
            continue
        if not isinstance(t, Tensor) or t.shape != (C,):
            fail(fn, f"{name} must have shape (C,) = ({C},), got {tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__}")
        if t.device != x.device:
            fail(fn, f"{name} must be on x's device ({x.device}), got {t.device}")
    if (running_mean is None) != (running_var is None):
        fail(fn, "running_mean and running_var must be given together")
    if not (isinstance(eps, (int, float)) and eps > 0):
        fail(fn, f"eps must be a positive number, got {eps!r}")
    if not (isinstance(momentum, (int, float)) and 0 <= momentum <= 1):
        fail(fn, f"momentum must be a number in [0, 1], got {momentum!r}")


def batch_norm_relu(x: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
                    weight: Tensor | None = None, bias: Tensor | None = None, training: bool = False,
                    momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """``relu(torch.nn.functional.batch_norm(x, running_mean, running_var, weight, bias, training,
    momentum, eps))``, fused in training mode.

    Args:
        x: activations ``(N, C, ...)`` (float32 or float64; channels-last is read without a copy).
        running_mean, running_var: ``(C,)`` running estimates (None: none kept). In training
            mode they are updated in place: ``r ← (1 − momentum) r + momentum · s`` with the
            batch mean and the *unbiased* batch variance, as PyTorch does. In evaluation mode
            they normalise ``x``.
        weight, bias: the affine ``γ, β`` ``(C,)`` (None: 1 and 0).
        training: batch statistics (fused kernel) or running statistics (plain PyTorch).
        momentum: in ``[0, 1]`` (``nn.BatchNorm``'s cumulative average is ``1/num_batches``).
        eps: added to the variance.

    Returns:
        ``(N, C, ...)``, channels-last when ``x`` is 4-D, ``x``'s dtype and device.
    """
    _check(x, running_mean, running_var, weight, bias, momentum, eps)
    if not training:
        if running_mean is None:
            fail("batch_norm_relu", "evaluation mode needs running_mean and running_var")
        return torch.relu(torch.nn.functional.batch_norm(x, running_mean, running_var, weight, bias, False, 0.0, eps))
    xl = x.movedim(1, -1)  # (N, ..., C): a view without a copy for channels-last x
    C = x.shape[1]
    y = _train(torch.ops.orbitcore.batch_norm_relu_forward, xl.reshape(-1, C), running_mean, running_var, weight,
               bias, momentum, eps, "batch_norm_relu")
    return y.view(xl.shape).movedim(-1, 1)


def batch_norm_relu_max_pool2d(x: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
                               weight: Tensor | None = None, bias: Tensor | None = None, training: bool = False,
                               momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """``max_pool2d(batch_norm_relu(x, ...), 2)``: 2×2 max pooling, stride 2, no padding (an odd
    last row or column is dropped), fused with the batch norm and ReLU in training mode.

    The fused kernel writes only the pooled output and keeps no pooling indices: the backward
    recomputes each window's maximum from ``x`` and routes the gradient to its first maximum in
    row-major order, as ``max_pool2d`` does. (In a window whose two largest values agree to
    rounding, the recomputed choice may be the other of the two; NaN inputs are not propagated
    the way ``max_pool2d`` propagates them.)

    Args:
        x: activations ``(N, C, H, W)`` with ``H, W >= 2`` (float32 or float64; channels-last is
            read without a copy).
        running_mean, running_var, weight, bias, training, momentum, eps: as :func:`batch_norm_relu`.

    Returns:
        ``(N, C, H // 2, W // 2)``, channels-last, ``x``'s dtype and device.
    """
    fn = "batch_norm_relu_max_pool2d"
    _check(x, running_mean, running_var, weight, bias, momentum, eps, fn)
    if x.dim() != 4 or x.shape[2] < 2 or x.shape[3] < 2:
        fail(fn, f"x must have shape (N, C, H, W) with H, W >= 2, got {tuple(x.shape)}")
    if not training:
        if running_mean is None:
            fail(fn, "evaluation mode needs running_mean and running_var")
        y = torch.relu(torch.nn.functional.batch_norm(x, running_mean, running_var, weight, bias, False, 0.0, eps))
        return torch.nn.functional.max_pool2d(y, 2)
    xl = x.permute(0, 2, 3, 1)  # (N, H, W, C): a view without a copy for channels-last x
    y = _train(torch.ops.orbitcore.batch_norm_relu_pool2_forward, xl, running_mean, running_var, weight, bias,
               momentum, eps, fn)
    return y.permute(0, 3, 1, 2)


def _train(forward_op, xl: Tensor, running_mean, running_var, weight, bias, momentum, eps, fn: str) -> Tensor:
    """The training-mode call: ``xl`` has the channels last; running estimates updated in place."""
    C = xl.shape[-1]
    M = xl.numel() // C
    if M < 2:
        fail(fn, f"training needs more than one value per channel, got {M} per channel")
    w = weight if weight is not None else xl.new_ones((C,))
    b = bias if bias is not None else xl.new_zeros((C,))
    y, mean, var = forward_op(xl, w.to(xl.dtype), b.to(xl.dtype), float(eps))
    if running_mean is not None and momentum > 0:
        with torch.no_grad():
            running_mean.lerp_(mean.to(running_mean.dtype), momentum)
            running_var.lerp_((var * (M / (M - 1))).to(running_var.dtype), momentum)
    return y
