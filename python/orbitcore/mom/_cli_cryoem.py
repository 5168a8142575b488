"""``orbitcore mom-cryoem``: an ab initio volume from the first two moments of particle images
(method of moments with a neural-network prior, seeds/000 §3.2, §4.2, §5.2).

No poses are estimated: the images enter only through their mean M̂1 and second moment M̂2
(eq. 30, one streaming pass), Fourier-cropped to the working size. The volume (FourierNet, as
in the paper, or a voxel volume) and the density of the rotations on an SO(3) quadrature are
fitted to the moments by minimising eq. 28 with Adam.

examples:
  # simulated images of a map with a vMF-mixture viewing distribution (8 components), noise 0.5
  orbitcore mom-cryoem --simulate map.mrc --n-images 200000 --size 25 --vmf 8 --sigma 0.5 \\
      --steps 2000 --out runs/mom --truth map.mrc
  # a built-in phantom (four Gaussians), voxel baseline
  orbitcore mom-cryoem --simulate gaussians --volume-size 25 --n-images 50000 --vmf 8 \\
      --model voxel --steps 1500 --out runs/g4
  # the paper's protocol: the truth is the map's FourierNet fit (stopped at the paper's 0.043)
  orbitcore mom-cryoem --simulate map.mrc --volume-size 17 --neural-truth 2000 \\
      --neural-truth-target 0.043 --model voxel --steps 800 --out runs/nt
  # real particles (CTF-free, centred), noise variance estimated from the image corners
  orbitcore mom-cryoem --particles particles.star --size 33 --sigma2 corners --out runs/real
  # the same with the moments' pass shared by 8 processes (torchrun); rank 0 then fits
  torchrun --nproc-per-node 8 -m orbitcore mom-cryoem --particles particles.star --size 33 --out runs/real
  # resume an interrupted run: the same command again (the checkpoint is in --out); a larger
  # --steps extends a run (L-BFGS always; Adam while its learning-rate drop is still ahead)

Outputs in --out: volume.mrc (working size, working voxel size), density.npz (ρ on the
quadrature), directions.png (density of viewing directions), loss.png, history.json,
summary.json (settings, moment errors of eq. 22 and, with --truth, FSC resolutions after
alignment with handedness; with --neural-truth, its eq. 27 error and FSC against the map),
fsc.png with --truth, moments.pt (the data moments; reused by a rerun), checkpoint.pt.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys


def _load_volume(spec: str, size: int | None, pixel_size: float | None):
    import torch  # noqa: PLC0415

    from ..physics import volumes  # noqa: PLC0415

    if spec in ("gaussians", "pseudo-molecule"):
        D = size or 25
        v = volumes.four_gaussians(D) if spec == "gaussians" else volumes.pseudo_molecule(D)
        return v.to(torch.float64), float(pixel_size or 1.0)
    from ..io import read_mrc  # noqa: PLC0415

    p = pathlib.Path(spec)
    if not p.is_file():
        raise FileNotFoundError(f"--simulate {spec}: no such file (or use 'gaussians' / 'pseudo-molecule')")
    data, vs = read_mrc(p)
    if data.ndim != 3 or len(set(data.shape)) != 1:
        raise ValueError(f"--simulate {spec}: expected a cubic 3-D map, got shape {data.shape}")
    px = pixel_size if pixel_size is not None else (vs or 1.0)
    v = torch.from_numpy(data).to(torch.float64)
    if size is not None and size != v.shape[0]:
        from .. import fourier  # noqa: PLC0415

        if size > v.shape[0]:
            raise ValueError(f"--volume-size {size} is larger than the map ({v.shape[0]}); only downsampling")
        px = px * v.shape[0] / size
        v = fourier.downsample(v, size, 3)
    return v, float(px)


def _neural_truth(vol, px: float, args, verbose: bool):
    """The paper's neural ground truth (seeds/000 §5.2): the map replaced by its FourierNet fit
    (:func:`orbitcore.mom.cryoem.neural_ground_truth`, width ``--hidden``). Returns the volume
    and the ``neural_truth`` record of summary.json (eq. 27 error, FSC map vs network)."""
    from ..metrics import fsc  # noqa: PLC0415
    from . import cryoem as ce  # noqa: PLC0415

    settings = {"steps": args.neural_truth, "target_error": args.neural_truth_target, "lr": args.neural_truth_lr,
                "hidden": args.hidden, "seed": args.seed}
    vnn, info = ce.neural_ground_truth(vol, steps=args.neural_truth, lr=args.neural_truth_lr, hidden=args.hidden,
                                       target_error=args.neural_truth_target, seed=args.seed, progress=verbose)
    f = fsc(vol, vnn, px)
    record = {k: v for k, v in info.items() if k != "loss"}
    record.update({"settings": settings, "loss": info["loss"], "norm": float(vnn.norm()),
                   "fsc_map_vs_neural_05_A": f.resolution_05, "fsc_map_vs_neural_0143_A": f.resolution_0143,
                   "fsc_map_vs_neural_min": float(f.curve.min()), "fsc_map_vs_neural_curve": f.curve.tolist(),
                   "correlation_map_vs_neural": float((vol * vnn).sum() / (vol.norm() * vnn.norm()))})
    if verbose:
        print(f"neural ground truth: {info['steps_done']} steps, {info['seconds']:.1f} s, relative error (eq. 27) "
              f"{info['relative_error']:.4g}, min FSC map vs network {record['fsc_map_vs_neural_min']:.4f}",
              file=sys.stderr)
    return vnn, {"neural_truth": record}


def run(args) -> int:
    import torch  # noqa: PLC0415

    from ..geometry import VonMisesFisherMixture  # noqa: PLC0415
    from . import cryoem as ce  # noqa: PLC0415

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    verbose = not args.quiet
    mpath = out / "moments.pt"
    viewing = None
    truth = None
    extra = None
    if args.neural_truth and not args.simulate:
        raise ValueError("--neural-truth needs --simulate (it replaces the simulated map)")
    if args.simulate:
        vol, px = _load_volume(args.simulate, args.volume_size, args.pixel_size)
        vol = vol / vol.norm()  # the paper scales the volume to unit norm (§5.2)
        if args.neural_truth:
            vol, extra = _neural_truth(vol, px, args, verbose)
        truth = vol
        gen = torch.Generator().manual_seed(args.seed)
        viewing = VonMisesFisherMixture.random(args.vmf, generator=gen) if args.vmf else "uniform"
    if mpath.is_file() and not args.recompute_moments:
        mom = ce.CryoEMMoments.load(mpath)
        made = mom.meta.get("neural_truth")
        wanted = extra["neural_truth"]["settings"] if extra else None
        if args.simulate and made != wanted:
            raise ValueError(f"{mpath} was simulated with neural truth {made}, this run asks for {wanted}; "
                             "use another --out or --recompute-moments")
        if verbose:
            print(f"using the data moments in {mpath} (N = {mom.count}; --recompute-moments to redo)", file=sys.stderr)
    elif args.simulate:
        mom = ce.simulate_moments(vol, args.n_images, viewing=viewing, sigma=args.sigma, size=args.size,
                                  pixel_size=px, batch_size=args.batch_size, seed=args.seed, verbose=verbose)
        mom.meta["viewing"] = "uniform" if viewing == "uniform" else {
            "means": viewing.means.tolist(), "kappas": viewing.kappas.tolist(), "weights": viewing.weights.tolist()}
        if extra:
            mom.meta["neural_truth"] = extra["neural_truth"]["settings"]
        mom.save(mpath)
    else:
        s2 = args.sigma2
        if s2 not in (None, "corners", "high_frequency"):
            s2 = float(s2)
        # under torchrun (WORLD_SIZE > 1) the processes share the moments' batches; rank 0 then fits
        from .. import _distributed  # noqa: PLC0415

        multi = _distributed.init_from_env()
        mom = ce.moments_from_images(args.particles, args.size, sigma2=s2, pixel_size=args.pixel_size,
                                     batch_size=args.batch_size, limit=args.limit, verbose=verbose, distributed=multi)
        if multi:
            rank = _distributed.world("mom cryoem", multi)[1]
            _distributed.leave()
            if rank != 0:
                return 0
        mom.save(mpath)
    cfg = ce.FitConfig(model=args.model, query=args.query, hidden=args.hidden, density=args.density,
                       n_directions=args.n_directions, n_inplane=args.n_inplane, exact_degree=args.exact_degree,
                       steps=args.steps, lr=args.lr, squared=args.squared, seed=args.seed, latent_dim=args.latent_dim,
                       optimizer=args.optimizer, dtype=args.dtype,
                       band_limit=args.band_limit)
    res = ce.fit(mom, cfg, checkpoint=out / "checkpoint.pt", checkpoint_every=args.checkpoint_every,
                 resume=not args.restart, verbose=verbose)
    ev = None
    if args.truth or truth is not None:
        if args.truth:
            tv, tpx = _load_volume(args.truth, None, None)
            truth = tv / tv.norm() if args.simulate else tv
        ev = ce.evaluate(res, truth, viewing=viewing if isinstance(viewing, VonMisesFisherMixture) else None)
    summary = ce.write_outputs(res, out, evaluation=ev, plots=not args.no_plots, extra=extra)
    if verbose:
        line = {"moment_error_1": summary["moment_error_1"], "moment_error_2": summary["moment_error_2"]}
        if ev is not None:
            line.update({"resolution_05_A": ev["resolution_05_A"], "correlation": ev["correlation"]})
        print(json.dumps(line), file=sys.stderr)
        print(f"wrote {out}/volume.mrc, density.npz, summary.json, history.json"
              + ("" if args.no_plots else ", directions.png, loss.png") + (", fsc.png" if ev and not args.no_plots
                                                                           else ""), file=sys.stderr)
    return 0


def register(sub) -> None:
    p = sub.add_parser("mom-cryoem", help="ab initio volume from image moments (method of moments, seeds/000)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("data (one of)")
    g = src.add_mutually_exclusive_group(required=True)
    g.add_argument("--particles", metavar="X.star|X.mrcs", help="CTF-free, centred particle images")
    g.add_argument("--simulate", metavar="MAP.mrc|gaussians|pseudo-molecule",
                   help="simulate images of this volume (scaled to unit norm) and use their moments")
    src.add_argument("--size", type=int, default=None, help="working size n (images Fourier-cropped to n x n)")
    src.add_argument("--pixel-size", type=float, default=None, help="Å per original pixel (default: header, else 1)")
    src.add_argument("--sigma2", default=None,
                     help="--particles: noise variance per original pixel, 'corners' or 'high_frequency' "
                          "(default: no debiasing)")
    src.add_argument("--limit", type=int, default=None, help="--particles: use the first LIMIT images")
    src.add_argument("--batch-size", type=int, default=2048, help="images per batch (default 2048)")
    src.add_argument("--recompute-moments", action="store_true", help="ignore moments.pt in --out")
    sim = p.add_argument_group("simulation (--simulate)")
    sim.add_argument("--n-images", type=int, default=100000, help="N (default 100000; streamed)")
    sim.add_argument("--volume-size", type=int, default=None, help="Fourier-crop the map (phantoms: box, default 25)")
    sim.add_argument("--vmf", type=int, default=8, metavar="K",
                     help="viewing directions from a random mixture of K vMF (default 8; 0: uniform)")
    sim.add_argument("--sigma", type=float, default=0.0, help="noise std per pixel (paper: 0.5; default 0)")
    sim.add_argument("--neural-truth", type=int, default=0, metavar="STEPS",
                     help="the paper's neural ground truth: replace the (cropped, unit-norm) map by a FourierNet "
                          "(width --hidden) fitted to it with STEPS Adam steps, for the simulation and the FSC "
                          "(default 0: the map itself)")
    sim.add_argument("--neural-truth-target", type=float, default=None, metavar="ERR",
                     help="stop the neural-truth fit once its relative error (eq. 27) is <= ERR (paper: 0.043)")
    sim.add_argument("--neural-truth-lr", type=float, default=1e-4, help="its Adam learning rate (default 1e-4)")
    fit = p.add_argument_group("model and fit")
    fit.add_argument("--model", choices=["fouriernet", "voxel"], default="fouriernet")
    fit.add_argument("--query", choices=["direct", "grid"], default="direct",
                     help="FourierNet queries: at the rotated grids (paper) or on the n^3 grid then slices")
    fit.add_argument("--hidden", type=int, default=256, help="FourierNet width (default 256)")
    fit.add_argument("--latent-dim", type=int, default=0, help="size of the xi^v latent (default 0: none)")
    fit.add_argument("--density", choices=["encoder", "free", "projected"], default="encoder",
                     help="xi^rho encoder (paper), free softmax logits, or projected: in-plane-uniform weights "
                          "solved exactly at every evaluation (variable projection; needs --squared)")
    fit.add_argument("--n-directions", type=int, default=None, help="quadrature: design points (default 100)")
    fit.add_argument("--n-inplane", type=int, default=None, help="quadrature: in-plane angles (default 12)")
    fit.add_argument("--exact-degree", type=int, default=None, help="quadrature exact to this degree instead")
    fit.add_argument("--optimizer", choices=("adam", "lbfgs"), default="adam",
                     help="adam (the paper; lr/10 for the second half) or lbfgs (full-batch quasi-Newton, "
                          "recommended with --model voxel --squared; stops when it converges)")
    fit.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    fit.add_argument("--band-limit", choices=("disk", "cube"), default="disk",
                     help="voxel / FourierNet grid model: zero the frequencies beyond the moments' disk "
                          "(default) or keep the whole n^3 grid (FitConfig.band_limit)")
    fit.add_argument("--steps", type=int, default=2000, help="optimiser steps (L-BFGS: iterations)")
    fit.add_argument("--lr", type=float, default=None, help="learning rate (default 1e-4 FourierNet, 1e-2 voxel)")
    fit.add_argument("--squared", action="store_true", help="squared Frobenius norms in eq. 28")
    fit.add_argument("--checkpoint-every", type=int, default=100)
    fit.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    fit.add_argument("--seed", type=int, default=0)
    o = p.add_argument_group("output")
    o.add_argument("--out", required=True, metavar="DIR")
    o.add_argument("--truth", metavar="MAP.mrc", default=None,
                   help="ground truth for FSC (default with --simulate: the simulated volume)")
    o.add_argument("--no-plots", action="store_true")
    o.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)
