"""metrics.mirror_symmetry: 1 for a volume with a mirror plane (in any orientation), clearly
lower for the chiral pseudo-molecule; input validation."""
import pytest
import torch

import orbitcore as oc


def test_mirror_symmetry_separates_chiral_from_mirror_symmetric():
    torch.set_num_threads(1)
    D = 17  # odd: the mirror z -> -z is an exact index flip about the centre voxel
    v = oc.physics.pseudo_molecule(D, n_atoms=40, seed=4).double()
    chiral = oc.metrics.mirror_symmetry(v)
    # independent construction of a mirror-symmetric volume: average with its x-mirror, then
    # turn the mirror plane to a random orientation (every reflection = F composed with a rotation)
    sym = 0.5 * (v + torch.flip(v, dims=(2,)))
    R = oc.geometry.random_rotations(1, generator=torch.Generator().manual_seed(3), dtype=torch.float64)[0]
    sym = oc.metrics.transform_volume(sym, R)
    s = oc.metrics.mirror_symmetry(sym)
    assert s > 0.995, s
    assert chiral < 0.98, chiral
    assert s - chiral > 0.02


def test_mirror_symmetry_validates():
    with pytest.raises(ValueError, match="mirror_symmetry.*constant"):
        oc.metrics.mirror_symmetry(torch.ones(9, 9, 9))
    with pytest.raises((ValueError, TypeError), match="mirror_symmetry"):
        oc.metrics.mirror_symmetry(torch.ones(9, 9))
