"""``orbitcore em``: the approximate EM of seeds/002 from micrographs.

  orbitcore em simulate-micrographs --phantom shepp-logan --size 11 --N 990 --n-micrographs 4 \\
      --gamma 0.1 --snr 3.5 --ell-max 10 --out sim/
      -> sim/micrograph_000.mrc ..., sim/truth.json (sigma, locations, rotations),
         sim/volume.mrc (the volume that was projected: basis-expanded for --method basis)
  orbitcore em reconstruct --micrographs sim/micrograph_*.mrc --L 11 --ell-max 6,8,10 \\
      --sigma-from sim/truth.json --S 0.05 --iterations 10 --out rec/volume.mrc \\
      --reference sim/volume.mrc
      -> rec/volume.mrc, rec/volume.json (history: Q, log-likelihood, seconds per iteration),
         rec/volume.ckpt (checkpoint after every iteration; --resume continues from it),
         rec/volume_fsc.png (with --reference: FSC after alignment over rotations/mirror)
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys


def _volume(args):
    import torch  # noqa: PLC0415

    if args.volume:
        from ..io import read_mrc  # noqa: PLC0415

        data, _ = read_mrc(args.volume)
        return torch.from_numpy(data).to(torch.float64)
    from ..physics import volumes  # noqa: PLC0415

    D = args.size
    if args.phantom == "shepp-logan":
        return volumes.shepp_logan_3d(D, dtype=torch.float64)
    return volumes.four_gaussians(D, dtype=torch.float64)


def run_simulate(args) -> int:
    from .. import em  # noqa: PLC0415
    from ..io import write_mrc  # noqa: PLC0415
    from ..io.mrc import atomic_path  # noqa: PLC0415

    vol = _volume(args)
    L = args.L or int(vol.shape[0])
    out = pathlib.Path(args.out)
    m = em.simulate_micrographs(vol, args.N, n_micrographs=args.n_micrographs, gamma=args.gamma, snr=args.snr, L=L,
                                ell_max=args.ell_max, method=args.method, separation=args.separation, seed=args.seed)
    names = []
    for i, mic in enumerate(m.micrographs):
        p = out / f"micrograph_{i:03d}.mrc"
        write_mrc(p, mic.float().numpy(), 1.0)
        names.append(p.name)
    if m.coefficients is not None:
        from ..basis import VolumeBasis  # noqa: PLC0415

        basis = VolumeBasis(L, args.ell_max if args.ell_max is not None else em.max_ell(L))
        truth_vol = basis.evaluate(m.coefficients)
    else:
        from .. import fourier  # noqa: PLC0415

        truth_vol = vol if vol.shape[0] == L else fourier.downsample(vol, L, 3)
    write_mrc(out / "volume.mrc", truth_vol.float().numpy(), 1.0)
    meta = {"sigma": m.sigma, "snr": m.snr, "L": L, "N": args.N, "gamma": args.gamma, "method": args.method,
            "micrographs": names, "locations": [l.tolist() for l in m.locations],
            "rotations": [r.tolist() for r in m.rotations]}
    with atomic_path(out / "truth.json") as tmp:
        tmp.write_text(json.dumps(meta))
    T = sum(len(l) for l in m.locations)
    print(f"wrote {len(names)} micrograph(s) of {args.N}x{args.N} with {T} projections (L = {L}), "
          f"sigma = {m.sigma:.6g} (SNR {args.snr}) to {out}/")
    return 0


def run_reconstruct(args) -> int:
    import numpy as np  # noqa: PLC0415
    import torch  # noqa: PLC0415

    from .. import _distributed, em  # noqa: PLC0415
    from ..io import read_mrc, write_mrc  # noqa: PLC0415
    from ..io.mrc import atomic_path  # noqa: PLC0415

    # under torchrun (WORLD_SIZE > 1) the E-steps are split over the processes; rank 0 writes
    multi = _distributed.init_from_env()
    rank = _distributed.world("em reconstruct", multi)[1]
    say = print if rank == 0 else (lambda *a, **k: None)

    mics = []
    for p in args.micrographs:
        data, _ = read_mrc(p)
        if data.ndim != 2:
            raise ValueError(f"--micrographs {p}: expected a 2-D micrograph, got shape {data.shape}")
        mics.append(torch.from_numpy(np.ascontiguousarray(data)).to(torch.float64))
    if args.sigma is None and args.sigma_from is None:
        raise ValueError("give the noise level: --sigma or --sigma-from truth.json")
    sigma = args.sigma if args.sigma is not None else float(json.loads(pathlib.Path(args.sigma_from).read_text())["sigma"])
    if args.downsample and args.downsample != 1:
        from .. import fourier  # noqa: PLC0415

        mics = [fourier.downsample(m, int(round(m.shape[-1] / args.downsample)), 2) for m in mics]
        sigma = sigma / args.downsample  # noise variance falls by the squared downsampling factor
    patches = torch.cat([em.extract_patches(m, args.L) for m in mics])
    ell = [int(v) for v in str(args.ell_max).split(",")]
    its = [int(v) for v in str(args.iterations).split(",")]
    its = its[0] if len(its) == 1 else its
    out = pathlib.Path(args.out)
    ckpt = out.with_suffix(".ckpt")
    state = None
    if args.resume and ckpt.exists():
        saved = torch.load(ckpt, weights_only=False)
        state = saved["state"]
        say(f"resuming from {ckpt}: stage {state.stage}, iteration {state.iteration}", flush=True)
    say(f"{patches.shape[0]} patches of {args.L}x{args.L} from {len(mics)} micrograph(s); K = {args.K}, "
          f"ell_max schedule {ell}, S = {args.S}, sigma = {sigma:.6g}", flush=True)

    def progress(st, op):
        h = st.history[-1]
        say(f"  ell_max {h['ell_max']:2d} it {h['iteration']:3d}  Q = {h['Q']:.6e}  loglik = {h['log_likelihood']:.6e}"
              f"  {h['seconds']:.2f} s ({h['patches']} patches)", flush=True)
        if rank != 0:
            return
        with atomic_path(ckpt, suffix=".ckpt") as tmp:
            torch.save({"state": st, "args": {k: v for k, v in vars(args).items()
                                                    if isinstance(v, (int, float, str, list, type(None)))}}, tmp)

    vol, state, op = em.reconstruct(patches, sigma, L=args.L, ell_max=ell, K=args.K, iterations=its, S=args.S,
                                    epsilon=args.epsilon, seed=args.seed, state=state, callback=progress,
                                    dtype=torch.float64 if args.float64 else torch.float32, distributed=multi)
    if multi:
        _distributed.leave()
    if rank != 0:
        return 0
    write_mrc(out, vol.float().numpy(), 1.0)
    report = {"history": state.history, "L": args.L, "K": args.K, "ell_max": ell, "S": args.S, "sigma": sigma}
    if args.reference:
        from ..metrics import align_volumes, fsc  # noqa: PLC0415
        from ..metrics.plots import plot_fsc  # noqa: PLC0415

        ref, _ = read_mrc(args.reference)
        ref = torch.from_numpy(ref).to(torch.float64)
        al = align_volumes(ref, vol, refine_size=None)
        r = fsc(ref, al.aligned)
        report["fsc"] = {"curve": r.curve.tolist() if hasattr(r.curve, "tolist") else list(r.curve),
                         "resolution_05_px": r.resolution_05_px, "correlation": al.correlation}
        plot_fsc(r, out.with_name(out.stem + "_fsc.png"), title="EM reconstruction vs reference")
        say(f"FSC vs reference: 0.5 crossing at {r.resolution_05_px:.2f} px; curve "
              + " ".join(f"{v:.3f}" for v in report["fsc"]["curve"]), flush=True)
    with atomic_path(out.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}", flush=True)
    return 0


def run(args) -> int:
    if getattr(args, "em_command", None) is None:
        args.em_parser.print_help()
        return 2
    return args.em_func(args)


def register(sub) -> None:
    p = sub.add_parser("em", help="approximate EM from micrographs (seeds/002): simulate, reconstruct",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    esub = p.add_subparsers(dest="em_command", metavar="<em-command>")
    s = esub.add_parser("simulate-micrographs", help="micrographs of projections at random positions and rotations")
    src = s.add_mutually_exclusive_group()
    src.add_argument("--volume", default=None, help="volume MRC (cubic)")
    src.add_argument("--phantom", default="shepp-logan", choices=["shepp-logan", "gaussians"])
    s.add_argument("--size", type=int, default=11, help="phantom side (default 11)")
    s.add_argument("--L", type=int, default=None, help="projection side in the micrographs (default: volume side)")
    s.add_argument("--N", type=int, required=True, help="micrograph side in pixels")
    s.add_argument("--n-micrographs", type=int, default=1)
    s.add_argument("--gamma", type=float, default=0.1, help="density T L^2 / N^2 (default 0.1)")
    s.add_argument("--snr", type=float, default=1.0, help="eq. 4 SNR (default 1)")
    s.add_argument("--ell-max", type=int, default=None, help="basis band limit for --method basis (default: max)")
    s.add_argument("--method", choices=["basis", "volume"], default="basis",
                   help="basis: project the basis expansion (paper's second method); volume: the full volume, "
                        "then Fourier-downsample the micrographs (first method)")
    s.add_argument("--separation", type=int, default=None, help="minimum corner distance (default 2L - 1, eq. 5)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True, help="output directory")
    s.set_defaults(em_func=run_simulate)
    r = esub.add_parser("reconstruct", help="Algorithm 1 with frequency marching")
    r.add_argument("--micrographs", nargs="+", required=True, help="micrograph MRC files")
    r.add_argument("--L", type=int, required=True, help="patch / projection side")
    r.add_argument("--ell-max", default="6,8,10", help="frequency-marching schedule (default 6,8,10)")
    r.add_argument("--K", type=int, default=552, help="rotations in the grid (default 552)")
    r.add_argument("--iterations", default="10", help="max iterations per stage: one value or one per stage")
    r.add_argument("--S", type=float, default=0.05, help="stochastic factor (default 0.05; 1 = full batch)")
    r.add_argument("--epsilon", type=float, default=-math.inf,
                   help="stop a stage when Q_k+1 - Q_k <= epsilon (default: never, run --iterations)")
    r.add_argument("--sigma", type=float, default=None, help="noise std per pixel of the given micrographs")
    r.add_argument("--sigma-from", default=None, help="read sigma from a truth.json of simulate-micrographs")
    r.add_argument("--downsample", type=float, default=None,
                   help="Fourier-downsample the micrographs by this factor first (sigma is rescaled)")
    r.add_argument("--float64", action="store_true", help="E-step in float64 (default float32)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--resume", action="store_true", help="continue from OUT.ckpt if it exists")
    r.add_argument("--reference", default=None, help="reference MRC: align, FSC PNG and JSON")
    r.add_argument("--out", required=True, help="output volume MRC")
    r.set_defaults(em_func=run_reconstruct)
    p.set_defaults(func=run, em_parser=p)


def main(argv=None) -> int:  # pragma: no cover - convenience
    from ..cli import main as cli_main  # noqa: PLC0415

    return cli_main(["em"] + list(sys.argv[1:] if argv is None else argv))
