"""``orbitcore mom-mra``: the method of moments with a neural-network prior for multireference
alignment (seeds/000 §5.1).

  orbitcore mom-mra simulate     draw a signal/density pair and N noisy observations (.npy)
  orbitcore mom-mra train        supervised phase: train the encoders, write a checkpoint
  orbitcore mom-mra reconstruct  observations or moments in; signal and density out (.npy)
                                 plus a PNG of truth vs estimate and the error curves

Example:
  orbitcore mom-mra simulate --n 32 --gaussians 2 --N 1000000 --sigma 1 --out mra-demo
  orbitcore mom-mra train --n 32 --gaussians 2 --train-size 8192 --epochs 30 --checkpoint enc.pt
  orbitcore mom-mra reconstruct --observations mra-demo/observations.npy --sigma 1 \\
      --checkpoint enc.pt --truth mra-demo/truth.npz --out mra-rec
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np
import torch

from ..io import atomic_path


def _save_npy(path: pathlib.Path, arr) -> None:
    with atomic_path(path, suffix=".npy") as tmp:
        with open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to a name
            np.save(f, np.asarray(arr))


def _save_npz(path: pathlib.Path, **arrays) -> None:
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()})


def _save_json(path: pathlib.Path, doc: dict) -> None:
    with atomic_path(path, suffix=".json") as tmp:
        tmp.write_text(json.dumps(doc, indent=1))


def _load_npz(fn: str, path, keys: tuple[str, ...]) -> dict:
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{fn}: {path}: no such file")
    with np.load(path) as z:
        missing = [k for k in keys if k not in z.files]
        if missing:
            raise ValueError(f"{fn}: {path} must contain arrays {', '.join(keys)}; missing {', '.join(missing)}")
        return {k: z[k] for k in keys}


# ------------------------------------------------------------------------------------------------
def cmd_simulate(a) -> int:
    from . import mra  # noqa: PLC0415

    out = pathlib.Path(a.out)
    gen = torch.Generator().manual_seed(a.seed)
    v, rho = mra.random_instances(a.n, a.gaussians, 1, generator=gen)
    v, rho = v[0], rho[0]
    N = a.N
    obs_path = out / "observations.npy"
    with atomic_path(obs_path, suffix=".npy") as tmp:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(N, a.n))
        done = 0
        from tqdm.auto import tqdm  # noqa: PLC0415

        with tqdm(total=N, unit="obs", unit_scale=True, desc="simulate", disable=a.quiet) as bar:
            for b in mra.iter_observations(v, rho, N, a.sigma, batch_size=65536, generator=gen):
                arr[done:done + b.shape[0]] = b.numpy()
                done += b.shape[0]
                bar.update(b.shape[0])
        arr.flush()
        del arr
    _save_npz(out / "truth.npz", v=v.numpy(), rho=rho.numpy(), sigma=np.float64(a.sigma))
    if not a.quiet:
        print(f"wrote {obs_path} ({N} x {a.n}, sigma {a.sigma:g}) and {out / 'truth.npz'}")
    return 0


def cmd_train(a) -> int:
    from . import mra  # noqa: PLC0415

    cfg = mra.TrainConfig(n=a.n, n_gaussians=a.gaussians, epochs=a.epochs, batch_size=a.batch_size,
                          train_size=None if a.train_size == 0 else a.train_size,
                          steps_per_epoch=a.steps_per_epoch, test_size=a.test_size, lrs=tuple(a.lr),
                          seed=a.seed)
    tr = mra.train_supervised(cfg, checkpoint=a.checkpoint, resume=not a.no_resume,
                              checkpoint_every=a.checkpoint_every, verbose=not a.quiet)
    test = tr.evaluate("test")
    doc = {"config": mra._config_dict(tr.config), "epoch": tr.epoch, "test": test}
    if tr.config.train_size is not None:
        doc["train"] = tr.evaluate("train", limit=a.test_size)
    _save_json(pathlib.Path(a.checkpoint).with_suffix(".json"), doc)
    if not a.quiet:
        print(f"epoch {tr.epoch}: test errors (eq. 21) rho {test['rho']:.4f}, v {test['v']:.4f} "
              f"(trivial predictor {test['trivial_rho']:.4f}, {test['trivial_v']:.4f}); "
              f"checkpoint {a.checkpoint}")
    return 0


def _moments_from_args(a, mra):
    if (a.observations is None) == (a.moments is None):
        raise ValueError("mom-mra reconstruct: give exactly one of --observations or --moments")
    if a.moments is not None:
        z = _load_npz("mom-mra reconstruct", a.moments, ("M1", "M2"))
        return torch.from_numpy(z["M1"]).to(torch.complex128), torch.from_numpy(z["M2"]).to(torch.complex128), None
    if a.sigma is None:
        raise ValueError("mom-mra reconstruct: --observations needs --sigma (the known noise level)")
    path = pathlib.Path(a.observations)
    if not path.is_file():
        raise FileNotFoundError(f"mom-mra reconstruct: {path}: no such file")
    obs = np.load(path, mmap_mode="r")
    if obs.ndim != 2:
        raise ValueError(f"mom-mra reconstruct: {path} must hold an (N, n) array of observations, got shape {obs.shape}")
    B = 65536
    batches = (np.asarray(obs[i:i + B], dtype=np.float64) for i in range(0, obs.shape[0], B))
    M1, M2, N = mra.data_moments(batches, obs.shape[1], a.sigma, total=obs.shape[0], verbose=not a.quiet)
    return M1, M2, N


def cmd_reconstruct(a) -> int:
    from . import mra  # noqa: PLC0415
    from ._plots import plot_reconstruction  # noqa: PLC0415

    out = pathlib.Path(a.out)
    M1, M2, N = _moments_from_args(a, mra)
    n = M1.shape[0]
    truth = None
    if a.truth is not None:
        z = _load_npz("mom-mra reconstruct", a.truth, ("v", "rho"))
        truth = (torch.from_numpy(z["v"]).double(), torch.from_numpy(z["rho"]).double())
    if a.checkpoint is not None and a.random_encoder:
        raise ValueError("mom-mra reconstruct: give --checkpoint or --random-encoder, not both")
    if a.checkpoint is None and not a.random_encoder:
        raise ValueError("mom-mra reconstruct: give --checkpoint (a pretrained encoder) or --random-encoder")
    enc = mra.load_encoder(a.checkpoint) if a.checkpoint is not None else None
    label = "pretrained encoder" if enc is not None else "random encoder"
    rec = mra.reconstruct(M1, M2, enc, iters=a.iters, lr=a.lr, lam=a.lam, truth=truth, seed=a.seed,
                          verbose=not a.quiet)
    results = {label: rec}
    if a.baseline_restarts > 0:
        results["classical (no network)"] = mra.fit_moments_classical(
            M1, M2, restarts=a.baseline_restarts, iters=a.iters, lam=a.lam, truth=truth, generator=a.seed,
            verbose=not a.quiet)
    if N is not None:
        _save_npz(out / "moments.npz", M1=M1.numpy(), M2=M2.numpy(), N=np.int64(N), sigma=np.float64(a.sigma))
    _save_npy(out / "v.npy", rec.v.double().numpy())
    _save_npy(out / "rho.npy", rec.rho.double().numpy())
    _save_npy(out / "v_hat.npy", rec.v_hat.numpy())
    doc = {"n": n, "observations": N, "lam": a.lam, "iters": a.iters, "lr": a.lr,
           "results": {k: {"loss": r.loss, "shift": r.shift, "history": r.history,
                           "restart_losses": r.restart_losses} for k, r in results.items()}}
    _save_json(out / "history.json", doc)
    png = None
    try:
        png = plot_reconstruction(out / "reconstruction.png", results, truth,
                                  title=f"MRA method of moments, n = {n}" + (f", N = {N}" if N else ""))
    except ImportError:
        print("matplotlib is not installed: no PNG (pip install orbitcore[plot])", file=sys.stderr)
    if not a.quiet:
        msg = f"{label}: final loss (eq. 26) {rec.loss:.4g}"
        if truth is not None:
            msg += f", errors (eq. 21) v {rec.history['v_error'][-1]:.4f}, rho {rec.history['rho_error'][-1]:.4f}"
        print(msg)
        print(f"wrote {out}/v.npy, rho.npy, v_hat.npy, history.json" + (", reconstruction.png" if png else ""))
    return 0


# ------------------------------------------------------------------------------------------------
def register(sub) -> None:
    p = sub.add_parser("mom-mra", help="method of moments with a neural-network prior for MRA (seeds/000)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    s = p.add_subparsers(dest="mom_mra_command", metavar="<step>")
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])

    q = s.add_parser("simulate", help="draw (v, rho) and N noisy observations (eq. 23)")
    q.add_argument("--n", type=int, default=32, help="signal length (default 32)")
    q.add_argument("--gaussians", type=int, default=2, help="Gaussians per signal and density (default 2)")
    q.add_argument("--N", type=int, default=100000, help="number of observations (default 1e5)")
    q.add_argument("--sigma", type=float, default=1.0, help="noise standard deviation (default 1)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--out", default="mra-sim", help="output directory: observations.npy, truth.npz")
    q.add_argument("--quiet", action="store_true")
    q.set_defaults(func=cmd_simulate)

    t = s.add_parser("train", help="supervised phase (§5.1.1): train the encoders, write a checkpoint")
    t.add_argument("--n", type=int, default=32, help="signal length (default 32)")
    t.add_argument("--gaussians", type=int, default=2, help="Gaussians per signal and density (default 2)")
    t.add_argument("--epochs", type=int, default=30, help="epochs (default 30)")
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--train-size", type=int, default=8192,
                   help="training pairs drawn once from the seed; 0: fresh pairs every step (default 8192)")
    t.add_argument("--steps-per-epoch", type=int, default=100, help="steps per epoch with --train-size 0")
    t.add_argument("--test-size", type=int, default=1024, help="held-out pairs for the test error")
    t.add_argument("--lr", type=float, nargs=3, default=[1e-4, 1e-5, 1e-6], metavar=("LR1", "LR2", "LR3"),
                   help="learning rates of the three thirds of the epochs (default: the paper's 1e-4 1e-5 1e-6)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--checkpoint", required=True, help="checkpoint path (resumed if it exists)")
    t.add_argument("--checkpoint-every", type=int, default=1, help="epochs between checkpoints")
    t.add_argument("--no-resume", action="store_true", help="start over even if the checkpoint exists")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=cmd_train)

    r = s.add_parser("reconstruct", help="reconstruction phase (§5.1.2): moments -> signal and density")
    r.add_argument("--observations", help="(N, n) .npy of noisy observations (memory-mapped, streamed)")
    r.add_argument("--sigma", type=float, help="known noise standard deviation of the observations")
    r.add_argument("--moments", help=".npz with complex M1 (n,) and M2 (n, n) (library convention)")
    r.add_argument("--checkpoint", help="pretrained encoder (from `mom-mra train`)")
    r.add_argument("--random-encoder", action="store_true", help="refine a randomly initialised encoder")
    r.add_argument("--truth", help=".npz with the true v and rho (for errors and the plot)")
    r.add_argument("--iters", type=int, default=3000, help="refinement iterations (default 3000)")
    r.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (default 1e-4)")
    r.add_argument("--lam", type=float, default=1.0, help="lambda of eq. 26 (paper normalisation; default 1)")
    r.add_argument("--baseline-restarts", type=int, default=0,
                   help="also run the classical moment fit with this many random restarts")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--out", default="mra-reconstruction", help="output directory")
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(func=cmd_reconstruct)
