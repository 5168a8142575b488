"""``orbitcore fsc``: Fourier shell correlation of two maps → resolution, curve PNG and JSON.

The FSC compares the two maps shell by shell in Fourier space; the resolution is where the
curve first drops below 0.5 (usual against a known ground truth) and 0.143 (the gold-standard
threshold for two independent half-maps). Both maps must have the same box. Use --align when
the second map is a reconstruction in an arbitrary orientation (ab initio): it is first
rotated, shifted and, if needed, mirrored onto the first (handedness is ambiguous without
known poses).

examples:
  orbitcore fsc truth.mrc reconstruction.mrc --align --out fsc.png
  orbitcore fsc half1.mrc half2.mrc --mask-radius 60 --out fsc.png --json fsc.json
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys


def run(args) -> int:
    import numpy as np  # noqa: PLC0415
    import torch  # noqa: PLC0415

    from ..io import read_mrc  # noqa: PLC0415
    from .fsc import fsc, spherical_mask  # noqa: PLC0415

    a, vs1 = read_mrc(args.map1)
    b, vs2 = read_mrc(args.map2)
    for name, x in ((args.map1, a), (args.map2, b)):
        if x.ndim != 3 or not (x.shape[0] == x.shape[1] == x.shape[2]):
            raise ValueError(f"{name}: expected a cubic 3-D map, got shape {x.shape}")
    if a.shape != b.shape:
        raise ValueError(f"the maps have different boxes: {args.map1} {a.shape}, {args.map2} {b.shape} "
                         "(resample one of them first)")
    px = args.pixel_size if args.pixel_size is not None else (vs1 or vs2)
    if px is None:
        raise ValueError("neither map header has a voxel size; give --pixel-size in Angstrom")
    if args.pixel_size is None and vs1 and vs2 and abs(vs1 - vs2) > 1e-3 * vs1:
        print(f"warning: voxel sizes differ ({vs1:g} vs {vs2:g} A); using {vs1:g}", file=sys.stderr)
    D = a.shape[0]
    mask = None
    if args.mask:
        m, _ = read_mrc(args.mask)
        if m.shape != a.shape:
            raise ValueError(f"--mask {args.mask}: shape {m.shape} differs from the maps' {a.shape}")
        mask = m
    elif args.mask_radius is not None:
        mask = spherical_mask(D, args.mask_radius / px, soft_width=args.mask_edge / px).numpy()
    summary = {"map1": args.map1, "map2": args.map2, "pixel_size_A": px, "box": D}
    if args.align:
        from .align import align_volumes, rotation_angle  # noqa: PLC0415

        res = align_volumes(torch.from_numpy(a), torch.from_numpy(b), mirror=not args.no_mirror,
                            verbose=not args.quiet)
        b = res.aligned.numpy().astype(np.float32)
        summary["alignment"] = {
            "rotation": res.rotation.tolist(), "rotation_angle_deg": float(rotation_angle(res.rotation)),
            "shift_voxels": res.shift.tolist(), "mirrored": res.mirror, "correlation": res.correlation}
        if not args.quiet:
            print(f"aligned {args.map2}: rotation {summary['alignment']['rotation_angle_deg']:.2f} deg, shift "
                  f"{[round(v, 2) for v in res.shift.tolist()]} voxels, mirrored: {res.mirror}, "
                  f"correlation {res.correlation:.4f}", file=sys.stderr)
    r = fsc(a, b, px, mask=mask)
    summary["fsc"] = r.to_dict()
    print(f"FSC resolution: {r.resolution_05:.2f} A at 0.5 ({r.resolution_05_px:.2f} px), "
          f"{r.resolution_0143:.2f} A at 0.143 ({r.resolution_0143_px:.2f} px); Nyquist {2 * px:.2f} A")
    if args.out:
        from .plots import plot_fsc  # noqa: PLC0415

        try:
            plot_fsc(r, args.out, title=f"{pathlib.Path(args.map1).name} vs {pathlib.Path(args.map2).name}")
            if not args.quiet:
                print(f"wrote {args.out}", file=sys.stderr)
        except ImportError:
            print("matplotlib is not installed (pip install orbitcore[plot]); no PNG written", file=sys.stderr)
    if args.json:
        from ..io.mrc import atomic_path  # noqa: PLC0415

        with atomic_path(args.json, suffix=".json") as tmp:
            tmp.write_text(json.dumps(summary, indent=1))
    return 0


def register(sub) -> None:
    p = sub.add_parser("fsc", help="Fourier shell correlation of two maps (resolution, curve PNG)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("map1", help="first map (MRC), e.g. the reference or half-map 1")
    p.add_argument("map2", help="second map (MRC), same box")
    p.add_argument("--pixel-size", type=float, default=None,
                   help="pixel size in Angstrom (default: from the map headers)")
    p.add_argument("--mask", default=None, metavar="MASK.mrc", help="a mask map multiplied into both maps")
    p.add_argument("--mask-radius", type=float, default=None, metavar="ANGSTROM",
                   help="a soft spherical mask of this radius in Angstrom (instead of --mask)")
    p.add_argument("--mask-edge", type=float, default=6.0, metavar="ANGSTROM",
                   help="width of the soft edge of --mask-radius (default 6 A)")
    p.add_argument("--align", action="store_true",
                   help="rotate/shift/mirror map2 onto map1 first (for ab-initio reconstructions)")
    p.add_argument("--no-mirror", action="store_true", help="with --align: do not try the mirrored map")
    p.add_argument("--out", default=None, metavar="FSC.png", help="write the FSC curve as a PNG")
    p.add_argument("--json", default=None, metavar="FSC.json", help="write the curve and resolutions as JSON")
    p.add_argument("--quiet", action="store_true", help="print only the resolution line")
    p.set_defaults(func=run)
