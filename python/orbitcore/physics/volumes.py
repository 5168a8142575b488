"""Built-in test volumes, generated in code (no data files)."""
from __future__ import annotations

import math

import torch

from .._validate import check_float, check_int, fail

__all__ = ["shepp_logan_3d", "gaussian_mixture_volume", "four_gaussians", "random_gaussian_mixture",
           "pseudo_molecule", "pseudo_molecule_atoms"]

# 3-D Shepp–Logan head phantom (Kak & Slaney's ellipsoids) with the higher-contrast
# ("modified", Toft) intensities. Columns: intensity, semi-axes (a, b, c), centre (x0, y0, z0),
# rotation about z (degrees). Coordinates are in [-1, 1]^3.
_SHEPP_LOGAN_3D = (
    (1.0, 0.69, 0.92, 0.90, 0.0, 0.0, 0.0, 0.0),
    (-0.8, 0.6624, 0.874, 0.88, 0.0, 0.0, 0.0, 0.0),
    (-0.2, 0.41, 0.16, 0.21, -0.22, 0.0, -0.25, 108.0),
    (-0.2, 0.31, 0.11, 0.22, 0.22, 0.0, -0.25, 72.0),
    (0.1, 0.21, 0.25, 0.50, 0.0, 0.35, -0.25, 0.0),
    (0.1, 0.046, 0.046, 0.046, 0.0, 0.1, -0.25, 0.0),
    (0.1, 0.046, 0.023, 0.02, -0.08, -0.65, -0.25, 0.0),
    (0.1, 0.046, 0.023, 0.02, 0.06, -0.65, -0.25, 90.0),
    (0.1, 0.056, 0.04, 0.1, 0.06, -0.105, 0.625, 90.0),
    (0.1, 0.056, 0.056, 0.1, 0.0, 0.1, 0.625, 0.0),
)


def shepp_logan_3d(D: int, *, extent: float = 1.0, dtype=torch.float32, device=None) -> torch.Tensor:
    """The 3-D Shepp–Logan phantom on a ``(D, D, D)`` grid indexed ``[z, y, x]``.

    Voxel centres are at ``(i - D // 2) / (D / 2)`` (origin at index ``D // 2``); ``extent``
    scales the phantom (1.0: its outer ellipsoid spans 92% of the box along y). Non-negative,
    maximum 1.
    """
    D = check_int("shepp_logan_3d", "D", D, minimum=2)
    k = (torch.arange(D, dtype=torch.float64, device=device) - D // 2) / (D / 2) / extent
    z, y, x = torch.meshgrid(k, k, k, indexing="ij")
    vol = torch.zeros(D, D, D, dtype=torch.float64, device=device)
    for A, a, b, c, x0, y0, z0, phi in _SHEPP_LOGAN_3D:
        p = math.radians(phi)
        xr = (x - x0) * math.cos(p) + (y - y0) * math.sin(p)
        yr = -(x - x0) * math.sin(p) + (y - y0) * math.cos(p)
        zr = z - z0
        vol += A * ((xr / a) ** 2 + (yr / b) ** 2 + (zr / c) ** 2 <= 1).to(torch.float64)
    return vol.clamp_min(0).to(dtype)


def _gaussians(D: int, centers: torch.Tensor, sigmas: torch.Tensor, amplitudes: torch.Tensor,
               device=None) -> torch.Tensor:
    """Sum of isotropic Gaussians ``a exp(-|x - c|² / (2σ²))`` on the ``[z, y, x]`` grid,
    centres in voxels relative to index ``D // 2``; separable, so O(K D³) with one einsum."""
    k = torch.arange(D, dtype=torch.float64, device=device) - D // 2
    c = centers.to(device=device, dtype=torch.float64)
    s = sigmas.to(device=device, dtype=torch.float64)[:, None]
    gx = torch.exp(-(k[None] - c[:, 0:1]) ** 2 / (2 * s ** 2))
    gy = torch.exp(-(k[None] - c[:, 1:2]) ** 2 / (2 * s ** 2))
    gz = torch.exp(-(k[None] - c[:, 2:3]) ** 2 / (2 * s ** 2))
    a = amplitudes.to(device=device, dtype=torch.float64)
    return torch.einsum("a,az,ay,ax->zyx", a, gz, gy, gx)


def gaussian_mixture_volume(D: int, centers, sigmas, amplitudes=None, *, dtype=torch.float32,
                            device=None) -> torch.Tensor:
    """A ``(D, D, D)`` volume (indexed ``[z, y, x]``) that is a sum of isotropic Gaussians.

    Args:
        D: box side.
        centers: ``(K, 3)`` centres ``(x, y, z)`` in voxels relative to the box centre ``D // 2``.
        sigmas: ``(K,)`` (or one number) standard deviations in voxels; keep them >= 1 voxel
            so the volume is band-limited (no aliasing).
        amplitudes: ``(K,)`` peak values (default 1).

    The projection of such a volume is known in closed form (a sum of 2-D Gaussians of peak
    ``a σ √(2π)`` at ``(R^T c)_xy``), which makes it a reference for projector tests.
    """
    fn = "gaussian_mixture_volume"
    D = check_int(fn, "D", D, minimum=2)
    c = torch.as_tensor(centers, dtype=torch.float64)
    if c.dim() != 2 or c.shape[1] != 3:
        fail(fn, f"centers must have shape (K, 3) = (x, y, z) in voxels, got {tuple(c.shape)}")
    K = c.shape[0]
    s = torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1)
    s = s.expand(K) if s.numel() == 1 else s
    a = torch.ones(K, dtype=torch.float64) if amplitudes is None else torch.as_tensor(amplitudes, dtype=torch.float64).reshape(-1)
    if s.shape != (K,) or a.shape != (K,):
        fail(fn, f"sigmas and amplitudes must have shape (K,) = ({K},), got {tuple(s.shape)} and {tuple(a.shape)}")
    if not bool(torch.isfinite(c).all() and torch.isfinite(s).all() and torch.isfinite(a).all()):
        fail(fn, "centers, sigmas and amplitudes must be finite")
    if bool((s <= 0).any()):
        fail(fn, f"sigmas must be > 0 voxels, got {s.min().item():g}")
    return _gaussians(D, c, s, a, device).to(dtype)


# seeds/000 §5.2: "a mixture of four Gaussians not lying on the same plane", 25³, 1 Å voxels.
# The paper gives no positions; these are ours: distinct widths and heights, no symmetry,
# centres (voxels from the box centre) spanning a tetrahedron of volume ~40 voxel³.
_FOUR_GAUSSIANS = (
    # (x, y, z), sigma, amplitude
    ((3.5, 1.5, -2.5), 2.2, 1.0),
    ((-3.0, 3.5, 1.0), 1.8, 0.8),
    ((-1.5, -4.0, -1.5), 2.0, 0.9),
    ((1.5, -1.0, 4.0), 1.6, 0.7),
)


def four_gaussians(D: int = 25, *, scale: float | None = None, dtype=torch.float32, device=None) -> torch.Tensor:
    """The 4-Gaussian test volume of seeds/000 §5.2: four non-coplanar isotropic Gaussians of
    different widths and heights on a ``25³`` grid (voxel size 1 Å in the paper).

    For another ``D`` the layout is scaled by ``scale`` (default ``D / 25``) so the volume keeps
    its shape; the result is not normalised (``v / v.norm()`` gives the paper's unit norm).
    """
    fn = "four_gaussians"
    D = check_int(fn, "D", D, minimum=8)
    sc = D / 25.0 if scale is None else check_float(fn, "scale", scale, positive=True)
    c = torch.tensor([g[0] for g in _FOUR_GAUSSIANS], dtype=torch.float64) * sc
    s = torch.tensor([g[1] for g in _FOUR_GAUSSIANS], dtype=torch.float64) * sc
    a = torch.tensor([g[2] for g in _FOUR_GAUSSIANS], dtype=torch.float64)
    return _gaussians(D, c, s, a, device).to(dtype)


def random_gaussian_mixture(D: int, n_gaussians: int = 4, *, sigma: tuple[float, float] | None = None,
                            radius: float | None = None, generator: torch.Generator | None = None,
                            dtype=torch.float32, device=None) -> torch.Tensor:
    """A random mixture of ``n_gaussians`` isotropic Gaussians: centres uniform in a ball of
    ``radius`` voxels (default ``D / 4``), widths uniform in ``sigma`` (default
    ``(D/16, D/10)`` voxels, at least 1), heights uniform in [0.5, 1]. Seeded by ``generator``."""
    fn = "random_gaussian_mixture"
    D = check_int(fn, "D", D, minimum=4)
    K = check_int(fn, "n_gaussians", n_gaussians, minimum=1)
    r = D / 4 if radius is None else check_float(fn, "radius", radius, positive=True)
    lo, hi = (max(1.0, D / 16), max(1.0, D / 10)) if sigma is None else sigma
    if not (0 < lo <= hi):
        fail(fn, f"sigma must be (low, high) with 0 < low <= high voxels, got {sigma!r}")
    d = torch.randn(K, 3, generator=generator, dtype=torch.float64)
    d = d / d.norm(dim=1, keepdim=True)
    rad = r * torch.rand(K, generator=generator, dtype=torch.float64) ** (1 / 3)
    c = d * rad[:, None]
    s = lo + (hi - lo) * torch.rand(K, generator=generator, dtype=torch.float64)
    a = 0.5 + 0.5 * torch.rand(K, generator=generator, dtype=torch.float64)
    return _gaussians(D, c, s, a, device).to(dtype)


def pseudo_molecule_atoms(n_atoms: int = 300, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Coordinates ``(n_atoms, 3)`` (in units of the molecule's radius, all within the unit
    ball) and relative weights ``(n_atoms,)`` of the chiral pseudo-molecule: a chain of
    right-handed helices (3.6 atoms per turn, like α-helices) joined by random-coil loops,
    packed into a globule. Deterministic given ``seed``; no symmetry (the helices make it
    chiral: its mirror image is a different molecule)."""
    fn = "pseudo_molecule_atoms"
    n = check_int(fn, "n_atoms", n_atoms, minimum=4)
    g = torch.Generator().manual_seed(check_int(fn, "seed", seed))
    # Globule radius (in chain spacings) for a protein-like packing density.
    R = (3.0 * n * 2.2 / (4 * math.pi)) ** (1 / 3)
    rad, rise = 1.15, 1.5 / 3.6  # helix radius and rise per atom, 3.6 atoms per turn

    def helix_from(pos, axis, m):
        e1, e2 = _frame(axis)
        t = torch.arange(1, m + 1, dtype=torch.float64)
        ang = t * (2 * math.pi / 3.6)
        # right-handed: positive rotation about the axis while advancing along it
        return (pos - rad * e1 + rad * (torch.cos(ang)[:, None] * e1 + torch.sin(ang)[:, None] * e2)
                + (rise * t)[:, None] * axis)

    pts: list[torch.Tensor] = []
    pos = torch.zeros(3, dtype=torch.float64)
    while len(pts) < n:
        m = int(torch.randint(7, 15, (1,), generator=g))
        best, best_r = None, math.inf
        for _ in range(24):  # a helix direction that keeps the chain inside the globule
            axis = torch.randn(3, generator=g, dtype=torch.float64)
            axis = axis / axis.norm()
            h = helix_from(pos, axis, m)
            r = float(h.norm(dim=1).max())
            if r < best_r:
                best, best_r = h, r
            if r <= R:
                break
        pts.extend(best)
        pos = best[-1]
        for _ in range(int(torch.randint(2, 6, (1,), generator=g))):  # random-coil loop
            for _ in range(24):
                step = torch.randn(3, generator=g, dtype=torch.float64)
                nxt = pos + step / step.norm()
                if float(nxt.norm()) <= R:
                    break
            else:
                nxt = pos - pos / max(float(pos.norm()), 1e-9)
            pos = nxt
            pts.append(pos.clone())
    x = torch.stack(pts[:n])
    x = x - x.mean(0)
    x = x / x.norm(dim=1).max()
    w = 0.6 + 0.8 * torch.rand(n, generator=g, dtype=torch.float64)
    return x, w


def _frame(axis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    helper = torch.tensor([1.0, 0.0, 0.0], dtype=axis.dtype) if abs(float(axis[0])) < 0.9 else \
        torch.tensor([0.0, 1.0, 0.0], dtype=axis.dtype)
    e1 = torch.linalg.cross(axis, helper)
    e1 = e1 / e1.norm()
    e2 = torch.linalg.cross(axis, e1)  # e1 × e2 = axis: (e1, e2, axis) right-handed
    return e1, e2


def pseudo_molecule(D: int = 64, *, n_atoms: int = 300, radius: float | None = None,
                    atom_sigma: float | None = None, seed: int = 0, dtype=torch.float32,
                    device=None) -> torch.Tensor:
    """A chiral "pseudo-molecule" ``(D, D, D)``: ``n_atoms`` Gaussian pseudo-atoms
    (:func:`pseudo_molecule_atoms`) with no symmetry, for realistic tests of alignment,
    handedness and reconstruction.

    Args:
        D: box side (voxels).
        n_atoms: number of pseudo-atoms (a few hundred).
        radius: radius of the molecule in voxels (default ``0.36 D``: inside the inscribed
            sphere with a margin for the atoms' width).
        atom_sigma: Gaussian width of each atom in voxels (default ``max(1, D / 40)``).
        seed: the molecule is deterministic given the seed.

    Non-negative; maximum normalised to 1.
    """
    fn = "pseudo_molecule"
    D = check_int(fn, "D", D, minimum=8)
    r = 0.36 * D if radius is None else check_float(fn, "radius", radius, positive=True)
    s = max(1.0, D / 40) if atom_sigma is None else check_float(fn, "atom_sigma", atom_sigma, positive=True)
    x, w = pseudo_molecule_atoms(n_atoms, seed=seed)
    vol = _gaussians(D, x * r, torch.full((x.shape[0],), s, dtype=torch.float64), w, device)
    return (vol / vol.max()).to(dtype)
