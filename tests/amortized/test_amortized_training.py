"""Amortized training: exact resume, evaluation output (STAR conventions against the simulator's
ground truth), bad inputs, the command line."""
import json
import pathlib

import numpy as np
import pytest
import torch
from torch import nn

import orbitcore as oc
from orbitcore.amortized import AmortizedModel, TrainConfig, Trainer, evaluate, load_checkpoint
from orbitcore.cli import main


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """48 CTF-modulated, shifted, lightly noisy 16² projections of a small pseudo-molecule."""
    d = tmp_path_factory.mktemp("tiny")
    vol = oc.physics.pseudo_molecule(16, n_atoms=40, seed=4)
    sim = oc.physics.simulate_particles(vol, 48, pixel_size=3.0, snr=10.0, shift_std=3.0, out=d / "p.star", seed=2)
    oc.io.write_mrc(d / "vol.mrc", vol.numpy(), voxel_size=3.0)
    return d, sim


SMALL = {"channels": (4, 8), "hidden": (16,), "filters": 2}


def _params(tr):
    return {k: v.detach().clone() for k, v in tr.model.state_dict().items()}


def _assert_same_state(a: Trainer, b: Trainer):
    for (k, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(x, y), k
    sa, sb = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        for name in sa[k]:
            assert torch.equal(sa[k][name], sb[k][name]), (k, name)
    assert (a.step, a.epoch, a.batch_in_epoch) == (b.step, b.epoch, b.batch_in_epoch)


@pytest.mark.parametrize("decoder,workers", [("voxel", 0), ("fouriernet", 1)])
def test_checkpoint_resume_reproduces_the_next_steps_exactly(tiny, tmp_path, decoder, workers):
    d, _ = tiny
    cfg = {"steps": 9, "batch_size": 8, "num_workers": workers, "checkpoint_every": 0, "lr": 1e-3}
    model = {"decoder": decoder, "fourier_hidden": 16, **SMALL}
    a = Trainer(d / "p.star", model, cfg, tmp_path / "a", verbose=False)
    a.fit(4)  # crosses no epoch boundary yet (6 batches per epoch)
    ckpt = a.save_checkpoint(tmp_path / "step4.pt")
    a.fit(9)  # continues through an epoch boundary
    b = Trainer.resume(ckpt, out_dir=tmp_path / "b", verbose=False)
    assert b.step == 4
    b.fit(9)
    _assert_same_state(a, b)
    # the history after the resume point is identical too (losses of the same batches)
    la = [h["loss"] for h in a.history if h["step"] > 4]
    lb = [h["loss"] for h in b.history if h["step"] > 4]
    assert la == lb and len(la) > 0
    # and training on differs from not having trained: the state did change after step 4
    c = Trainer.resume(ckpt, out_dir=tmp_path / "c", verbose=False)
    assert not all(torch.equal(x, y) for x, y in zip(c.model.state_dict().values(), a.model.state_dict().values()))


def test_epoch_order_depends_on_seed_and_epoch_only(tiny):
    d, _ = tiny
    tr = Trainer(d / "p.star", SMALL, {"batch_size": 8, "num_workers": 0}, verbose=False)
    o0, o1 = tr.sampler.order(0), tr.sampler.order(1)
    assert o0.shape == (6, 8)
    assert sorted(o0.reshape(-1).tolist()) == list(range(48))
    assert not torch.equal(o0, o1)
    tr2 = Trainer(d / "p.star", SMALL, {"batch_size": 8, "num_workers": 0}, verbose=False)
    assert torch.equal(tr2.sampler.order(1), o1)


def test_default_decoder_learning_rates(tiny):
    # voxel: 0.16 / n; FourierNet: 1e-4 whatever the encoder's rate; an explicit value wins
    d, _ = tiny
    from orbitcore.amortized.train import FOURIERNET_LR

    def rates(model, **tc):
        tr = Trainer(d / "p.star", {**SMALL, **model}, {"batch_size": 8, "num_workers": 0, **tc}, verbose=False)
        return {g["name"]: g["lr"] for g in tr.optimizer.param_groups}

    assert rates({}, lr=1e-3) == {"encoder": 1e-3, "decoder": pytest.approx(0.16 / 16)}
    assert rates({"decoder": "fouriernet", "fourier_hidden": 8}, lr=1e-3) == {"encoder": 1e-3,
                                                                              "decoder": FOURIERNET_LR}
    assert FOURIERNET_LR == 1e-4
    assert rates({"decoder": "fouriernet", "fourier_hidden": 8}, lr=1e-3, decoder_lr=3e-4)["decoder"] == 3e-4


def test_checkpoint_written_on_interrupt(tiny, tmp_path):
    d, _ = tiny
    tr = Trainer(d / "p.star", SMALL, {"steps": 50, "batch_size": 8, "num_workers": 0, "checkpoint_every": 0,
                                       "log_every": 1},
                 tmp_path, verbose=False)

    def interrupt(t):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tr.fit(callback=interrupt, callback_every=3)
    st = load_checkpoint(tmp_path / "checkpoint.pt")
    assert st["step"] == 3
    assert json.loads((tmp_path / "history.json").read_text())[-1]["step"] == 3


class TruePoses(nn.Module):
    """A stand-in encoder that returns the ground-truth poses of the images in stack order."""

    def __init__(self, R, t):
        super().__init__()
        self.R, self.t, self.i = R, t, 0
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        b = x.shape[0]
        R, t = self.R[self.i:self.i + b], self.t[self.i:self.i + b]
        self.i += b
        return R, t


def test_evaluate_writes_relion_poses_of_the_truth(tiny, tmp_path):
    # Downsampled training (size 12 < box 16): the encoder's shifts are in pixels of the small
    # images; the STAR file must hold origins in the original pixels, with R = A^T and t = -origin.
    d, sim = tiny
    tr = Trainer(d / "p.star", {"symmetric": False, **SMALL}, {"num_workers": 0}, size=12, verbose=False)
    scale = 12 / 16
    tr.model.encoder = TruePoses(sim.rotations, sim.shifts * scale)
    res = evaluate(tr, out_dir=tmp_path, batch_size=20, verbose=False)
    back = oc.io.read_star(tmp_path / "poses.star")
    torch.testing.assert_close(back.rotations(torch.float64), sim.rotations.double(), atol=1e-5, rtol=0)
    torch.testing.assert_close(back.shifts(torch.float64), sim.shifts.double(), atol=1e-5, rtol=0)
    orig = oc.io.read_star(d / "p.star")
    np.testing.assert_allclose(back.particles["rlnOriginXAngst"], orig.particles["rlnOriginXAngst"], atol=1e-4)
    # the image names resolve from the output folder (written relative to it): the same images
    assert back.particles["rlnImageName"].tolist() != orig.particles["rlnImageName"].tolist()
    torch.testing.assert_close(oc.io.ParticleStack(tmp_path / "poses.star").images(range(5)),
                               oc.io.ParticleStack(d / "p.star").images(range(5)), rtol=0, atol=0)
    # pose errors against the file's poses are zero, and the summary/volume files exist
    assert res.pose_errors.rotation_median_sq_frobenius < 1e-8 and res.pose_errors.shift_mse < 1e-8
    assert res.volume.shape == (12, 12, 12)
    summary = json.loads((tmp_path / "evaluation.json").read_text())
    assert summary["n_particles"] == 48 and summary["pose_errors"]["mirror"] is False
    vol, vs = oc.io.read_mrc(tmp_path / "volume.mrc")
    assert vol.shape == (12, 12, 12) and abs(vs - 4.0) < 1e-6  # 3 Å · 16/12


def test_evaluate_fsc_against_reference(tiny, tmp_path):
    # a model whose volume is the (downsampled) truth gives FSC ~ 1 after alignment
    d, _ = tiny
    tr = Trainer(d / "p.star", SMALL, {"num_workers": 0}, verbose=False)
    ref, _ = oc.io.read_mrc(d / "vol.mrc")
    with torch.no_grad():
        tr.model.decoder.volume_real.copy_(torch.from_numpy(ref))
    res = evaluate(tr, out_dir=tmp_path, reference=d / "vol.mrc", verbose=False)
    assert res.fsc.curve[1:6].min() > 0.99
    assert (tmp_path / "fsc.png").is_file()


def test_bad_inputs_give_clear_errors(tiny, tmp_path):
    d, _ = tiny
    star = (d / "p.star").read_text()
    # 1. a STAR file without CTF columns, trained with the CTF
    import starfile

    blocks = starfile.read(d / "p.star", always_dict=True)
    parts = blocks["particles"].drop(columns=["rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"])
    (tmp_path / "p.mrcs").write_bytes((d / "p.mrcs").read_bytes())
    starfile.write({"optics": blocks["optics"], "particles": parts}, tmp_path / "noctf.star")
    with pytest.raises(ValueError, match="Trainer: .*noctf.star: the particle file has no CTF parameters"):
        Trainer(tmp_path / "noctf.star", SMALL, {"num_workers": 0}, verbose=False)
    # a phase-flipping encoder needs the CTF: in training, in evaluation and in recalibration
    with pytest.raises(ValueError, match="Trainer: encoder_input='phase_flipped' corrects .* needs use_ctf=True"):
        Trainer(d / "p.star", {**SMALL, "encoder_input": "phase_flipped"}, {"num_workers": 0, "use_ctf": False},
                verbose=False)
    from orbitcore.amortized import predict_poses, recalibrate_statistics
    from orbitcore.io import ParticleStack

    pf = AmortizedModel.create(16, encoder_input="phase_flipped", **SMALL)
    with pytest.raises(ValueError, match="predict_poses: .*CTF-corrected .* needs use_ctf=True"):
        predict_poses(pf, ParticleStack(d / "p.star"), use_ctf=False)
    with pytest.raises(ValueError, match="recalibrate_statistics: .*CTF-corrected.* no CTF parameters"):
        recalibrate_statistics(pf, ParticleStack(tmp_path / "noctf.star"))
    # without origins, shifts='known' cannot work
    parts2 = blocks["particles"].drop(columns=["rlnOriginXAngst", "rlnOriginYAngst"])
    starfile.write({"optics": blocks["optics"], "particles": parts2}, tmp_path / "noorigin.star")
    with pytest.raises(ValueError, match="shifts='known' needs rlnOriginX/Y"):
        Trainer(tmp_path / "noorigin.star", {"shifts": "known", **SMALL}, {"num_workers": 0}, verbose=False)
    # 2. a STAR file naming a stack that does not exist
    (tmp_path / "missing.star").write_text(star.replace("@p.mrcs", "@gone.mrcs"))
    with pytest.raises(FileNotFoundError, match="gone.mrcs"):
        Trainer(tmp_path / "missing.star", SMALL, verbose=False)
    # 3. a truncated MRCS stack
    sub = tmp_path / "trunc"
    sub.mkdir()
    data = (d / "p.mrcs").read_bytes()
    (sub / "p.mrcs").write_bytes(data[: len(data) - 700])
    (sub / "p.star").write_text(star)
    with pytest.raises(ValueError, match="p.mrcs"):
        Trainer(sub / "p.star", SMALL, verbose=False)
    # 4. a STAR file that is not one
    (tmp_path / "junk.star").write_text("this is not a star file\n\x00\x01")
    with pytest.raises(ValueError, match="junk.star"):
        Trainer(tmp_path / "junk.star", SMALL, verbose=False)
    # 5. model / stack size mismatch, bad configuration values
    with pytest.raises(ValueError, match="Trainer: the model's image size n = 32 differs from the stack's 16"):
        Trainer(d / "p.star", AmortizedModel.create(32), verbose=False)
    with pytest.raises(ValueError, match="TrainConfig: batch_size must be >= 1"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="TrainConfig: lr must be > 0"):
        TrainConfig(lr=0.0)
    # 6. checkpoints: missing and foreign files
    with pytest.raises(FileNotFoundError, match="load_checkpoint: .*nope.pt: no such checkpoint file"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an orbitcore amortized checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    (tmp_path / "broken.pt").write_bytes(b"\x80\x02garbage")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "broken.pt")
    # 7. a reference map of the wrong box
    tr = Trainer(d / "p.star", SMALL, {"num_workers": 0}, verbose=False)
    oc.io.write_mrc(tmp_path / "small.mrc", np.zeros((8, 8, 8), np.float32))
    with pytest.raises(ValueError, match="evaluate: .*small.mrc: the reference box 8 is smaller than the reconstruction's 16"):
        evaluate(tr, reference=tmp_path / "small.mrc", verbose=False)


def test_cli_train_resume_evaluate(tiny, tmp_path, capsys):
    d, _ = tiny
    out = tmp_path / "run"
    common = ["--channels", "4", "8", "--batch-size", "8", "--workers", "0", "--quiet"]
    assert main(["amortized", "train", "--particles", str(d / "p.star"), "--out", str(out), "--steps", "3",
                 "--reference", str(d / "vol.mrc"), *common]) == 0
    for f in ("checkpoint.pt", "history.json", "poses.star", "volume.mrc", "evaluation.json", "fsc.png"):
        assert (out / f).is_file(), f
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 3
    # a second train into the same directory must not overwrite it silently
    assert main(["amortized", "train", "--particles", str(d / "p.star"), "--out", str(out), "--steps", "3",
                 *common]) == 1
    assert "pass --resume" in capsys.readouterr().err
    assert main(["amortized", "train", "--out", str(out), "--resume", "--steps", "5", "--workers", "0",
                 "--quiet"]) == 0
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 5
    assert main(["amortized", "evaluate", "--checkpoint", str(out / "checkpoint.pt"), "--out", str(tmp_path / "ev"),
                 "--quiet"]) == 0
    assert (tmp_path / "ev" / "poses.star").is_file()
    # projection matching from the (barely trained) model: outputs, per-round record, FSC
    assert main(["amortized", "refine", "--checkpoint", str(out / "checkpoint.pt"), "--out", str(tmp_path / "rf"),
                 "--rounds", "2", "--step", "30", "--reference", str(d / "vol.mrc"), "--quiet"]) == 0
    for f in ("poses.star", "volume.mrc", "refine.json", "fsc.png"):
        assert (tmp_path / "rf" / f).is_file(), f
    doc = json.loads((tmp_path / "rf" / "refine.json").read_text())
    assert [r["round"] for r in doc["rounds"]] == [1, 2] and doc["fsc_resolution_05_A"] > 0
    assert [r["search"] for r in doc["rounds"]] == ["global", "local"]
    # the state after every round: a one-round refinement continued with --resume to two rounds
    # ends where the two-round run ended; a rerun into the same --out needs --resume
    rr = tmp_path / "rr"
    assert (tmp_path / "rf" / "refine_state.pt").is_file()
    assert main(["amortized", "refine", "--checkpoint", str(out / "checkpoint.pt"), "--out", str(rr),
                 "--rounds", "1", "--step", "30", "--quiet"]) == 0
    assert main(["amortized", "refine", "--checkpoint", str(out / "checkpoint.pt"), "--out", str(rr),
                 "--rounds", "2", "--step", "30", "--quiet"]) == 1
    assert "pass --resume" in capsys.readouterr().err
    assert main(["amortized", "refine", "--checkpoint", str(out / "checkpoint.pt"), "--out", str(rr),
                 "--rounds", "2", "--step", "30", "--resume"]) == 0
    assert "continued from round 1" in capsys.readouterr().err
    doc_r = json.loads((rr / "refine.json").read_text())
    assert [r["round"] for r in doc_r["rounds"]] == [1, 2]
    assert [r["rot_median_angle_deg"] for r in doc_r["rounds"]] == [r["rot_median_angle_deg"] for r in doc["rounds"]]
    assert np.array_equal(oc.io.read_mrc(rr / "volume.mrc")[0], oc.io.read_mrc(tmp_path / "rf" / "volume.mrc")[0])
    assert main(["amortized", "refine", "--checkpoint", str(out / "checkpoint.pt"), "--out", str(tmp_path / "rn"),
                 "--resume", "--quiet"]) == 1
    assert "nothing to continue" in capsys.readouterr().err
    # --global-rounds: every round searches globally (the low-SNR setting)
    assert main(["amortized", "refine", "--checkpoint", str(out / "checkpoint.pt"), "--out", str(tmp_path / "rg"),
                 "--rounds", "2", "--global-rounds", "2", "--step", "30", "--quiet"]) == 0
    doc_g = json.loads((tmp_path / "rg" / "refine.json").read_text())
    assert [r["search"] for r in doc_g["rounds"]] == ["global", "global"]
    # --shift-search: the shifts are re-estimated (reported per round) and written in the file's units
    assert main(["amortized", "refine", "--checkpoint", str(out / "checkpoint.pt"), "--out", str(tmp_path / "rs"),
                 "--rounds", "1", "--step", "30", "--shift-search", "1.5", "--quiet"]) == 0
    doc_s = json.loads((tmp_path / "rs" / "refine.json").read_text())
    assert doc_s["rounds"][0]["mean_shift_change_px"] > 0 and doc["rounds"][0]["mean_shift_change_px"] == 0
    t_enc = oc.io.ParticleStack(tmp_path / "rf" / "poses.star").shifts  # opens from its own folder
    t_ref = oc.io.ParticleStack(tmp_path / "rs" / "poses.star").shifts
    assert not torch.allclose(t_enc, t_ref)
    assert main(["amortized", "refine", "--checkpoint", str(out / "checkpoint.pt"), "--out", str(tmp_path / "rs0"),
                 "--shift-search", "0.1", "--quiet"]) == 1
    assert "refine_poses: shift_search" in capsys.readouterr().err
    assert not (tmp_path / "rs0").exists()
    assert main(["amortized", "refine", "--checkpoint", str(out / "checkpoint.pt"), "--out", str(tmp_path / "rg0"),
                 "--global-rounds", "0", "--quiet"]) == 1
    assert "refine_poses: global_rounds" in capsys.readouterr().err
    assert not (tmp_path / "rg0").exists()
    assert 0 <= doc["rounds"][-1]["rot_median_angle_deg"] <= 180
    refined = oc.io.read_star(tmp_path / "rf" / "poses.star")
    assert refined.rotations().shape == (len(oc.io.read_star(d / "p.star")), 3, 3)
    assert main(["amortized", "refine", "--checkpoint", str(out / "checkpoint.pt"), "--out", str(tmp_path / "rf2"),
                 "--rounds", "0", "--quiet"]) == 1
    assert "refine_poses: rounds" in capsys.readouterr().err
    assert not (tmp_path / "rf2").exists()
    assert main(["amortized", "train", "--out", str(tmp_path / "x"), "--quiet"]) == 1
    assert "--particles is required" in capsys.readouterr().err
    # the Wiener encoder input and its ε reach the model (and its checkpoint)
    assert main(["amortized", "train", "--particles", str(d / "p.star"), "--out", str(tmp_path / "w"), "--steps", "1",
                 "--encoder-input", "wiener", "--wiener-eps", "0.01", *common]) == 0
    mc = load_checkpoint(tmp_path / "w" / "checkpoint.pt")["model_config"]
    assert mc["encoder_input"] == "wiener" and mc["wiener_eps"] == 0.01
    # FourierNet with grid scoring of its pose hypotheses: trains, and the setting is kept
    assert main(["amortized", "train", "--particles", str(d / "p.star"), "--out", str(tmp_path / "fg"), "--steps", "1",
                 "--decoder", "fouriernet", "--fourier-hidden", "8", "--pose-heads", "2", "--fourier-scoring", "grid",
                 *common]) == 0
    mc = load_checkpoint(tmp_path / "fg" / "checkpoint.pt")["model_config"]
    assert mc["fourier_scoring"] == "grid" and mc["pose_heads"] == 2


def test_cli_help_is_a_guide(capsys):
    with pytest.raises(SystemExit):
        main(["amortized", "train", "--help"])
    text = capsys.readouterr().out
    for needle in ("--particles", "--decoder", "voxel", "fouriernet", "symmetric", "--resume", "examples:",
                   "checkpoint.pt"):
        assert needle in text
    with pytest.raises(SystemExit):
        main(["amortized", "evaluate", "--help"])
    assert "poses.star" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["amortized", "refine", "--help"])
    text = capsys.readouterr().out
    for needle in ("--rounds", "--global-rounds", "--shift-search", "--step", "projection matching", "poses.star",
                   "refine.json", "examples:"):
        assert needle in text


def test_history_and_progress(tiny, tmp_path):
    d, _ = tiny
    tr = Trainer(d / "p.star", SMALL, {"steps": 4, "batch_size": 8, "num_workers": 0, "log_every": 2}, tmp_path,
                 verbose=False)
    hist = tr.fit()
    assert [h["step"] for h in hist] == [2, 4]
    assert all(h["images_per_s"] > 0 and np.isfinite(h["loss"]) for h in hist)
    assert pathlib.Path(tmp_path / "checkpoint.pt").is_file()


def test_phase_flipped_encoder_trains_and_evaluates(tiny):
    """The CTF reaches the encoder everywhere it runs: the training step, the recalibration pass
    and the evaluation (each would raise without it)."""
    from orbitcore.amortized import predict_poses

    d, _ = tiny
    tr = Trainer(d / "p.star", {**SMALL, "encoder_input": "phase_flipped"},
                 {"steps": 3, "batch_size": 8, "num_workers": 0}, verbose=False)
    tr.fit()
    assert tr.step == 3 and tr.history and all(np.isfinite(h["loss"]) for h in tr.history)
    pred = predict_poses(tr.model, tr.stack, batch_size=16, recalibrate=True)
    assert pred["rotations"].shape == (len(tr.stack), 3, 3) and torch.isfinite(pred["loss"]).all()
