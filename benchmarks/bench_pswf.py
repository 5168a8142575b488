"""PSWF basis throughput (issue 7): expand / evaluate / evaluate_adjoint of PSWF2D against

* a plain dense PyTorch implementation: the evaluation matrix ``A`` (disk pixels x coefficients)
  and its pseudo-inverse, ``expand = x[:, disk] @ pinv(A)^T``, ``evaluate = c @ A^T`` scattered to
  the disk, ``adjoint = x[:, disk] @ A`` (same least-squares solution; checked in the run; its
  matrices are flushed of would-be-subnormal float32 entries, as PSWF2D's are, which otherwise
  make MKL 5-10x slower);
* orbitcore's own blocked GEMM kernel in place of ``torch.matmul`` (``PSWF2D(gemm="kernel")``);
* ASPIRE's ``PSWFBasis2D`` (``evaluate_t``, ``evaluate``, ``expand`` = one CG solve per image) on
  the same images with the same truncation (gamma_trunc = 1 <=> lambda > 1/2, equal counts), when
  ASPIRE is available: in this interpreter, or in the interpreter named by ``--aspire-python`` /
  ``$ORBITCORE_ASPIRE_PYTHON`` (a separate virtual environment; run as a subprocess of this
  benchmark, same threads). Matched accuracy: the least-squares residual of ``expand`` on the
  same images is reported for both.

and the projection operator of seeds/002 eq. 14–16 (``Projector.coefficients``) for ell_max = 10,
K = 552 rotations, L = 11 against evaluating eq. 16 with one plain ``torch.einsum`` over padded
(ell, m, s, N, n) tensors.

Throughput is images per second, batch 1000. The machine is shared: every time is the best of
its repeats (the median is recorded too) for every code, ours, the baselines and ASPIRE alike,
and every ratio is measured in the same run on the same threads.
"""
from __future__ import annotations

import os

# libgomp's default active spin-wait makes every parallel region cost milliseconds when the cores
# are shared with other busy processes (measured here: torch.zeros of 35k complex numbers 2.3 ms
# with 2 threads vs 0.01 ms with 1); passive waiting removes that for every code path measured,
# ours and the baselines alike. Set before torch loads libgomp; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

import orbitcore as oc
from _common import emit, parser, setup_threads, timeit
from orbitcore.basis import PSWF2D, Projector, VolumeBasis

HERE = pathlib.Path(__file__).resolve().parent


def dense_baseline(b: PSWF2D, dtype):
    A64 = b.basis_at(b.pixel_points())  # (P, M) float64
    P64 = torch.linalg.pinv(A64)  # (M, P)
    # flush entries that would be subnormal in float32 (r^N of high-N functions near the centre):
    # subnormal operands slow BLAS down ~5-10x; PSWF2D does the same to its matrices
    A64 = torch.where(A64.abs() < 1e-20 * A64.abs().max(), torch.zeros_like(A64), A64)
    P64 = torch.where(P64.abs() < 1e-20 * P64.abs().max(), torch.zeros_like(P64), P64)
    A = A64.to(dtype)
    At = A64.T.contiguous().to(dtype)
    Pt = P64.T.contiguous().to(dtype)
    idx = torch.nonzero(b.disk_mask.reshape(-1)).squeeze(1)  # flat disk-pixel indices
    L = b.L

    def expand(x):
        return x.reshape(x.shape[0], -1).index_select(1, idx) @ Pt

    def evaluate(c):
        out = torch.zeros(c.shape[0], L * L, dtype=c.dtype)
        out.index_copy_(1, idx, c @ At)
        return out.reshape(-1, L, L)

    def adjoint(x):
        return x.reshape(x.shape[0], -1).index_select(1, idx) @ A

    return expand, evaluate, adjoint


def aspire_rows(cfg, args):
    """ASPIRE timings: in-process if importable, else through --aspire-python. None if neither."""
    script = str(HERE / "_aspire_pswf.py")
    exe = args.aspire_python or os.environ.get("ORBITCORE_ASPIRE_PYTHON")
    if not exe:
        try:
            import aspire  # noqa: F401, PLC0415
            exe = sys.executable
        except ImportError:
            return None, "aspire not importable and no --aspire-python / ORBITCORE_ASPIRE_PYTHON given"
    nt = str(torch.get_num_threads())
    env = {**os.environ, "OMP_NUM_THREADS": nt, "OPENBLAS_NUM_THREADS": nt, "MKL_NUM_THREADS": nt}
    with tempfile.TemporaryDirectory() as tmp:  # ASPIRE writes a logs/ directory into its cwd
        proc = subprocess.run([exe, script, json.dumps(cfg)], capture_output=True, text=True, env=env, cwd=tmp)
    if proc.returncode != 0:
        return None, f"ASPIRE run failed: {proc.stderr[-2000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1]), None


def bench_basis(L, dtype, B, rep, seed, n_expand, gen_kernel=True):
    t0 = time.perf_counter()
    b = PSWF2D(L)
    plan_s = time.perf_counter() - t0
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.standard_normal((B, L, L)).astype(np.float32 if dtype == torch.float32 else np.float64))
    ex_d, ev_d, adj_d = dense_baseline(b, dtype)
    a = b.expand(x)
    # the two implementations compute the same numbers
    diff = {
        "expand": float((a - ex_d(x)).abs().max() / a.abs().max()),
        "evaluate": float((b.evaluate(a) - ev_d(a)).abs().max() / x.abs().max()),
        "adjoint": float((b.evaluate_adjoint(x) - adj_d(x)).abs().max() / adj_d(x).abs().max()),
    }
    # least-squares residual on the first n_expand images (the images ASPIRE's expand gets)
    xs, as_ = x[:n_expand], a[:n_expand]
    resid = float((b.evaluate(as_) - xs)[:, b.disk_mask].norm() / xs[:, b.disk_mask].norm())
    row = {"L": L, "dtype": str(dtype).replace("torch.", ""), "batch": B, "count": b.count,
           "disk_pixels": int(b.disk_mask.sum()), "plan_s": plan_s, "max_rel_diff_vs_dense": diff,
           "expand_relative_residual": resid, "residual_images": n_expand, "condition_number": b.condition_number,
           "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
    for name, ours, dense in (("expand", lambda: b.expand(x), lambda: ex_d(x)),
                              ("evaluate", lambda: b.evaluate(a), lambda: ev_d(a)),
                              ("evaluate_adjoint", lambda: b.evaluate_adjoint(x), lambda: adj_d(x))):
        o = timeit(ours, repeat=rep, min_time=0.5)
        d = timeit(dense, repeat=rep, min_time=0.5)
        to, td = o["min_s"], d["min_s"]
        row[f"{name}_s"] = to
        row[f"{name}_median_s"] = o["median_s"]
        row[f"{name}_images_per_s"] = B / to
        row[f"dense_{name}_s"] = td
        row[f"dense_{name}_median_s"] = d["median_s"]
        row[f"dense_{name}_images_per_s"] = B / td
        row[f"{name}_speedup_vs_dense"] = td / to
    if gen_kernel:
        bk = PSWF2D(L, gemm="kernel")
        for name, fn in (("expand", lambda: bk.expand(x)), ("evaluate", lambda: bk.evaluate(a))):
            tk = timeit(fn, repeat=max(3, rep // 2), min_time=0.3)["min_s"]
            row[f"kernel_gemm_{name}_s"] = tk
            row[f"kernel_gemm_{name}_vs_blas"] = row[f"{name}_s"] / tk
    return row


def einsum_projection_baseline(P: Projector):
    """Padded tensors for eq. 16 as one einsum: x[l, m, s], D[k, l, N, m], betahat[l, s, N, n]."""
    vb, pswf = P.volume_basis, P.pswf
    Lm = vb.ell_max
    Smax = max(vb.S)
    nmax = max(pswf.n_max)
    beta = torch.zeros(Lm + 1, Smax, 2 * Lm + 1, nmax, dtype=torch.complex128)
    for N, rows, cols, bb in P._blocks:
        nidx = pswf.indices["n"][cols]
        for i, (e, s) in enumerate(rows):
            beta[e, s, N + Lm, nidx] = bb[i]
    Nidx, nidx = pswf.indices["N"], pswf.indices["n"]
    keep = Nidx.abs() <= Lm

    def x_pad(x):
        out = torch.zeros(Lm + 1, 2 * Lm + 1, Smax, dtype=torch.complex128)
        for e in range(Lm + 1):
            blk = x[vb.offsets[e]:vb.offsets[e + 1]].reshape(2 * e + 1, vb.S[e])
            out[e, Lm - e:Lm + e + 1, :vb.S[e]] = blk
        return out

    def D_pad(D):
        K = D[0].shape[0]
        out = torch.zeros(K, Lm + 1, 2 * Lm + 1, 2 * Lm + 1, dtype=torch.complex128)
        for e in range(Lm + 1):
            out[:, e, Lm - e:Lm + e + 1, Lm - e:Lm + e + 1] = D[e]
        return out

    def project(xp, Dp):
        bp = torch.einsum("lms,klNm,lsNn->kNn", xp, Dp, beta)
        out = torch.zeros(Dp.shape[0], pswf.count, dtype=torch.complex128)
        out[:, keep] = bp[:, Nidx[keep] + Lm, nidx[keep]]
        return out

    return x_pad, D_pad, project


def bench_projection(rep, K=552, L=11, ell_max=10):
    vb = VolumeBasis(L, ell_max)
    t0 = time.perf_counter()
    P = Projector(vb)
    setup_s = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(0)
    x = vb.random(generator=gen)
    R = oc.geometry.random_rotations(K, generator=gen, dtype=torch.float64)
    t_w = timeit(lambda: P.wigner(R), repeat=rep)["min_s"]
    D = P.wigner(R)
    t_ours = timeit(lambda: P.coefficients(x, wigner=D), repeat=rep, min_time=0.5)["min_s"]
    x_pad, D_pad, project = einsum_projection_baseline(P)
    xp, Dp = x_pad(x), D_pad(D)
    t_ein = timeit(lambda: project(xp, Dp), repeat=rep, min_time=0.5)["min_s"]
    err = float((project(xp, Dp) - P.coefficients(x, wigner=D)).abs().max())
    t_img = timeit(lambda: P.images(x, wigner=D, dtype=torch.float32), repeat=rep)["min_s"]
    return {"L": L, "ell_max": ell_max, "K": K, "volume_coefficients": vb.count, "pswf_coefficients": P.pswf.count,
            "projector_setup_s": setup_s, "wigner_d_s": t_w, "coefficients_s": t_ours, "einsum_s": t_ein,
            "speedup_vs_einsum": t_ein / t_ours, "max_abs_diff_vs_einsum": err,
            "coefficients_plus_images_s": t_img}


def main():
    p = parser(__doc__)
    p.add_argument("--sizes", type=int, nargs="*", default=None)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--aspire-python", default=None, help="interpreter with aspire installed (subprocess)")
    p.add_argument("--no-aspire", action="store_true")
    args = p.parse_args()
    setup_threads(args)
    if args.device != "cpu":
        print("bench_pswf: CPU benchmark (the CUDA path is the same fold kernel + cuBLAS)", file=sys.stderr)
    sizes = args.sizes or ([32] if args.quick else [32, 64])
    B = 200 if args.quick else args.batch
    rep = 3 if args.quick else 7
    n_expand = 2 if args.quick else 4
    rows = []
    for L in sizes:
        for dtype in (torch.float32, torch.float64):
            rows.append(bench_basis(L, dtype, B, rep, seed=0, n_expand=n_expand))
            print(json.dumps({k: v for k, v in rows[-1].items() if "images_per_s" in k or k in ("L", "dtype")}),
                  file=sys.stderr, flush=True)
    aspire = None
    note = "skipped (--no-aspire)"
    if not args.no_aspire:
        cfg = {"sizes": sizes, "dtypes": ["float32", "float64"], "batch": B, "n_expand": n_expand,
               "repeat": 5, "seed": 0}
        aspire, note = aspire_rows(cfg, args)
    comparison = []
    if aspire:
        for ar in aspire["rows"]:
            ours = next(r for r in rows if r["L"] == ar["L"] and r["dtype"] == ar["dtype"])
            comparison.append({
                "L": ar["L"], "dtype": ar["dtype"], "count_ours": ours["count"], "count_aspire": ar["count"],
                "expand_speedup_vs_aspire": ours["expand_images_per_s"] / ar["expand_images_per_s"],
                "evaluate_speedup_vs_aspire": ours["evaluate_images_per_s"] / ar["evaluate_images_per_s"],
                "evaluate_adjoint_speedup_vs_aspire_evaluate_t":
                    ours["evaluate_adjoint_images_per_s"] / ar["evaluate_t_images_per_s"],
                "expand_relative_residual_ours": ours["expand_relative_residual"],
                "expand_relative_residual_aspire": ar["expand_relative_residual"],
            })
    proj = bench_projection(rep)
    emit("pswf", {"rows": rows, "aspire": aspire, "aspire_note": note, "comparison_vs_aspire": comparison,
                  "projection": proj,
                  "targets": {"expand_vs_aspire": 1000.0, "evaluate_and_adjoint_vs_aspire_L64": 2.0}}, args)


if __name__ == "__main__":
    main()
