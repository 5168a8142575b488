"""``orbitcore simulate``: a volume (an MRC map or a built-in phantom) → a particle stack (MRCS)
and a RELION 3.1 STAR file with the ground truth (poses, shifts, CTF).

Each image is the projection of the volume at a random orientation (uniform, or a mixture of
von Mises–Fisher viewing directions), shifted by a random Gaussian offset, multiplied by a CTF
with random (log-normal) defocus, plus white Gaussian noise at the requested SNR
(SNR = mean clean-image power / noise variance). Conventions: RELION's Euler angles and
origins (rlnOriginX/YAngst = -shift), RELION's CTF. Images are generated in chunks, so large
stacks never sit in memory.

examples:
  orbitcore simulate --phantom pseudo-molecule --size 64 --pixel-size 2 \\
      --n-images 10000 --snr-db -10 --shift-std 4 --out sim/particles.star
  orbitcore simulate --volume map.mrc --pixel-size 5 --n-images 2000 --snr 0.1 \\
      --no-ctf --vmf 8 --out sim/vmf.star
Output: sim/particles.star, sim/particles.mrcs, and sim/particles_volume.mrc (the volume that
was projected, for FSC against later reconstructions).
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys


def _volume(args):
    import torch  # noqa: PLC0415

    from .. import fourier  # noqa: PLC0415
    from . import volumes  # noqa: PLC0415

    if args.volume:
        from ..io import read_mrc  # noqa: PLC0415

        data, vs = read_mrc(args.volume)
        if data.ndim != 3 or not (data.shape[0] == data.shape[1] == data.shape[2]):
            raise ValueError(f"--volume {args.volume}: expected a cubic 3-D map, got shape {data.shape}")
        px = args.pixel_size if args.pixel_size is not None else vs
        if px is None:
            raise ValueError(f"--volume {args.volume}: the map header has no voxel size (0); give --pixel-size in Å")
        vol = torch.from_numpy(data)
        if args.size is not None and args.size != vol.shape[0]:
            if args.size > vol.shape[0]:
                raise ValueError(f"--size {args.size} is larger than the map ({vol.shape[0]}); only downsampling")
            px = px * vol.shape[0] / args.size
            vol = fourier.downsample(vol.to(torch.float64), args.size, 3).float()
        return vol, float(px)
    D = args.size or 64
    px = args.pixel_size if args.pixel_size is not None else 1.0
    if args.phantom == "pseudo-molecule":
        return volumes.pseudo_molecule(D, seed=args.seed), px
    if args.phantom == "gaussians":
        return volumes.four_gaussians(D), px
    return volumes.shepp_logan_3d(D), px


def run(args) -> int:
    import torch  # noqa: PLC0415

    from ..geometry import VonMisesFisherMixture  # noqa: PLC0415
    from ..io import write_mrc  # noqa: PLC0415
    from .simulate import simulate_particles  # noqa: PLC0415

    out = pathlib.Path(args.out)
    if out.suffix.lower() != ".star":
        raise ValueError(f"--out must end in .star (the stack is written next to it), got {args.out}")
    if args.snr is not None and args.snr_db is not None:
        raise ValueError("give --snr or --snr-db, not both")
    vol, px = _volume(args)
    gen = torch.Generator().manual_seed(args.seed)
    viewing = "uniform"
    if args.vmf:
        viewing = VonMisesFisherMixture.random(args.vmf, tuple(args.vmf_kappa), generator=gen)
    res = simulate_particles(
        vol, args.n_images, pixel_size=px, snr=args.snr, snr_db=args.snr_db, viewing=viewing,
        shift_std=args.shift_std, ctf=not args.no_ctf, defocus_median=args.defocus,
        defocus_log_std=args.defocus_log_std, astigmatism_std=args.astigmatism, voltage=args.voltage, cs=args.cs,
        amplitude_contrast=args.amp_contrast, b_factor=args.b_factor, chunk_size=args.chunk_size, out=out,
        keep_images=False, generator=gen, verbose=not args.quiet)
    vol_path = out.with_name(out.stem + "_volume.mrc")
    write_mrc(vol_path, vol, voxel_size=px)
    summary = {
        "star": str(res.star_path), "stack": str(res.stack_path), "volume": str(vol_path),
        "n_images": len(res), "box": int(vol.shape[-1]), "pixel_size_A": px,
        "snr": res.snr if math.isfinite(res.snr) else None, "noise_sigma": res.sigma,
        "signal_power": res.signal_power, "ctf": not args.no_ctf, "viewing": "vmf" if args.vmf else "uniform",
        "seed": args.seed,
    }
    if args.vmf:
        summary["vmf"] = {"means": viewing.means.tolist(), "kappas": viewing.kappas.tolist(),
                          "weights": viewing.weights.tolist()}
    out.with_name(out.stem + "_summary.json").write_text(json.dumps(summary, indent=1))
    if not args.quiet:
        snr_txt = "no noise" if not math.isfinite(res.snr) else f"SNR {res.snr:.4g} ({10 * math.log10(res.snr):.1f} dB)"
        print(f"wrote {len(res)} images of {vol.shape[-1]}x{vol.shape[-1]} px at {px:g} A/px, {snr_txt}, "
              f"noise sigma {res.sigma:.4g}", file=sys.stderr)
        print(f"  {res.star_path}\n  {res.stack_path}\n  {vol_path}\n  {out.with_name(out.stem + '_summary.json')}",
              file=sys.stderr)
    return 0


def register(sub) -> None:
    p = sub.add_parser("simulate", help="simulate a particle stack (MRCS + STAR) from a map or a phantom",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("volume (one of)")
    g = src.add_mutually_exclusive_group()
    g.add_argument("--volume", metavar="MAP.mrc", help="a cubic MRC map to project")
    g.add_argument("--phantom", choices=["pseudo-molecule", "shepp-logan", "gaussians"], default="pseudo-molecule",
                   help="a built-in volume (default: pseudo-molecule, a chiral cluster of Gaussian pseudo-atoms)")
    src.add_argument("--size", type=int, default=None,
                     help="box size in pixels (phantom: default 64; map: Fourier-crop it to this size)")
    src.add_argument("--pixel-size", type=float, default=None,
                     help="pixel size in Angstrom (default: the map header's; 1.0 for phantoms)")
    img = p.add_argument_group("images")
    img.add_argument("--n-images", type=int, required=True, help="number of particle images")
    img.add_argument("--out", required=True, metavar="PARTICLES.star",
                     help="STAR file to write; the stack goes next to it as PARTICLES.mrcs")
    img.add_argument("--snr", type=float, default=None, help="signal-to-noise ratio, linear (default: no noise)")
    img.add_argument("--snr-db", type=float, default=None, help="signal-to-noise ratio in dB (e.g. -10)")
    img.add_argument("--shift-std", type=float, default=0.0,
                     help="standard deviation of the random particle shifts in Angstrom (default 0: centred)")
    img.add_argument("--vmf", type=int, default=0, metavar="K",
                     help="draw viewing directions from a random mixture of K von Mises-Fisher distributions "
                          "(default 0: uniform rotations)")
    img.add_argument("--vmf-kappa", type=float, nargs=2, default=(2.0, 20.0), metavar=("LOW", "HIGH"),
                     help="range of the vMF concentrations (default 2 20)")
    ctf = p.add_argument_group("CTF (RELION convention)")
    ctf.add_argument("--no-ctf", action="store_true", help="no CTF (pure projections)")
    ctf.add_argument("--defocus", type=float, default=15000.0,
                     help="median defocus in Angstrom (log-normal; default 15000)")
    ctf.add_argument("--defocus-log-std", type=float, default=0.3,
                     help="standard deviation of log(defocus) (default 0.3)")
    ctf.add_argument("--astigmatism", type=float, default=0.0,
                     help="standard deviation of |defocusU - defocusV| in Angstrom (default 0)")
    ctf.add_argument("--voltage", type=float, default=300.0, help="kV (default 300)")
    ctf.add_argument("--cs", type=float, default=2.7, help="spherical aberration in mm (default 2.7)")
    ctf.add_argument("--amp-contrast", type=float, default=0.1, help="amplitude contrast (default 0.1)")
    ctf.add_argument("--b-factor", type=float, default=0.0, help="B-factor envelope in A^2 (default 0)")
    run_ = p.add_argument_group("run")
    run_.add_argument("--seed", type=int, default=0, help="random seed (results reproduce; default 0)")
    run_.add_argument("--chunk-size", type=int, default=1024, help="images per chunk (default 1024)")
    run_.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=run)
