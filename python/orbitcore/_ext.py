"""Loading of the compiled core ``orbitcore._C`` and the glue every op uses to call it.

The kernels are torch-free: each op passes its tensors as plain descriptors
``(data_ptr, shape, strides, dtype, device_type, device_index)`` built by :func:`arg`, the
thread count for the CPU drivers and the CUDA stream for the CUDA drivers.
"""
from __future__ import annotations

import os

import torch

try:
    from . import _C as C  # noqa: N812
except ImportError as exc:  # pragma: no cover - exercised only on broken installs
    raise ImportError(
        "orbitcore's compiled extension orbitcore._C could not be loaded "
        f"({exc}). Install orbitcore with `pip install --no-build-isolation .` from a "
        "checkout (torch must be installed first), or run scripts/dev-build for a working tree."
    ) from exc

_DTYPES = {
    torch.float32: "float32",
    torch.float64: "float64",
    torch.complex64: "complex64",
    torch.complex128: "complex128",
    torch.int32: "int32",
    torch.int64: "int64",
    torch.uint8: "uint8",
    torch.bool: "bool",
}


def built_with_cuda() -> bool:
    """Whether this build of orbitcore contains the CUDA drivers."""
    return bool(C.built_with_cuda())


def cuda_available() -> bool:
    """True when orbitcore's CUDA kernels can run here: built with CUDA, and a GPU is visible.

    On a machine without a GPU (or a build without nvcc) this is False and every op runs on
    the CPU drivers.
    """
    return built_with_cuda() and C.cuda_device_count() > 0 and torch.cuda.is_available()


def arg(t: torch.Tensor | None):
    """Descriptor of a tensor for the binding (None stays None)."""
    if t is None:
        return None
    try:
        dtype = _DTYPES[t.dtype]
    except KeyError:
        raise TypeError(f"orbitcore kernels do not take dtype {t.dtype}") from None
    return (t.data_ptr(), tuple(t.shape), tuple(t.stride()), dtype, t.device.type, t.device.index or 0)


def dense(t: torch.Tensor) -> torch.Tensor:
    """Contiguous, with lazy conjugation/negation resolved: what the kernels read."""
    if t.is_complex():
        t = t.resolve_conj()
    return t.resolve_neg().contiguous()


def threads() -> int:
    """Threads for the CPU drivers: follows ``torch.get_num_threads()``."""
    return int(torch.get_num_threads())


def simd() -> str:
    """SIMD variant of the CPU kernels that come in several (moments, EM, norm):
    ``ORBITCORE_CPU_SIMD`` (auto|generic|avx2|avx512), default auto."""
    return os.environ.get("ORBITCORE_CPU_SIMD", "auto")


def stream(t: torch.Tensor) -> int:
    """The current CUDA stream of ``t``'s device as an integer handle (0 on the CPU)."""
    if t.device.type == "cuda":
        return int(torch.cuda.current_stream(t.device).cuda_stream)
    return 0
