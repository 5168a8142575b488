"""ASPIRE side of benchmarks/bench_pswf.py: times ASPIRE's PSWFBasis2D on the same images.

Runs in whatever interpreter has ``aspire`` installed (a separate virtual environment is fine: it
needs neither torch nor orbitcore). ASPIRE is GPL: this script only calls its public API.

    python _aspire_pswf.py '{"sizes": [32, 64], "dtypes": ["float32"], "batch": 1000,
                             "n_expand": 4, "repeat": 3, "seed": 0}'

prints one JSON document: per (L, dtype) the plan time, ``evaluate_t`` / ``evaluate`` times for
the batch (best of ``repeat``), the time of ``expand`` (one CG solve per image; best of the
``n_expand`` single-image calls), the coefficient count, and the relative least-squares residual
of ``expand`` on those images (``||evaluate(expand(x)) - x||`` over the disk / ``||x||``), for the
matched-accuracy check.
"""
from __future__ import annotations

import json
import logging
import statistics
import sys
import time

import numpy as np


def timeit(fn, repeat):
    """(best, median) wall time of fn() over `repeat` runs after one warm-up."""
    fn()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts), statistics.median(ts)


def main():
    cfg = json.loads(sys.argv[1])
    logging.disable(logging.WARNING)
    import aspire  # noqa: PLC0415
    from aspire.basis import Coef, PSWFBasis2D  # noqa: PLC0415
    from aspire.image import Image  # noqa: PLC0415

    rows = []
    for L in cfg["sizes"]:
        for dt in cfg["dtypes"]:
            dtype = np.dtype(dt)
            rng = np.random.default_rng(cfg["seed"])
            x = rng.standard_normal((cfg["batch"], L, L)).astype(dtype)
            t0 = time.perf_counter()
            basis = PSWFBasis2D(L, dtype=dtype)
            plan = time.perf_counter() - t0
            img = Image(x)
            t_adj, t_adj_med = timeit(lambda: basis.evaluate_t(img), cfg["repeat"])
            coef = basis.evaluate_t(img)
            c_arr = coef.asnumpy() if hasattr(coef, "asnumpy") else np.asarray(coef)
            t_eval, t_eval_med = timeit(lambda: basis.evaluate(Coef(basis, c_arr)), cfg["repeat"])
            n = cfg["n_expand"]
            parts, times = [], []
            for i in range(n):  # one image per call: the best single-image time
                t0 = time.perf_counter()
                parts.append(basis.expand(Image(x[i:i + 1])))
                times.append(time.perf_counter() - t0)
            t_exp = min(times)
            a_arr = np.concatenate([p.asnumpy() if hasattr(p, "asnumpy") else np.asarray(p) for p in parts])
            back = basis.evaluate(Coef(basis, a_arr)).asnumpy()
            mask = basis._disk_mask
            res = np.linalg.norm((back - x[:n])[:, mask]) / np.linalg.norm(x[:n][:, mask])
            rows.append({
                "L": L, "dtype": dt, "count": int(basis.count), "disk_pixels": int(mask.sum()),
                "plan_s": plan, "evaluate_t_s": t_adj, "evaluate_t_median_s": t_adj_med, "evaluate_s": t_eval,
                "evaluate_median_s": t_eval_med, "batch": cfg["batch"],
                "expand_s_per_image": t_exp, "expand_s_per_image_median": statistics.median(times),
                "expand_images": n,
                "evaluate_t_images_per_s": cfg["batch"] / t_adj, "evaluate_images_per_s": cfg["batch"] / t_eval,
                "expand_images_per_s": 1.0 / t_exp, "expand_relative_residual": float(res),
            })
    print(json.dumps({"aspire_version": aspire.__version__, "rows": rows}))


if __name__ == "__main__":
    main()
