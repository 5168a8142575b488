#!/usr/bin/env python
"""How often FourierNet's grid scoring (``ModelConfig.fourier_scoring="grid"``) picks the same
winning path as exact scoring, on a trained checkpoint and its particles.

For the first ``--images`` particles (encoder statistics recalibrated over them, evaluation
mode, the particles' CTFs) the model is run twice: paths scored on the exact slices, and on the
2×-oversampled grid. Reported (JSON on stdout, and ``--out``): the fraction of images whose
winner (hypothesis and symmetric copy) agrees, the loss of the grid's winner relative to the
exact minimum (``per_image`` is the winner's exact loss in both runs, so the excess is ≥ 0),
the rotation angle between the two winners where they differ, and the time of each run.

    PYTHONPATH=python python scripts/amortized_fourier_scoring.py \\
        --checkpoint WORK/ckpt/<tag>/checkpoint.pt --star WORK/sim_n32_N4096_snr+0dB/particles.star
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import time

import torch

from orbitcore.amortized import model_from_checkpoint, recalibrate_statistics
from orbitcore.io import ParticleStack
from orbitcore.metrics import rotation_angle


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--star", required=True)
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, _ = model_from_checkpoint(args.checkpoint)
    if model.config.decoder != "fouriernet":
        raise SystemExit(f"amortized_fourier_scoring: {args.checkpoint} is a {model.config.decoder} model, "
                         "not fouriernet")
    stack = ParticleStack(args.star, normalize="rms")
    rows = list(range(min(args.images, len(stack))))
    model = recalibrate_statistics(model, stack).eval()
    res = {}
    for mode in ("exact", "grid"):
        model.config.fourier_scoring = mode
        out, t0 = [], time.perf_counter()
        with torch.no_grad():
            for s in range(0, len(rows), args.batch):
                r = rows[s:s + args.batch]
                ctf = stack.ctf[torch.tensor(r)].evaluate(model.n, dtype=torch.float64).float()
                out.append(model(stack.images(r).float(), ctf))
        res[mode] = {"time_s": time.perf_counter() - t0,
                     "per_image": torch.cat([o.per_image for o in out]),
                     "head": torch.cat([o.head for o in out]), "flipped": torch.cat([o.flipped for o in out]),
                     "rotations": torch.cat([o.rotations for o in out])}
    e, g = res["exact"], res["grid"]
    same = (e["head"] == g["head"]) & (e["flipped"] == g["flipped"])
    excess = (g["per_image"] - e["per_image"]) / e["per_image"]
    angle = rotation_angle(e["rotations"], g["rotations"])
    doc = {"checkpoint": str(args.checkpoint), "images": len(rows), "winner_agreement": float(same.float().mean()),
           "loss_excess_median": float(excess.median()), "loss_excess_max": float(excess.max()),
           "loss_excess_min": float(excess.min()),
           "angle_between_winners_deg_median_where_different":
               float(angle[~same].median()) if bool((~same).any()) else 0.0,
           "time_exact_s": e["time_s"], "time_grid_s": g["time_s"]}
    print(json.dumps(doc, indent=1))
    if args.out:
        p = pathlib.Path(args.out)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(p.suffix + ".tmp")  # no partial file if interrupted
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, p)


if __name__ == "__main__":
    main()
