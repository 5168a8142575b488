"""``orbitcore amortized``: ab-initio reconstruction by amortized pose inference (CryoAI /
CryoPoseNet): a neural network learns to predict each particle's orientation and shift from its
image while a volume is fitted through the cryo-EM image-formation model, end to end.

  orbitcore amortized train     train on a particle stack (STAR + MRCS); checkpoints; resumable
  orbitcore amortized evaluate  predict every particle's pose (STAR), export the map (MRC),
                                FSC against a reference map
  orbitcore amortized refine    projection matching from a trained model's map: maximum-
                                likelihood rotations (global search, then local) + reconstruction

Run `orbitcore amortized train --help` for the options.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

TRAIN_HELP = """Train the encoder (image -> pose) and the volume together on a particle stack.

Decoders: 'voxel' (CryoPoseNet: a D^3 voxel map, sliced in Fourier space; fast) or 'fouriernet'
(CryoAI: the map's Fourier transform as a neural network, queried on the slices). The loss is
the Fourier-space L2 distance between each image and the model's image of it, or (default) the
symmetric loss, which also tries each image rotated by 180 degrees and keeps the better of the
two; it avoids getting stuck in mirror-symmetric maps.

The particle file must have CTF parameters (or pass --no-ctf for CTF-free images) and a pixel
size. Images are divided by their global root-mean-square (no mean subtraction). Everything needed to
continue is checkpointed in OUT/checkpoint.pt (every --checkpoint-every steps, at the end, and
on Ctrl-C); --resume continues exactly where it stopped. At the end the poses (OUT/poses.star),
the map (OUT/volume.mrc) and a summary (OUT/evaluation.json; with --reference also the FSC after
aligning the map, handedness included, and OUT/fsc.png) are written.

--device cuda trains on a GPU. Launched by torchrun, the processes train one model together
(data-parallel: each takes --batch-size particles of every step's global batch, the gradients
are averaged; gloo on CPUs, nccl with --device cuda, one GPU per process); rank 0 writes the
outputs, and --resume needs the same number of processes to continue exactly.

examples:
  orbitcore simulate --phantom pseudo-molecule --size 64 --pixel-size 2 --n-images 10000 \\
      --snr-db 0 --shift-std 2 --out sim/particles.star
  orbitcore amortized train --particles sim/particles.star --decoder voxel --out run1 \\
      --epochs 5 --reference sim/particles_volume.mrc
  orbitcore amortized train --out run1 --resume --epochs 10        # continue the same run
  orbitcore --threads 1 amortized train --particles p.star --decoder fouriernet --size 32 --out run2
  # the settings that learn poses from scratch on the simulated n = 64 set (16 pose hypotheses,
  # encoder on 32^2; docs/evidence/amortized, section 2), then projection matching from its map:
  orbitcore amortized train --particles sim/particles.star --out run4 --pose-heads 16 --encoder-size 32 \\
      --batch-size 32 --max-shift 3 --epochs 50 --reference sim/particles_volume.mrc
  orbitcore amortized refine --checkpoint run4/checkpoint.pt --out run4/refined --rounds 6 --global-rounds 6 \\
      --shift-search 3
  torchrun --nproc-per-node 4 -m orbitcore amortized train --particles p.star --out run3 --device cuda
"""

EVAL_HELP = """Run a trained encoder over every particle (no training) and write its poses.

Writes OUT/poses.star (the input STAR with the predicted rlnAngleRot/Tilt/Psi and origins; image
names relative to the input's folder are rewritten relative to OUT, those read with --data-dir kept),
OUT/volume.mrc and OUT/evaluation.json; with --reference also the FSC after alignment and
OUT/fsc.png. When the particle file already has poses (e.g. a simulation's ground truth), the
pose errors against them are reported (median squared Frobenius norm after the best global
rotation and handedness, mean squared shift error).

examples:
  orbitcore amortized evaluate --checkpoint run1/checkpoint.pt --out run1/eval
  orbitcore amortized evaluate --checkpoint run1/checkpoint.pt --particles other.star --out eval2 \\
      --reference truth.mrc
"""

REFINE_HELP = """Refine a trained model's poses and map by projection matching (not amortized).

The encoder's shifts and the decoder's map are the start. Each round finds every particle's
maximum-likelihood rotation against the current map (the first --global-rounds rounds: a
global search over an SO(3) grid of --step degrees, refined locally; later rounds: local
searches from the previous rotations) and reconstructs the map from the images with those
rotations (direct Fourier inversion with the CTFs; Wiener constant --regularization). At 0 dB on
the documented-scale simulation this takes the encoder's 56-60 degree median error to about 8
degrees (docs/evidence/amortized/README.md section 4). At low SNR, where the first map is poor,
search globally in every round: at -10 dB (n = 64, 10^4 particles) a local round after the
first gained nothing, while repeated global rounds took the median error from 65 to under 10
degrees (the same README, section 2). Cost: the global round takes about 5 s per 1000 particles
of 32x32 at 7.5 degrees on one thread (benchmarks/RESULTS.md, pose search); all the images are
held in memory (N x n^2 x 4 bytes).

With --shift-search PX each round also re-estimates every particle's shift at its new rotation
(an FFT cross-correlation on a 1/4-pixel grid, within PX pixels of the encoder's shift). At -10 dB,
six global rounds with --shift-search 3 reach 5.3 degrees and 8.3 A, against 7.7 degrees and 9.3 A
with the encoder's shifts (true-pose map: 7.6 A; README section 2).

Writes OUT/poses.star (the refined rotations, the encoder's or the refined shifts), OUT/volume.mrc
(at the model's box, in the units of the images as stored; training's maps are in units of the
RMS-normalised images, and the search fits each image's scale, so either map can start it) and
OUT/refine.json (per round: global or local search, mean log-likelihood, mean rotation change; the
pose errors when the particle file has poses; the FSC with --reference, and OUT/fsc.png). After
every round the state is saved to OUT/refine_state.pt (atomically): an interrupted refinement
continues with --resume from the last finished round and ends as an uninterrupted one would;
--resume with more --rounds extends a finished one.

examples:
  orbitcore amortized refine --checkpoint run1/checkpoint.pt --out run1/refined --rounds 3
  orbitcore amortized refine --checkpoint run1/checkpoint.pt --out r2 --step 5 --reference truth.mrc
  orbitcore amortized refine --checkpoint run1/checkpoint.pt --out r3 --rounds 4 --global-rounds 4
  orbitcore amortized refine --checkpoint run1/checkpoint.pt --out r3 --rounds 6 --global-rounds 4 --resume
"""


def _print_summary(res, out) -> None:
    s = res.summary()
    print(f"predicted poses of {s['n_particles']} particles ({s['images_per_s']:.0f} images/s); "
          f"rotated-copy path chosen for {100 * s['flipped_fraction']:.1f}%", file=sys.stderr)
    if res.pose_errors is not None:
        pe = res.pose_errors
        sh = f", shift MSE {pe.shift_mse:.3g} px^2" if pe.shift_mse is not None else ""
        print(f"vs the poses in the particle file: median rotation error {pe.rotation_median_angle:.2f} deg "
              f"(median sq. Frobenius {pe.rotation_median_sq_frobenius:.3g}){sh}, mirrored: {pe.mirror}",
              file=sys.stderr)
    if res.fsc is not None:
        print(f"FSC vs reference: {res.fsc.resolution_05:.2f} A at 0.5 ({res.fsc.resolution_05_px:.2f} px), "
              f"{res.fsc.resolution_0143:.2f} A at 0.143", file=sys.stderr)
    print(f"wrote {out}/poses.star, volume.mrc, evaluation.json", file=sys.stderr)


def run_train(args) -> int:
    from .model import ModelConfig  # noqa: PLC0415
    from .train import Trainer, TrainConfig, evaluate  # noqa: PLC0415

    from .. import _distributed  # noqa: PLC0415

    out = pathlib.Path(args.out)
    ckpt = out / "checkpoint.pt"
    # under torchrun (WORLD_SIZE > 1): data-parallel, one process per GPU or CPU share; rank 0 writes
    device = _distributed.local_device(args.device)
    multi = _distributed.init_from_env(device)
    world, rank = _distributed.world("amortized train", multi)
    say = print if rank == 0 else (lambda *a, **k: None)
    if args.resume:
        if not ckpt.is_file():
            raise ValueError(f"--resume: {ckpt} does not exist (nothing to continue)")
        tr = Trainer.resume(ckpt, particles=args.particles, data_dir=args.data_dir, num_workers=args.workers,
                            verbose=not args.quiet, device=device, distributed=multi)
        if args.steps is not None or args.epochs is not None:
            tr.config.steps = args.steps if args.steps is not None else int(round(args.epochs * tr.batches_per_epoch))
        say(f"resuming at step {tr.step} of {tr.config.steps}", file=sys.stderr)
    else:
        if args.particles is None:
            raise ValueError("--particles is required (or --resume to continue a run in --out)")
        if ckpt.exists():
            raise ValueError(f"{ckpt} exists: pass --resume to continue that run, or choose another --out")
        from ..io import ParticleStack  # noqa: PLC0415

        stack = ParticleStack(args.particles, data_dir=args.data_dir, size=args.size, normalize="rms")
        mc = ModelConfig(n=stack.size, decoder=args.decoder, symmetric=args.loss == "symmetric", shifts=args.shifts,
                         encoder_size=args.encoder_size, encoder_input=args.encoder_input, wiener_eps=args.wiener_eps,
                         rotation=args.rotation,
                         channels=tuple(args.channels),
                         max_shift=args.max_shift, pad=args.pad, fourier_hidden=args.fourier_hidden,
                         fourier_scoring=args.fourier_scoring, pose_heads=args.pose_heads, whiten_rotation=not args.no_whiten, seed=args.seed)
        bpe = max(1, len(stack) // (max(1, min(args.batch_size, len(stack) // world)) * world))
        steps = args.steps if args.steps is not None else int(round((args.epochs or 1.0) * bpe))
        tc = TrainConfig(steps=steps, batch_size=args.batch_size, lr=args.lr, decoder_lr=args.decoder_lr,
                         clip=args.clip if args.clip > 0 else None, num_workers=args.workers,
                         checkpoint_every=args.checkpoint_every, seed=args.seed, use_ctf=not args.no_ctf,
                         radius_start=args.radius_start, radius_hold=args.radius_hold,
                         radius_ramp=args.radius_ramp, lr_drop=args.lr_drop, drop_fraction=args.drop_fraction,
                         objective=args.objective)
        tr = Trainer(stack, mc, tc, out, verbose=not args.quiet, device=device, distributed=multi)
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
        where = f"{world} processes" if world > 1 else str(tr.device)
        say(f"training {args.decoder} ({args.objective}) on {len(stack)} particles of {stack.size}x{stack.size} px "
            f"({tr.batches_per_epoch} steps per epoch), {steps} steps on {where} -> {out}", file=sys.stderr)
    tr.fit()
    if multi:  # the evaluation below is rank 0's alone: leave the group first
        _distributed.leave()
    if rank == 0:
        res = evaluate(tr, out_dir=out, reference=args.reference, verbose=not args.quiet)
        _print_summary(res, out)
    return 0


def run_evaluate(args) -> int:
    from .train import evaluate  # noqa: PLC0415

    out = pathlib.Path(args.out)
    res = evaluate(args.checkpoint, args.particles, out_dir=out, data_dir=args.data_dir, reference=args.reference,
                   batch_size=args.batch_size, align=not args.no_align, verbose=not args.quiet, device=args.device)
    _print_summary(res, out)
    if args.json_stdout:
        print(json.dumps(res.summary(), indent=1))
    return 0


def run_refine(args) -> int:
    from .. import _distributed  # noqa: PLC0415
    from ..io import ParticleStack, write_mrc  # noqa: PLC0415
    from ..io.mrc import atomic_path  # noqa: PLC0415
    from .search import check_refine_settings, check_shift_search, refine_poses  # noqa: PLC0415
    from .train import _reference_volume, evaluate, load_checkpoint  # noqa: PLC0415

    # the refinement's settings are checked before the (slow) evaluation runs
    check_refine_settings(args.rounds, args.step, args.local_step, args.regularization, args.global_rounds)
    check_shift_search(args.shift_search)
    # under torchrun (WORLD_SIZE > 1) every search is split over the processes; rank 0 writes
    device = _distributed.local_device(args.device)
    multi = _distributed.init_from_env(device)
    rank = _distributed.world("amortized refine", multi)[1]
    quiet = args.quiet or rank != 0
    out = pathlib.Path(args.out)
    progress = out / "refine_state.pt"
    if progress.exists() and not args.resume:
        raise ValueError(f"{progress} exists: pass --resume to continue that refinement, or choose another --out")
    if args.resume and not progress.exists():
        raise ValueError(f"--resume: {progress} does not exist (nothing to continue)")
    state = load_checkpoint(args.checkpoint)
    particles = args.particles if args.particles is not None else state["data"]["particles"]
    n = int(state["model_config"]["n"])
    ev = evaluate(args.checkpoint, particles, data_dir=args.data_dir, batch_size=args.batch_size, recalibrate=True,
                  verbose=not quiet, device=device)
    stack = ParticleStack(particles, data_dir=args.data_dir, size=n)
    use_ctf = bool(state["train_config"]["use_ctf"])
    scale = stack.n / stack.size
    images = stack.images(list(range(len(stack)))).float()
    ctf = stack.ctf if use_ctf else None

    def report(r, R, vol):  # its dict joins the round's record (and the saved state)
        if stack.rotations is None:
            return None
        from ..metrics import pose_errors  # noqa: PLC0415

        pe = pose_errors(R, stack.rotations)
        if not quiet:
            print(f"round {r}: median rotation error {pe.rotation_median_angle:.2f} deg vs the particle file",
                  file=sys.stderr)
        return {"rot_median_angle_deg": pe.rotation_median_angle,
                "rot_median_sq_frobenius": pe.rotation_median_sq_frobenius}

    start = ev.volume.float().to(device or "cpu")  # the searches and reconstructions run where the map is
    res = refine_poses(start, images, ctf=ctf, shifts=(ev.shifts / scale).float(), rounds=args.rounds,
                       step=args.step, local_step=args.local_step, regularization=args.regularization,
                       global_rounds=args.global_rounds, shift_search=args.shift_search, callback=report,
                       checkpoint=progress, verbose=not quiet, distributed=multi)
    if multi:
        _distributed.leave()
    if rank != 0:
        return 0
    if res.resumed_rounds and not quiet:
        print(f"continued from round {res.resumed_rounds} ({progress})", file=sys.stderr)
    history = res.history
    out.mkdir(parents=True, exist_ok=True)
    px = float(stack.pixel_size[0]) if stack.pixel_size is not None else 1.0
    # the shifts: the encoder's, or with --shift-search the refined ones (model pixels -> the file's)
    table = stack.table.with_poses(res.rotations, res.shifts * scale if args.shift_search > 0 else ev.shifts)
    table.relocated(out, stack.data_dir).write(out / "poses.star")  # image names for a file in OUT
    write_mrc(out / "volume.mrc", res.volume.float().cpu().numpy(), voxel_size=px)
    doc = {"checkpoint": str(args.checkpoint), "particles": str(particles), "rounds": history,
           "encoder_pose_errors": None if ev.pose_errors is None else
           {"rot_median_angle_deg": ev.pose_errors.rotation_median_angle,
            "rot_median_sq_frobenius": ev.pose_errors.rotation_median_sq_frobenius}}
    if args.reference is not None:
        from ..metrics import align_volumes, fsc  # noqa: PLC0415
        from ..metrics.plots import plot_fsc  # noqa: PLC0415

        ref = _reference_volume("refine", args.reference, n, px)
        al = align_volumes(ref, res.volume.double().cpu(), mirror=True, verbose=not quiet)
        f = fsc(ref, al.aligned, px)
        doc["fsc_resolution_05_A"], doc["fsc_resolution_0143_A"] = f.resolution_05, f.resolution_0143
        plot_fsc(f, out / "fsc.png", title="projection-matching refinement vs reference")
        print(f"FSC vs reference: {f.resolution_05:.2f} A at 0.5", file=sys.stderr)
    with atomic_path(out / "refine.json", suffix=".json") as tmp:
        tmp.write_text(json.dumps(doc, indent=1))
    print(f"wrote {out}/poses.star, volume.mrc, refine.json", file=sys.stderr)
    return 0


def _checkpoint_arguments(p) -> None:
    """The arguments ``evaluate`` and ``refine`` share: the model, the particles, the output."""
    p.add_argument("--checkpoint", required=True, metavar="DIR/checkpoint.pt", help="a training checkpoint")
    p.add_argument("--particles", default=None, help="particle STAR file (default: the one the model was trained on)")
    p.add_argument("--data-dir", default=None, help="where the image stacks are")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--device", default=None,
                   help="where the model (and refine's searches and reconstructions) run: cpu (default), cuda, "
                        "cuda:1, ...")


def register(sub) -> None:
    p = sub.add_parser("amortized", help="ab-initio reconstruction by amortized pose inference (CryoAI / CryoPoseNet)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sp = p.add_subparsers(dest="amortized_command", metavar="<train|evaluate>")
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])

    t = sp.add_parser("train", help="train on a particle stack", description=TRAIN_HELP,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    io = t.add_argument_group("data and output")
    io.add_argument("--particles", metavar="PARTICLES.star", help="RELION STAR file (or cryoSPARC .cs) of the particles")
    io.add_argument("--data-dir", default=None, help="where the image stacks are (default: next to the STAR file)")
    io.add_argument("--out", required=True, metavar="DIR", help="output directory (checkpoint, history, poses, map)")
    io.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    io.add_argument("--device", default=None,
                    help="where the model trains: cpu (default), cuda, cuda:1, ... (under torchrun, cuda means each "
                         "process's own GPU, cuda:LOCAL_RANK)")
    io.add_argument("--reference", default=None, metavar="MAP.mrc",
                    help="reference map for the FSC at the end (e.g. the simulation's volume)")
    io.add_argument("--size", type=int, default=None,
                    help="train on images Fourier-cropped to this size (faster; resolution limited accordingly)")
    m = t.add_argument_group("model")
    m.add_argument("--decoder", choices=["voxel", "fouriernet"], default="voxel",
                   help="voxel map (CryoPoseNet, default) or FourierNet (CryoAI)")
    m.add_argument("--loss", choices=["symmetric", "l2"], default="symmetric",
                   help="symmetric loss (CryoAI eq. 10, default) or plain Fourier L2")
    m.add_argument("--shifts", choices=["predict", "known", "none"], default="predict",
                   help="predict the in-plane shifts (default), take them from the STAR file, or assume centred")
    m.add_argument("--no-ctf", action="store_true", help="the images have no CTF (do not apply one)")
    m.add_argument("--rotation", choices=["s2s2", "quaternion", "euler"], default="s2s2",
                   help="rotation output of the encoder (default s2s2, fastest to converge)")
    m.add_argument("--encoder-size", type=int, default=None,
                   help="the encoder sees images Fourier-cropped to this size (default: full size)")
    m.add_argument("--encoder-input", choices=["raw", "phase_flipped", "wiener"], default="raw",
                   help="what the encoder sees: the raw images (default, as the papers), the images "
                        "phase-flipped by the sign of their CTF, or Wiener-filtered by it (CTF/(CTF^2+eps), "
                        "--wiener-eps); the decoder still models the raw images")
    m.add_argument("--wiener-eps", type=float, default=0.1,
                   help="eps of --encoder-input wiener (default 0.1: gain <= 1.6; 0.01 restores the damped "
                        "frequencies up to 5x, better on noiseless test-bed data, see docs/evidence/amortized)")
    m.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64, 128],
                   help="encoder convolution channels per block (default 16 32 64 128)")
    m.add_argument("--pose-heads", type=int, default=1,
                   help="rotation hypotheses per image; the loss keeps the best (winner takes all; default 1)")
    m.add_argument("--no-whiten", action="store_true",
                   help="do not whiten the rotation head's output across the batch (uniform-pose prior)")
    m.add_argument("--max-shift", type=float, default=None, help="largest predicted shift in pixels (default n/8)")
    m.add_argument("--pad", type=int, default=2, help="voxel decoder: zero-padding factor before the FT (default 2)")
    m.add_argument("--fourier-hidden", type=int, default=128,
                   help="FourierNet width (default 128; the paper's 256 is GPU-sized)")
    m.add_argument("--fourier-scoring", choices=("exact", "grid"), default="exact",
                   help="FourierNet: score the competing paths (pose heads, symmetric copies) on the exact slices "
                        "(default) or on a 2x-oversampled grid of the network, trilinearly (the winners are still "
                        "rendered exactly; several times faster with --pose-heads 16)")
    o = t.add_argument_group("optimisation")
    o.add_argument("--objective", choices=["images", "poses"], default="images",
                   help="images: learn from the images alone (the papers' self-supervised training; default); "
                        "poses: the encoder learns the poses in --particles (e.g. the STAR file of "
                        "'orbitcore amortized refine') and the decoder the map at them, so that the encoder "
                        "predicts the poses of new particles without the search")
    o.add_argument("--epochs", type=float, default=None, help="passes over the data (default 1; or --steps)")
    o.add_argument("--steps", type=int, default=None, help="number of minibatch steps (instead of --epochs)")
    o.add_argument("--batch-size", type=int, default=64, help="images per minibatch (default 64)")
    o.add_argument("--lr", type=float, default=1e-4, help="encoder learning rate (Adam; default 1e-4)")
    o.add_argument("--decoder-lr", type=float, default=None,
                   help="decoder learning rate (default 0.16/n for the voxel map, 1e-4 for FourierNet)")
    o.add_argument("--radius-start", type=float, default=None,
                   help="frequency curriculum: loss disk radius (Fourier px) at the start (default: full radius)")
    o.add_argument("--radius-hold", type=int, default=0, help="steps at --radius-start before it grows (default 0)")
    o.add_argument("--radius-ramp", type=int, default=0,
                   help="steps over which the radius then grows linearly to the full radius (default 0)")
    o.add_argument("--lr-drop", type=float, default=1.0,
                   help="factor on both learning rates from --drop-fraction of the steps on (default 1: constant, "
                        "the papers'; 0.1 lets winner-take-all heads settle at the end of a run)")
    o.add_argument("--drop-fraction", type=float, default=0.75,
                   help="where the --lr-drop comes, as a fraction of the steps (default 0.75; --resume with more "
                        "--steps/--epochs keeps a drop that has already happened at its step)")
    o.add_argument("--clip", type=float, default=10.0, help="gradient-norm clipping (0: none; default 10)")
    o.add_argument("--workers", type=int, default=2, help="data-loading worker processes (default 2)")
    o.add_argument("--checkpoint-every", type=int, default=200, help="steps between checkpoints (default 200)")
    o.add_argument("--seed", type=int, default=0, help="initialisation and data order (default 0)")
    o.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=run_train)

    e = sp.add_parser("evaluate", help="predict poses with a trained model; export the map; FSC",
                      description=EVAL_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    _checkpoint_arguments(e)
    e.add_argument("--reference", default=None, metavar="MAP.mrc", help="reference map for the FSC")
    e.add_argument("--no-align", action="store_true", help="compare with the reference without aligning")
    e.add_argument("--batch-size", type=int, default=256, help="images per batch (default 256)")
    e.add_argument("--json-stdout", action="store_true", help="also print the summary as JSON")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=run_evaluate)

    r = sp.add_parser("refine", help="projection matching from a trained model: ML rotations + reconstruction",
                      description=REFINE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    _checkpoint_arguments(r)
    r.add_argument("--rounds", type=int, default=3, help="search + reconstruction rounds (default 3)")
    r.add_argument("--step", type=float, default=7.5, help="global SO(3) grid of round 1, degrees (default 7.5)")
    r.add_argument("--global-rounds", type=int, default=1,
                   help="how many of the first rounds search globally (default 1; at low SNR, where the start is "
                        "poor, search globally in every round: the help above)")
    r.add_argument("--shift-search", type=float, default=0.0, metavar="PX",
                   help="re-estimate every shift after each search, within PX pixels (of the model's box) of the "
                        "encoder's (default 0: keep the encoder's shifts)")
    r.add_argument("--local-step", type=float, default=4.0,
                   help="local search of later rounds: stencil starts at +-local_step/2 degrees (default 4)")
    r.add_argument("--regularization", type=float, default=1.0,
                   help="Wiener constant of the reconstruction, relative to the mean weight (default 1)")
    r.add_argument("--reference", default=None, metavar="MAP.mrc", help="reference map for the FSC")
    r.add_argument("--batch-size", type=int, default=256, help="images per encoder batch (default 256)")
    r.add_argument("--resume", action="store_true",
                   help="continue the refinement in --out from OUT/refine_state.pt (the same settings; more "
                        "--rounds extend it)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=run_refine)
