"""Input validation and array interop shared by every public function.

Errors name the function, the argument, what was expected and what was received, e.g.
``fourier_slice: rotations must have shape (B, 3, 3) or (3, 3), got (4, 3)``.
Public functions accept torch tensors, NumPy arrays and any ``__dlpack__`` array (CuPy) and
give results back in the kind of their main input.
"""
from __future__ import annotations

import math
import numbers
import os
import pathlib
from typing import Any, Sequence

import numpy as np
import torch


class OrbitcoreWarning(UserWarning):
    """Warnings raised by orbitcore (non-standard files, clamped parameters, ...)."""


def _shape(x) -> str:
    s = tuple(int(v) for v in x)
    return str(s) if len(s) != 1 else f"({s[0]},)"


def fail(fn: str, msg: str, exc: type[Exception] = ValueError):
    raise exc(f"{fn}: {msg}")


def to_tensor(x: Any, fn: str, name: str) -> tuple[torch.Tensor, str]:
    """Convert an array-like to a torch tensor without copying where possible.

    Returns (tensor, kind) with kind in {"torch", "numpy", "cupy", "dlpack"}.
    """
    if isinstance(x, torch.Tensor):
        return x, "torch"
    if isinstance(x, np.ndarray):
        if x.dtype.byteorder not in ("=", "|") and x.dtype.byteorder != ("<" if np.little_endian else ">"):
            x = x.astype(x.dtype.newbyteorder("="))
        if any(s < 0 for s in x.strides):
            x = np.ascontiguousarray(x)
        return torch.from_numpy(x), "numpy"
    if hasattr(x, "__dlpack__"):
        kind = "cupy" if type(x).__module__.split(".")[0] == "cupy" else "dlpack"
        return torch.from_dlpack(x), kind
    if isinstance(x, (numbers.Number, list, tuple)):
        try:  # through NumPy, so Python floats stay float64
            return torch.from_numpy(np.asarray(x)), "torch"
        except (TypeError, ValueError) as exc:
            fail(fn, f"{name} could not be converted to an array: {exc}", TypeError)
    fail(fn, f"{name} must be a torch.Tensor, numpy.ndarray or __dlpack__ array, got {type(x).__name__}",
         TypeError)


def from_tensor(t: torch.Tensor, kind: str):
    """Give a result back in the caller's array kind."""
    if kind == "torch":
        return t
    t = t.detach()
    if t.is_complex():
        t = t.resolve_conj()
    t = t.resolve_neg()
    if kind == "numpy":
        return t.cpu().numpy()
    if kind == "cupy":
        import cupy  # noqa: PLC0415

        return cupy.from_dlpack(t)
    return t


def check_ndim(fn: str, name: str, t: torch.Tensor, ndims: Sequence[int], layout: str) -> None:
    if t.dim() not in ndims:
        fail(fn, f"{name} must have shape {layout}, got {_shape(t.shape)}")


def check_floating(fn: str, name: str, t: torch.Tensor) -> None:
    if not t.is_floating_point():
        fail(fn, f"{name} must be a real floating-point array (float32 or float64), got {t.dtype}", TypeError)


def check_complex(fn: str, name: str, t: torch.Tensor, hint: str = "") -> None:
    if t.dtype not in (torch.complex64, torch.complex128):
        fail(fn, f"{name} must be complex64 or complex128{hint}, got {t.dtype}", TypeError)


def check_same_device(fn: str, ref_name: str, ref: torch.Tensor, name: str, t: torch.Tensor) -> None:
    if t.device != ref.device:
        fail(fn, f"{name} must be on the same device as {ref_name} ({ref.device}), got {t.device}")


def check_kernel_device(fn: str, name: str, t: torch.Tensor) -> None:
    """The device must be one orbitcore has kernels for in this build."""
    from ._ext import built_with_cuda  # noqa: PLC0415

    if t.device.type == "cpu":
        return
    if t.device.type == "cuda":
        if not built_with_cuda():
            fail(fn, f"{name} is on {t.device}, but this orbitcore build has no CUDA kernels "
                     "(reinstall with nvcc on PATH, or ORBITCORE_CUDA=ON)", RuntimeError)
        return
    fail(fn, f"{name} must be on a CPU or CUDA device, got {t.device}")


def checking() -> bool:
    """Whether value checks (finite, orthogonal, ...) should run: not while torch.compile traces."""
    return not torch.compiler.is_compiling()


def check_finite(fn: str, name: str, t: torch.Tensor) -> None:
    if checking() and t.numel() and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        fail(fn, f"{name} must be finite, got {bad} non-finite value(s) (NaN or inf)")


def check_rotations(fn: str, name: str, R: torch.Tensor, atol: float | None = None) -> None:
    """(..., 3, 3) finite and orthogonal with det +1 to a tolerance (1e-3 float32, 1e-6 float64)."""
    if R.dim() < 2 or tuple(R.shape[-2:]) != (3, 3):
        fail(fn, f"{name} must have shape (..., 3, 3), got {_shape(R.shape)}")
    if not checking() or R.numel() == 0:
        return
    check_finite(fn, name, R)
    if atol is None:
        atol = 1e-3 if R.dtype in (torch.float32, torch.float16, torch.bfloat16) else 1e-6
    Rd = R.detach().reshape(-1, 3, 3).to(torch.float64)
    eye = torch.eye(3, dtype=torch.float64, device=Rd.device)
    dev = (Rd.transpose(-1, -2) @ Rd - eye).abs().amax(dim=(-1, -2))
    worst = float(dev.max())
    if worst > atol:
        i = int(dev.argmax())
        fail(fn, f"{name} must be rotation matrices (R^T R = I within {atol:g}); "
                 f"matrix {i} deviates by {worst:.3g}")
    det = torch.linalg.det(Rd)
    if bool((det < 0).any()):
        i = int((det < 0).nonzero()[0, 0])
        fail(fn, f"{name} must be proper rotations (det = +1); matrix {i} has det {float(det[i]):.3g} "
                 "(a reflection)")


def check_int(fn: str, name: str, v: Any, minimum: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, (numbers.Integral, np.integer)):
        fail(fn, f"{name} must be an integer, got {type(v).__name__} {v!r}", TypeError)
    v = int(v)
    if minimum is not None and v < minimum:
        fail(fn, f"{name} must be >= {minimum}, got {v}")
    return v


def check_float(fn: str, name: str, v: Any, minimum: float | None = None, positive: bool = False,
                allow_none: bool = False) -> float | None:
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, (numbers.Real, np.floating, np.integer)):
        fail(fn, f"{name} must be a real number, got {type(v).__name__} {v!r}", TypeError)
    v = float(v)
    if not math.isfinite(v):
        fail(fn, f"{name} must be finite, got {v}")
    if positive and v <= 0:
        fail(fn, f"{name} must be > 0, got {v}")
    if minimum is not None and v < minimum:
        fail(fn, f"{name} must be >= {minimum}, got {v}")
    return v


def check_path(fn: str, name: str, v: Any, what: str = "file") -> pathlib.Path:
    """A ``str`` or ``os.PathLike`` path as a :class:`pathlib.Path` (``what``: "file" or "folder")."""
    if not isinstance(v, (str, os.PathLike)):
        fail(fn, f"{name} must be a {what} path (str or os.PathLike), got {type(v).__name__}", TypeError)
    return pathlib.Path(v)


def check_torch_tensor(fn: str, name: str, x: Any, layout: str = "", allow_none: bool = False) -> Any:
    """``x`` itself if it is a ``torch.Tensor`` (or ``None`` with ``allow_none``), else a TypeError.

    For the functions that take only tensors (the differentiable ones, and those called on tensors
    inside a training step); ``layout`` (e.g. ``"(B, n, n)"``) is named in the message.
    """
    if x is None and allow_none:
        return None
    if not isinstance(x, torch.Tensor):
        what = "a torch.Tensor" + (f" {layout}" if layout else "") + (" or None" if allow_none else "")
        fail(fn, f"{name} must be {what}, got {type(x).__name__}", TypeError)
    return x


def real_array(fn: str, name: str, x: Any, floating: bool = False, torch_only: bool = False) -> torch.Tensor:
    """``x`` as a real tensor: not complex, not bool, and with ``floating`` a float dtype.

    Any array kind :func:`to_tensor` takes is accepted unless ``torch_only``.
    """
    if torch_only:
        check_torch_tensor(fn, name, x)
        t = x
    else:
        t = to_tensor(x, fn, name)[0]
    if t.is_complex() or t.dtype == torch.bool or (floating and not t.is_floating_point()):
        kind = "a real floating-point" if floating else "a real"
        fail(fn, f"{name} must be {kind} {'torch.Tensor' if torch_only else 'array'}, got {t.dtype}", TypeError)
    return t
