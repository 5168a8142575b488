#!/usr/bin/env python
"""Can the amortized encoder represent the poses of noisy images at all? Supervised training of
issue 6's pose encoder on given poses.

The encoder of the documented-scale runs (:class:`orbitcore.amortized.AmortizedModel`'s
``encode``: images Fourier-cropped to ``--encoder-size``, filter bank, VGG stack, s2s2 rotation
head, translation head; one head, no whitening) is trained with Adam on

    L = ‖R_pred − R_target‖²_F + ‖t_pred − t_target‖²  (pixels)

over the first ``--train`` particles, with the targets either the simulation's *true* poses
(``--targets truth``: what the architecture can learn from these images — a capacity bound no
self-supervised run can beat) or poses from a STAR file (``--targets poses.star``, e.g. those of
``scripts/amortized_evidence.py --stage refine``: the search distilled into the encoder, which
then predicts poses for new images at the encoder's rate). Every ``--eval-every`` steps the
median rotation error against the truth (after the global rotation/handedness alignment) is
recorded on the training particles and on the held-out rest. One JSON line goes to ``--log``.

Example::

    PYTHONPATH=python python scripts/amortized_encoder_capacity.py \\
        --star /tmp/orbitcore-amortized-evidence/sim_n32_N4096_snr+0dB/particles.star --targets truth
"""
from __future__ import annotations

import argparse
import json
import time

import torch
from _jsonl import append_jsonl

import orbitcore as oc
from orbitcore.amortized import AmortizedModel, ModelConfig
from orbitcore.io import ParticleStack, read_star


@torch.no_grad()
def _errors(model, images, R_true) -> tuple[float, float]:
    model.eval()
    R = torch.cat([model.encode(images[s:s + 512])[0] for s in range(0, len(images), 512)]).double()
    model.train()
    pe = oc.metrics.pose_errors(R, R_true)
    return pe.rotation_median_angle, float((pe.per_image_angle < 10).double().mean())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--star", required=True)
    ap.add_argument("--targets", default="truth", help="'truth' or a STAR file with the target poses")
    ap.add_argument("--train", type=int, default=3072, help="the first ... particles train, the rest are held out")
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--encoder-size", type=int, default=16)
    ap.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64, 128])
    ap.add_argument("--eval-every", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--log", default=None)
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    st = ParticleStack(args.star, normalize="global")
    N, n = len(st), st.size
    if not 0 < args.train < N:
        raise SystemExit(f"amortized_encoder_capacity: --train must be in [1, {N - 1}], got {args.train}")
    images = st.images(list(range(N))).float()
    R_true = st.rotations.double()
    if args.targets == "truth":
        R_tgt, t_tgt = R_true.float(), st.shifts.float()
    else:
        tab = read_star(args.targets)
        R_tgt, t_tgt = tab.rotations().float(), tab.shifts().float()
        if R_tgt.shape[0] != N:
            raise SystemExit(f"amortized_encoder_capacity: {args.targets} has {R_tgt.shape[0]} particles, "
                             f"the stack {N}")
    model = AmortizedModel(ModelConfig(n=n, encoder_size=args.encoder_size, channels=tuple(args.channels),
                                       whiten_rotation=False, pose_heads=1, max_shift=3.0, seed=args.seed))
    opt = torch.optim.Adam(model.encoder_parameters(), lr=args.lr)
    tr, ho = slice(0, args.train), slice(args.train, N)
    g = torch.Generator().manual_seed(args.seed)
    evals, t0 = [], time.time()
    for step in range(args.steps + 1):
        if step % args.eval_every == 0:
            e_tr, f_tr = _errors(model, images[tr], R_true[tr])
            e_ho, f_ho = _errors(model, images[ho], R_true[ho])
            evals.append({"step": step, "train_median_deg": e_tr, "train_frac_below_10deg": f_tr,
                          "heldout_median_deg": e_ho, "heldout_frac_below_10deg": f_ho, "wall_s": time.time() - t0})
            print(args.tag, json.dumps(evals[-1]), flush=True)
        if step == args.steps:
            break
        idx = torch.randint(0, args.train, (args.batch,), generator=g)
        R, t = model.encode(images[idx])
        loss = (R - R_tgt[idx]).pow(2).sum((-1, -2)).mean() + (t - t_tgt[idx]).pow(2).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    doc = {"tag": args.tag, "args": vars(args), "final": evals[-1], "evals": evals}
    if args.log:
        append_jsonl(args.log, doc)


if __name__ == "__main__":
    main()
