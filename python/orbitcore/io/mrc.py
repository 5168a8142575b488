"""MRC/MRCS files via mrcfile. Writes are atomic (temporary file in the target directory,
then rename), so an interrupted write never leaves a partial file."""
from __future__ import annotations

import os
import pathlib
import tempfile

import mrcfile
import numpy as np

from .._validate import fail, from_tensor, to_tensor

__all__ = ["read_mrc", "write_mrc", "atomic_path"]


class atomic_path:  # noqa: N801 - used as a context manager
    """``with atomic_path(path) as tmp:`` write to ``tmp``; on success it is renamed to ``path``,
    on error it is removed."""

    def __init__(self, path, suffix: str | None = None):
        self.path = pathlib.Path(path)
        self.suffix = suffix if suffix is not None else self.path.suffix

    def __enter__(self) -> pathlib.Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=self.suffix + ".tmp", dir=self.path.parent)
        os.close(fd)
        self.tmp = pathlib.Path(tmp)
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)
        return False


def write_mrc(path, data, voxel_size: float = 1.0, *, overwrite: bool = True) -> pathlib.Path:
    """Write a real ``(D, D, D)`` volume or ``(N, n, n)`` stack (``.mrcs``) as float32, atomically.

    ``voxel_size`` in Å is stored in the header."""
    fn = "write_mrc"
    t, _ = to_tensor(data, fn, "data")
    if t.is_complex():
        fail(fn, "data must be real", TypeError)
    arr = np.ascontiguousarray(from_tensor(t, "numpy"), dtype=np.float32)
    if arr.ndim not in (2, 3):
        fail(fn, f"data must be 2-D or 3-D, got shape {arr.shape}")
    path = pathlib.Path(path)
    if path.exists() and not overwrite:
        fail(fn, f"{path} exists (pass overwrite=True)", FileExistsError)
    with atomic_path(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as m:
            m.set_data(arr)
            if path.suffix.lower() == ".mrcs" and arr.ndim == 3:
                m.set_image_stack()
            m.voxel_size = float(voxel_size)
    return path


def read_mrc(path) -> tuple[np.ndarray, float]:
    """Read an MRC volume or stack: ``(data float32, voxel size in Å)``."""
    path = pathlib.Path(path)
    if not path.is_file():
        fail("read_mrc", f"{path}: no such file", FileNotFoundError)
    with mrcfile.open(path, permissive=True) as m:
        if m.data is None:
            fail("read_mrc", f"{path}: not a readable MRC file (header or data invalid)")
        data = np.asarray(m.data, dtype=np.float32).copy()
        vs = float(m.voxel_size.x)
    return data, vs
