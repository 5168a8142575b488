#!/usr/bin/env python
"""Is the amortized encoder's stall the map's fault? Self-supervised encoder training against a
*fixed, good* map (issue 6 diagnostic).

A trained run's encoder (``--checkpoint``, from ``scripts/amortized_evidence.py --stage train``)
is trained further with the run's own loss (symmetric, winner-take-all over the pose heads,
CTF, predicted shifts), but its decoder is replaced by a refined map (``--map``, e.g. the
``_volume.mrc`` of ``--stage refine``) and frozen. The map is first put in the images' units:
``c = Σ Re⟨Ŷ_i, X̂_i⟩ / Σ ‖X̂_i‖²`` over ``--scale-images`` particles rendered at the poses of
``--poses`` (the refinement's STAR file, so no truth is used), the least-squares scale of the
L2 loss (eq. 8). Every ``--eval-every`` steps the encoder's own poses (the model's choice
among its heads and the two symmetric paths, :func:`orbitcore.amortized.predict_poses`) are
compared with the simulation's true poses after global alignment (median angle, degrees).
The mean loss at the ``--poses`` (on the scaled map) is recorded for comparison with the
training loss: a lower value there is an optimum the encoder has not found. ``--steps 0``
stops after the scale, the loss and the step-0 errors.

The encoder's poses are predicted with its running normalisation statistics, which lag the
weights by about ten steps; ``--recalibrate`` re-estimates them over the stack first (on a copy,
as :func:`~orbitcore.amortized.evaluate` does).

``--fresh-encoder``: start from a newly initialised encoder instead of the checkpoint's.

``--radius R``: the loss (and the heads' choice) restricted to ``|k| <= R`` Fourier pixels for
the whole run, where the loss is a smoother function of the pose; the scale and the loss at
``--poses`` are then measured on the same disk.

If the encoder learns poses here, a joint run's stall comes from the decoder it trains
against; if it does not, from learning the image → pose map itself. One JSON line to ``--log``.

Example (the n = 64, −10 dB evidence run of docs/evidence/amortized §2)::

    W=/tmp/orbitcore-amortized-evidence
    PYTHONPATH=python python scripts/amortized_frozen_map.py \\
        --checkpoint $W/ckpt/voxel_snr-10dB_sym_seed0_n64_k16/checkpoint.pt \\
        --map $W/refined/voxel_snr-10dB_sym_seed0_n64_k16_shifts3_volume.mrc \\
        --poses $W/refined/voxel_snr-10dB_sym_seed0_n64_k16_shifts3_poses.star \\
        --star $W/sim_n64_N10000_snr-10dB/particles.star --steps 600 --eval-every 200
"""
from __future__ import annotations

import argparse
import json
import time

import mrcfile
import torch
from _jsonl import append_jsonl

import orbitcore as oc
from orbitcore.amortized import AmortizedModel, Trainer, TrainConfig, model_from_checkpoint, predict_poses
from orbitcore.amortized.losses import fourier_l2
from orbitcore.amortized.train import _stack_ctf
from orbitcore.io import ParticleStack, read_star


@torch.no_grad()
def map_scale(model, stack, R, t, rows: list[int], radius: float | None = None) -> tuple[float, float, float]:
    """Least-squares factor ``c`` putting the decoder's map in the images' units at poses
    ``(R, t)``, and the mean L2 loss (eq. 8) of those rows at these poses before and after,
    all on the disk ``|k| <= radius`` (default: the model's)."""
    radius = model.config.radius if radius is None else radius
    images = stack.images(rows).float()
    ctf = _stack_ctf(stack, rows, model.n)
    X = model.decode(R[rows], t[rows], ctf, radius)
    Y = oc.fourier.fft2c(images)
    m = model.loss_mask(radius)
    c = float((Y.conj() * X * m).real.sum() / (X.abs().square() * m).sum())
    return c, float(fourier_l2(Y, X, m).mean()), float(fourier_l2(Y, c * X, m).mean())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="a voxel-decoder training checkpoint")
    ap.add_argument("--map", required=True, help="the fixed map (MRC, the model's box size)")
    ap.add_argument("--poses", required=True, help="STAR file with poses for the map (sets its scale)")
    ap.add_argument("--star", required=True, help="the particles (with the true poses, for the errors)")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--radius", type=float, default=None, help="loss radius in Fourier pixels (default: the model's)")
    ap.add_argument("--fresh-encoder", action="store_true",
                    help="replace the checkpoint's encoder by a freshly initialised one (same configuration)")
    ap.add_argument("--recalibrate", action="store_true",
                    help="evaluate with the normalisation statistics re-estimated over the stack (as evaluate() "
                         "does) instead of the running ones")
    ap.add_argument("--scale-images", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--log", default=None)
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model, _ = model_from_checkpoint(args.checkpoint)
    if args.fresh_encoder:  # the configuration's initialisation (ModelConfig.seed), as a new run starts
        model.encoder = AmortizedModel(model.config).encoder
    if model.config.decoder != "voxel":
        raise SystemExit(f"amortized_frozen_map: --checkpoint must have a voxel decoder, got {model.config.decoder!r}")
    vol = torch.from_numpy(mrcfile.read(args.map).astype("float32"))
    if tuple(vol.shape) != (model.n,) * 3:
        raise SystemExit(f"amortized_frozen_map: --map must be {model.n}³, got {tuple(vol.shape)}")
    stack = ParticleStack(args.star, normalize="rms")  # the Trainer's normalisation
    tab = read_star(args.poses)
    R_map, t_map = tab.rotations().float(), tab.shifts().float()
    if R_map.shape[0] != len(stack):
        raise SystemExit(f"amortized_frozen_map: --poses has {R_map.shape[0]} particles, the stack {len(stack)}")
    with torch.no_grad():
        model.decoder.volume_real.copy_(vol)
        rows = torch.linspace(0, len(stack) - 1, min(args.scale_images, len(stack))).long().tolist()
        c, loss_unscaled, loss_given = map_scale(model, stack, R_map, t_map, rows, args.radius)
        model.decoder.volume_real.mul_(c)
    print(f"map scale {c:.4g}; L2 loss at the --poses: {loss_unscaled:.4f} unscaled, {loss_given:.4f} scaled",
          flush=True)
    model.decoder.volume_real.requires_grad_(False)  # frozen: only the encoder learns

    radius = args.radius
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch, lr=args.lr, num_workers=0, checkpoint_every=0,
                      radius_start=radius, radius_hold=args.steps if radius is not None else 0)
    tr = Trainer(stack, model, cfg, verbose=False)
    evals, t0 = [], time.time()

    def measure():
        p = predict_poses(model, stack, recalibrate=args.recalibrate)
        pe = oc.metrics.pose_errors(p["rotations"], stack.rotations)
        e = {"step": tr.step, "median_deg": pe.rotation_median_angle,
             "frac_below_10deg": float((pe.per_image_angle < 10).double().mean()),
             "loss": tr.history[-1]["loss"] if tr.history else None, "wall_s": time.time() - t0}
        evals.append(e)
        print(args.tag, json.dumps(e), flush=True)

    measure()
    while tr.step < args.steps:
        tr.fit(min(args.steps, tr.step + args.eval_every))
        measure()
    doc = {"tag": args.tag, "args": vars(args), "map_scale": c, "loss_at_given_poses_unscaled": loss_unscaled,
           "loss_at_given_poses": loss_given, "final": evals[-1], "evals": evals}
    if args.log:
        append_jsonl(args.log, doc)


if __name__ == "__main__":
    main()
