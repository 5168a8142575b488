"""Custom op of the sine family: the SIREN activation ``sin(w0 · x)``.

``sine_activation(x, w0)`` is ``torch.sin(w0 * x)`` in one kernel pass forward, and its backward,
``grad · w0 · cos(w0 · x)``, in one more (cos recomputed from ``x``; nothing else is kept). PyTorch
runs the same as two passes forward and three backward, and its float ``sin`` is several times
slower than this kernel on an AVX2 core. Every SIREN layer (:class:`orbitcore.nn.SineLayer`, so
FourierNet in :mod:`orbitcore.amortized` and :mod:`orbitcore.mom.cryoem`) uses it.

Element math: ``src/orbitcore/sine.hpp`` (Cody–Waite reduction to ``[−π/4, π/4]`` and Taylor
polynomials, in the tensor's own precision; arguments beyond ``|w0 · x| ≈ 6.4e3`` (float32) or
``1.6e6`` (float64), and non-finite ones, take the C library's ``sin``/``cos`` in double).
Differentiable once, to ``x``.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import _ext
from .._validate import check_torch_tensor, fail

__all__ = ["sine_activation"]


@torch.library.custom_op("orbitcore::sine_forward", mutates_args=())
def _sine_forward(x: Tensor, w0: float) -> Tensor:
    """x real (any shape) -> sin(w0 · x)."""
    x = _ext.dense(x)
    y = torch.empty_like(x)
    _ext.C.sine_forward(_ext.arg(x), float(w0), _ext.arg(y), _ext.threads(), _ext.simd(), _ext.stream(x))
    return y


@_sine_forward.register_fake
def _(x, w0):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("orbitcore::sine_backward", mutates_args=())
def _sine_backward(grad: Tensor, x: Tensor, w0: float) -> Tensor:
    """-> grad · w0 · cos(w0 · x)."""
    grad, x = _ext.dense(grad), _ext.dense(x)
    dx = torch.empty_like(x)
    _ext.C.sine_backward(_ext.arg(grad), _ext.arg(x), float(w0), _ext.arg(dx), _ext.threads(), _ext.simd(),
                         _ext.stream(x))
    return dx


@_sine_backward.register_fake
def _(grad, x, w0):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("orbitcore::sine_", mutates_args=("x",))
def _sine_(x: Tensor, w0: float) -> None:
    """In place, x <- sin(w0 · x), x contiguous: the no-gradient path of SineLayer (the layer's
    pre-activation is a temporary, so the activation needs no second array)."""
    if not x.is_contiguous():
        raise ValueError("sine_: x must be contiguous")
    _ext.C.sine_forward(_ext.arg(x), float(w0), _ext.arg(x), _ext.threads(), _ext.simd(), _ext.stream(x))


@_sine_.register_fake
def _(x, w0):
    return None


def _setup(ctx, inputs, output):
    x, w0 = inputs
    ctx.save_for_backward(x)
    ctx.w0 = w0


def _backward(ctx, grad):
    (x,) = ctx.saved_tensors
    return _sine_backward(grad, x, ctx.w0), None


_sine_forward.register_autograd(_backward, setup_context=_setup)

_KERNEL_DTYPES = (torch.float32, torch.float64)


def kernel_supports(x: Tensor) -> bool:
    """Whether :func:`sine_activation` runs ``x`` on the compiled kernels (float32/float64 on the
    CPU, or on a GPU with orbitcore's CUDA build); :class:`orbitcore.nn.SineLayer` falls back to
    ``torch.sin`` otherwise (half precision, other devices)."""
    if x.dtype not in _KERNEL_DTYPES:
        return False
    return x.device.type == "cpu" or (x.device.type == "cuda" and _ext.built_with_cuda())


def sine_activation(x: Tensor, w0: float = 30.0) -> Tensor:
    """The SIREN activation ``sin(w0 · x)``, elementwise, differentiable once (to ``x``).

    Args:
        x: real tensor of any shape, float32 or float64, on the CPU (or a GPU with the CUDA
            build); non-contiguous inputs are copied once.
        w0: the frequency factor, a finite number (SIREN's ω₀; 30 by default).

    Returns:
        ``sin(w0 · x)``, ``x``'s shape and dtype, contiguous. Accurate to about an ulp of the
        dtype against ``torch.sin(w0 * x.double())``.
    """
    fn = "sine_activation"
    check_torch_tensor(fn, "x", x)
    if x.dtype not in _KERNEL_DTYPES:
        fail(fn, f"x must be a float32 or float64 tensor, got dtype {x.dtype}", TypeError)
    if isinstance(w0, bool) or not isinstance(w0, (int, float)) or not math.isfinite(float(w0)):
        fail(fn, f"w0 must be a finite number, got {w0!r}")
    return _sine_forward(x, float(w0))
