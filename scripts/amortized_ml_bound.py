#!/usr/bin/env python
"""How well can poses be recovered from these images at all? Issue 6's pose errors against a
global maximum-likelihood search (:func:`orbitcore.amortized.search_poses`).

For the first ``--images`` particles of a simulated stack, the rotation that maximises the
likelihood of each image (white noise, the CTF of the STAR file) over an SO(3) grid of ``--step``
degrees refined ``--refine`` times, against

* the *true* volume with the *true* shifts (default): the oracle bound. An amortized encoder
  never sees the volume or the shifts and must learn them too, so its error cannot be expected
  below this one: the number says whether an error is the data's limit or the method's;
* ``--volume MAP.mrc``, e.g. a decoder's reconstruction (scale fitted, errors after the global
  rotation/handedness alignment), with the true shifts or with ``--shifts-from poses.star``
  (e.g. the encoder's translations from ``orbitcore amortized evaluate``): no oracle left but
  the CTF, which real data have too.

``--radius`` mimics what an encoder sees: 8 px is the Fourier crop of 32² images to the 16² the
documented-scale encoder is fed. One JSON line per run goes to ``--log``.

Example (the documented-scale 0 dB stack of ``scripts/amortized_evidence.py --stage data``)::

    PYTHONPATH=python python scripts/amortized_ml_bound.py \\
        --star /tmp/orbitcore-amortized-evidence/sim_n32_N4096_snr+0dB/particles.star --images 1024
"""
from __future__ import annotations

import argparse
import json

import torch
from _jsonl import append_jsonl

import orbitcore as oc
from orbitcore.amortized import search_poses
from orbitcore.io import ParticleStack, read_mrc, read_star


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--star", required=True, help="simulated particles (with true poses and CTF)")
    ap.add_argument("--images", type=int, default=1024, help="the first ... particles")
    ap.add_argument("--step", type=float, default=7.5, help="SO(3) grid spacing, degrees")
    ap.add_argument("--refine", type=int, default=3, help="local refinement rounds")
    ap.add_argument("--radius", type=float, default=None, help="Fourier radius of the likelihood, px "
                                                                "(default: n/2 - 1)")
    ap.add_argument("--volume", default=None, help="search with this map (MRC, any scale and frame) instead of the "
                                                   "true volume")
    ap.add_argument("--shifts-from", default=None, help="STAR file whose shifts replace the true ones")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--log", default=None, help="append one JSON line here")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    st = ParticleStack(args.star)
    n = st.size
    rows = list(range(min(args.images, len(st))))
    if args.volume:
        vol = torch.as_tensor(read_mrc(args.volume)[0]).double()
        if tuple(vol.shape) != (n, n, n):
            raise SystemExit(f"amortized_ml_bound: --volume must be a {n}³ map, got {tuple(vol.shape)}")
    else:
        vol = oc.physics.pseudo_molecule(n).double()
    shifts = read_star(args.shifts_from).shifts() if args.shifts_from else st.shifts
    res = search_poses(vol, st.images(rows).double(), ctf=st.ctf[torch.tensor(rows)] if st.ctf is not None else None,
                       shifts=shifts[rows], step=args.step, refine=args.refine, radius=args.radius,
                       fit_scale=bool(args.volume), verbose=True)
    R_true = st.rotations[rows].double()
    if args.volume:  # a map in its own frame: errors after the global rotation / handedness
        pe = oc.metrics.pose_errors(res.rotations, R_true)
        ang, fro = pe.per_image_angle, pe.per_image_sq_frobenius
    else:            # the true volume fixes the frame: raw errors
        ang = oc.metrics.rotation_angle(R_true, res.rotations)
        fro = (R_true - res.rotations).pow(2).sum((-1, -2))
    doc = {"tag": args.tag, "star": args.star, "volume": args.volume or "truth",
           "shifts": args.shifts_from or "truth", "n": n, "images": len(rows), "step": args.step,
           "refine": args.refine, "radius": args.radius if args.radius is not None else n / 2 - 1,
           "median_angle_deg": float(ang.median()), "mean_angle_deg": float(ang.mean()),
           "median_sq_frobenius": float(fro.median()),
           "fraction_within_10deg": float((ang < 10).double().mean()),
           "fraction_within_30deg": float((ang < 30).double().mean()),
           "grid_rotations": res.grid_size, "seconds": res.seconds}
    print(json.dumps(doc))
    if args.log:
        append_jsonl(args.log, doc)


if __name__ == "__main__":
    main()
