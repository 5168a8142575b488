"""Algorithm 2 of seeds/002 ("particle picking" with the true volume) over SNRs, Fig. 8 style:
F1 score of empty-patch detection (eq. 39) and the shift accuracy (±1 px) on patches at least
half occupied, with the F1 of the classifier that calls every patch empty for reference.

Scale: one 990 x 990 micrograph (8100 patches of 11 x 11), Shepp–Logan 11^3 expanded to
ell_max = 10 (the paper's "second method"), K = 552 rotations, rho uniform. The density is
gamma = 0.1 by default (the separation condition eq. 5 with 2L - 1 = 21 cannot place the paper's
gamma = 0.4); the paper's density is reached with arbitrary non-overlapping spacing
(``--separation 11``, §IV-C), which places the paper's 3240 projections on 990².

  cd benchmarks && PYTHONPATH=../python python evidence_em_picking.py --threads 2
  -> results/em_picking.json, results/em_picking.png
  cd benchmarks && PYTHONPATH=../python python evidence_em_picking.py --threads 2 --gamma 0.4 --separation 11
  -> results/em_picking_gamma0.4.json, results/em_picking_gamma0.4.png
"""
from __future__ import annotations

import json
import time

from _common import emit, parser, setup_threads  # first: sets OMP_WAIT_POLICY before torch loads libgomp

import torch  # noqa: E402

from orbitcore import em
from orbitcore.io.mrc import atomic_path
from orbitcore.physics.volumes import shepp_logan_3d


def main():
    p = parser(__doc__)
    p.add_argument("--snrs", type=float, nargs="*", default=[0.05, 0.1, 0.3, 1.0, 3.0, 10.0])
    p.add_argument("--N", type=int, default=990)
    p.add_argument("--gamma", type=float, default=0.1)
    p.add_argument("--K", type=int, default=552)
    p.add_argument("--separation", type=int, default=None,
                   help="minimum distance between projection centres (default: eq. 5, 2L - 1)")
    args = p.parse_args()
    setup_threads(args)
    L, ell = 11, 10
    vol = shepp_logan_3d(L, dtype=torch.float64)
    op = em.EMOperator(L, ell, em.rotation_grid(args.K))
    rows = []
    for snr in args.snrs:
        t0 = time.perf_counter()
        kw = {} if args.separation is None else {"separation": args.separation}
        m = em.simulate_micrographs(vol, args.N, gamma=args.gamma, snr=snr, ell_max=ell, seed=1, **kw)
        patches, truth = em.extract_patches(m.micrographs, L, locations=m.locations)
        theta = op.theta_from_coefficients(m.coefficients)
        picked = em.pick_particles(op, patches, theta, em.uniform_log_prior(L), m.sigma)
        sc = em.picking_scores(picked, truth, L, support=op.support)
        e = sc["empty_fraction"]
        sc.update({"snr": snr, "patches": int(patches.shape[0]), "projections": int(m.locations[0].shape[0]),
                   "f1_all_empty": 2 * e / (1 + e),
                   "f1_signal_all_empty": 2 * sc["empty_fraction_signal"] / (1 + sc["empty_fraction_signal"]), "seconds": time.perf_counter() - t0})
        rows.append(sc)
        print(json.dumps(sc), flush=True)
    name = "em_picking" if args.separation is None else f"em_picking_gamma{args.gamma:g}"
    path = emit(name, {"rows": rows, "L": L, "ell_max": ell, "K": args.K, "N": args.N, "gamma": args.gamma,
                       "separation": args.separation if args.separation is not None else 2 * L - 1}, args)
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    s = [r["snr"] for r in rows]
    ax[0].semilogx(s, [r["f1"] for r in rows], "o-", label="Algorithm 2")
    ax[0].semilogx(s, [r["f1_all_empty"] for r in rows], "k--", label="all empty")
    ax[0].semilogx(s, [r["f1_signal"] for r in rows], "s-", label="empty = no support pixel seen")
    ax[0].semilogx(s, [r["f1_signal_all_empty"] for r in rows], "k:", label="all empty (support)")
    ax[0].set_xlabel("SNR")
    ax[0].set_ylabel("F1 (empty patches)")
    ax[0].legend(fontsize=7)
    ax[1].semilogx(s, [r["shift_accuracy"] for r in rows], "o-")
    ax[1].set_xlabel("SNR")
    ax[1].set_ylabel("shift accuracy (±1 px)")
    for a in ax:
        a.set_ylim(0, 1.05)
        a.grid(alpha=0.3)
    fig.suptitle(f"Algorithm 2, Shepp–Logan 11³ (ℓmax {ell}), {args.N}² micrograph, γ = {args.gamma}, K = {args.K}, "
                 f"separation {args.separation if args.separation is not None else 2 * L - 1} px")
    fig.tight_layout()
    with atomic_path(path.with_suffix(".png"), suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")


if __name__ == "__main__":
    main()
