"""Learning curves of self-supervised amortized runs: the encoder's pose error and the decoder's map
against training epochs, from the ``evaluations.json`` files that ``amortized_evidence.py --stage
train`` writes (one list of evaluations per run).

Usage::

    PYTHONPATH=python python scripts/amortized_learning_curves.py --out docs/evidence/amortized/n64_learning_curves.png \
        --images 10000 --batch 32 --supervised 8.9 \
        "lr 1e-3, seed 0=docs/evidence/amortized/n64_k16_evaluations.json" \
        "lr 1e-4, seed 0=docs/evidence/amortized/n64_k16_lr1e-4_evaluations.json"

``--supervised`` draws the error the same encoder reaches when trained on the true poses (the
ceiling of self-supervision at this data size); ``--tomo`` the true-pose reconstruction's
resolution. The median error of uniformly random poses, 126.5°, is drawn for reference.
"""
from __future__ import annotations

import argparse
import json
import pathlib

RANDOM_POSES_DEG = 126.5  # median angle between a rotation and a uniformly random one


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="LABEL=PATH to an evaluations.json (a list of evaluations)")
    ap.add_argument("--out", required=True, help="PNG to write")
    ap.add_argument("--images", type=int, required=True, help="particles in the training set (for epochs)")
    ap.add_argument("--batch", type=int, required=True, help="images per step (for epochs)")
    ap.add_argument("--supervised", type=float, default=None, help="error (deg) of the encoder trained on true poses")
    ap.add_argument("--tomo", type=float, default=None, help="resolution (Å) of the true-pose reconstruction")
    ap.add_argument("--title", default="")
    args = ap.parse_args()
    runs = []
    for spec in args.runs:
        label, sep, path = spec.rpartition("=")
        if not sep or not label:
            ap.error(f"runs: expected LABEL=PATH, got {spec!r}")
        ev = json.loads(pathlib.Path(path).read_text())
        if not isinstance(ev, list) or not all("step" in e and "rot_median_angle_deg" in e for e in ev):
            ap.error(f"{path}: expected a list of evaluations with 'step' and 'rot_median_angle_deg'")
        runs.append((label, ev))

    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    epoch = args.batch / args.images
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(11, 4))
    for label, ev in runs:
        x = [e["step"] * epoch for e in ev]
        a0.plot(x, [e["rot_median_angle_deg"] for e in ev], marker="o", ms=3, label=label)
        a1.plot(x, [e["resolution_05_A"] for e in ev], marker="o", ms=3, label=label)
    a0.axhline(RANDOM_POSES_DEG, color="grey", lw=0.6, ls=":", label="uniformly random poses")
    if args.supervised is not None:
        a0.axhline(args.supervised, color="k", lw=0.8, ls="--", label="same encoder, trained on the true poses")
    if args.tomo is not None:
        a1.axhline(args.tomo, color="k", lw=0.8, ls="--", label="tomo (true poses)")
    a0.set_ylabel("encoder's median rotation error (deg), aligned")
    a1.set_ylabel("decoder's map, FSC 0.5 (Å)")
    for ax in (a0, a1):
        ax.set_xlabel("epoch")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    if args.title:
        fig.suptitle(args.title)
    fig.tight_layout()
    out = pathlib.Path(args.out)
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    tmp.replace(out)
    plt.close(fig)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
