#!/usr/bin/env python
"""Test bed for amortized pose inference from scratch (issue 6): tiny simulated data, one thread.

Simulates ``--images`` projections (uniform rotations) of the built-in pseudo-molecule at
``--n``: noiseless, centred and CTF-free unless ``--snr-db``, ``--shift-px`` or ``--ctf`` add
the differences of the documented-scale dataset one at a time. Then trains an
:class:`orbitcore.amortized.AmortizedModel` from a random encoder, either with the true volume frozen in the voxel decoder
(``--frozen``: encoder-only, the pose-inference problem alone) or jointly with a random
volume. Every ``--eval-every`` steps: the median rotation error over all particles after the
global rotation/handedness alignment of :func:`orbitcore.metrics.pose_errors` (with
``--frozen`` also the raw error, no alignment: the frozen volume fixes the frame). One JSON
line per run goes to ``--log``.

Example (frequency curriculum: radius 3 px for 200 steps, then linearly to full over 600)::

    PYTHONPATH=python python scripts/amortized_pose_testbed.py --frozen --steps 1000 \\
        --radius-start 3 --hold 200 --ramp 600

The recipe (16 whitened rotation heads) with the FourierNet decoder::

    PYTHONPATH=python python scripts/amortized_pose_testbed.py --heads 16 --steps 6000 \\
        --eval-every 1000 --decoder fouriernet --decoder-lr 1e-4
"""
from __future__ import annotations

import argparse
import json
import pathlib
import time

import torch
from _jsonl import append_jsonl

import orbitcore as oc
from orbitcore.amortized import Trainer, predict_poses, recalibrate_statistics


def data(args) -> pathlib.Path:
    extra = (f"_snr{args.snr_db:+g}dB" if args.snr_db is not None else "") + ("_ctf" if args.ctf else "") + \
        (f"_sh{args.shift_px:g}" if args.shift_px else "")
    p = pathlib.Path(args.work) / f"tb_n{args.n}_N{args.images}_s{args.data_seed}{extra}" / "p.star"
    if not p.exists():
        vol = oc.physics.pseudo_molecule(args.n).float()
        px = 32 * 4.0 / args.n
        oc.physics.simulate_particles(vol, args.images, pixel_size=px, ctf=args.ctf, snr_db=args.snr_db,
                                      shift_std=args.shift_px * px, out=p, seed=args.data_seed)
    return p


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/i6b")
    ap.add_argument("--log", default="/tmp/i6b/testbed.jsonl")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--data-seed", type=int, default=1)
    ap.add_argument("--snr-db", type=float, default=None, help="noise (default: noiseless)")
    ap.add_argument("--ctf", action="store_true", help="CTF-modulated images (default defocus distribution)")
    ap.add_argument("--shift-px", type=float, default=0.0,
                    help="std of the in-plane shifts in pixels (> 0: the translation head is trained too)")
    ap.add_argument("--frozen", action="store_true", help="true volume, frozen (encoder only)")
    ap.add_argument("--init-lowpass", type=float, default=None,
                    help="joint fit from an initial model: the truth low-passed to this radius (Fourier pixels)")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--decoder-lr", type=float, default=None,
                    help="decoder learning rate (default: the library's, 0.16/n for voxels, 1e-4 for FourierNet)")
    ap.add_argument("--radius-start", type=float, default=None)
    ap.add_argument("--hold", type=int, default=0)
    ap.add_argument("--ramp", type=int, default=0)
    ap.add_argument("--lr-drop", type=float, default=1.0,
                    help="factor on the learning rates from --drop-fraction x --steps on (1: constant)")
    ap.add_argument("--drop-fraction", type=float, default=0.75)
    ap.add_argument("--loss", choices=("sym", "l2"), default="sym")
    ap.add_argument("--whiten", type=int, default=1)
    ap.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--hidden", type=int, nargs="+", default=[128])
    ap.add_argument("--filters", type=int, default=3)
    ap.add_argument("--rotation", default="s2s2")
    ap.add_argument("--decoder", default="voxel")
    ap.add_argument("--w0", type=float, default=30.0, help="FourierNet SIREN frequency ω₀")
    ap.add_argument("--fourier-hidden", type=int, default=64, help="FourierNet SIREN width")
    ap.add_argument("--fourier-scoring", choices=("exact", "grid"), default="exact",
                    help="ModelConfig.fourier_scoring (grid: paths scored on an oversampled grid of FourierNet)")
    ap.add_argument("--heads", type=int, default=1)
    ap.add_argument("--wiener", action="store_true",
                    help="encoder_input='wiener' (the encoder sees CTF-Wiener-filtered images; needs --ctf)")
    ap.add_argument("--wiener-eps", type=float, default=0.1, help="ε of the Wiener encoder input")
    ap.add_argument("--phase-flip", action="store_true",
                    help="encoder_input='phase_flipped' (the encoder sees CTF-sign-flipped images; needs --ctf)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    torch.set_num_threads(1)
    star = data(args)
    mc = {"decoder": args.decoder, "shifts": "predict" if args.shift_px else "none", "symmetric": args.loss == "sym",
          "whiten_rotation": bool(args.whiten),
          "channels": tuple(args.channels), "hidden": tuple(args.hidden), "filters": args.filters,
          "rotation": args.rotation, "pose_heads": args.heads, "seed": args.seed,
          "fourier_hidden": args.fourier_hidden, "w0": args.w0, "fourier_scoring": args.fourier_scoring,
          "encoder_input": "wiener" if args.wiener else ("phase_flipped" if args.phase_flip else "raw"),
          "wiener_eps": args.wiener_eps}
    tc = {"steps": args.steps, "batch_size": args.batch, "num_workers": 0, "use_ctf": args.ctf, "lr": args.lr,
          "decoder_lr": args.decoder_lr, "checkpoint_every": 0, "log_every": 10, "seed": args.seed,
          "radius_start": args.radius_start, "radius_hold": args.hold, "radius_ramp": args.ramp,
          "lr_drop": args.lr_drop, "drop_fraction": args.drop_fraction}
    tr = Trainer(str(star), mc, tc, verbose=False)
    if args.frozen:
        vol = oc.physics.pseudo_molecule(args.n).float()
        with torch.no_grad():
            tr.model.decoder.volume_real.copy_(vol / tr.stack.std)
        tr.model.decoder.volume_real.requires_grad_(False)
    if args.init_lowpass is not None:
        vol = oc.physics.pseudo_molecule(args.n).double()
        k = oc.fourier.radial_frequency(args.n, 3, dtype=torch.float64)
        lp = oc.fourier.ifft3c(oc.fourier.fft3c(vol) * (k <= args.init_lowpass)).real
        with torch.no_grad():
            tr.model.decoder.volume_real.copy_((lp / tr.stack.std).float())
    evals = []
    t0 = time.time()

    def cb(t):
        pred = predict_poses(t.model, t.stack, use_ctf=args.ctf)
        pe = oc.metrics.pose_errors(pred["rotations"], t.stack.rotations)
        e = {"step": t.step, "radius": t.radius_at(max(t.step - 1, 0)), "loss": t.history[-1]["loss"] if t.history else None,
             "eval_loss": float(pred["loss"].mean()), "median_deg": pe.rotation_median_angle,
             "p90_deg": float(pe.per_image_angle.quantile(0.9))}
        e["frac_below_10deg"] = float((pe.per_image_angle < 10).float().mean())
        # the same with batch statistics (training-mode normalisation, 256-image batches)
        import copy  # noqa: PLC0415

        m = copy.deepcopy(t.model).train()
        def ctf_of(rows):
            return t.stack.ctf[torch.tensor(rows)].evaluate(args.n, dtype=torch.float64).float() if args.ctf else None

        with torch.no_grad():
            Rb = torch.cat([m(t.stack.images(rows).float(), ctf_of(rows)).rotations
                            for rows in (list(range(s, min(s + 256, len(t.stack)))) for s in range(0, len(t.stack), 256))])
        pb = oc.metrics.pose_errors(Rb, t.stack.rotations)
        e["batchstat_median_deg"] = pb.rotation_median_angle
        e["batchstat_frac_below_10deg"] = float((pb.per_image_angle < 10).float().mean())
        mr = recalibrate_statistics(t.model, t.stack)
        pr = oc.metrics.pose_errors(predict_poses(mr, t.stack, use_ctf=args.ctf)["rotations"], t.stack.rotations)
        e["recal_median_deg"] = pr.rotation_median_angle
        e["recal_frac_below_10deg"] = float((pr.per_image_angle < 10).float().mean())
        if args.frozen:
            raw = oc.metrics.rotation_angle(pred["rotations"].double().transpose(1, 2) @ t.stack.rotations.double())
            e["raw_median_deg"] = float(raw.median())
        evals.append(e)
        print(args.tag, json.dumps(e), f"[{time.time() - t0:.0f} s]", flush=True)

    cb(tr)
    tr.fit(callback=cb, callback_every=args.eval_every)
    doc = {"tag": args.tag, "args": vars(args), "final": evals[-1], "evals": evals, "wall_s": time.time() - t0}
    append_jsonl(args.log, doc)


if __name__ == "__main__":
    main()
