"""``ParticleStack``: a torch Dataset over particle images named by a STAR (or cryoSPARC) file.

Lazy: only headers are read at construction (every referenced file is checked: it exists, its
header is sound, every ``index@file`` points at an image that exists, all boxes agree with each
other and with ``rlnImageSize``); images are read from memory maps on demand. Pickles without
its memory maps, so it works with ``DataLoader(num_workers > 0)``. Optional Fourier-crop
downsampling and normalisation. Particles are matched to images by ``rlnImageName``, never by
row order.
"""
from __future__ import annotations

import os
import pathlib

import numpy as np
import torch

from .. import fourier
from .._validate import check_int, check_path, fail
from .mrc import MRCStack
from .star import ParticleTable, _read_cryosparc, _read_star

__all__ = ["ParticleStack"]


class ParticleStack(torch.utils.data.Dataset):
    """Particle images with their poses and CTF parameters.

    Args:
        particles: a ``.star`` path (RELION 3.0/3.1+), a cryoSPARC ``.cs`` path, or a
            :class:`~orbitcore.io.ParticleTable`.
        data_dir: where relative image paths are resolved (default: the STAR file's directory;
            the path as written, then its base name).
        size: downsample every image to ``size × size`` by Fourier cropping (pixel size grows by
            ``n / size``, shifts in pixels shrink by ``size / n``). Default: no downsampling.
        normalize: ``None``; ``"image"`` (each image to zero mean, unit standard deviation);
            ``"global"`` (one mean/std for the stack, estimated from up to 1000 evenly spaced
            images, kept in ``.mean`` / ``.std``); ``"rms"`` (divide by the stack's
            root-mean-square pixel value, same estimate, no mean subtraction: ``.mean`` is 0 —
            what an image-formation model needs, since subtracting a constant from every pixel
            changes only the DC term, which no volume inside the box can reproduce); or an
            explicit ``(mean, std)``.
        dtype: of the images returned (float32 default).

    ``.table`` is the :class:`~orbitcore.io.ParticleTable` and ``.data_dir`` the argument above
    (``table.relocated(folder, stack.data_dir)`` names the images for a STAR file written there).

    Items (``stack[i]``) are dicts: ``image`` ``(size, size)``, ``index`` (row), ``pixel_size``
    (Å, after downsampling), and when the file has them ``rotation`` ``(3, 3)``
    (:func:`~orbitcore.geometry.relion_euler_to_matrix`), ``shift`` ``(2,)`` pixels (``t =
    -origin``), ``ctf_<field>`` scalars (:meth:`orbitcore.physics.CTFParams.from_batch` rebuilds
    the CTF of a collated batch). :meth:`images` reads a batch of images directly.
    """

    def __init__(self, particles, *, data_dir=None, size: int | None = None, normalize=None,
                 dtype=torch.float32):
        fn = "ParticleStack"
        if isinstance(particles, ParticleTable):
            table = particles
        elif isinstance(particles, (str, os.PathLike)):
            p = pathlib.Path(particles)
            table = _read_cryosparc(fn, p, None) if p.suffix.lower() == ".cs" else _read_star(fn, p)
        else:
            fail(fn, f"particles must be a STAR/.cs path or a ParticleTable, got {type(particles).__name__}", TypeError)
        if data_dir is not None:
            check_path(fn, "data_dir", data_dir, "folder")
        if len(table) == 0:
            fail(fn, f"{table.path}: the particle table is empty")
        self.table = table
        self.data_dir = data_dir
        self.dtype = dtype
        idx, names = table.image_refs()
        paths = table.resolve_image_files(data_dir)
        uniq = list(dict.fromkeys(paths))
        self._stacks = [MRCStack(p, _fn=fn) for p in uniq]
        pos = {p: i for i, p in enumerate(uniq)}
        self._file = np.array([pos[p] for p in paths], dtype=np.int64)
        self._idx = idx
        # every index@file must exist
        counts = np.array([len(s) for s in self._stacks])[self._file]
        bad = idx >= counts
        if bad.any():
            i = int(np.nonzero(bad)[0][0])
            fail(fn, f"{table.path}: row {i} (rlnImageName {table.particles['rlnImageName'].iloc[i]!r}) points at "
                     f"image {idx[i] + 1}, but {paths[i]} holds {counts[i]} image(s)", IndexError)
        # one box size
        boxes = {s.path: s.shape[1:] for s in self._stacks}
        first = self._stacks[0]
        for s in self._stacks:
            ny, nx = s.shape[1:]
            if ny != nx:
                fail(fn, f"{s.path}: images must be square, got {ny}x{nx}")
            if s.shape[1:] != first.shape[1:]:
                fail(fn, f"inconsistent box sizes: {first.path} has {first.shape[2]}x{first.shape[1]} images, "
                         f"{s.path} has {nx}x{ny}")
        self.n = int(first.shape[-1])
        if "rlnImageSize" in table.particles:
            declared = table.particles["rlnImageSize"].to_numpy()
            wrong = declared != self.n
            if wrong.any():
                i = int(np.nonzero(wrong)[0][0])
                fail(fn, f"{table.path}: row {i} declares rlnImageSize {declared[i]} but its image file "
                         f"{paths[i]} has {self.n}x{self.n} images ({boxes[paths[i]]})")
        self.size = self.n if size is None else check_int(fn, "size", size, minimum=2)
        if self.size > self.n:
            fail(fn, f"size must be <= the image size {self.n} (downsampling only), got {self.size}")
        scale = self.n / self.size
        # per-particle metadata as tensors
        self.pixel_size = torch.from_numpy(table.pixel_size * scale) if _has_pixel_size(table) else None
        self.rotations = table.rotations(torch.float32) if table.has("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi") else None
        has_origin = table.has("rlnOriginXAngst", "rlnOriginYAngst") or table.has("rlnOriginX", "rlnOriginY")
        self.shifts = (table.shifts(torch.float32) / scale) if has_origin else None
        self.ctf = None
        if table.has_ctf() and self.pixel_size is not None:
            c = table.ctf(torch.float64)
            if self.pixel_size is not None:
                c.pixel_size = self.pixel_size.clone()
            self.ctf = c
        self.mean, self.std = 0.0, 1.0
        self._per_image = False
        if normalize is None:
            pass
        elif normalize == "image":
            self._per_image = True
        elif normalize in ("global", "rms"):
            sel = np.unique(np.linspace(0, len(self) - 1, min(len(self), 1000)).round().astype(np.int64))
            x = self._read(sel).to(torch.float64)
            if normalize == "global":
                self.mean, self.std = float(x.mean()), float(x.std())
                if not self.std > 0:
                    fail(fn, "normalize='global': the images are constant (std 0)")
            else:
                self.mean, self.std = 0.0, float(x.pow(2).mean().sqrt())
                if not self.std > 0:
                    fail(fn, "normalize='rms': the images are all zero")
        elif isinstance(normalize, (tuple, list)) and len(normalize) == 2:
            self.mean, self.std = float(normalize[0]), float(normalize[1])
            if not self.std > 0:
                fail(fn, f"normalize=(mean, std) needs std > 0, got {normalize!r}")
        else:
            fail(fn, f"normalize must be None, 'image', 'global', 'rms' or (mean, std), got {normalize!r}")

    def __len__(self) -> int:
        return len(self._idx)

    # ------------------------------------------------------------------ reading
    def _read(self, rows: np.ndarray) -> torch.Tensor:
        """Raw (downsampled, not normalised) images for table rows, grouped per file."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.n, self.n), dtype=np.float32)
        files = self._file[rows]
        for f in np.unique(files):
            sel = np.nonzero(files == f)[0]
            idx = self._idx[rows[sel]]
            order = np.argsort(idx, kind="stable")  # sequential reads from the memory map
            out[sel[order]] = self._stacks[f][idx[order]]
        x = torch.from_numpy(out)
        if self.size != self.n:
            x = fourier.downsample(x.to(torch.float64), self.size).to(torch.float32)
        return x

    def images(self, rows) -> torch.Tensor:
        """Images ``(b, size, size)`` for the given rows (downsampled and normalised)."""
        rows = np.atleast_1d(np.asarray(rows))
        if rows.dtype.kind not in "iu":
            fail("ParticleStack.images", f"rows must be integer indices, got {rows.dtype}", TypeError)
        n = len(self)
        if rows.size and (rows.max() >= n or rows.min() < -n):
            fail("ParticleStack.images", f"row {int(rows[(rows >= n) | (rows < -n)][0])} is out of range for "
                                         f"{n} particles", IndexError)
        rows = np.where(rows < 0, rows + n, rows)
        x = self._read(rows)
        if self._per_image:
            m = x.mean(dim=(-1, -2), keepdim=True)
            s = x.std(dim=(-1, -2), keepdim=True).clamp_min(1e-12)
            x = (x - m) / s
        elif self.mean != 0.0 or self.std != 1.0:
            x = (x - self.mean) / self.std
        return x.to(self.dtype)

    def _item(self, i: int, image: torch.Tensor) -> dict:
        d = {"image": image, "index": i}
        if self.pixel_size is not None:
            d["pixel_size"] = float(self.pixel_size[i])
        if self.rotations is not None:
            d["rotation"] = self.rotations[i]
        if self.shifts is not None:
            d["shift"] = self.shifts[i]
        if self.ctf is not None:
            for k, v in self.ctf.as_dict().items():
                d[f"ctf_{k}"] = float(v[i])
        return d

    def __getitem__(self, i):
        if isinstance(i, (int, np.integer)):
            n = len(self)
            if not -n <= int(i) < n:
                fail("ParticleStack", f"index {int(i)} is out of range for {n} particles", IndexError)
            i = int(i) % n
            return self._item(i, self.images([i])[0])
        fail("ParticleStack", f"index must be an int (use .images(rows) for batches), got {type(i).__name__}",
             TypeError)

    def __getitems__(self, indices) -> list[dict]:
        """Batched fetch used by DataLoader: one grouped read for the whole batch."""
        rows = np.asarray(list(indices), dtype=np.int64)
        imgs = self.images(rows)
        return [self._item(int(r), imgs[k]) for k, r in enumerate(rows % len(self))]

    def batches(self, batch_size: int = 256):
        """Yield ``(rows, images)`` in order, ``batch_size`` at a time (no DataLoader needed)."""
        batch_size = check_int("ParticleStack.batches", "batch_size", batch_size, minimum=1)
        for s in range(0, len(self), batch_size):
            rows = np.arange(s, min(s + batch_size, len(self)))
            yield rows, self.images(rows)

    def __repr__(self) -> str:
        return (f"ParticleStack({len(self)} particles, {self.size}x{self.size}"
                f"{f' (from {self.n})' if self.size != self.n else ''}, {len(self._stacks)} file(s), "
                f"source={self.table.path})")


def _has_pixel_size(table: ParticleTable) -> bool:
    try:
        table.pixel_size
    except KeyError:
        return False
    return True
