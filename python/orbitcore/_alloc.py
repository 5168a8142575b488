"""Process-wide allocator setting for long CPU runs (used by the ``orbitcore`` command)."""
from __future__ import annotations

import ctypes
import sys

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4
_TRIM = 2**31 - 1          # keep up to 2 GiB of freed memory at the heap's top
_PAD = 256 * 2**20         # grow the heap 256 MiB at a time


def tune_allocator() -> bool:
    """Keep freed memory in the process instead of handing it back to the OS (glibc only).

    Training on the CPU frees and reallocates the same activation buffers every step. glibc
    serves each buffer above 128 KiB–32 MiB with a fresh ``mmap`` and returns it with
    ``munmap``, so every step page-faults its buffers in again, zero-filled by the kernel. This
    turns ``mmap`` off for allocations and heap trimming up to 2 GiB, so the buffers are reused.
    Measured on the encoder's training step (``benchmarks/bench_amortized.py``'s first row, one
    thread, AMD EPYC): 6000–11000 page faults and 18–37 ms of system time per step gone, the
    step 1.10–1.26× faster in three paired process runs. The cost: the process keeps its peak
    heap until it exits, which is what a training run wants and a library must not impose,
    so the ``orbitcore`` command calls this (``ORBITCORE_TUNE_ALLOCATOR=0`` turns it off) and
    ``import orbitcore`` does not.

    Returns True if the settings were applied, False where there is no glibc ``mallopt``
    (macOS, Windows, musl): a no-op there.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_MAX, 0) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, _TRIM) == 1 and ok
    ok = mallopt(_M_TOP_PAD, _PAD) == 1 and ok
    return ok
