#!/usr/bin/env python
"""Issue 8: what one optimisation step of eq. 28 costs at a given working size with the default
fit (FourierNet, hidden 256, density encoder ξ^ρ, the paper's 100 × 12 quadrature, Adam), and
so what the paper's schedule would cost on this machine.

The moments are the 70S map's exact ones (``exact_moments``, uniform viewing) at the working
size: the step's cost does not depend on the data's values. For each ``--query`` (``direct``:
the paper's, the network at the rotated disks; ``grid``: the network on the n³ half spectrum,
then ``fourier_slice``) it runs ``--steps`` steps of :func:`orbitcore.mom.cryoem.fit` and
records the wall time of each (the first includes the warm-up) and the peak resident memory.

Example (the figures of docs/evidence/mom_cryoem/README.md)::

    PYTHONPATH=python python scripts/mom_cryoem_step_cost.py --size 63 --query grid direct --threads 2
"""
from __future__ import annotations

import argparse
import json
import pathlib
import resource
import statistics
import time

import mrcfile
import torch
from _jsonl import append_jsonl

import orbitcore as oc
from orbitcore.geometry import so3_quadrature
from orbitcore.mom import cryoem

ROOT = pathlib.Path(__file__).resolve().parent.parent


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--map", default=str(ROOT.parent / "shared" / "data" / "clean70SRibosome_vol_65p.mrc"))
    ap.add_argument("--size", type=int, default=63, help="working size n (the paper: 63)")
    ap.add_argument("--query", nargs="+", choices=("direct", "grid"), default=["grid", "direct"])
    ap.add_argument("--hidden", type=int, default=256, help="FourierNet width (the paper: 256)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per query (the first is a warm-up)")
    ap.add_argument("--schedule", type=int, default=20000, help="steps of the schedule to cost (the paper: 2·10⁴)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--log", default=None)
    args = ap.parse_args()
    if args.steps < 2:
        raise SystemExit("mom_cryoem_step_cost: --steps must be >= 2 (the first step is a warm-up)")
    torch.set_num_threads(args.threads)
    vol = oc.fourier.downsample(torch.from_numpy(mrcfile.read(args.map).astype("float64")), args.size, 3)
    Q, _ = so3_quadrature(dtype=torch.float64)
    mom = cryoem.exact_moments(vol, "uniform", Q)
    out = {"size": args.size, "m": mom.m, "q": Q.shape[0], "hidden": args.hidden, "threads": args.threads,
           "queries": {}}
    for query in args.query:
        times, last = [], [time.perf_counter()]

        def tick(step, record, times=times, last=last):
            now = time.perf_counter()
            times.append(now - last[0])
            last[0] = now

        cryoem.fit(mom, steps=args.steps, query=query, hidden=args.hidden, verbose=False, callback=tick)
        step_s = statistics.median(times[1:])
        out["queries"][query] = {"step_s": times, "median_step_s": step_s,
                                 "schedule_hours": args.schedule * step_s / 3600,
                                 "max_rss_GB_so_far": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}
        print(f"n={args.size} m={mom.m} query={query}: {step_s:.2f} s/step, {args.schedule} steps = "
              f"{args.schedule * step_s / 3600:.1f} h; peak RSS so far "
              f"{out['queries'][query]['max_rss_GB_so_far']:.1f} GB", flush=True)
    print(json.dumps(out))
    if args.log:
        append_jsonl(args.log, out)


if __name__ == "__main__":
    main()
