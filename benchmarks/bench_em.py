"""One iteration of the approximate EM of seeds/002 (E-step eq. 22–24 over every patch, shift and
rotation, then the M-step eq. 29–37) at the paper's scale (§IV-A: 14 796 patches per iteration,
K = 552 rotations, L = 11, ell_max = 6, 8, 10), against a plain PyTorch implementation of the
same iteration.

orbitcore: ``orbitcore.em.e_step`` (the fused kernel: correlations over the disk support,
log-sum-exp, sufficient statistics in-kernel; float32 with float64 accumulation) and
``orbitcore.em.m_step`` (normal equations from the statistics through the basis operator).

Baseline ("plain"): eq. 24 by explicit zero-padding, circular shift and crop over all (2L)^2
shifts of the paper (eq. 19) and the residual norm per (patch, shift, rotation), the full
(patches x shifts x rotations) log-likelihood array, ``torch.logsumexp``; the M-step by the
formulas as written (eq. 30/32 for y with the patches summed per (shift, rotation) first, eq. 34
for A with g of eq. 35 formed on the fly for each (shift, rotation): ``B^T diag(w) B`` with
``B = C T_l Z J_w``), float64, same projections (the same ``J``), same rho.

Both run at a common size (``--common-patches`` patches, ``--common-K`` rotations, the smallest
ell_max), fully measured (every shift, every rotation), and their outputs are compared. At the
paper's scale the baseline is extrapolated: its E-step is linear in the number of patches (timed
on ``--baseline-patches``), its M-step is a sum of identical-cost terms over the (2L)^2 shifts
(timed on ``--baseline-shifts`` of them and scaled).

  cd benchmarks && PYTHONPATH=../python OMP_WAIT_POLICY=PASSIVE python bench_em.py --threads 2
"""
from __future__ import annotations

import json
import math
import resource
import sys
import time

from _common import emit, parser, setup_threads  # first: sets OMP_WAIT_POLICY before torch loads libgomp

import torch  # noqa: E402

from orbitcore import em
from orbitcore.physics.volumes import shepp_logan_3d

L, K = 11, 552


def data(P: int, seed: int = 0):
    """Patches of simulated micrographs (Shepp–Logan 11^3 expanded to ell_max 10, SNR 3.5,
    gamma 0.1, eq. 5 spacing): the first P patches of enough 671 x 671 micrographs."""
    per = (671 // L) ** 2
    n = max(1, math.ceil(P / per))
    m = em.simulate_micrographs(shepp_logan_3d(L, dtype=torch.float64), 671, n_micrographs=n, gamma=0.1,
                                snr=3.5, ell_max=10, seed=seed)
    return em.extract_patches(m.micrographs, L)[:P].contiguous(), m.sigma


def start_theta(op, patches, sigma, seed=0):
    """The random start of ``em.reconstruct`` (i.i.d. normal, scaled to the data's energy)."""
    g = torch.Generator().manual_seed(seed)
    t = op.random_theta(g)
    power = max(float(patches.pow(2).mean()) - sigma ** 2, 1e-12)
    return t * math.sqrt(power * L * L / float(op.projections(t).pow(2).sum((-2, -1)).mean()))


def orbitcore_iteration(op, patches, theta, sigma):
    t0 = time.perf_counter()
    st = em.e_step(op, patches, theta, em.uniform_log_prior(L), sigma)
    t1 = time.perf_counter()
    th, lp = em.m_step(op, st)
    t2 = time.perf_counter()
    return {"e_step_s": t1 - t0, "m_step_s": t2 - t1, "total_s": t2 - t0}, st, th


def _shifted(x, l0, l1):
    """C T_l Z of eq. 18–19 on the last two (L, L) axes... given as (..., L, L)."""
    z = torch.zeros(x.shape[:-2] + (2 * L, 2 * L), dtype=x.dtype)
    z[..., :L, :L] = x
    return torch.roll(z, shifts=(-l0, -l1), dims=(-2, -1))[..., :L, :L]


def baseline_e_step(patches, g, sigma, chunk=25):
    """Eq. 24 by explicit shifting; returns the posteriors (P, (2L)^2, K) and the log-evidence."""
    P, Kg = patches.shape[0], g.shape[0]
    x = patches.to(torch.float64)
    ll = torch.empty(P, 4 * L * L, Kg, dtype=torch.float64)
    const = -0.5 * L * L * math.log(2 * math.pi * sigma ** 2) + math.log(1.0 / (4 * L * L)) - math.log(Kg)
    for l0 in range(2 * L):
        for l1 in range(2 * L):
            model = _shifted(g, l0, l1)  # (K, L, L)
            for p0 in range(0, P, chunk):
                r = ((x[p0:p0 + chunk, None] - model[None]) ** 2).sum((-2, -1))
                ll[p0:p0 + chunk, l0 * 2 * L + l1] = -r / (2 * sigma ** 2) + const
    lse = torch.logsumexp(ll.reshape(P, -1), 1)
    return torch.exp(ll - lse[:, None, None]), lse


def baseline_m_step(op, patches, post, shifts=None):
    """Eq. 29–35 as written (g of eq. 35 formed per (shift, rotation)); ``shifts``: a subset of
    the (2L)^2 shifts to time (the full sum when None). Returns (theta or None, seconds)."""
    t0 = time.perf_counter()
    M, K = op.M, op.K
    x = patches.to(torch.float64).reshape(-1, L * L)
    Jimg = op.J.reshape(K, L, L, M).permute(0, 3, 1, 2)  # (K, M, L, L)
    A = torch.zeros(M, M, dtype=torch.float64)
    y = torch.zeros(M, dtype=torch.float64)
    ls = [(a, b) for a in range(2 * L) for b in range(2 * L)] if shifts is None else shifts
    for l0, l1 in ls:
        B = _shifted(Jimg, l0, l1).reshape(K, M, L * L).transpose(1, 2)  # C T_l Z J_w: (K, L^2, M)
        w = post[:, l0 * 2 * L + l1, :]  # (P, K)
        y += torch.einsum("kqm,kq->m", B, w.T @ x)  # eq. 30/32
        Wl = w.sum(0)
        A += (B * Wl[:, None, None]).reshape(-1, M).T @ B.reshape(-1, M)  # eq. 34-35
    theta = torch.linalg.solve(A, y) if shifts is None else None
    return theta, time.perf_counter() - t0


def main():
    p = parser(__doc__)
    p.add_argument("--patches", type=int, default=14796, help="patches per iteration (paper: 14796)")
    p.add_argument("--ells", type=int, nargs="*", default=[6, 8, 10])
    p.add_argument("--baseline-patches", type=int, default=10, help="patches for the baseline E-step timing")
    p.add_argument("--baseline-shifts", type=int, default=2, help="shifts for the baseline M-step timing")
    p.add_argument("--common-patches", type=int, default=40)
    p.add_argument("--common-K", type=int, default=48)
    args = p.parse_args()
    setup_threads(args)
    P = 2000 if args.quick else args.patches
    patches, sigma = data(P)
    rows = []
    R = em.rotation_grid(K)
    for ell in args.ells:
        t0 = time.perf_counter()
        op = em.EMOperator(L, ell, R)
        setup_s = time.perf_counter() - t0
        theta = start_theta(op, patches, sigma)
        ours, st, _ = orbitcore_iteration(op, patches, theta, sigma)
        row = {"ell_max": ell, "M": op.M, "patches": P, "K": K, "L": L, "operator_setup_s": setup_s, **ours,
               "J_bytes": op.J.numel() * 8}
        # the plain baseline at the paper's K: E-step per patch, M-step per shift, scaled
        Pb = args.baseline_patches
        g = op.projections(theta)
        t0 = time.perf_counter()
        post, lse = baseline_e_step(patches[:Pb], g, sigma)
        be = time.perf_counter() - t0
        torch.testing.assert_close(st.log_evidence[:Pb], lse, rtol=1e-6, atol=1e-2)  # same model, float32 kernel
        gen = torch.Generator().manual_seed(ell)
        sub = torch.randperm(4 * L * L, generator=gen)[:args.baseline_shifts].tolist()
        _, bm_sub = baseline_m_step(op, patches[:Pb], post, [(s // (2 * L), s % (2 * L)) for s in sub])
        bm = bm_sub * (4 * L * L) / len(sub)
        row.update({"baseline_e_step_s_per_patch": be / Pb, "baseline_m_step_s": bm,
                    "baseline_m_step_timed_shifts": len(sub),
                    "baseline_total_s_extrapolated": be / Pb * P + bm})
        row["speedup_extrapolated"] = row["baseline_total_s_extrapolated"] / ours["total_s"]
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        del op, post
    # common size, both fully measured (every shift, every rotation), outputs compared
    ell = min(args.ells)
    op = em.EMOperator(L, ell, em.rotation_grid(args.common_K))
    Pc = args.common_patches
    x = patches[:Pc]
    theta = start_theta(op, x, sigma)
    oc, stc, th_ours = orbitcore_iteration(op, x, theta, sigma)
    t0 = time.perf_counter()
    post, lse = baseline_e_step(x, op.projections(theta), sigma)
    be = time.perf_counter() - t0
    th_base, bm = baseline_m_step(op, x, post)
    common = {"ell_max": ell, "patches": Pc, "K": args.common_K, "orbitcore_s": oc["total_s"],
              "orbitcore_e_step_s": oc["e_step_s"], "orbitcore_m_step_s": oc["m_step_s"],
              "baseline_s": be + bm, "baseline_e_step_s": be, "baseline_m_step_s": bm,
              "speedup": (be + bm) / oc["total_s"],
              "max_abs_diff_log_evidence": float((stc.log_evidence - lse).abs().max()),
              "theta_relative_diff": float((th_ours - th_base).norm() / th_base.norm())}
    print(json.dumps(common), file=sys.stderr, flush=True)
    emit("em", {"rows": rows, "common_size": common,
                "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "simd": em.ops_em.cpu_simd("auto"),
                "note": "orbitcore timed at the full size; baseline E-step measured on baseline_patches patches "
                        "and scaled linearly in the patches, baseline M-step timed on baseline_m_step_timed_shifts "
                        "of the (2L)^2 shifts and scaled (every shift costs the same)"},
         args)


if __name__ == "__main__":
    main()
