"""The two training aids of issue 6: the frequency curriculum (loss radius as a function of the
step) and multi-hypothesis (winner-take-all) pose heads. References: the analytic schedule, a
model configured with the smaller radius, the physics projector (poses known), exact resume."""
import pytest
import torch
from torch import nn

import orbitcore as oc
from orbitcore.amortized import AmortizedModel, TrainConfig, Trainer, fourier_l2, loss_radius
from orbitcore.geometry import random_rotations, s2s2_to_matrix
from orbitcore.nn import PoseEncoder
from orbitcore.physics import Projector


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ frequency curriculum
def test_loss_radius_schedule_values():
    # hold 10 steps at 3, then linear to 7 over 20 steps, then 7
    f = lambda s: loss_radius(s, 7.0, 3.0, hold=10, ramp=20)  # noqa: E731
    assert [f(s) for s in (0, 5, 9)] == [3.0, 3.0, 3.0]
    assert f(10) == 3.0 and f(15) == pytest.approx(4.0) and f(20) == pytest.approx(5.0)
    assert f(29) == pytest.approx(3.0 + 4.0 * 19 / 20) and f(30) == 7.0 and f(10_000) == 7.0
    assert all(f(s) <= f(s + 1) for s in range(40))  # non-decreasing
    assert loss_radius(0, 7.0) == 7.0 and loss_radius(123, 7.0, None, 5, 5) == 7.0  # no curriculum
    assert loss_radius(4, 7.0, 2.0, hold=4, ramp=0) == 7.0  # ramp 0: a step change
    with pytest.raises(ValueError, match="loss_radius: start must be <= radius = 7"):
        loss_radius(0, 7.0, 8.0)
    with pytest.raises(ValueError, match="loss_radius: step"):
        loss_radius(-1, 7.0, 3.0)


def test_train_config_curriculum_validation(tmp_path):
    with pytest.raises(ValueError, match="TrainConfig: radius_start"):
        TrainConfig(radius_start=0.0)
    with pytest.raises(ValueError, match="TrainConfig: radius_ramp"):
        TrainConfig(radius_start=2.0, radius_ramp=-1)
    with pytest.raises(ValueError, match="TrainConfig: radius_hold = 5 and radius_ramp = 0 need radius_start"):
        TrainConfig(radius_hold=5)
    c = TrainConfig(radius_start=2, radius_hold=3, radius_ramp=4)
    assert (c.radius_start, c.radius_hold, c.radius_ramp) == (2.0, 3, 4)


@pytest.fixture(scope="module")
def tiny(small_stack):
    return small_stack(40, seed=3)


SMALL = {"channels": (4, 8), "hidden": (16,), "filters": 2}


def test_trainer_rejects_a_start_radius_beyond_the_model(tiny):
    with pytest.raises(ValueError, match="Trainer: radius_start must be <= the model's radius 5"):
        Trainer(tiny, {"radius": 5.0, **SMALL}, {"radius_start": 6.0, "num_workers": 0}, verbose=False)


def test_forward_at_a_smaller_radius_equals_a_model_built_with_it():
    # forward(radius=r) of a full-radius model == forward of the same weights configured with r
    n, r = 16, 3.5
    full = AmortizedModel.create(n, init_scale=1.0, seed=3, **SMALL).double().eval()
    small = AmortizedModel.create(n, init_scale=1.0, seed=3, radius=r, **SMALL).double().eval()
    small.load_state_dict(full.state_dict())
    x = torch.randn(6, n, n, generator=_gen(1), dtype=torch.float64)
    a, b = full(x, radius=r), small(x)
    torch.testing.assert_close(a.per_image, b.per_image, rtol=1e-12, atol=0)
    assert not torch.allclose(full(x).per_image, a.per_image)  # the radius does change the loss
    assert full.loss_mask(r).sum() < full.loss_mask().sum()
    with pytest.raises(ValueError, match=r"AmortizedModel: radius must be in \(0, 7\]"):
        full(x, radius=7.5)


def test_curriculum_resume_is_exact_and_history_follows_the_schedule(tiny, tmp_path):
    cfg = {"steps": 9, "batch_size": 8, "num_workers": 0, "checkpoint_every": 0, "lr": 1e-3, "log_every": 1,
           "radius_start": 2.0, "radius_hold": 2, "radius_ramp": 5}
    model = {"pose_heads": 3, **SMALL}
    a = Trainer(tiny, model, cfg, tmp_path / "a", verbose=False)
    a.fit(4)
    ckpt = a.save_checkpoint(tmp_path / "step4.pt")
    a.fit(9)
    b = Trainer.resume(ckpt, out_dir=tmp_path / "b", verbose=False)
    assert b.step == 4 and b.radius_at() == pytest.approx(loss_radius(4, 7.0, 2.0, 2, 5))
    b.fit(9)
    for (k, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(x, y), k
    assert [h["loss"] for h in a.history if h["step"] > 4] == [h["loss"] for h in b.history if h["step"] > 4]
    # entry of step s (after s steps) records the radius used by its last step, s - 1
    assert [h["radius"] for h in a.history] == [loss_radius(h["step"] - 1, 7.0, 2.0, 2, 5) for h in a.history]


# ------------------------------------------------------------------ learning-rate drop
def _encoder_vector(tr):
    return torch.cat([p.detach().flatten() for p in tr.model.encoder_parameters()])


def test_learning_rate_drop_schedule_and_validation():
    c = TrainConfig(steps=10, lr_drop=0.1, drop_fraction=0.5)
    assert [c.lr_factor(s) for s in range(10)] == [1.0] * 5 + [0.1] * 5
    const = TrainConfig(steps=10)                      # the default: the papers' constant rate
    assert const.lr_drop == 1.0 and {const.lr_factor(s) for s in range(20)} == {1.0}
    assert TrainConfig(steps=7, lr_drop=0.5, drop_fraction=0.0).lr_factor(0) == 0.5
    for bad, match in (({"lr_drop": 0.0}, "TrainConfig: lr_drop must be > 0"),
                       ({"lr_drop": 1.5}, r"TrainConfig: lr_drop must be in \(0, 1\]"),
                       ({"drop_fraction": 1.2}, r"TrainConfig: drop_fraction must be in \[0, 1\], got 1.2"),
                       ({"drop_fraction": -0.1}, "TrainConfig: drop_fraction must be >= 0")):
        with pytest.raises(ValueError, match=match):
            TrainConfig(**bad)


def test_learning_rate_drop_reaches_adam_and_resume_is_exact(tiny, tmp_path):
    cfg = {"steps": 8, "batch_size": 8, "num_workers": 0, "checkpoint_every": 0, "lr": 1e-3, "log_every": 1,
           "decoder_lr": 2e-3, "lr_drop": 0.1, "drop_fraction": 0.5}
    a = Trainer(tiny, SMALL, cfg, tmp_path / "a", verbose=False)
    const = Trainer(tiny, SMALL, {**cfg, "lr_drop": 1.0}, tmp_path / "c", verbose=False)
    a.fit(3)
    ckpt = a.save_checkpoint(tmp_path / "step3.pt")
    const.fit(4)
    a.fit(4)
    assert [g["lr"] for g in a.optimizer.param_groups] == [1e-3, 2e-3]   # steps 0-3 at the full rates
    for (k, x), (_, y) in zip(a.model.state_dict().items(), const.model.state_dict().items()):
        assert torch.equal(x, y), k                                        # identical before the drop
    a.fit(8)
    const.fit(8)
    assert [g["lr"] for g in a.optimizer.param_groups] == pytest.approx([1e-4, 2e-4])
    assert [h["lr_factor"] for h in a.history] == [1.0] * 4 + [0.1] * 4
    assert not torch.equal(_encoder_vector(a), _encoder_vector(const))     # and different after it
    b = Trainer.resume(ckpt, out_dir=tmp_path / "b", verbose=False)
    b.fit(8)
    for (k, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(x, y), k
    # extending a run past its drop keeps the drop where it happened (step 4), and the continuation is
    # exactly the uninterrupted run with that schedule
    ext = Trainer.resume(a.save_checkpoint(tmp_path / "step8.pt"), steps=12, out_dir=tmp_path / "e", verbose=False)
    assert [ext.config.lr_factor(s) for s in (3, 4, 11)] == [1.0, 0.1, 0.1]
    ext.fit(12)
    ref = Trainer(tiny, SMALL, {**cfg, "steps": 12, "drop_fraction": 4 / 12}, tmp_path / "r", verbose=False)
    ref.fit(12)
    for (k, x), (_, y) in zip(ext.model.state_dict().items(), ref.model.state_dict().items()):
        assert torch.equal(x, y), k
    early = Trainer.resume(ckpt, steps=12, verbose=False)    # at step 3, before the drop: it moves with the steps
    assert [early.config.lr_factor(s) for s in (5, 6)] == [1.0, 0.1]
    # a change that would alter the rate of a step already done is refused: at step 3, steps=4 would put
    # the drop at step 2
    with pytest.raises(ValueError, match="Trainer.resume: steps=4: the learning-rate drop .* would move from step 4 "
                                         "to 2, and the run is at step 3"):
        Trainer.resume(ckpt, steps=4, verbose=False)
    Trainer.resume(tmp_path / "step8.pt", steps=8, num_workers=0, verbose=False)  # same steps: fine
    # without a drop (lr_drop = 1) any steps are fine, shorter than the steps done included
    flat = Trainer(tiny, SMALL, {**cfg, "lr_drop": 1.0}, verbose=False)
    flat.fit(3)
    assert Trainer.resume(flat.save_checkpoint(tmp_path / "flat3.pt"), steps=2, verbose=False).config.steps == 2


def test_learning_rate_drop_moves_the_weights_less(tiny, tmp_path):
    # the rate really reaches the update: over the same four steps from the same state, Adam's
    # displacement (~lr per parameter and step) is ~10x smaller with lr_drop = 0.1 from step 0
    cfg = {"steps": 4, "batch_size": 8, "num_workers": 0, "checkpoint_every": 0, "lr": 1e-3, "log_every": 1}
    runs = {}
    for drop in (1.0, 0.1):
        tr = Trainer(tiny, SMALL, {**cfg, "lr_drop": drop, "drop_fraction": 0.0}, verbose=False)
        w0 = _encoder_vector(tr)
        tr.fit()
        runs[drop] = float((_encoder_vector(tr) - w0).abs().mean())
    assert 5.0 < runs[1.0] / runs[0.1] < 20.0, runs


# ------------------------------------------------------------------ multi-hypothesis heads
def test_pose_encoder_heads_shape_and_validation():
    enc = PoseEncoder(16, channels=(4, 8), hidden=(16,), heads=5)
    R, t = enc(torch.randn(3, 16, 16, generator=_gen(2)))
    assert R.shape == (3, 5, 3, 3) and t.shape == (3, 2)
    eye = torch.eye(3).expand(3, 5, 3, 3)
    torch.testing.assert_close(R.transpose(-1, -2) @ R, eye, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(3, 5), atol=1e-5, rtol=0)
    assert PoseEncoder(16, channels=(4,), hidden=(8,))(torch.randn(2, 16, 16))[0].shape == (2, 3, 3)
    with pytest.raises(ValueError, match="PoseEncoder: heads"):
        PoseEncoder(16, heads=0)
    with pytest.raises(ValueError, match="ModelConfig: pose_heads"):
        AmortizedModel.create(16, pose_heads=0)


class FixedHypotheses(nn.Module):
    """Stand-in encoder: K given rotations per input (learnable), zero shifts."""

    def __init__(self, R):  # (2B, K, 3, 3)
        super().__init__()
        self.K = R.shape[1]
        self.a = nn.Parameter(oc.geometry.matrix_to_s2s2(R.reshape(-1, 3, 3)).clone())

    def forward(self, x):
        R = s2s2_to_matrix(self.a).view(x.shape[0], self.K, 3, 3)
        return R, torch.zeros(x.shape[0], 2, dtype=R.dtype)


@pytest.mark.parametrize("good", [(0, 2), (1, 1)])  # (path: 0 direct / 1 rotated, head)
def test_multi_head_loss_is_the_min_over_heads_and_paths(good):
    # two images of known poses; K = 3 hypotheses per path, one of the 2K is the truth. The loss
    # must equal the min over the 2K candidates computed independently with the projector, the
    # reported pose and head are the winner's, and only the winner gets gradient.
    n, K, B = 16, 3, 2
    vol = oc.physics.pseudo_molecule(n, n_atoms=60, seed=5).double()
    Rt = random_rotations(B, generator=_gen(7), dtype=torch.float64)
    P = Projector(vol)
    images = P(Rt)
    Rz = torch.diag(torch.tensor([-1.0, -1.0, 1.0], dtype=torch.float64))
    hyp = random_rotations(2 * B * K, generator=_gen(8), dtype=torch.float64).view(2 * B, K, 3, 3).clone()
    path, head = good
    for b in range(B):
        hyp[path * B + b, head] = Rt[b] @ Rz if path else Rt[b]
    model = AmortizedModel.create(n, decoder="voxel", shifts="none", pose_heads=K).double()
    with torch.no_grad():
        model.decoder.volume_real.copy_(vol)
    model.encoder = FixedHypotheses(hyp).double()
    out = model(images)
    # reference: every candidate rendered by the projector, the images rotated by pi for path 1
    Y = oc.fourier.fft2c(torch.cat((images, oc.physics.rotate180(images))))
    mask = model.loss_mask()
    ref = torch.stack([fourier_l2(Y, oc.fourier.fft2c(P(hyp[:, k])), mask) for k in range(K)], 1)  # (2B, K)
    cand = torch.cat((ref[:B], ref[B:]), 1)  # (B, 2K): direct heads, then rotated heads
    torch.testing.assert_close(out.per_image, cand.min(1).values, rtol=1e-6, atol=1e-12)
    assert out.flipped.tolist() == [bool(path)] * B and out.head.tolist() == [head] * B
    torch.testing.assert_close(out.rotations, Rt, rtol=0, atol=1e-9)
    assert float(out.loss.detach()) < 1e-6 * float(cand.max())
    with torch.no_grad():  # move the winners off the optimum so that they have a gradient
        model.encoder.a.add_(0.01)
    model(images).loss.backward()
    g = model.encoder.a.grad.view(2 * B, K, 6).abs().sum(-1)
    win = torch.zeros(2 * B, K, dtype=torch.bool)
    win[path * B:(path + 1) * B, head] = True
    assert bool((g[win] > 0).all()) and float(g[~win].sum()) == 0.0


def test_grouped_whitening_whitens_each_hypothesis_on_its_own():
    # groups = 3 over 12 features == three independent 4-feature whitenings (reference), in
    # training and in evaluation mode
    from orbitcore.nn import BatchWhitening

    g = _gen(4)
    x = torch.randn(64, 12, generator=g, dtype=torch.float64) @ torch.randn(12, 12, generator=g, dtype=torch.float64)
    w = BatchWhitening(12, groups=3, momentum=0.5, eps=1e-3).double()
    refs = [BatchWhitening(4, momentum=0.5, eps=1e-3).double() for _ in range(3)]
    for _ in range(2):
        y = w(x)
        torch.testing.assert_close(y, torch.cat([r(x[:, 4 * i:4 * i + 4]) for i, r in enumerate(refs)], 1))
    for blk in range(3):  # each block: zero mean, ~identity covariance (eps)
        yb = y[:, 4 * blk:4 * blk + 4]
        torch.testing.assert_close(yb.mean(0), torch.zeros(4, dtype=torch.float64), atol=1e-10, rtol=0)
        torch.testing.assert_close(torch.cov(yb.T), torch.eye(4, dtype=torch.float64), atol=0.05, rtol=0)
    w.eval()
    [r.eval() for r in refs]
    torch.testing.assert_close(w(x), torch.cat([r(x[:, 4 * i:4 * i + 4]) for i, r in enumerate(refs)], 1))
    with pytest.raises(ValueError, match="BatchWhitening: d = 12 must be a multiple of groups"):
        BatchWhitening(12, groups=5)


def test_recalibrate_statistics_uses_the_final_weights_and_leaves_the_model_alone(tiny):
    from orbitcore.amortized import recalibrate_statistics
    from orbitcore.nn import BatchWhitening

    tr = Trainer(tiny, {"pose_heads": 2, **SMALL}, {"steps": 3, "batch_size": 8, "num_workers": 0,
                                                    "checkpoint_every": 0}, verbose=False)
    tr.fit()
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    m = recalibrate_statistics(tr.model, tr.stack, batch_size=len(tr.stack))  # one batch: its statistics
    for k, v in tr.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not m.training
    # reference: the whitening layer's input over the whole stack (images and their pi-rotated
    # copies), its mean and per-group covariance
    w = [x for x in m.encoder.modules() if isinstance(x, BatchWhitening)][0]
    x = m.rotation_layer(tr.stack.images(list(range(len(tr.stack)))).float())
    with torch.no_grad():
        m.train()
        h = m.encoder.rotation_head[:-1](m.encoder.embed(x))
        m.eval()
    torch.testing.assert_close(w.running_mean, h.mean(0), rtol=1e-5, atol=1e-6)
    hc = (h - h.mean(0)).view(-1, 2, 6).transpose(0, 1)
    torch.testing.assert_close(w.running_cov, hc.transpose(1, 2) @ hc / (h.shape[0] - 1), rtol=1e-4, atol=1e-6)


def test_cli_passes_pose_heads_and_curriculum(tiny, tmp_path):
    from orbitcore.amortized import load_checkpoint
    from orbitcore.cli import main

    out = tmp_path / "run"
    assert main(["amortized", "train", "--particles", str(tiny), "--out", str(out), "--steps", "4", "--channels", "4",
                 "8", "--batch-size", "8", "--workers", "0", "--quiet", "--pose-heads", "3", "--no-whiten",
                 "--radius-start", "2.5", "--radius-hold", "1", "--radius-ramp", "2"]) == 0
    st = load_checkpoint(out / "checkpoint.pt")
    assert st["model_config"]["pose_heads"] == 3 and st["model_config"]["whiten_rotation"] is False
    tc = st["train_config"]
    assert (tc["radius_start"], tc["radius_hold"], tc["radius_ramp"]) == (2.5, 1, 2)
    assert [h["radius"] for h in st["history"] if "radius" in h] == [7.0]  # log_every 10: the last step's

    out = tmp_path / "run_drop"
    assert main(["amortized", "train", "--particles", str(tiny), "--out", str(out), "--steps", "4", "--channels", "4",
                 "8", "--batch-size", "8", "--workers", "0", "--quiet", "--lr-drop", "0.2", "--drop-fraction", "0.5"]) == 0
    tc = load_checkpoint(out / "checkpoint.pt")["train_config"]
    assert (tc["lr_drop"], tc["drop_fraction"]) == (0.2, 0.5)
