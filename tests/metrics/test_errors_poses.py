"""Orbit-invariant errors (seeds/000 eqs. 21, 22) against brute force, and pose errors
(seeds/003 Table 1) against constructed examples with known global rotation, handedness,
volume shift and outliers."""
import math

import numpy as np
import pytest
import torch

from orbitcore.geometry import axis_angle_to_matrix, random_rotations
from orbitcore.metrics import align_rotations, moment_relative_error, mra_relative_error, pose_errors

F = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))


def brute_mra(u, v):
    n = len(v)
    errs = [np.linalg.norm(np.roll(v, s) - u) / np.linalg.norm(v) for s in range(n)]  # roll(v, s)[x] = v[x - s]
    return min(errs), int(np.argmin(errs))


@pytest.mark.parametrize("n", [16, 21])
def test_mra_error_against_brute_force(n):
    rng = np.random.default_rng(n)
    for _ in range(5):
        v, u = rng.standard_normal(n), rng.standard_normal(n)
        e, s = mra_relative_error(u, v, return_shift=True)
        be, bs = brute_mra(u, v)
        assert float(e) == pytest.approx(be, abs=1e-12) and int(s) == bs
    # a shifted, slightly perturbed copy: the shift is found and the error is the perturbation's
    v = rng.standard_normal(n)
    d = 1e-3 * rng.standard_normal(n)
    u = np.roll(v, 5) + d
    e, s = mra_relative_error(torch.from_numpy(u), torch.from_numpy(v), return_shift=True)
    assert int(s) == 5 and float(e) == pytest.approx(np.linalg.norm(d) / np.linalg.norm(v), rel=1e-9)


def test_mra_error_batches_and_densities():
    rng = np.random.default_rng(0)
    v = rng.random((4, 12))
    v = v / v.sum(1, keepdims=True)  # densities ρ on the circle
    u = rng.random((4, 12))
    u = u / u.sum(1, keepdims=True)
    e = mra_relative_error(u, v)
    assert e.shape == (4,)
    for i in range(4):
        assert e[i] == pytest.approx(brute_mra(u[i], v[i])[0], abs=1e-12)
    with pytest.raises(ValueError, match=r"mra_relative_error: truth must not be zero"):
        mra_relative_error(np.ones(4), np.zeros(4))
    with pytest.raises(ValueError, match=r"mra_relative_error: estimate and truth must have the same last axis"):
        mra_relative_error(np.ones(4), np.ones(5))


def test_moment_relative_error():
    A = np.array([[1.0, 2.0], [2.0, 4.0]])
    M = A + np.array([[0.0, 0.5], [0.5, 0.0]])
    assert moment_relative_error(M, A) == pytest.approx(math.sqrt(0.5) / 5.0)
    z = np.array([1 + 1j, 2 - 1j])
    assert moment_relative_error(z * 1.1, z) == pytest.approx(0.1)
    with pytest.raises(ValueError, match=r"moment_relative_error: estimate must not be zero"):
        moment_relative_error(np.ones(3), np.zeros(3))


def perturbed(R, angle_deg, g):
    axis = torch.randn(R.shape[0], 3, generator=g, dtype=torch.float64)
    return axis_angle_to_matrix(axis, torch.full((R.shape[0],), math.radians(angle_deg), dtype=torch.float64)) @ R


@pytest.mark.parametrize("mirror", [False, True])
def test_pose_errors_recover_gauge_and_outliers(mirror):
    g = torch.Generator().manual_seed(1 + mirror)
    N = 2000
    R = random_rotations(N, generator=g, dtype=torch.float64)
    Q = random_rotations(1, generator=g, dtype=torch.float64)[0]
    # estimates in another gauge: R = Q R~', R~' = F R' F when mirrored, each off by exactly 2°
    Rt = Q.T @ perturbed(R, 2.0, g)
    Rp = F @ Rt @ F if mirror else Rt
    Rp[:600] = random_rotations(600, generator=g, dtype=torch.float64)  # 30% garbage poses
    c = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
    t = 3.0 * torch.randn(N, 2, generator=g, dtype=torch.float64)
    noise = 0.25 * torch.randn(N, 2, generator=g, dtype=torch.float64)
    tp = t - (R.transpose(-1, -2)[:, :2, :] @ c) + noise  # t = t' + (Rᵀ c)_xy (+ noise)
    e = pose_errors(Rp, R, tp, t)
    assert e.mirror == mirror
    # ‖R - Q R~'‖_F² = 8 sin²(θ/2) for a rotation error θ: exact for the 70% good poses
    want = 8 * math.sin(math.radians(2.0) / 2) ** 2
    assert e.rotation_median_sq_frobenius == pytest.approx(want, rel=0.02)
    assert e.rotation_median_angle == pytest.approx(2.0, rel=0.02)
    assert float(torch.rad2deg(torch.acos(((torch.trace(e.global_rotation.T @ Q) - 1) / 2).clamp(-1, 1)))) < 0.2
    torch.testing.assert_close(e.volume_shift, c, atol=0.05, rtol=0)
    assert e.shift_mse == pytest.approx(2 * 0.25 ** 2, rel=0.1)  # mean ‖noise‖² = 2σ²
    assert e.shift_mse_raw > 1.0
    assert e.per_image_sq_frobenius.shape == (N,)
    # the Q R~' are the estimates in the truth's frame
    good = e.per_image_angle[600:]
    assert float(good.max()) == pytest.approx(2.0, abs=0.3)


def test_pose_errors_perfect_and_given_rotation():
    g = torch.Generator().manual_seed(3)
    R = random_rotations(50, generator=g, dtype=torch.float64)
    e = pose_errors(R, R)
    assert e.rotation_median_sq_frobenius == pytest.approx(0.0, abs=1e-12) and not e.mirror
    Q = random_rotations(1, generator=g, dtype=torch.float64)[0]
    e2 = pose_errors(Q.T @ R, R, global_rotation=(Q, False))
    assert e2.rotation_median_sq_frobenius == pytest.approx(0.0, abs=1e-12)
    Qf, m = align_rotations(Q.T @ R, R, mirror=False)
    torch.testing.assert_close(Qf, Q)


def test_pose_errors_bad_inputs():
    R = torch.eye(3, dtype=torch.float64).expand(4, 3, 3)
    with pytest.raises(ValueError, match=r"pose_errors: rotations_est and rotations_true must have the same length"):
        pose_errors(R[:3], R)
    with pytest.raises(ValueError, match=r"pose_errors: give both shifts_est and shifts_true"):
        pose_errors(R, R, torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"pose_errors: shifts_est and shifts_true must have shape \(4, 2\)"):
        pose_errors(R, R, torch.zeros(4, 3), torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"pose_errors: rotations_est must be rotation matrices"):
        pose_errors(2 * R, R)
