"""``orbitcore mom-mra simulate / train / reconstruct`` end to end on a tiny problem."""
import json

import numpy as np
import pytest
import torch

from orbitcore import cli, fourier
from orbitcore.mom import mra


def run(*argv):
    return cli.main(["--threads", "1", *argv])


def test_simulate_train_reconstruct(tmp_path, capsys):
    sim, ck, out = tmp_path / "sim", tmp_path / "enc.pt", tmp_path / "rec"
    assert run("mom-mra", "simulate", "--n", "12", "--gaussians", "1", "--N", "30000", "--sigma", "0.5",
               "--seed", "3", "--out", str(sim), "--quiet") == 0
    obs = np.load(sim / "observations.npy")
    truth = np.load(sim / "truth.npz")
    assert obs.shape == (30000, 12) and obs.dtype == np.float32
    assert float(truth["rho"].sum()) == pytest.approx(1.0)
    # the observations are shifted copies of v plus noise of the requested level: the mean power
    # is ||v||^2 / n + sigma^2
    assert float((obs.astype(np.float64) ** 2).mean()) == pytest.approx(
        float((truth["v"] ** 2).mean()) + 0.25, rel=0.03)

    assert run("mom-mra", "train", "--n", "12", "--gaussians", "1", "--epochs", "3", "--train-size", "128",
               "--test-size", "64", "--lr", "3e-3", "1e-3", "3e-4", "--checkpoint", str(ck), "--quiet") == 0
    summary = json.loads(ck.with_suffix(".json").read_text())
    assert summary["epoch"] == 3 and set(summary["test"]) >= {"v", "rho", "trivial_v", "trivial_rho"}

    assert run("mom-mra", "reconstruct", "--observations", str(sim / "observations.npy"), "--sigma", "0.5",
               "--checkpoint", str(ck), "--truth", str(sim / "truth.npz"), "--iters", "20", "--lr", "1e-3",
               "--baseline-restarts", "1", "--out", str(out), "--quiet") == 0
    for f in ("v.npy", "rho.npy", "v_hat.npy", "moments.npz", "history.json", "reconstruction.png"):
        assert (out / f).is_file(), f
    v, rho, vh = np.load(out / "v.npy"), np.load(out / "rho.npy"), np.load(out / "v_hat.npy")
    assert v.shape == (12,) and rho.shape == (12,) and np.allclose(vh, fourier.fft1c(v))
    # the moments it wrote are those of the observations (eq. 24, direct float64)
    mom = np.load(out / "moments.npz")
    X = fourier.fft1c(torch.from_numpy(obs.astype(np.float64)))
    assert np.allclose(mom["M1"], X.mean(0).numpy(), atol=1e-9)
    hist = json.loads((out / "history.json").read_text())
    res = hist["results"]["pretrained encoder"]
    assert len(res["history"]["loss"]) == 21 and len(res["history"]["v_error"]) == 21
    assert "classical (no network)" in hist["results"]

    # moments in, random encoder
    out2 = tmp_path / "rec2"
    assert run("mom-mra", "reconstruct", "--moments", str(out / "moments.npz"), "--random-encoder",
               "--iters", "5", "--out", str(out2), "--quiet") == 0
    assert (out2 / "v.npy").is_file() and not (out2 / "moments.npz").exists()


def test_cli_errors_are_clear(tmp_path, capsys):
    assert run("mom-mra", "reconstruct", "--random-encoder", "--out", str(tmp_path)) == 1
    assert "give exactly one of --observations or --moments" in capsys.readouterr().err
    np.save(tmp_path / "obs.npy", np.zeros((10, 8), dtype=np.float32))
    assert run("mom-mra", "reconstruct", "--observations", str(tmp_path / "obs.npy"), "--random-encoder") == 1
    assert "--observations needs --sigma" in capsys.readouterr().err
    np.savez(tmp_path / "m.npz", M1=np.zeros(8, dtype=complex))
    assert run("mom-mra", "reconstruct", "--moments", str(tmp_path / "m.npz"), "--random-encoder") == 1
    assert "must contain arrays M1, M2; missing M2" in capsys.readouterr().err
    assert run("mom-mra", "reconstruct", "--moments", str(tmp_path / "none.npz"), "--random-encoder") == 1
    assert "no such file" in capsys.readouterr().err
    M1, M2 = mra.population_moments(*[t[0] for t in mra.random_instances(8, 1, 1, generator=0)])
    np.savez(tmp_path / "good.npz", M1=M1.numpy(), M2=M2.numpy())
    assert run("mom-mra", "reconstruct", "--moments", str(tmp_path / "good.npz")) == 1
    assert "give --checkpoint (a pretrained encoder) or --random-encoder" in capsys.readouterr().err
    assert run("mom-mra", "train", "--checkpoint", str(tmp_path / "c.pt"), "--epochs", "0") == 1
    assert "TrainConfig: epochs must be >= 1, got 0" in capsys.readouterr().err
