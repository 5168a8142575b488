"""MRC/MRCS files via ``mrcfile``.

* Reading: :func:`read_mrc` (whole file), :func:`open_stack` (lazy, memory-mapped, read in
  chunks; picklable, so it works in DataLoader workers), :func:`mrc_info` (header only).
  Modes 0 (int8), 1 (int16), 2 (float32), 6 (uint16) and 12 (float16) are read; data come out
  as float32 unless asked otherwise. Every file's header is checked against its size first:
  a truncated or corrupt file raises a clear ``ValueError`` naming the file and what is wrong
  (never a crash, never silently short data). Non-standard but readable headers (no ``MAP``
  ID, zero machine stamp, as many files in the wild) give an :class:`OrbitcoreWarning`.
* Writing: :func:`write_mrc` and :class:`MRCStackWriter` (streaming, memory-mapped) write
  atomically: a temporary file in the target directory renamed on success, removed on error.

Voxel size: Å, from the header's cell dimensions; a header voxel size of 0 (unset) is
reported as ``None``.
"""
from __future__ import annotations

import os
import pathlib
import tempfile
import warnings

import mrcfile
import mrcfile.utils
import numpy as np

from .._validate import OrbitcoreWarning, check_path, fail, from_tensor, to_tensor

__all__ = ["read_mrc", "write_mrc", "atomic_path", "open_stack", "mrc_info", "MRCInfo", "MRCStack",
           "MRCStackWriter"]

_MODES = {0: "int8", 1: "int16", 2: "float32", 6: "uint16", 12: "float16"}
_MODE_NAMES = {3: "complex int16", 4: "complex float32", 101: "4-bit packed"}


class atomic_path:  # noqa: N801 - used as a context manager
    """``with atomic_path(path) as tmp:`` write to ``tmp``; on success it is renamed to ``path``,
    on error it is removed."""

    def __init__(self, path, suffix: str | None = None):
        self.path = check_path("atomic_path", "path", path)
        if suffix is not None and not isinstance(suffix, str):
            fail("atomic_path", f"suffix must be a str or None, got {type(suffix).__name__}", TypeError)
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


class MRCInfo:
    """Header facts of an MRC file (validated against the file size).

    Attributes: ``path``, ``shape`` (``(nz, ny, nx)``; a 2-D file has ``nz = 1``), ``mode``,
    ``dtype`` (NumPy dtype with the file's byte order), ``data_offset`` (bytes), ``voxel_size``
    (Å, ``None`` when the header says 0), ``is_stack`` (ispg 0 / ``.mrcs``), ``warnings``
    (non-standard header findings, already emitted as OrbitcoreWarning).
    """

    def __init__(self, path, shape, mode, dtype, data_offset, voxel_size, is_stack, notes):
        self.path = path
        self.shape = shape
        self.mode = mode
        self.dtype = dtype
        self.data_offset = data_offset
        self.voxel_size = voxel_size
        self.is_stack = is_stack
        self.warnings = notes

    @property
    def n_images(self) -> int:
        """Number of 2-D sections (images of a stack, slices of a volume)."""
        return self.shape[0]

    def __repr__(self) -> str:
        return (f"MRCInfo({str(self.path)!r}, shape={self.shape}, mode={self.mode}, "
                f"voxel_size={self.voxel_size}, is_stack={self.is_stack})")


def mrc_info(path, *, fn: str = "mrc_info", warn: bool = True) -> MRCInfo:
    """Read and check an MRC header; raise ``ValueError`` for corrupt, truncated or
    unsupported files, warn (:class:`OrbitcoreWarning`) for non-standard ones."""
    path = check_path(fn, "path", path)
    if not path.is_file():
        fail(fn, f"{path}: no such file", FileNotFoundError)
    size = path.stat().st_size
    if size < 1024:
        fail(fn, f"{path}: not an MRC file (it has {size} bytes, less than the 1024-byte MRC header)")
    caught = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with mrcfile.open(path, permissive=True, header_only=True) as m:
                h = m.header.copy()
                byte_order = m.header.mode.dtype.byteorder
    except Exception as exc:  # mrcfile raises ValueError/OSError on unreadable headers
        fail(fn, f"{path}: could not read the MRC header ({exc})")
    notes = []
    for w in caught:
        msg = str(w.message)
        if "Map ID string" in msg:
            notes.append(f"no map ID (found {bytes(h.map)!r}, expected b'MAP ')")
        elif "machine stamp" in msg.lower():
            big = byte_order == ">" or (byte_order == "=" and not np.little_endian)
            stamp = " ".join(f"0x{int(b):02x}" for b in h.machst)
            notes.append(f"unrecognised machine stamp {stamp} (read as {'big' if big else 'little'}-endian)")
        else:
            notes.append(msg)
    nx, ny, nz, mode = int(h.nx), int(h.ny), int(h.nz), int(h.mode)
    if nx <= 0 or ny <= 0 or nz <= 0:
        fail(fn, f"{path}: corrupt MRC header: dimensions (nx, ny, nz) = ({nx}, {ny}, {nz}) must be positive")
    if mode not in _MODES:
        what = _MODE_NAMES.get(mode, "unknown")
        fail(fn, f"{path}: unsupported MRC mode {mode} ({what}); orbitcore reads modes "
                 f"{', '.join(f'{k} ({v})' for k, v in _MODES.items())}")
    dtype = np.dtype(_MODES[mode]).newbyteorder(byte_order if byte_order in "<>" else "=")
    nsymbt = int(h.nsymbt)
    if nsymbt < 0:
        fail(fn, f"{path}: corrupt MRC header: extended header size nsymbt = {nsymbt} is negative")
    offset = 1024 + nsymbt
    frame = nx * ny * dtype.itemsize
    expected = offset + nz * frame
    if size < expected:
        whole = max(0, (size - offset) // frame)
        fail(fn, f"{path}: truncated MRC file: the header promises {nz} section(s) of {ny}x{nx} "
                 f"{dtype.name} ({expected} bytes) but the file has {size} bytes "
                 f"({whole} complete section(s))")
    if size > expected:
        notes.append(f"{size - expected} trailing bytes after the data (ignored)")
    vs = float(h.cella.x) / int(h.mx) if int(h.mx) > 0 else 0.0
    voxel = vs if vs > 0 and np.isfinite(vs) else None
    is_stack = int(h.ispg) == 0 and nz > 1 or path.suffix.lower() == ".mrcs"
    if warn and notes:
        warnings.warn(f"{path}: non-standard MRC header: " + "; ".join(notes) + ". Data read anyway.",
                      OrbitcoreWarning, stacklevel=3)
    return MRCInfo(path, (nz, ny, nx), mode, dtype, offset, voxel, is_stack, notes)


def _memmap(info: MRCInfo) -> np.memmap:
    return np.memmap(info.path, dtype=info.dtype, mode="r", offset=info.data_offset, shape=info.shape)


def read_mrc(path, *, dtype=np.float32) -> tuple[np.ndarray, float | None]:
    """Read an MRC volume or stack: ``(data, voxel size in Å or None)``.

    ``data`` is ``(nz, ny, nx)`` (``(ny, nx)`` for a single 2-D image) in ``dtype``
    (float32 by default; ``None`` keeps the file's type, e.g. float16 for mode 12)."""
    info = mrc_info(path, fn="read_mrc")
    data = np.array(_memmap(info))
    data = data.astype(info.dtype.newbyteorder("=") if dtype is None else dtype, copy=False)
    if info.shape[0] == 1 and not info.is_stack:
        data = data[0]
    return data, info.voxel_size


class MRCStack:
    """Lazy, memory-mapped read access to an MRC stack (or the sections of a volume).

    ``len(stack)`` images of ``stack.shape[1:]``; ``stack[i]``, ``stack[a:b]``,
    ``stack[[i, j, ...]]`` read only those images (float32 by default). :meth:`chunks` iterates
    in blocks. The memory map is opened on first access in each process and dropped when
    pickled, so stacks can be handed to DataLoader workers.
    """

    def __init__(self, path, *, dtype=np.float32, _fn: str = "MRCStack"):
        self.info = mrc_info(path, fn=_fn)
        self.path = self.info.path
        self.dtype = dtype
        self._mm = None

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_mm"] = None
        return d

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.info.shape

    @property
    def voxel_size(self) -> float | None:
        return self.info.voxel_size

    def __len__(self) -> int:
        return self.info.shape[0]

    def _map(self) -> np.memmap:
        if self._mm is None:
            self._mm = _memmap(self.info)
        return self._mm

    def __getitem__(self, idx) -> np.ndarray:
        n = len(self)
        if isinstance(idx, (int, np.integer)):
            i = int(idx)
            if not -n <= i < n:
                fail("MRCStack", f"{self.path}: image index {i} is out of range (the file holds {n} images)",
                     IndexError)
        elif not isinstance(idx, slice):
            ii = np.asarray(idx)
            if ii.dtype.kind not in "iu":
                fail("MRCStack", f"index must be an int, a slice or integer indices, got {ii.dtype}", TypeError)
            if ii.size and (ii.max() >= n or ii.min() < -n):
                bad = int(ii[(ii >= n) | (ii < -n)][0])
                fail("MRCStack", f"{self.path}: image index {bad} is out of range (the file holds {n} images)",
                     IndexError)
            idx = ii
        return np.asarray(self._map()[idx]).astype(self.dtype)

    def chunks(self, chunk_size: int = 1024):
        """Yield ``(start, images)`` blocks of up to ``chunk_size`` images, in order."""
        for s in range(0, len(self), chunk_size):
            yield s, self[s:s + chunk_size]

    def close(self) -> None:
        self._mm = None

    def __repr__(self) -> str:
        return f"MRCStack({str(self.path)!r}, shape={self.shape}, voxel_size={self.voxel_size})"


def open_stack(path, *, dtype=np.float32) -> MRCStack:
    """Open an MRC/MRCS file for lazy reading (:class:`MRCStack`); the header is checked now."""
    return MRCStack(path, dtype=dtype, _fn="open_stack")


def _array_arg(fn: str, data) -> np.ndarray:
    t, _ = to_tensor(data, fn, "data")
    if t.is_complex():
        fail(fn, "data must be real", TypeError)
    arr = from_tensor(t, "numpy")
    if arr.ndim not in (2, 3):
        fail(fn, f"data must be 2-D (ny, nx) or 3-D (nz, ny, nx), got shape {arr.shape}")
    return arr


def _out_dtype(fn: str, dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float16)):
        fail(fn, f"dtype must be float32 (mode 2) or float16 (mode 12), got {dt}", TypeError)
    return dt


def write_mrc(path, data, voxel_size: float | None = 1.0, *, overwrite: bool = True,
              dtype=np.float32, stack: bool | None = None) -> pathlib.Path:
    """Write a real ``(D, D, D)`` volume, ``(N, n, n)`` stack or ``(n, n)`` image, atomically.

    Args:
        voxel_size: Å, stored in the header (``None`` or 0: unset).
        dtype: ``float32`` (mode 2, default) or ``float16`` (mode 12).
        stack: mark a 3-D array as an image stack (default: when the suffix is ``.mrcs``).
    """
    fn = "write_mrc"
    arr = np.ascontiguousarray(_array_arg(fn, data), dtype=_out_dtype(fn, dtype))
    if not np.isfinite(arr).all():
        fail(fn, "data must be finite (NaN or inf found)")
    path = check_path(fn, "path", path)
    if path.exists() and not overwrite:
        fail(fn, f"{path} exists (pass overwrite=True)", FileExistsError)
    if voxel_size is not None and (not np.isfinite(voxel_size) or voxel_size < 0):
        fail(fn, f"voxel_size must be a finite number >= 0 (Å) or None, got {voxel_size!r}")
    is_stack = (path.suffix.lower() == ".mrcs") if stack is None else bool(stack)
    with atomic_path(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as m:
            m.set_data(arr)
            if is_stack and arr.ndim == 3:
                m.set_image_stack()
            m.voxel_size = float(voxel_size or 0.0)
    return path


class MRCStackWriter:
    """Stream images into an MRCS file without holding the stack in memory, atomically.

    ::

        with MRCStackWriter("particles.mrcs", n_images, box, voxel_size=1.5) as w:
            for start, chunk in ...:
                w.write(start, chunk)          # (b, box, box)

    The file is created (memory-mapped) under a temporary name and renamed on a clean exit
    after every image was written; on an exception, or if images are missing, it is removed.
    """

    def __init__(self, path, n_images: int, box: int, *, voxel_size: float | None = 1.0, dtype=np.float32,
                 overwrite: bool = True):
        fn = "MRCStackWriter"
        from .._validate import check_int  # noqa: PLC0415

        self.path = check_path(fn, "path", path)
        self.n = check_int(fn, "n_images", n_images, minimum=1)
        self.box = check_int(fn, "box", box, minimum=1)
        self.dtype = _out_dtype(fn, dtype)
        self.voxel_size = voxel_size
        if self.path.exists() and not overwrite:
            fail(fn, f"{self.path} exists (pass overwrite=True)", FileExistsError)
        self._written = np.zeros(self.n, dtype=bool)
        self._atomic = None
        self._mrc = None

    def __enter__(self) -> "MRCStackWriter":
        self._atomic = atomic_path(self.path)
        tmp = self._atomic.__enter__()
        try:
            mode = 2 if self.dtype == np.float32 else 12
            self._mrc = mrcfile.new_mmap(tmp, shape=(self.n, self.box, self.box), mrc_mode=mode, overwrite=True)
            self._mrc.set_image_stack()
            self._mrc.voxel_size = float(self.voxel_size or 0.0)
        except BaseException as exc:
            self._atomic.__exit__(type(exc), exc, None)
            raise
        return self

    def write(self, start: int, images) -> None:
        """Write ``images`` ``(b, box, box)`` at positions ``start .. start + b - 1``."""
        fn = "MRCStackWriter.write"
        if self._mrc is None:
            fail(fn, "the writer is not open (use it in a `with` block)", RuntimeError)
        arr = _array_arg(fn, images)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.shape[1:] != (self.box, self.box):
            fail(fn, f"images must have shape (b, {self.box}, {self.box}), got {arr.shape}")
        if not 0 <= start <= self.n - arr.shape[0]:
            fail(fn, f"images {start}..{start + arr.shape[0] - 1} do not fit in a stack of {self.n}")
        if not np.isfinite(arr).all():
            fail(fn, "images must be finite (NaN or inf found)")
        self._mrc.data[start:start + arr.shape[0]] = arr.astype(self.dtype)
        self._written[start:start + arr.shape[0]] = True

    def __exit__(self, exc_type, exc, tb):
        err = exc
        try:
            if self._mrc is not None:
                if exc_type is None:
                    self._mrc.update_header_stats()
                self._mrc.close()
        except Exception as e:  # pragma: no cover - disk errors
            err = err or e
        self._mrc = None
        if err is None and not self._written.all():
            missing = int((~self._written).sum())
            err = ValueError(f"MRCStackWriter: {self.path}: {missing} of {self.n} images were never written; "
                             "the file was not created")
        self._atomic.__exit__(type(err) if err is not None else None, err, None)
        if err is not None and exc is None:
            raise err
        return False
