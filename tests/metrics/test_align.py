"""3-D alignment: recovers a known rotation + shift (+ mirror) of the chiral phantom, built
analytically (its pseudo-atoms moved, no interpolation), to far within one angular step; the
transform convention; the handedness; eq. 27 errors through the alignment."""
import math

import pytest
import torch

from orbitcore.geometry import random_rotations
from orbitcore.metrics import align_volumes, rotation_angle, so3_grid, transform_volume, volume_relative_error
from orbitcore.physics import gaussian_mixture_volume, pseudo_molecule_atoms

F = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))


def phantom(D, M=None, t0=None, n_atoms=200, seed=0):
    """The pseudo-molecule with its atoms moved: vol(x) = v(M (x - t0)) (M orthogonal)."""
    x, w = pseudo_molecule_atoms(n_atoms, seed=seed)
    c = x * 0.34 * D
    if M is not None:
        c = c @ M + t0  # atom positions Mᵀ c + t0
    return gaussian_mixture_volume(D, c, max(1.2, D / 30), w, dtype=torch.float64)


def expected(M, t0, mirror):
    """The (R, t) that map vol(x) = v(M (x - t0)) back onto v with transform_volume."""
    Fm = F if mirror else torch.eye(3, dtype=torch.float64)
    R = M @ Fm  # from M F^m Rᵀ = I
    return R, -(M @ t0)


def test_transform_volume_convention():
    # out(x) = v(Rᵀ(x - t)): an atom at c moves to R c + t
    D = 24
    v = gaussian_mixture_volume(D, [(5.0, 0.0, 0.0)], 1.5, dtype=torch.float64)
    Rz = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)  # +90° about z
    out = transform_volume(v, Rz, torch.tensor([1.0, 2.0, -3.0], dtype=torch.float64))
    want = gaussian_mixture_volume(D, [(0.0 + 1.0, 5.0 + 2.0, 0.0 - 3.0)], 1.5, dtype=torch.float64)
    assert float((out - want).norm() / want.norm()) < 2e-3
    # mirror flips z first
    vz = gaussian_mixture_volume(D, [(0.0, 0.0, 4.0)], 1.5, dtype=torch.float64)
    outm = transform_volume(vz, torch.eye(3, dtype=torch.float64), mirror=True)
    wantm = gaussian_mixture_volume(D, [(0.0, 0.0, -4.0)], 1.5, dtype=torch.float64)
    assert float((outm - wantm).norm() / wantm.norm()) < 1e-6


def test_so3_grid_covers_so3():
    g = so3_grid(20.0)
    assert 1500 < len(g) < 2500
    probe = random_rotations(200, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    # covering radius: every rotation is within ~one step of the grid
    tr = torch.einsum("pij,gij->pg", probe, g)
    nearest = torch.rad2deg(torch.acos(((tr.max(1).values - 1) / 2).clamp(-1, 1)))
    assert float(nearest.max()) < 20.0


@pytest.mark.parametrize("mirror", [False, True])
def test_recovers_a_known_pose_of_the_phantom(mirror):
    D = 32
    g = torch.Generator().manual_seed(11 + mirror)
    R0 = random_rotations(1, generator=g, dtype=torch.float64)[0]
    t0 = 2.5 * torch.randn(3, generator=g, dtype=torch.float64)
    M = (F @ R0.T) if mirror else R0.T
    ref, vol = phantom(D), phantom(D, M, t0)
    res = align_volumes(ref, vol)
    R_want, t_want = expected(M, t0, mirror)
    assert res.mirror == mirror
    ang = float(rotation_angle(res.rotation, R_want))
    assert ang < 0.25, ang  # the coarse step is 20°: recovered to ~1% of it
    assert float((res.shift - t_want).norm()) < 0.05
    assert res.correlation > 0.999
    assert float((res.aligned - ref).norm() / ref.norm()) < 5e-3
    # the chiral phantom never matches its mirror image: the other handedness scores clearly lower
    other = max(c[2] for c in res.candidates if c[3] != mirror)
    assert other < res.correlation - 0.05
    # eq. 27 through this alignment
    err, _ = volume_relative_error(vol, ref, alignment=res)
    assert err < 5e-3
    # poses of vol (R', s) map to poses of ref (R_a R' or R_a F R' F, s - (Qᵀ t)_xy): same images
    from orbitcore.physics import project

    Rp = random_rotations(3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    sp = torch.tensor([[0.5, -1.0], [0.0, 0.0], [2.0, 1.5]], dtype=torch.float64)
    Q, sq = res.map_poses(Rp, sp)
    a, b = project(vol, Rp, sp), project(ref, Q, sq)
    assert float((a - b).norm() / a.norm()) < 0.03  # projector accuracy at D = 32; a wrong map is > 0.2
    torch.testing.assert_close(res.apply(vol), res.aligned)


def test_without_mirror_search_stays_proper():
    D = 24
    R0 = random_rotations(1, generator=torch.Generator().manual_seed(5), dtype=torch.float64)[0]
    ref = phantom(D, n_atoms=120)
    vol = phantom(D, R0.T, torch.zeros(3, dtype=torch.float64), n_atoms=120)
    res = align_volumes(ref, vol, mirror=False, coarse_step=30.0)
    assert not res.mirror and all(not c[3] for c in res.candidates)
    assert float(rotation_angle(res.rotation, R0.T)) < 0.5


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(4))
def test_recovers_poses_64(trial):
    D = 64
    g = torch.Generator().manual_seed(100 + trial)
    R0 = random_rotations(1, generator=g, dtype=torch.float64)[0]
    t0 = 4.0 * torch.randn(3, generator=g, dtype=torch.float64)
    mirror = trial % 2 == 1
    M = (F @ R0.T) if mirror else R0.T
    ref, vol = phantom(D, n_atoms=300), phantom(D, M, t0, n_atoms=300)
    res = align_volumes(ref, vol)
    R_want, t_want = expected(M, t0, mirror)
    assert res.mirror == mirror
    assert float(rotation_angle(res.rotation, R_want)) < 0.05
    assert float((res.shift - t_want).norm()) < 0.02


@pytest.mark.slow
def test_70s_map_alignment(shared_data):
    from orbitcore.io import read_mrc

    v = torch.from_numpy(read_mrc(shared_data / "clean70SRibosome_vol_65p.mrc")[0]).double()
    R0 = random_rotations(1, generator=torch.Generator().manual_seed(9), dtype=torch.float64)[0]
    t0 = torch.tensor([1.5, -2.0, 0.5], dtype=torch.float64)
    vol = transform_volume(v, R0, t0, mirror=True)
    res = align_volumes(v, vol)
    # vol(x) = v(F R0ᵀ (x - t0)) is mapped back by R = F R0ᵀ F, t = -F R0ᵀ t0 (mirrored)
    assert res.mirror
    assert float(rotation_angle(res.rotation, F @ R0.T @ F)) < 0.2
    assert float((res.shift + F @ R0.T @ t0).norm()) < 0.05
    # two cubic-spline resamplings of a map with content up to Nyquist leave ~2.5%
    assert float((res.aligned - v).norm() / v.norm()) < 0.05


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"align_volumes: volume must have the shape of reference"):
        align_volumes(torch.rand(8, 8, 8), torch.rand(9, 9, 9))
    with pytest.raises(ValueError, match=r"align_volumes: reference must be a real cube"):
        align_volumes(torch.rand(8, 8), torch.rand(8, 8))
    with pytest.raises(ValueError, match=r"align_volumes: reference and volume must not be constant"):
        align_volumes(torch.zeros(8, 8, 8), torch.rand(8, 8, 8))
    with pytest.raises(ValueError, match=r"transform_volume: rotation must be rotation matrices"):
        transform_volume(torch.rand(8, 8, 8), 2 * torch.eye(3))
    assert math.isclose(float(rotation_angle(torch.eye(3))), 0.0, abs_tol=1e-6)
