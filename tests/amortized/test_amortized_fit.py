"""Fitting tiny noiseless datasets (issue 6: "the model fits, poses recovered").

The reference is the simulator's ground truth (poses and volume), independent of the model.

* fast: the physics gradient drives the encoder to the exact poses. The voxel decoder holds the
  true volume (frozen); the particles' rotations lie within 30° of the identity and the
  encoder starts at the identity, i.e. inside the basin of the image loss. Checks that the loss
  falls by orders of magnitude and the predicted rotations match the truth to ~1°, with no
  global alignment needed (the volume fixes the frame).
* slow: encoder-only pose inference *from scratch* over uniformly random poses (true volume
  frozen, random encoder): with 16 pose hypotheses per image (winner-take-all) and the
  frequency curriculum the encoder finds the poses of 512 images to a few degrees; a single
  head does not (docs/evidence/amortized/README.md).
* slow: the joint fit from scratch (random volume, random encoder, uniformly random poses, 512
  noiseless 16² images): with 16 whitened pose hypotheses per image, the frequency curriculum
  (radius 3 px, then up to full), the learning rates dropped 10× halfway, and normalisation
  statistics re-estimated at the end, the poses come out to ~4° median after the global
  rotation/handedness alignment (8000 steps, ~8 min on one thread). With one head, or without
  whitening, they stay near random; without the curriculum the test bed gives the same (4.6°,
  docs/evidence/amortized/README.md). Without the drop the outcome depends on the CPU: 5.2° on
  an Intel Xeon, but on an AMD EPYC the same seed kept switching between 9° and 25° (17.6° at
  step 8000); with the drop it settles (3.6° there).
"""
import math

import pytest
import torch

import orbitcore as oc
from orbitcore.amortized import Trainer, predict_poses

SMALL = {"channels": (8, 16, 32), "hidden": (64,), "filters": 3}
N, D = 64, 16


def _near_identity_rotations(n: int, max_deg: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    axis = torch.nn.functional.normalize(torch.randn(n, 3, generator=g, dtype=torch.float64), dim=-1)
    angle = math.radians(max_deg) * torch.rand(n, generator=g, dtype=torch.float64)
    return oc.geometry.axis_angle_to_matrix(axis, angle)


@pytest.fixture(scope="module")
def noiseless(tmp_path_factory):
    d = tmp_path_factory.mktemp("noiseless")
    vol = oc.physics.pseudo_molecule(D, n_atoms=40, seed=4)
    R = _near_identity_rotations(N, 30.0, seed=5)
    oc.physics.simulate_particles(vol, N, pixel_size=3.0, ctf=False, viewing=R, out=d / "p.star", seed=2)
    return d / "p.star", vol


def _trainer(star, steps, **model):
    cfg = {"steps": steps, "batch_size": 32, "num_workers": 0, "use_ctf": False, "lr": 1e-3,
           "checkpoint_every": 0, "log_every": 10, "seed": 0}
    return Trainer(star, {"decoder": "voxel", "shifts": "none", "symmetric": False, "whiten_rotation": False,
                          **SMALL, **model}, cfg, verbose=False)


def _angles(pred, truth):
    return oc.metrics.rotation_angle(pred["rotations"].double().transpose(1, 2) @ truth.double())


def test_tiny_noiseless_fit_encoder_recovers_exact_poses_through_the_physics(noiseless):
    torch.set_num_threads(1)
    star, vol = noiseless
    tr = _trainer(star, 160)
    with torch.no_grad():
        tr.model.decoder.volume_real.copy_(vol / tr.stack.std)  # the stack is RMS-normalised
        head = tr.model.encoder.rotation_head[-1]
        head.weight.mul_(0.1)
        head.bias.copy_(torch.tensor([1.0, 0, 0, 0, 1, 0]))  # s2s2 of the identity
    tr.model.decoder.volume_real.requires_grad_(False)
    before = predict_poses(tr.model, tr.stack, use_ctf=False)
    assert _angles(before, tr.stack.rotations).median() > 5.0
    tr.fit()
    after = predict_poses(tr.model, tr.stack, use_ctf=False)
    assert float(before["loss"].mean()) / float(after["loss"].mean()) > 100.0
    ang = _angles(after, tr.stack.rotations)
    assert float(ang.median()) < 3.0, ang
    assert float(ang.max()) < 10.0, ang


TESTBED = {"decoder": "voxel", "shifts": "none", "symmetric": True, "pose_heads": 16, "channels": (16, 32, 64),
           "hidden": (128,), "filters": 3}


def _uniform_noiseless(path, n=16, images=512):
    vol = oc.physics.pseudo_molecule(n).float()
    oc.physics.simulate_particles(vol, images, pixel_size=8.0, ctf=False, out=path / "p.star", seed=1)
    return path / "p.star", vol


@pytest.fixture(scope="module")
def joint_fit(tmp_path_factory):
    # the joint recipe (scripts/amortized_pose_testbed.py --heads 16 --whiten 1 --radius-start 3
    # --hold 1000 --ramp 1000 --steps 8000 --lr-drop 0.1 --drop-fraction 0.5): random volume,
    # random encoder, uniform poses
    torch.set_num_threads(1)
    star, _ = _uniform_noiseless(tmp_path_factory.mktemp("joint"))
    cfg = {"steps": 8000, "batch_size": 32, "num_workers": 0, "use_ctf": False, "lr": 1e-3, "checkpoint_every": 0,
           "seed": 0, "radius_start": 3.0, "radius_hold": 1000, "radius_ramp": 1000, "lr_drop": 0.1,
           "drop_fraction": 0.5}
    tr = Trainer(star, {**TESTBED, "whiten_rotation": True}, cfg, verbose=False)
    before = predict_poses(tr.model, tr.stack, use_ctf=False)
    tr.fit()
    return tr, before, predict_poses(tr.model, tr.stack, use_ctf=False, recalibrate=True)


@pytest.mark.slow
def test_tiny_noiseless_joint_fit_loss_falls_by_orders_of_magnitude(joint_fit):
    tr, before, after = joint_fit
    assert float(before["loss"].mean()) / float(after["loss"].mean()) > 50.0


@pytest.mark.slow
def test_tiny_noiseless_joint_fit_recovers_poses_up_to_global_rotation(joint_fit):
    # from scratch: 16 pose hypotheses per image, whitened heads, frequency curriculum, and the
    # normalisation statistics re-estimated with the final weights before predicting
    tr, _, after = joint_fit
    pe = oc.metrics.pose_errors(after["rotations"], tr.stack.rotations)  # global rotation + handedness
    assert pe.rotation_median_angle < 8.0
    assert float((pe.per_image_angle < 15.0).float().mean()) > 0.8


@pytest.mark.slow
def test_encoder_from_scratch_finds_uniform_poses_with_pose_heads_and_curriculum(tmp_path):
    # the recipe of the test bed (scripts/amortized_pose_testbed.py --frozen --heads 16 --whiten 0
    # --radius-start 3 --hold 600 --ramp 400 --steps 1400): noiseless 16² projections at
    # uniformly random rotations, true volume frozen, encoder from random weights
    torch.set_num_threads(1)
    star, vol = _uniform_noiseless(tmp_path)
    cfg = {"steps": 1400, "batch_size": 32, "num_workers": 0, "use_ctf": False, "lr": 1e-3, "checkpoint_every": 0,
           "seed": 0, "radius_start": 3.0, "radius_hold": 600, "radius_ramp": 400}
    tr = Trainer(star, {**TESTBED, "whiten_rotation": False}, cfg, verbose=False)
    with torch.no_grad():
        tr.model.decoder.volume_real.copy_(vol / tr.stack.std)
    tr.model.decoder.volume_real.requires_grad_(False)
    before = _angles(predict_poses(tr.model, tr.stack, use_ctf=False), tr.stack.rotations)
    assert float(before.median()) > 60.0
    tr.fit()
    ang = _angles(predict_poses(tr.model, tr.stack, use_ctf=False), tr.stack.rotations)  # no alignment needed
    assert float(ang.median()) < 7.0, ang
    assert float((ang < 15.0).float().mean()) > 0.85, ang
