"""RELION STAR particle files (3.0 and 3.1+) via ``starfile``, and cryoSPARC ``.cs`` files.

:func:`read_star` returns a :class:`ParticleTable`: one row per particle with the optics-group
columns merged in (RELION 3.1+: ``data_optics`` + ``data_particles``; RELION 3.0: one block with
everything per particle). Conventions (ARCHITECTURE.md), applied in exactly one place each:

* Poses: ``rlnAngleRot/Tilt/Psi`` (degrees) → rotations through
  :func:`orbitcore.geometry.relion_euler_to_matrix` (``R = Aᵀ``).
* Origins: ``rlnOriginX/YAngst`` (Å, 3.1+) or ``rlnOriginX/Y`` (pixels, 3.0) mean the content
  is displaced by ``-origin``: our shift is ``t = -origin`` in pixels.
* Pixel size: ``rlnImagePixelSize`` (3.1+ optics), else ``rlnPixelSize``, else
  ``rlnDetectorPixelSize`` (µm) · 10⁴ / ``rlnMagnification`` (3.0).
* CTF: ``rlnDefocusU/V`` (Å), ``rlnDefocusAngle`` (deg), ``rlnVoltage`` (kV),
  ``rlnSphericalAberration`` (mm), ``rlnAmplitudeContrast``, ``rlnPhaseShift`` (deg, default 0),
  ``rlnCtfBfactor`` (Å², default 0) → :class:`orbitcore.physics.CTFParams`.
* Images: ``rlnImageName`` = ``index@file`` (1-based index); particles are matched to stack
  entries by this name, never by row order.

:func:`write_star` writes 3.1 (optics block, origins in Å) or 3.0 files atomically.
"""
from __future__ import annotations

import os
import pathlib
import re
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from .._validate import OrbitcoreWarning, check_int, check_path, fail, real_array, to_tensor
from .mrc import atomic_path

__all__ = ["ParticleTable", "read_star", "write_star", "read_cryosparc", "parse_image_name"]

_ANGLES = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
_CTF_REQUIRED = ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnVoltage", "rlnSphericalAberration",
                 "rlnAmplitudeContrast")
# Columns that belong to the optics group in RELION 3.1+.
_OPTICS_COLUMNS = ("rlnOpticsGroup", "rlnOpticsGroupName", "rlnAmplitudeContrast", "rlnSphericalAberration",
                   "rlnVoltage", "rlnImagePixelSize", "rlnImageSize", "rlnImageDimensionality",
                   "rlnCtfDataAreCtfPremultiplied", "rlnMicrographOriginalPixelSize")
_STRING_COLUMNS = ["rlnImageName", "rlnMicrographName", "rlnOpticsGroupName", "rlnImageOriginalName"]
_NAME_RE = re.compile(r"^\s*(\d+)\s*@\s*(\S.*?)\s*$")


def parse_image_name(name: str, *, where: str = "") -> tuple[int, str]:
    """``'000012@Extract/x.mrcs'`` → ``(11, 'Extract/x.mrcs')`` (0-based index). A name
    without ``@`` is a single-image file (index 0)."""
    if not isinstance(name, str) or not name.strip():
        fail("parse_image_name", f"{where}rlnImageName must be 'index@file', got {name!r}")
    if "@" not in name:
        return 0, name.strip()
    m = _NAME_RE.match(name)
    if not m:
        fail("parse_image_name", f"{where}rlnImageName must be 'index@file' with a positive integer index, "
                                 f"got {name!r}")
    idx = int(m.group(1))
    if idx < 1:
        fail("parse_image_name", f"{where}rlnImageName index must be >= 1 (RELION counts from 1), got {name!r}")
    return idx - 1, m.group(2)


@dataclass
class ParticleTable:
    """Particles from a STAR (or cryoSPARC) file, optics merged in.

    Attributes:
        particles: DataFrame, one row per particle, original RELION column names, optics-group
            columns merged in (3.1+).
        optics: the optics DataFrame (3.1+), else ``None``.
        path: source file (relative image paths resolve against its directory).
        version: ``"3.1"`` (optics block) or ``"3.0"``.
    """

    particles: pd.DataFrame
    optics: pd.DataFrame | None = None
    path: pathlib.Path | None = None
    version: str = "3.1"
    _image_refs: tuple | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.particles)

    def _where(self) -> str:
        return f"{self.path}: " if self.path is not None else ""

    def has(self, *columns: str) -> bool:
        return all(c in self.particles.columns for c in columns)

    def _require(self, fn: str, columns, what: str) -> None:
        missing = [c for c in columns if c not in self.particles.columns]
        if missing:
            fail(fn, f"{self._where()}no {what}: missing column(s) {', '.join(missing)} "
                     f"(have: {', '.join(map(str, self.particles.columns))})", KeyError)

    # ------------------------------------------------------------------ units and conventions
    @property
    def pixel_size(self) -> np.ndarray:
        """``(N,)`` pixel size of each particle image in Å (module docstring for the sources)."""
        fn = "ParticleTable.pixel_size"
        p = self.particles
        if "rlnImagePixelSize" in p:
            px = p["rlnImagePixelSize"].to_numpy(np.float64, copy=True)
        elif "rlnPixelSize" in p:
            px = p["rlnPixelSize"].to_numpy(np.float64, copy=True)
        elif "rlnDetectorPixelSize" in p and "rlnMagnification" in p:
            px = p["rlnDetectorPixelSize"].to_numpy(np.float64, copy=True) * 1e4 / p["rlnMagnification"].to_numpy(np.float64, copy=True)
        else:
            fail(fn, f"{self._where()}no pixel size: need rlnImagePixelSize (optics), rlnPixelSize, or "
                     "rlnDetectorPixelSize and rlnMagnification", KeyError)
        bad = ~np.isfinite(px) | (px <= 0)
        if bad.any():
            i = int(np.nonzero(bad)[0][0])
            fail(fn, f"{self._where()}row {i}: pixel size must be > 0 Å, got {px[i]}")
        return px

    def rotations(self, dtype=torch.float64) -> torch.Tensor:
        """``(N, 3, 3)`` rotations from ``rlnAngleRot/Tilt/Psi`` via
        :func:`orbitcore.geometry.relion_euler_to_matrix` (``R = Aᵀ``)."""
        from ..geometry import relion_euler_to_matrix  # noqa: PLC0415

        self._require("ParticleTable.rotations", _ANGLES, "Euler angles")
        a = [torch.from_numpy(self.particles[c].to_numpy(np.float64, copy=True)) for c in _ANGLES]
        return relion_euler_to_matrix(*a).to(dtype)

    def shifts(self, dtype=torch.float64) -> torch.Tensor:
        """``(N, 2)`` shifts ``t = -origin`` in pixels (content moves by ``+t``), from
        ``rlnOriginX/YAngst`` (Å, divided by the pixel size) or ``rlnOriginX/Y`` (pixels);
        zeros when the file has no origins."""
        p = self.particles
        if self.has("rlnOriginXAngst", "rlnOriginYAngst"):
            px = self.pixel_size
            o = np.stack([p["rlnOriginXAngst"].to_numpy(np.float64, copy=True), p["rlnOriginYAngst"].to_numpy(np.float64, copy=True)], 1)
            o = o / px[:, None]
        elif self.has("rlnOriginX", "rlnOriginY"):
            o = np.stack([p["rlnOriginX"].to_numpy(np.float64, copy=True), p["rlnOriginY"].to_numpy(np.float64, copy=True)], 1)
        else:
            o = np.zeros((len(self), 2))
        return torch.from_numpy(-o).to(dtype)

    def has_ctf(self) -> bool:
        return self.has(*_CTF_REQUIRED)

    def ctf(self, dtype=torch.float64):
        """CTF parameters of every particle as :class:`orbitcore.physics.CTFParams` (with the
        per-particle pixel size)."""
        from ..physics.ctf import CTFParams  # noqa: PLC0415

        self._require("ParticleTable.ctf", _CTF_REQUIRED, "CTF parameters")
        p = self.particles

        def col(name, default=0.0):
            v = p[name].to_numpy(np.float64, copy=True) if name in p else np.full(len(p), default)
            return torch.from_numpy(v).to(dtype)

        return CTFParams(col("rlnDefocusU"), col("rlnDefocusV"), col("rlnDefocusAngle"), col("rlnVoltage"),
                         col("rlnSphericalAberration"), col("rlnAmplitudeContrast"), col("rlnPhaseShift"),
                         col("rlnCtfBfactor"), torch.from_numpy(self.pixel_size).to(dtype))

    # ------------------------------------------------------------------ images
    def image_refs(self) -> tuple[np.ndarray, list[str]]:
        """``(indices (N,) 0-based, files (N,) as written)`` parsed from ``rlnImageName``."""
        if self._image_refs is None:
            self._require("ParticleTable.image_refs", ("rlnImageName",), "image names")
            idx = np.empty(len(self), dtype=np.int64)
            files = []
            for i, name in enumerate(self.particles["rlnImageName"].tolist()):
                k, f = parse_image_name(name, where=f"{self._where()}row {i}: ")
                idx[i] = k
                files.append(f)
            self._image_refs = (idx, files)
        return self._image_refs

    def resolve_image_files(self, data_dir=None) -> list[pathlib.Path]:
        """Resolve each distinct image file named in ``rlnImageName``: absolute paths as they
        are; relative ones against ``data_dir`` (if given) or the STAR file's directory, trying
        the path as written, then its base name. Raises ``FileNotFoundError`` listing what is
        missing and which rows need it."""
        fn = "ParticleTable.resolve_image_files"
        _, files = self.image_refs()
        if data_dir is not None:
            base = check_path(fn, "data_dir", data_dir, "folder")
        else:
            base = self.path.parent if self.path else pathlib.Path.cwd()
        out, missing = {}, {}
        for i, f in enumerate(files):
            if f in out or f in missing:
                if f in missing:
                    missing[f].append(i)
                continue
            p = pathlib.Path(f)
            cands = [p] if p.is_absolute() else [base / p, base / p.name]
            hit = next((c for c in cands if c.is_file()), None)
            if hit is None:
                missing[f] = [i]
            else:
                out[f] = hit
        if missing:
            lines = [f"{f} (rows {', '.join(map(str, r[:5]))}{', ...' if len(r) > 5 else ''}; looked in {base})"
                     for f, r in list(missing.items())[:5]]
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            fail(fn, f"{self._where()}image file(s) not found: " + "; ".join(lines) + more
                 + " (pass data_dir= to say where the stacks are)", FileNotFoundError)
        return [out[f] for f in files]

    def relocated(self, directory, data_dir=None) -> "ParticleTable":
        """A copy, to be written in ``directory``, that names the same images (for a run's
        ``poses.star`` next to its other outputs). Without ``data_dir`` relative names are read
        against this table's own folder (:meth:`resolve_image_files`), so each is rewritten
        relative to ``directory``. With ``data_dir`` (RELION's project-relative names) they are
        kept as written: the new file opens with the same ``data_dir``, and from the same RELION
        project. Absolute names and the ``index@`` part stay. Raises ``FileNotFoundError`` if an
        image file is missing."""
        directory = check_path("ParticleTable.relocated", "directory", directory, "folder").resolve()
        _, files = self.image_refs()
        found = self.resolve_image_files(data_dir)
        p = self.particles.copy()
        if data_dir is None:
            renamed: dict[str, str] = {}
            for f, hit in zip(files, found):
                if f not in renamed:
                    renamed[f] = f if pathlib.Path(f).is_absolute() else os.path.relpath(hit.resolve(), directory)
            p["rlnImageName"] = [f"{name.split('@', 1)[0].strip()}@{renamed[f]}" if "@" in name else renamed[f]
                                 for name, f in zip(self.particles["rlnImageName"].tolist(), files)]
        return ParticleTable(p, self.optics, directory / (self.path.name if self.path else "particles.star"),
                             self.version)

    # ------------------------------------------------------------------ derived tables
    def subset(self, rows) -> "ParticleTable":
        """A table with the given rows (positions), in that order."""
        return ParticleTable(self.particles.iloc[np.asarray(rows)].reset_index(drop=True), self.optics, self.path,
                             self.version)

    def with_poses(self, rotations=None, shifts=None) -> "ParticleTable":
        """A copy with new poses: rotations ``(N, 3, 3)`` written as RELION Euler angles, shifts
        ``(N, 2)`` (pixels, ``t``) written as ``rlnOriginX/YAngst = -t · pixel size`` (3.1) or
        ``rlnOriginX/Y = -t`` (3.0). For writing estimated poses."""
        from ..geometry import matrix_to_relion_euler  # noqa: PLC0415

        fn = "ParticleTable.with_poses"
        p = self.particles.copy()
        if rotations is not None:
            R, _ = to_tensor(rotations, fn, "rotations")
            if tuple(R.shape) != (len(self), 3, 3):
                fail(fn, f"rotations must have shape ({len(self)}, 3, 3), got {tuple(R.shape)}")
            rot, tilt, psi = matrix_to_relion_euler(R.detach().cpu().to(torch.float64))
            p["rlnAngleRot"], p["rlnAngleTilt"], p["rlnAnglePsi"] = rot.numpy(), tilt.numpy(), psi.numpy()
        if shifts is not None:
            t, _ = to_tensor(shifts, fn, "shifts")
            if tuple(t.shape) != (len(self), 2):
                fail(fn, f"shifts must have shape ({len(self)}, 2) in pixels, got {tuple(t.shape)}")
            t = t.detach().cpu().to(torch.float64).numpy()
            if self.version == "3.0":
                p["rlnOriginX"], p["rlnOriginY"] = -t[:, 0], -t[:, 1]
            else:
                px = self.pixel_size
                p = p.drop(columns=[c for c in ("rlnOriginX", "rlnOriginY") if c in p])
                p["rlnOriginXAngst"], p["rlnOriginYAngst"] = -t[:, 0] * px, -t[:, 1] * px
        return ParticleTable(p, self.optics, self.path, self.version)

    def write(self, path, *, version: str | None = None) -> pathlib.Path:
        """Write as a STAR file (atomically); see :func:`write_star`."""
        return _write_star("ParticleTable.write", path, self, version=version)


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------
def _read_blocks(fn: str, path: pathlib.Path) -> dict:
    import starfile  # noqa: PLC0415

    if not path.is_file():
        fail(fn, f"{path}: no such file", FileNotFoundError)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            blocks = starfile.read(path, always_dict=True, parse_as_string=_STRING_COLUMNS)
    except Exception as exc:  # starfile raises assorted errors on malformed text
        fail(fn, f"{path}: not a readable STAR file ({type(exc).__name__}: {exc})")
    if not blocks:
        fail(fn, f"{path}: no data blocks found (is this a STAR file?)")
    return blocks


def _loop(fn: str, path, name: str, block) -> pd.DataFrame:
    if isinstance(block, pd.DataFrame):
        return block
    if isinstance(block, dict):  # a single-row block written as key-value pairs
        return pd.DataFrame({k: [v] for k, v in block.items()})
    fail(fn, f"{path}: data block '{name}' is not a table")


def read_star(path) -> ParticleTable:
    """Read a RELION particle STAR file (3.0 or 3.1+) into a :class:`ParticleTable`.

    RELION 3.1+: the ``optics`` and ``particles`` blocks; optics columns are merged into each
    particle by ``rlnOpticsGroup`` (every group a particle names must exist). RELION 3.0: the
    block named ``particles`` or ``images``, else the only block, else the first block with an
    ``rlnImageName`` column. Raises a ``ValueError`` naming the file and the problem for
    malformed files, unknown optics groups or missing blocks.
    """
    return _read_star("read_star", path)


def _read_star(fn: str, path) -> ParticleTable:
    """:func:`read_star`, errors naming ``fn``."""
    path = check_path(fn, "path", path)
    blocks = _read_blocks(fn, path)
    names = list(blocks)
    if "optics" in blocks and "particles" in blocks:
        optics = _loop(fn, path, "optics", blocks["optics"]).copy()
        parts = _loop(fn, path, "particles", blocks["particles"]).copy()
        if "rlnOpticsGroup" not in optics:
            fail(fn, f"{path}: the optics block has no rlnOpticsGroup column")
        if optics["rlnOpticsGroup"].duplicated().any():
            dup = optics["rlnOpticsGroup"][optics["rlnOpticsGroup"].duplicated()].iloc[0]
            fail(fn, f"{path}: optics group {dup} is defined twice")
        if "rlnOpticsGroup" not in parts:
            if len(optics) != 1:
                fail(fn, f"{path}: particles have no rlnOpticsGroup column but there are {len(optics)} optics groups")
            parts["rlnOpticsGroup"] = optics["rlnOpticsGroup"].iloc[0]
        known = set(optics["rlnOpticsGroup"].tolist())
        unknown = ~parts["rlnOpticsGroup"].isin(known)
        if unknown.any():
            i = int(np.nonzero(unknown.to_numpy())[0][0])
            g = parts["rlnOpticsGroup"].iloc[i]
            g = g.item() if hasattr(g, "item") else g
            fail(fn, f"{path}: particle row {i} names optics group {g!r}, which the optics block does not define "
                     f"(groups: {sorted(known)})")
        # particle values win over optics values for columns present in both
        oc = [c for c in optics.columns if c == "rlnOpticsGroup" or c not in parts.columns]
        merged = parts.merge(optics[oc], on="rlnOpticsGroup", how="left", sort=False, validate="many_to_one")
        merged.index = parts.index
        return ParticleTable(merged.reset_index(drop=True), optics.reset_index(drop=True), path, "3.1")
    if "particles" in blocks and "optics" not in blocks:
        key = "particles"
    elif "images" in blocks:
        key = "images"
    elif len(blocks) == 1:
        key = names[0]
    else:
        tables = [k for k, v in blocks.items() if isinstance(v, pd.DataFrame) and "rlnImageName" in v]
        if not tables:
            fail(fn, f"{path}: no particle block found (blocks: {names}; expected 'optics' + 'particles' "
                     "(RELION 3.1+) or one block with rlnImageName (RELION 3.0))")
        key = tables[0]
    parts = _loop(fn, path, key, blocks[key]).copy()
    version = "3.0"
    if any(c.startswith("rlnOrigin") and c.endswith("Angst") for c in parts.columns):
        version = "3.1"  # a particles-only 3.1 file
    return ParticleTable(parts.reset_index(drop=True), None, path, version)


def read_cryosparc(path, *, stack_dir=None) -> ParticleTable:
    """Read the particle blob and CTF fields of a cryoSPARC ``.cs`` file into a
    :class:`ParticleTable` with RELION column names (so the rest of orbitcore treats both
    alike): ``blob/path`` + ``blob/idx`` (0-based) → ``rlnImageName``, ``ctf/df1_A``,
    ``ctf/df2_A`` → ``rlnDefocusU/V``, ``ctf/df_angle_rad`` → ``rlnDefocusAngle`` (deg),
    ``ctf/phase_shift_rad`` → ``rlnPhaseShift`` (deg), ``ctf/accel_kv``, ``ctf/cs_mm``,
    ``ctf/amp_contrast``, ``ctf/bfactor``, ``blob/psize_A`` → ``rlnImagePixelSize``,
    ``blob/shape`` → ``rlnImageSize``. Poses (``alignments3D/*``) are not interpreted (their
    convention is not verified here): a warning says so when they are present.
    """
    return _read_cryosparc("read_cryosparc", path, stack_dir)


def _read_cryosparc(fn: str, path, stack_dir) -> ParticleTable:
    """:func:`read_cryosparc`, errors naming ``fn``."""
    path = check_path(fn, "path", path)
    if stack_dir is not None:
        stack_dir = check_path(fn, "stack_dir", stack_dir, "folder")
    if not path.is_file():
        fail(fn, f"{path}: no such file", FileNotFoundError)
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:
        fail(fn, f"{path}: not a readable cryoSPARC .cs file (a NumPy structured array): {exc}")
    if not isinstance(arr, np.ndarray) or arr.dtype.names is None:
        fail(fn, f"{path}: not a cryoSPARC .cs file (expected a structured array with blob/ and ctf/ fields)")
    names = set(arr.dtype.names)
    need = ["blob/path", "blob/idx"]
    missing = [c for c in need if c not in names]
    if missing:
        fail(fn, f"{path}: missing field(s) {missing} (have: {sorted(names)})", KeyError)
    d = {}
    paths = [p.decode() if isinstance(p, bytes) else str(p) for p in arr["blob/path"]]
    paths = [p.lstrip(">") for p in paths]  # cryoSPARC marks project-relative paths with '>'
    if stack_dir is not None:
        paths = [str(stack_dir / pathlib.Path(p).name) for p in paths]
    d["rlnImageName"] = [f"{int(i) + 1:06d}@{p}" for i, p in zip(arr["blob/idx"], paths)]
    conv = {
        "ctf/df1_A": ("rlnDefocusU", 1.0), "ctf/df2_A": ("rlnDefocusV", 1.0),
        "ctf/df_angle_rad": ("rlnDefocusAngle", 180.0 / np.pi), "ctf/accel_kv": ("rlnVoltage", 1.0),
        "ctf/cs_mm": ("rlnSphericalAberration", 1.0), "ctf/amp_contrast": ("rlnAmplitudeContrast", 1.0),
        "ctf/phase_shift_rad": ("rlnPhaseShift", 180.0 / np.pi), "ctf/bfactor": ("rlnCtfBfactor", 1.0),
        "blob/psize_A": ("rlnImagePixelSize", 1.0),
    }
    for src, (dst, scale) in conv.items():
        if src in names:
            d[dst] = arr[src].astype(np.float64) * scale
    if "blob/shape" in names:
        d["rlnImageSize"] = arr["blob/shape"][:, 0].astype(np.int64)
    if any(n.startswith("alignments3D/") for n in names):
        warnings.warn(f"{path}: alignments3D (poses) present but not read (cryoSPARC pose convention not "
                      "verified in orbitcore)", OrbitcoreWarning, stacklevel=3)
    return ParticleTable(pd.DataFrame(d), None, path, "3.1")


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
def write_star(path, table: ParticleTable, *, version: str | None = None, float_format: str = "%.9g") -> pathlib.Path:
    """Write a :class:`ParticleTable` as a RELION STAR file, atomically.

    ``version="3.1"`` (default for 3.1 tables): ``data_optics`` (one row per optics group;
    built from the optics columns when the table has none) + ``data_particles`` with origins in
    Å. ``version="3.0"``: a single ``data_particles`` block with the optics columns per
    particle, origins in pixels and the pixel size as ``rlnDetectorPixelSize`` (µm) with
    ``rlnMagnification`` 10000. Floats are written with 9 significant digits (float32 values
    round-trip exactly).
    """
    return _write_star("write_star", path, table, version=version, float_format=float_format)


def _write_star(fn: str, path, table: ParticleTable, *, version: str | None = None,
                float_format: str = "%.9g") -> pathlib.Path:
    """:func:`write_star` with errors naming ``fn`` (the public caller)."""
    import starfile  # noqa: PLC0415

    if not isinstance(table, ParticleTable):
        fail(fn, f"table must be a ParticleTable, got {type(table).__name__}", TypeError)
    version = version or table.version
    if version not in ("3.0", "3.1"):
        fail(fn, f"version must be '3.0' or '3.1', got {version!r}")
    p = table.particles.copy()
    if version == "3.1":
        if "rlnOriginX" in p and "rlnOriginXAngst" not in p:
            px = table.pixel_size
            p["rlnOriginXAngst"], p["rlnOriginYAngst"] = p["rlnOriginX"] * px, p["rlnOriginY"] * px
        p = p.drop(columns=[c for c in ("rlnOriginX", "rlnOriginY", "rlnDetectorPixelSize", "rlnMagnification")
                            if c in p])
        if "rlnOpticsGroup" not in p:
            p["rlnOpticsGroup"] = 1
        known = list(table.optics.columns) if table.optics is not None else list(_OPTICS_COLUMNS)
        ocols = ["rlnOpticsGroup"] + [c for c in known if c in p.columns and c != "rlnOpticsGroup"]
        optics = p[ocols].drop_duplicates("rlnOpticsGroup").sort_values("rlnOpticsGroup").reset_index(drop=True)
        # each optics group must have one value per optics column
        per = p[ocols].drop_duplicates()
        if len(per) != len(optics):
            g = per["rlnOpticsGroup"][per["rlnOpticsGroup"].duplicated()].iloc[0]
            fail(fn, f"optics group {g} has particles with different optics values (pixel size, voltage, ...); "
                     "give them different rlnOpticsGroup numbers")
        if "rlnOpticsGroupName" not in optics:
            optics.insert(1, "rlnOpticsGroupName", [f"opticsGroup{int(g)}" for g in optics["rlnOpticsGroup"]])
        parts = p.drop(columns=[c for c in ocols if c != "rlnOpticsGroup"])
        data = {"optics": optics, "particles": parts}
    else:
        if "rlnOriginXAngst" in p:
            px = table.pixel_size
            p["rlnOriginX"], p["rlnOriginY"] = p["rlnOriginXAngst"] / px, p["rlnOriginYAngst"] / px
        px = table.pixel_size if len(p) else np.zeros(0)
        p = p.drop(columns=[c for c in ("rlnOriginXAngst", "rlnOriginYAngst", "rlnImagePixelSize", "rlnOpticsGroup",
                                        "rlnOpticsGroupName", "rlnImageDimensionality") if c in p])
        p["rlnDetectorPixelSize"] = px
        p["rlnMagnification"] = 10000.0
        data = {"particles": p}
    path = check_path(fn, "path", path)
    with atomic_path(path, suffix=".star") as tmp:
        starfile.write(data, tmp, float_format=float_format, overwrite=True)
    return path


def make_particle_table(image_names, *, rotations=None, shifts=None, ctf=None, pixel_size=None,
                        image_size: int | None = None) -> ParticleTable:
    """Build a :class:`ParticleTable` (RELION 3.1 layout, one optics group per distinct set of
    optics values) from arrays: ``image_names`` (``index@file`` strings), rotations
    ``(N, 3, 3)``, shifts ``(N, 2)`` in pixels (``t``), a :class:`~orbitcore.physics.CTFParams`
    (which carries the pixel size) or ``pixel_size`` (Å), and the image side."""
    from ..geometry import matrix_to_relion_euler  # noqa: PLC0415

    fn = "make_particle_table"
    if isinstance(image_names, (str, bytes)) or not hasattr(image_names, "__iter__"):
        fail(fn, f"image_names must be a sequence of 'index@file' strings, got {type(image_names).__name__}",
             TypeError)
    names = list(image_names)
    bad = [type(n).__name__ for n in names if not isinstance(n, str)]
    if bad:
        fail(fn, f"image_names must be 'index@file' strings, got an element of type {bad[0]}", TypeError)
    N = len(names)
    d: dict[str, object] = {"rlnImageName": names}
    if ctf is not None:
        from ..physics.ctf import CTFParams  # noqa: PLC0415

        if not isinstance(ctf, CTFParams):
            fail(fn, f"ctf must be a CTFParams or None, got {type(ctf).__name__}", TypeError)
        if len(ctf) != N:
            fail(fn, f"ctf must have {N} entries (one per image), got {len(ctf)}")
        c = {k: v.detach().cpu().to(torch.float64).numpy() for k, v in ctf.as_dict().items()}
        d.update({"rlnDefocusU": c["defocus_u"], "rlnDefocusV": c["defocus_v"],
                  "rlnDefocusAngle": c["astigmatism_angle"], "rlnPhaseShift": c["phase_shift"],
                  "rlnCtfBfactor": c["b_factor"], "rlnCtfScalefactor": np.ones(N)})
        px = c["pixel_size"]
        optics = {"rlnVoltage": c["voltage"], "rlnSphericalAberration": c["cs"],
                  "rlnAmplitudeContrast": c["amplitude_contrast"]}
    else:
        if pixel_size is None:
            fail(fn, "give pixel_size (Å) or a ctf carrying it")
        pt = real_array(fn, "pixel_size", pixel_size)
        if pt.dim() > 1 or (pt.dim() == 1 and pt.shape[0] not in (1, N)):
            fail(fn, f"pixel_size must be a number or {N} real values (Å), got shape {tuple(pt.shape)}")
        px = np.broadcast_to(pt.detach().cpu().to(torch.float64).numpy(), (N,)).copy()
        if not (np.isfinite(px).all() and (px > 0).all()):
            fail(fn, f"pixel_size must be finite and > 0 (Å), got a minimum of {px.min() if N else float('nan'):g}")
        optics = {}
    if rotations is not None:
        R, _ = to_tensor(rotations, fn, "rotations")
        if tuple(R.shape) != (N, 3, 3):
            fail(fn, f"rotations must have shape ({N}, 3, 3), got {tuple(R.shape)}")
        rot, tilt, psi = matrix_to_relion_euler(R.detach().cpu().to(torch.float64))
        d.update({"rlnAngleRot": rot.numpy(), "rlnAngleTilt": tilt.numpy(), "rlnAnglePsi": psi.numpy()})
    if shifts is not None:
        t, _ = to_tensor(shifts, fn, "shifts")
        if tuple(t.shape) != (N, 2):
            fail(fn, f"shifts must have shape ({N}, 2), got {tuple(t.shape)}")
        t = t.detach().cpu().to(torch.float64).numpy()
        d.update({"rlnOriginXAngst": -t[:, 0] * px, "rlnOriginYAngst": -t[:, 1] * px})
    df = pd.DataFrame(d)
    for k, v in optics.items():
        df[k] = v
    df["rlnImagePixelSize"] = px
    if image_size is not None:
        df["rlnImageSize"] = check_int(fn, "image_size", image_size, minimum=1)
        df["rlnImageDimensionality"] = 2
    ocols = [c for c in _OPTICS_COLUMNS if c in df.columns and c != "rlnOpticsGroup"]
    groups = df[ocols].round(9).astype(str).agg("|".join, axis=1)
    codes, _ = pd.factorize(groups)
    df["rlnOpticsGroup"] = codes + 1
    return ParticleTable(df, None, None, "3.1")


__all__.append("make_particle_table")
