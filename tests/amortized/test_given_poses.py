"""Training on given poses (``TrainConfig.objective="poses"``): the encoder amortizes poses found
otherwise (e.g. by the search), the decoder fits the map at them."""
import json

import pytest
import starfile
import torch

import orbitcore as oc
from orbitcore.amortized import AmortizedModel, TrainConfig, Trainer, load_checkpoint, predict_poses
from orbitcore.amortized.losses import fourier_l2
from orbitcore.cli import main
from orbitcore.geometry import random_rotations
from orbitcore.metrics import rotation_angle
from orbitcore.physics import CTFParams
from orbitcore.physics.transforms import rotate180

SMALL = {"channels": (4, 8), "hidden": (16,), "filters": 2}
RZ_PI = torch.diag(torch.tensor([-1.0, -1.0, 1.0], dtype=torch.float64))


@pytest.fixture(scope="module")
def tiny(small_stack):
    """48 CTF-modulated, shifted, lightly noisy 16² projections with their true poses in the STAR file."""
    return small_stack(48).parent


def test_rotated_copy_target_is_the_pi_rotated_pose():
    # The identity behind the π-rotated copy's target (R* Rz(π), −t*): the model image at that
    # pose is the π rotation of the model image at (R*, t*), CTF included (float64).
    torch.manual_seed(0)
    m = AmortizedModel.create(16, **SMALL).double()
    with torch.no_grad():
        m.decoder.volume_real.copy_(oc.physics.pseudo_molecule(16, n_atoms=30, seed=1).double())
    R = random_rotations(5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    t = torch.randn(5, 2, dtype=torch.float64)
    ctf = CTFParams.create(torch.full((5,), 15000.0), torch.full((5,), 14000.0), torch.linspace(0, 90, 5),
                           pixel_size=3.0).evaluate(16, dtype=torch.float64)
    with torch.no_grad():
        direct = m.decode(R, t, ctf)
        rotated = m.decode(R @ RZ_PI, -t, ctf)
    torch.testing.assert_close(rotated, rotate180(direct), atol=1e-10, rtol=0)
    # and a wrong target (R* itself) is not an equivalent choice
    assert (m.decode(R, -t, ctf) - rotate180(direct)).abs().max() > 1e-2


def test_given_pose_losses_against_a_direct_computation():
    # pose loss: mean over heads and both copies of ‖R − R*‖²_F + ‖t − t*‖², the rotated copy
    # against (R* Rz(π), −t*); image loss: eq. 8 at (R*, t*) — recomputed here in float64 from
    # the encoder's and the decoder's outputs
    torch.manual_seed(1)
    m = AmortizedModel.create(16, pose_heads=3, **SMALL).double().eval()
    x = torch.randn(4, 16, 16, dtype=torch.float64)
    R_t = random_rotations(4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    t_t = torch.randn(4, 2, dtype=torch.float64)
    d, e = m.given_pose_losses(x, R_t, t_t)
    R_a, t_a = m.encode(x)
    R_b, t_b = m.encode(rotate180(x))
    da = (R_a - R_t[:, None]).square().sum((-1, -2)).mean(1) + (t_a - t_t).square().sum(-1)
    db = (R_b - (R_t @ RZ_PI)[:, None]).square().sum((-1, -2)).mean(1) + (t_b + t_t).square().sum(-1)
    torch.testing.assert_close(d, (da + db) / 2, atol=1e-10, rtol=0)
    ref = fourier_l2(oc.fourier.fft2c(x), m.decode(R_t, t_t), m.loss_mask())
    torch.testing.assert_close(e, ref, atol=1e-10, rtol=0)
    # the poses carry no gradient; the encoder gets the pose loss only, the decoder the image loss only
    R_req = R_t.clone().requires_grad_(True)
    d, e = m.given_pose_losses(x, R_req, t_t)
    d.sum().backward(retain_graph=True)
    assert all(p.grad is None for p in m.decoder_parameters())
    assert R_req.grad is None
    m.zero_grad()
    e.sum().backward()
    assert all(p.grad is None for p in m.encoder_parameters())
    assert m.decoder.volume_real.grad.abs().sum() > 0


def test_training_on_given_poses_learns_them_and_the_map(tiny, tmp_path):
    # The file's poses (here the simulation's) are learnt: the encoder's own predictions for
    # both copies of each image, and the model's symmetric choice, come close to them; the
    # decoder's map fits the images at them. (48 images, 300 steps: memorised, 8–15° here.)
    d = tiny
    tr = Trainer(d / "p.star", {"pose_heads": 2, **SMALL},
                 {"steps": 300, "batch_size": 16, "num_workers": 0, "lr": 3e-3, "checkpoint_every": 0,
                  "objective": "poses"}, tmp_path / "run", verbose=False)
    stack = tr.stack
    truth = stack.rotations  # the simulation's poses, as the STAR file holds them
    before = predict_poses(tr.model, stack)
    tr.fit()
    h = tr.history
    assert "pose_loss" in h[0] and h[-1]["pose_loss"] < 0.1 * h[0]["pose_loss"]
    assert h[-1]["loss"] < 0.5 * h[0]["loss"]
    after = predict_poses(tr.model, stack)
    err0 = rotation_angle(before["rotations"], truth).median()
    err = rotation_angle(after["rotations"], truth)
    assert err0 > 60 and err.median() < 20, (float(err0), float(err.median()))
    # the π-rotated copies' own predictions, reported for the image as given (R_b Rz(π))
    model = tr.model.eval()
    with torch.no_grad():
        R_b, _ = model.encode(rotate180(stack.images(list(range(len(stack)))).float()),
                              oc.amortized.train._stack_ctf(stack, torch.arange(len(stack)), 16))
    err_b = rotation_angle(R_b[:, 0].double() @ RZ_PI, truth)
    assert err_b.median() < 25, float(err_b.median())  # a wrong target (R*) would put these near 180°
    # shifts in pixels, against the file's
    assert (after["shifts"] - stack.shifts).norm(dim=-1).median() < 0.6
    # the checkpoint records the objective, and a resumed run keeps it
    ck = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ck["train_config"]["objective"] == "poses"


def test_given_poses_resume_reproduces_the_next_steps_exactly(tiny, tmp_path):
    d = tiny
    cfg = {"steps": 9, "batch_size": 8, "num_workers": 0, "checkpoint_every": 0, "lr": 1e-3, "objective": "poses"}
    a = Trainer(d / "p.star", SMALL, cfg, tmp_path / "a", verbose=False)
    a.fit(4)
    ckpt = a.save_checkpoint(tmp_path / "step4.pt")
    a.fit(9)
    b = Trainer.resume(ckpt, out_dir=tmp_path / "b", verbose=False)
    assert b.config.objective == "poses"
    b.fit(9)
    for (k, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(x, y), k
    la = [(h["loss"], h["pose_loss"]) for h in a.history if h["step"] > 4]
    lb = [(h["loss"], h["pose_loss"]) for h in b.history if h["step"] > 4]
    assert la == lb and len(la) > 0


def test_given_poses_bad_inputs(tiny, tmp_path):
    d = tiny
    with pytest.raises(ValueError, match=r"TrainConfig.*objective must be one of \['images', 'poses'\], got 'pose'"):
        TrainConfig(objective="pose")
    # a particle file without poses
    doc = starfile.read(d / "p.star", always_dict=True)
    parts = doc["particles"].drop(columns=["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"])
    starfile.write({"optics": doc["optics"], "particles": parts}, tmp_path / "noposes.star")
    for mrcs in d.glob("*.mrcs"):
        (tmp_path / mrcs.name).symlink_to(mrcs)
    with pytest.raises(ValueError, match=r"Trainer: .*noposes.star: objective='poses' learns the particle file's "
                                         r"poses, and it has none"):
        Trainer(tmp_path / "noposes.star", SMALL, {"objective": "poses", "num_workers": 0}, verbose=False)
    m = AmortizedModel.create(16, **SMALL)
    x = torch.randn(3, 16, 16)
    with pytest.raises(ValueError,
                       match=r"given_pose_losses: rotations must be a real \(3, 3, 3\) tensor .*got \(2, 3, 3\)"):
        m.given_pose_losses(x, torch.eye(3).expand(2, 3, 3), None)
    with pytest.raises(ValueError,
                       match=r"given_pose_losses: shifts must be a \(3, 2\) tensor in pixels or None, got \(3,\)"):
        m.given_pose_losses(x, torch.eye(3).expand(3, 3, 3), torch.zeros(3))
    with pytest.raises(ValueError, match=r"AmortizedModel: images must be a real tensor \(B, 16, 16\)"):
        m.given_pose_losses(torch.randn(3, 8, 8), torch.eye(3).expand(3, 3, 3))


def test_cli_train_on_given_poses(tiny, tmp_path):
    d = tiny
    out = tmp_path / "run"
    assert main(["amortized", "train", "--particles", str(d / "p.star"), "--out", str(out), "--steps", "4",
                 "--objective", "poses", "--channels", "4", "8", "--batch-size", "8", "--workers", "0",
                 "--quiet"]) == 0
    assert load_checkpoint(out / "checkpoint.pt")["train_config"]["objective"] == "poses"
    hist = json.loads((out / "history.json").read_text())
    assert all(h["pose_loss"] > 0 for h in hist if "loss" in h)
    assert (out / "poses.star").is_file()
