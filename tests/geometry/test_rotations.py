"""Rotation conventions: s2s2, quaternions, RELION Euler angles, uniform sampling."""
import math

import numpy as np
import pytest
import torch

from orbitcore.geometry import (
    axis_angle_to_matrix,
    matrix_to_quaternion,
    matrix_to_relion_euler,
    matrix_to_s2s2,
    quaternion_to_matrix,
    random_rotations,
    relion_euler_to_matrix,
    s2s2_to_matrix,
    viewing_direction,
)

F64 = torch.float64


def _is_rotation(R, atol=1e-12):
    eye = torch.eye(3, dtype=R.dtype).expand_as(R)
    return torch.allclose(R.transpose(-1, -2) @ R, eye, atol=atol) and torch.allclose(
        torch.linalg.det(R), torch.ones(R.shape[:-2], dtype=R.dtype), atol=atol)


def test_s2s2_gram_schmidt_rows(gen):
    x = torch.randn(10, 6, generator=gen, dtype=F64)
    R = s2s2_to_matrix(x)
    assert _is_rotation(R)
    a1, a2 = x[:, :3], x[:, 3:]
    b1 = a1 / a1.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(R[:, 0], b1)  # first ROW is a1 normalised
    # second row lies in span(a1, a2) with positive a2 component
    assert torch.all((R[:, 1] * a2).sum(-1) > 0)
    torch.testing.assert_close(R[:, 2], torch.linalg.cross(R[:, 0], R[:, 1]))
    torch.testing.assert_close(s2s2_to_matrix(matrix_to_s2s2(R)), R)
    torch.testing.assert_close(s2s2_to_matrix(x.reshape(10, 2, 3)), R)


def test_quaternion_rodrigues_and_roundtrip(gen):
    axis = torch.randn(20, 3, generator=gen, dtype=F64)
    u = axis / axis.norm(dim=-1, keepdim=True)
    th = torch.rand(20, generator=gen, dtype=F64) * math.pi
    R = axis_angle_to_matrix(u, th)
    # Rodrigues: R = I + sin th K + (1 - cos th) K^2
    K = torch.zeros(20, 3, 3, dtype=F64)
    K[:, 0, 1], K[:, 0, 2], K[:, 1, 2] = -u[:, 2], u[:, 1], -u[:, 0]
    K = K - K.transpose(1, 2)
    want = torch.eye(3, dtype=F64) + torch.sin(th)[:, None, None] * K + (1 - torch.cos(th))[:, None, None] * K @ K
    torch.testing.assert_close(R, want)
    q = matrix_to_quaternion(R)
    assert torch.all(q[:, 0] >= 0)
    torch.testing.assert_close(quaternion_to_matrix(q), R)
    torch.testing.assert_close(quaternion_to_matrix(-q), R)
    # near 180 degrees (w ~ 0) the conversion stays accurate
    R180 = axis_angle_to_matrix(u, torch.full((20,), math.pi, dtype=F64))
    torch.testing.assert_close(quaternion_to_matrix(matrix_to_quaternion(R180)), R180)


def test_relion_euler_known_values():
    # rot = 90: A = Rz(90) = [[0, 1, 0], [-1, 0, 0], [0, 0, 1]], so R = A^T is +90 deg about z.
    R = relion_euler_to_matrix(90.0, 0.0, 0.0)
    torch.testing.assert_close(R, torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]], dtype=F64), atol=1e-15, rtol=0)
    # tilt = 90: A = Ry(90) = [[0, 0, -1], [0, 1, 0], [1, 0, 0]]
    R = relion_euler_to_matrix(0.0, 90.0, 0.0)
    torch.testing.assert_close(R, torch.tensor([[0.0, 0, 1], [0, 1, 0], [-1, 0, 0]], dtype=F64), atol=1e-15, rtol=0)
    # RELION's projection direction (Euler_angles2direction) = our viewing direction R e_z
    rot, tilt = 30.0, 50.0
    d = viewing_direction(relion_euler_to_matrix(rot, tilt, 77.0))
    r, t = math.radians(rot), math.radians(tilt)
    torch.testing.assert_close(d, torch.tensor([math.sin(t) * math.cos(r), math.sin(t) * math.sin(r), math.cos(t)], dtype=F64))


def test_relion_euler_composition():
    # A(rot, tilt, psi) = Rz(psi) Ry(tilt) Rz(rot) with RELION's (passive) elementary matrices.
    def Rz(a):
        a = math.radians(a)
        return torch.tensor([[math.cos(a), math.sin(a), 0], [-math.sin(a), math.cos(a), 0], [0, 0, 1]], dtype=F64)

    def Ry(b):
        b = math.radians(b)
        return torch.tensor([[math.cos(b), 0, -math.sin(b)], [0, 1, 0], [math.sin(b), 0, math.cos(b)]], dtype=F64)

    for rot, tilt, psi in [(10, 20, 30), (-120, 170, 45), (200, 5, -90)]:
        A = Rz(psi) @ Ry(tilt) @ Rz(rot)
        torch.testing.assert_close(relion_euler_to_matrix(rot, tilt, psi), A.T)


def test_relion_euler_roundtrip(gen):
    rot = (torch.rand(200, generator=gen, dtype=F64) * 360) - 180
    tilt = torch.rand(200, generator=gen, dtype=F64) * 180
    psi = (torch.rand(200, generator=gen, dtype=F64) * 360) - 180
    R = relion_euler_to_matrix(rot, tilt, psi)
    assert _is_rotation(R)
    r2, t2, p2 = matrix_to_relion_euler(R)
    torch.testing.assert_close(t2, tilt)
    torch.testing.assert_close(relion_euler_to_matrix(r2, t2, p2), R)
    # gimbal lock: tilt 0 and 180 keep the matrix
    for t in (0.0, 180.0):
        R = relion_euler_to_matrix(torch.tensor([35.0]), torch.tensor([t]), torch.tensor([-20.0]))
        torch.testing.assert_close(relion_euler_to_matrix(*matrix_to_relion_euler(R)), R)


def test_relion_numpy_in_numpy_out():
    R = relion_euler_to_matrix(np.array([10.0, 20.0]), np.array([30.0, 40.0]), np.array([50.0, 60.0]))
    assert isinstance(R, np.ndarray) and R.shape == (2, 3, 3)
    angles = matrix_to_relion_euler(R)
    assert all(isinstance(a, np.ndarray) for a in angles)
    np.testing.assert_allclose(angles[0], [10.0, 20.0])


def test_random_rotations_uniform_and_reproducible():
    g1 = torch.Generator().manual_seed(5)
    g2 = torch.Generator().manual_seed(5)
    R1 = random_rotations(20000, generator=g1, dtype=F64)
    R2 = random_rotations(20000, generator=g2, dtype=F64)
    torch.testing.assert_close(R1, R2)
    assert _is_rotation(R1, atol=1e-10)
    # Haar measure: E[R] = 0, E[R_ij^2] = 1/3, trace distribution E[tr R] = 0, E[(tr R)^2] = 1
    assert R1.mean(0).abs().max() < 0.02
    torch.testing.assert_close((R1 ** 2).mean(0), torch.full((3, 3), 1 / 3, dtype=F64), atol=0.01, rtol=0)
    tr = R1.diagonal(dim1=-2, dim2=-1).sum(-1)
    assert abs(float(tr.mean())) < 0.03 and abs(float((tr ** 2).mean()) - 1) < 0.05


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"s2s2_to_matrix: s2s2 must have shape \(\.\.\., 6\)"):
        s2s2_to_matrix(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="quaternion_to_matrix: q must have shape"):
        quaternion_to_matrix(torch.zeros(3))
    with pytest.raises(ValueError, match="matrix_to_relion_euler: R must have shape"):
        matrix_to_relion_euler(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="random_rotations: n must be >= 0"):
        random_rotations(-1)
