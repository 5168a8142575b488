#!/usr/bin/env python
"""Evidence for orbitcore.amortized (issue 6) at the scale a shared 2-core CPU affords.

Stages (run all, or one with ``--stage``; each reads what the earlier ones wrote in ``--work``):

* ``data``: particles simulated with our simulator from the built-in chiral pseudo-molecule
  (``--n``² images, ``--images`` of them, uniform rotations, Gaussian shifts, CTF with
  log-normal defocus, SNR 0 dB and −10 dB), STAR + MRCS in ``--work``.
* ``tomo``: the "tomo" baseline of seeds/004 Fig. 3: direct Fourier inversion with the true
  poses, shifts and CTFs (:func:`orbitcore.physics.backproject`; the Wiener constant picked
  from a small sweep, the best FSC kept: an oracle).
* ``train``: one amortized run (``--decoder``, ``--loss``, ``--seed``, ``--snr-db``) for ``--steps``
  steps; every ``--eval-every`` steps the FSC resolution against the truth after alignment
  (handedness included) and the pose errors (median squared Frobenius after global rotation /
  handedness alignment, shift MSE) are recorded; at the end also
  :func:`orbitcore.metrics.mirror_symmetry` of the reconstruction. JSON per run.
* ``refine``: projection matching from a trained run's decoder map (``--from-tag``, a run of
  ``train``): the encoder's poses and shifts (:func:`orbitcore.amortized.evaluate`), then
  ``--rounds`` rounds of :func:`orbitcore.amortized.refine_poses` (maximum-likelihood rotations
  against the current map, global in round 1, local after; the encoder's shifts kept; the
  known CTFs), each round's pose errors and FSC against the truth recorded. Not amortized:
  the search the encoder is meant to replace, run once, after it. ``--refine-start random``:
  the same from a reconstruction with random poses and the *true* shifts, with
  ``--global-rounds`` global searches (projection matching without the amortized stage).
* ``report``: ``summary.json`` and the PNGs (FSC curves, ablation loss/resolution vs step).

Reproduce (what docs/evidence/amortized/ holds)::

    PYTHONPATH=python python scripts/amortized_evidence.py --stage data
    PYTHONPATH=python python scripts/amortized_evidence.py --stage tomo
    for d in voxel fouriernet; do for s in 0 -10; do
      PYTHONPATH=python python scripts/amortized_evidence.py --stage train --decoder $d --snr-db $s; done; done
    for seed in 0 1; do for l in l2 sym; do
      PYTHONPATH=python python scripts/amortized_evidence.py --stage train --decoder voxel --snr-db 0 --loss $l --seed $seed; done; done
    PYTHONPATH=python python scripts/amortized_evidence.py --stage report

With the from-scratch recipe of docs/evidence/amortized/README.md (what it holds now; the
commands above made ``v1/``)::

    PYTHONPATH=python python scripts/amortized_evidence.py --stage train --decoder voxel --snr-db 0 \
        --heads 16 --radius-start 3 --radius-hold 1500 --radius-ramp 1500 --steps 8000 --eval-every 1000 --tag _k16
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import time

import torch

import orbitcore as oc

ROOT = pathlib.Path(__file__).resolve().parent.parent
SNRS_DB = (0.0, -10.0)


def _write_json(path: pathlib.Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, path)


def _truth(n: int) -> torch.Tensor:
    return oc.physics.pseudo_molecule(n).double()


def _star(args, snr_db: float) -> pathlib.Path:
    return pathlib.Path(args.work) / f"sim_n{args.n}_N{args.images}_snr{snr_db:+.0f}dB" / "particles.star"


def stage_data(args) -> None:
    vol = _truth(args.n).float()
    for i, s in enumerate(SNRS_DB):
        p = _star(args, s)
        if p.exists():
            print("exists:", p)
            continue
        sim = oc.physics.simulate_particles(vol, args.images, pixel_size=args.pixel_size, snr_db=s,
                                            shift_std=args.shift_std, ctf=True, defocus_median=args.defocus,
                                            out=p, seed=100 + i)
        print(f"{p}: sigma {sim.sigma:.4g}, SNR {s} dB")


def stage_tomo(args) -> dict:
    from orbitcore.io import ParticleStack

    ref = _truth(args.n)
    out = {}
    for s in SNRS_DB:
        st = ParticleStack(str(_star(args, s)))
        imgs = st.images(list(range(len(st)))).float()
        best = None
        for lam in (1e-3, 1e-2, 1e-1, 1.0):
            v = oc.physics.backproject(imgs, st.rotations.float(), st.shifts.float(), st.ctf, regularization=lam)
            f = oc.metrics.fsc(ref, v.double(), args.pixel_size)
            print(f"tomo {s:+.0f} dB lambda {lam:g}: {f.resolution_05:.2f} A")
            if best is None or f.resolution_05 < best[1].resolution_05:
                best = (lam, f, v)
        lam, f, v = best
        out[f"{s:+.0f}dB"] = {"regularization": lam, "resolution_05_A": f.resolution_05,
                              "resolution_0143_A": f.resolution_0143, "resolution_05_px": f.resolution_05_px,
                              "fsc_curve": f.curve.tolist(), "frequencies": f.frequencies.tolist()}
    out["truth_mirror_symmetry"] = oc.metrics.mirror_symmetry(ref)
    _write_json(pathlib.Path(args.work) / "tomo.json", out)
    return out


@torch.no_grad()
def _predict(model, stack, rows: list[int]) -> dict:
    """Poses of the particles ``rows`` (eval mode, symmetric path choice, CTF applied), with the
    encoder's normalisation statistics re-estimated over the stack first
    (:func:`orbitcore.amortized.recalibrate_statistics`, on a copy)."""
    model = recalibrate_statistics(model, stack)
    was = model.training
    model.eval()
    R, t, fl = [], [], []
    for s in range(0, len(rows), 256):
        r = rows[s:s + 256]
        ctf = stack.ctf[torch.tensor(r)].evaluate(model.n, dtype=torch.float64).float()
        out = model(stack.images(r).float(), ctf)
        R.append(out.rotations), t.append(out.shifts), fl.append(out.flipped)
    model.train(was)
    return {"rotations": torch.cat(R), "shifts": torch.cat(t), "flipped": torch.cat(fl)}


def _measure(tr, ref, args) -> dict:
    st = tr.stack
    rows = list(range(min(args.eval_images, len(st))))
    pred = _predict(tr.model, st, rows)
    pe = oc.metrics.pose_errors(pred["rotations"], st.rotations[rows], pred["shifts"], st.shifts[rows])
    v = tr.model.volume().double()
    al = oc.metrics.align_volumes(ref, v, mirror=True, refine_size=None, return_aligned=True)
    f = oc.metrics.fsc(ref, al.aligned, args.pixel_size)
    return {"step": tr.step, "resolution_05_A": f.resolution_05, "resolution_05_px": f.resolution_05_px,
            "fsc_curve": f.curve.tolist(), "alignment_correlation": al.correlation, "alignment_mirror": al.mirror,
            "rot_median_sq_frobenius": pe.rotation_median_sq_frobenius,
            "rot_median_angle_deg": pe.rotation_median_angle, "shift_mse_px2": pe.shift_mse,
            "poses_mirror": pe.mirror, "flipped_fraction": float(pred["flipped"].float().mean())}


def stage_train(args) -> dict:
    torch.set_num_threads(args.threads)
    ref = _truth(args.n)
    tag = f"{args.decoder}_snr{args.snr_db:+.0f}dB_{args.loss}_seed{args.seed}{args.tag}"
    mc = {"decoder": args.decoder, "symmetric": args.loss == "sym", "shifts": "predict",
          "encoder_size": args.encoder_size, "channels": tuple(args.channels), "fourier_hidden": args.fourier_hidden,
          "fourier_scoring": args.fourier_scoring, "seed": args.seed, "max_shift": 3.0, "pose_heads": args.heads, "whiten_rotation": bool(args.whiten),
          "encoder_input": "wiener" if args.wiener else ("phase_flipped" if args.phase_flip else "raw"),
          "wiener_eps": args.wiener_eps}
    tc = {"steps": args.steps, "batch_size": args.batch, "lr": args.lr, "num_workers": 0, "use_ctf": True,
          "checkpoint_every": args.eval_every, "seed": args.seed, "log_every": 10, "radius_start": args.radius_start,
          "radius_hold": args.radius_hold, "radius_ramp": args.radius_ramp, "lr_drop": args.lr_drop,
          "drop_fraction": args.drop_fraction}
    # checkpoints (every --eval-every steps) and the evaluations so far live in work/ckpt/<tag>:
    # an interrupted run started again with the same arguments resumes exactly where it stopped
    ckpt_dir = pathlib.Path(args.work) / "ckpt" / tag
    partial = ckpt_dir / "evaluations.json"
    if (ckpt_dir / "checkpoint.pt").exists():
        tr = Trainer.resume(ckpt_dir / "checkpoint.pt", steps=args.steps, verbose=False)
        evals = json.loads(partial.read_text()) if partial.exists() else []
        evals = [e for e in evals if e["step"] <= tr.step]
        print(f"{tag}: resumed at step {tr.step}", flush=True)
    else:
        tr = Trainer(str(_star(args, args.snr_db)), mc, tc, out_dir=ckpt_dir, verbose=False)
        evals = []
    t0 = time.time()

    def cb(t):
        if evals and evals[-1]["step"] == t.step:
            return
        m = _measure(t, ref, args)
        evals.append(m)
        _write_json(partial, evals)
        loss = t.history[-1]["loss"] if t.history else float("nan")
        print(f"{tag} step {t.step}: loss {loss:.4f} res {m['resolution_05_A']:.1f} A "
              f"rot median angle {m['rot_median_angle_deg']:.1f} deg frob {m['rot_median_sq_frobenius']:.3f} "
              f"[{time.time() - t0:.0f} s]", flush=True)

    cb(tr)
    tr.fit(callback=cb, callback_every=args.eval_every)
    cb(tr)
    doc = {"tag": tag, "model": tr.model.config.to_dict(), "train": tr.config.to_dict(),
           "history": [h for h in tr.history if "loss" in h], "evaluations": evals,
           "mirror_symmetry": oc.metrics.mirror_symmetry(tr.model.volume().double()),
           "train_time_s": tr.elapsed, "wall_s": time.time() - t0}
    _write_json(pathlib.Path(args.work) / "runs" / f"{tag}.json", doc)
    return doc


def stage_refine(args) -> dict:
    from orbitcore.amortized import evaluate, refine_poses
    from orbitcore.io import ParticleStack

    torch.set_num_threads(args.threads)
    ref = _truth(args.n)
    ckpt = pathlib.Path(args.work) / "ckpt" / args.from_tag / "checkpoint.pt"
    if args.refine_start == "decoder":
        if not ckpt.exists():
            raise SystemExit(f"amortized_evidence: no checkpoint {ckpt} (train --tag ... first)")
        snr = float(args.from_tag.split("snr", 1)[1].split("dB", 1)[0])
    else:
        snr = args.snr_db
    st = ParticleStack(str(_star(args, snr)))
    imgs = st.images(list(range(len(st)))).double()
    if args.refine_start == "decoder":  # the amortized run's map, poses and shifts
        ev = evaluate(str(ckpt), verbose=False)
        R0, t, vol0 = ev.rotations.double(), ev.shifts.double(), ev.volume.double()
    else:  # the baseline without the amortized stage: random poses, the true shifts (an oracle)
        R0 = oc.geometry.random_rotations(len(st), generator=torch.Generator().manual_seed(args.seed),
                                          dtype=torch.float64)
        t = st.shifts.double()
        vol0 = oc.physics.backproject(imgs, R0, t, st.ctf, regularization=1.0)
    name = args.from_tag if args.refine_start == "decoder" else f"random_start_snr{snr:+.0f}dB_seed{args.seed}"
    if args.shift_search > 0:
        name += f"_shifts{args.shift_search:g}"
    rounds = []
    t0 = time.time()

    def record(r, R, vol):
        pe = oc.metrics.pose_errors(R, st.rotations, t, st.shifts)
        al = oc.metrics.align_volumes(ref, vol.double(), mirror=True, refine_size=None, return_aligned=True)
        f = oc.metrics.fsc(ref, al.aligned, args.pixel_size)
        e = {"round": r, "rot_median_angle_deg": pe.rotation_median_angle,
             "rot_median_sq_frobenius": pe.rotation_median_sq_frobenius,
             "frac_below_10deg": float((pe.per_image_angle < 10).double().mean()), "shift_mse_px2": pe.shift_mse,
             "resolution_05_A": f.resolution_05, "fsc_curve": f.curve.tolist(), "wall_s": time.time() - t0}
        rounds.append(e)
        print(f"{name} round {r}: rot median {e['rot_median_angle_deg']:.1f} deg "
              f"(frob {e['rot_median_sq_frobenius']:.3f}), res {e['resolution_05_A']:.1f} A [{e['wall_s']:.0f} s]",
              flush=True)
        return e

    record(0, R0, vol0)
    out = pathlib.Path(args.work) / "refined"
    out.mkdir(parents=True, exist_ok=True)
    # the state after every round: an interrupted run continues from its last finished round
    res = refine_poses(vol0, imgs, ctf=st.ctf, shifts=t, rounds=args.rounds, step=args.search_step,
                       global_rounds=args.global_rounds, shift_search=args.shift_search, callback=record,
                       checkpoint=out / f"{name}_state.pt")
    if res.resumed_rounds:
        print(f"{name}: rounds 1-{res.resumed_rounds} read from {out / f'{name}_state.pt'}", flush=True)
    rounds = rounds[:1] + res.history  # each round's record joined with refine_poses' own
    st.table.with_poses(res.rotations, res.shifts).write(out / f"{name}_poses.star")
    oc.io.write_mrc(out / f"{name}_volume.mrc", res.volume.float().numpy(), voxel_size=args.pixel_size)
    doc = {"tag": name, "start": args.refine_start, "search_step_deg": args.search_step,
           "global_rounds": args.global_rounds, "shift_search_px": args.shift_search,
           # the per-round shift_mse_px2 above is that of the input shifts; with --shift-search the final
           # shifts' error (plain mean squared difference from the truth, px²) is:
           "final_shift_mse_px2": float(((res.shifts - st.shifts.double()) ** 2).sum(1).mean()),
           "rounds": rounds, "history": res.history,
           "poses": str(out / f"{name}_poses.star"), "wall_s": time.time() - t0}
    if args.refine_start == "decoder":
        doc["checkpoint_step"] = torch.load(ckpt, map_location="cpu", weights_only=False)["step"]
    _write_json(out / f"{name}.json", doc)
    return doc


def stage_report(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    work, out = pathlib.Path(args.work), pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tomo = json.loads((work / "tomo.json").read_text())
    runs = {p.stem: json.loads(p.read_text()) for p in sorted((work / "runs").glob("*.json"))}
    summary = {"scale": {"n": args.n, "images": args.images, "pixel_size_A": args.pixel_size,
                         "shift_std_A": args.shift_std, "defocus_median_A": args.defocus, "snr_db": list(SNRS_DB),
                         "machine": "2-core shared CPU, 1 thread per run"},
               "tomo": {k: ({kk: vv for kk, vv in v.items() if kk not in ("fsc_curve", "frequencies")}
                            if isinstance(v, dict) else v) for k, v in tomo.items()},
               "runs": {}}
    for tag, r in runs.items():
        last = r["evaluations"][-1]
        summary["runs"][tag] = {"steps": r["train"]["steps"], "batch": r["train"]["batch_size"],
                                "train_time_s": r["train_time_s"], "final_loss": r["history"][-1]["loss"],
                                "mirror_symmetry": r["mirror_symmetry"],
                                **{k: v for k, v in last.items() if k != "fsc_curve"},
                                "initial": {k: v for k, v in r["evaluations"][0].items() if k != "fsc_curve"}}
    # a blurred map is nearly mirror-symmetric whatever it is: the truth low-passed to the
    # reconstructions' resolution is the fair yardstick of the mirror_symmetry diagnostic
    res = sorted(r["resolution_05_A"] for r in summary["runs"].values())
    res_mid = res[len(res) // 2]
    ref = _truth(args.n)
    k = oc.fourier.radial_frequency(args.n, 3, dtype=torch.float64)
    cut = args.n * args.pixel_size / res_mid  # Fourier pixels
    lp = oc.fourier.ifft3c(oc.fourier.fft3c(ref) * (k <= cut)).real
    summary["truth_mirror_symmetry"] = tomo["truth_mirror_symmetry"]
    summary["truth_lowpassed_mirror_symmetry"] = {"resolution_A": res_mid, "value": oc.metrics.mirror_symmetry(lp)}
    _write_json(out / "summary.json", summary)

    # FSC curves: final reconstructions vs the tomo baseline
    freqs = tomo["+0dB"]["frequencies"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, s in zip(axes, SNRS_DB):
        key = f"{s:+.0f}dB"
        ax.plot(freqs, tomo[key]["fsc_curve"], "k-", label=f"tomo (true poses) {tomo[key]['resolution_05_A']:.1f} Å")
        for tag, r in runs.items():
            if f"snr{key}" in tag and r["model"]["symmetric"] and r["model"]["seed"] == 0:
                e = r["evaluations"][-1]
                ax.plot(freqs, e["fsc_curve"], label=f"{r['model']['decoder']} {e['resolution_05_A']:.1f} Å")
        ax.axhline(0.5, color="grey", lw=0.5)
        ax.set_title(f"SNR {s:+.0f} dB, n={args.n}, {args.images} images")
        ax.set_xlabel("spatial frequency (1/Å)")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("FSC vs truth (after alignment)")
    fig.tight_layout()
    fig.savefig(out / "fsc.png", dpi=90)
    plt.close(fig)

    # ablation: voxel, 0 dB, L2 vs symmetric over seeds
    abl = {t: r for t, r in runs.items() if t.startswith("voxel_snr+0dB_")}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for i, (tag, r) in enumerate(abl.items()):
        c = ("C0", "C2", "C4")[i % 3] if r["model"]["symmetric"] else ("C3", "C1", "C5")[i % 3]
        ls = ["-", "--", ":"][r["model"]["seed"] % 3]
        variant = tag.split(f"seed{r['model']['seed']}", 1)[1].lstrip("_")  # the run's --tag
        lab = f"{'symmetric' if r['model']['symmetric'] else 'L2'} seed {r['model']['seed']} " \
              f"{variant + ' ' if variant else ''}(K={r['model'].get('pose_heads', 1)}, {r['train']['steps']} steps, " \
              f"mirror sym. {r['mirror_symmetry']:.2f})"
        axes[0].plot([h["step"] for h in r["history"]], [h["loss"] for h in r["history"]], c, ls=ls, label=lab)
        ev = r["evaluations"]
        axes[1].plot([e["step"] for e in ev], [e["resolution_05_A"] for e in ev], c, ls=ls, marker="o", label=lab)
        axes[2].plot([e["step"] for e in ev], [e["rot_median_angle_deg"] for e in ev], c, ls=ls, marker="o", label=lab)
    axes[0].set_ylabel("training loss")
    axes[1].set_ylabel("FSC=0.5 resolution (Å), lower is better")
    axes[1].axhline(tomo["+0dB"]["resolution_05_A"], color="k", lw=0.8, label="tomo (true poses)")
    axes[2].set_ylabel("median rotation error (deg), aligned")
    axes[2].axhline(126.5, color="grey", lw=0.5, label="uniformly random poses")
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.suptitle(f"symmetric loss vs L2 (voxel decoder, SNR 0 dB, n={args.n}); mirror symmetry of the truth "
                 f"{tomo['truth_mirror_symmetry']:.2f}, of the truth low-passed to {res_mid:.0f} Å "
                 f"{summary['truth_lowpassed_mirror_symmetry']['value']:.2f}")
    fig.tight_layout()
    fig.savefig(out / "ablation.png", dpi=90)
    plt.close(fig)
    ablation = {t: {"loss": [[h["step"], h["loss"]] for h in r["history"]],
                    "evaluations": [{k: v for k, v in e.items() if k != "fsc_curve"} for e in r["evaluations"]],
                    "mirror_symmetry": r["mirror_symmetry"]} for t, r in abl.items()}
    _write_json(out / "ablation.json", {"truth_mirror_symmetry": tomo["truth_mirror_symmetry"],
                                        "truth_lowpassed_mirror_symmetry": summary["truth_lowpassed_mirror_symmetry"],
                                        "runs": ablation})
    print(json.dumps(summary, indent=1))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=("data", "tomo", "train", "refine", "report"), required=True)
    p.add_argument("--work", default="/tmp/orbitcore-amortized-evidence", help="simulated data and run JSONs")
    p.add_argument("--out", default=str(ROOT / "docs" / "evidence" / "amortized"), help="report outputs")
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--images", type=int, default=4096)
    p.add_argument("--pixel-size", type=float, default=4.0)
    p.add_argument("--shift-std", type=float, default=4.0, help="Å (1 pixel at 4 Å)")
    p.add_argument("--defocus", type=float, default=15000.0, help="median defocus, Å")
    p.add_argument("--decoder", choices=("voxel", "fouriernet"), default="voxel")
    p.add_argument("--loss", choices=("sym", "l2"), default="sym")
    p.add_argument("--snr-db", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--eval-images", type=int, default=1024, help="pose errors over the first ... particles")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--encoder-size", type=int, default=16)
    p.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64, 128])
    p.add_argument("--fourier-hidden", type=int, default=64)
    p.add_argument("--fourier-scoring", choices=("exact", "grid"), default="exact",
                   help="ModelConfig.fourier_scoring: how FourierNet scores the competing paths")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--heads", type=int, default=1, help="rotation hypotheses per image (ModelConfig.pose_heads)")
    p.add_argument("--whiten", type=int, default=1, help="whitened rotation head (1) or not (0)")
    p.add_argument("--wiener", action="store_true",
                   help="the encoder sees CTF-Wiener-filtered images (ModelConfig.encoder_input='wiener')")
    p.add_argument("--wiener-eps", type=float, default=0.1, help="ε of the Wiener encoder input")
    p.add_argument("--phase-flip", action="store_true",
                   help="the encoder sees CTF-sign-flipped images (ModelConfig.encoder_input='phase_flipped')")
    p.add_argument("--radius-start", type=float, default=None, help="frequency curriculum: first loss radius (px)")
    p.add_argument("--radius-hold", type=int, default=0)
    p.add_argument("--radius-ramp", type=int, default=0)
    p.add_argument("--lr-drop", type=float, default=1.0, help="TrainConfig.lr_drop (1: constant rates)")
    p.add_argument("--drop-fraction", type=float, default=0.75, help="TrainConfig.drop_fraction")
    p.add_argument("--tag", default="", help="suffix of the run's name")
    p.add_argument("--from-tag", default="voxel_snr+0dB_sym_seed0_k16_long", help="refine: the trained run")
    p.add_argument("--rounds", type=int, default=3, help="refine: projection-matching rounds")
    p.add_argument("--search-step", type=float, default=7.5, help="refine: global SO(3) grid, degrees")
    p.add_argument("--global-rounds", type=int, default=1, help="refine: rounds that search globally")
    p.add_argument("--shift-search", type=float, default=0.0,
                   help="refine: re-estimate the shifts within this many pixels of the start's after every search "
                        "(refine_poses shift_search; 0: keep them)")
    p.add_argument("--refine-start", choices=("decoder", "random"), default="decoder",
                   help="refine: start from the trained run's map, poses and shifts, or (the baseline without the "
                        "amortized stage) from a reconstruction with random poses and the true shifts")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    stages = {"data": stage_data, "tomo": stage_tomo, "train": stage_train, "refine": stage_refine,
              "report": stage_report}
    stages[args.stage](args)


from orbitcore.amortized import Trainer, recalibrate_statistics  # noqa: E402

if __name__ == "__main__":
    main()
