"""Training, checkpoints and evaluation of the amortized model (seeds/003 §3, supp. A;
seeds/004 Algorithm 1).

Training (:class:`Trainer`): minibatches of a :class:`orbitcore.io.ParticleStack` through a
``DataLoader`` (worker processes read the memory-mapped stacks), Adam with separate learning
rates for the encoder and the decoder, gradient-norm clipping, a progress bar with the loss and
the image rate, and periodic checkpoints. Optionally a frequency curriculum: the loss disk starts
small and grows to the model's radius (:func:`loss_radius`, a pure function of the step).

Checkpoints hold everything needed to continue *exactly*: the model and optimiser states, the
torch RNG state, the step, the epoch and the position inside the epoch (the minibatch order of
epoch ``e`` is a permutation drawn from ``seed`` and ``e`` alone, so a resumed run sees the
same batches), the image normalisation and the history. They are written atomically
(:class:`orbitcore.io.atomic_path`); an interrupted run (Ctrl-C) saves one before stopping.
Resuming from a checkpoint reproduces the next steps bit for bit (tested).

Evaluation (:func:`evaluate`): the encoder's normalisation statistics are re-estimated over the
stack with the final weights (:func:`recalibrate_statistics`, on a copy), then the encoder runs
over the whole stack without gradients (with
the symmetric loss the decoder also scores both paths, to report the chosen path's pose); poses
go to a RELION STAR file (``R = Aᵀ``, origins ``= -t``, via
:meth:`orbitcore.io.ParticleTable.with_poses`), the volume to an MRC file, and, given a
reference map, the FSC after 3-D alignment (rotation, translation and handedness:
:func:`orbitcore.metrics.align_volumes`). When the particle file carries poses (simulations:
the truth), pose errors against them are reported too (:func:`orbitcore.metrics.pose_errors`).
"""
from __future__ import annotations

import json
import math
import os
import pathlib
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .._schedule import check_step_drop, step_drop_factor
from .._validate import check_float, check_int, check_path, fail
from .model import AmortizedModel, ModelConfig

__all__ = ["TrainConfig", "Trainer", "loss_radius", "recalibrate_statistics", "EvaluationResult", "evaluate", "predict_poses", "load_checkpoint",
           "model_from_checkpoint",
           "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "orbitcore-amortized-checkpoint-1"


FOURIERNET_LR = 1e-4  # the FourierNet decoder's default Adam rate (TrainConfig.decoder_lr)


OBJECTIVES = ("images", "poses")


@dataclass
class TrainConfig:
    """Optimisation settings (saved in checkpoints).

    Attributes:
        steps: total number of optimisation steps (minibatches) of the run.
        batch_size: images per minibatch (CryoAI: 128 at L = 64, 32 at L = 128).
        lr: Adam learning rate of the encoder (CryoAI: 1e-4; CryoPoseNet: 5e-4).
        decoder_lr: Adam learning rate of the decoder. Default: ``1e-4`` for FourierNet
            (CryoAI's rate for the SIRENs, whatever ``lr`` is: with the encoder at ``1e-3``, a
            decoder at ``1e-3`` left the test bed's poses at 80–96° after 6000–8000 steps, at
            ``1e-4`` they reach 7–8° in 6000; docs/evidence/amortized §3); for the voxel volume
            ``0.16 / n``: Adam moves each voxel by about the learning rate per step, and the
            voxels of a molecule seen in RMS-normalised ``n × n`` images (each pixel a sum over
            ~``n / 2`` voxels) are of order ``2 / n``, reached in ~100 steps.
        clip: gradient-norm clipping threshold (None: no clipping).
        num_workers: DataLoader worker processes (0: read in the main process).
        checkpoint_every: steps between checkpoints (0: only at the end / on interrupt).
        log_every: steps between history entries.
        seed: minibatch order (epoch ``e`` uses a permutation drawn from ``seed`` and ``e``).
        use_ctf: apply the particles' CTF in the decoder (the file must have CTF columns).
        radius_start: frequency curriculum ("frequency marching"): the loss (and the slices)
            are restricted to the disk ``|k| <= radius_start`` Fourier pixels at first, where
            the image loss is a smooth function of the pose, and the disk then grows to the
            model's radius (:func:`loss_radius`). None: the full radius from the first step.
        radius_hold: steps at ``radius_start`` before the disk starts growing.
        radius_ramp: steps over which the radius then grows linearly to the model's radius.
            The radius is a pure function of the step, so resumed runs follow the same schedule.
        lr_drop: factor applied to both learning rates from step ``round(drop_fraction × steps)``
            on (:meth:`lr_factor`). 1 (the default, the papers' constant rate) turns it off. With
            a constant rate the winner-take-all heads can keep switching late in a run (the test
            bed's median error moved between 9° and 25° from step 4000 to 11000 on one CPU). A
            drop once the poses have formed lets them settle (0.1 at half the steps: 3.6°); a
            drop late in the run freezes whatever state it meets (docs/evidence/amortized §1).
        drop_fraction: where the drop comes, as a fraction of ``steps`` (default 0.75).
        objective: ``"images"`` (default): the papers' self-supervised training, encoder and
            decoder learn from the images alone (eqs. 8–10). ``"poses"``: amortize *given*
            poses, those of the particle file (rlnAngleRot/Tilt/Psi and the origins; missing
            origins are zero shifts), e.g. the STAR file that
            :func:`~orbitcore.amortized.refine_poses` (``orbitcore amortized refine``) writes:
            the encoder regresses onto them and the decoder fits the images at them
            (:meth:`AmortizedModel.given_pose_losses`; the history's ``loss`` is then the
            image loss at the given poses and ``pose_loss`` the regression's). The trained
            encoder predicts the poses of new particles at its own rate (:func:`evaluate`),
            without the search.
    """

    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-4
    decoder_lr: float | None = None
    clip: float | None = 10.0
    num_workers: int = 2
    checkpoint_every: int = 200
    log_every: int = 10
    seed: int = 0
    use_ctf: bool = True
    radius_start: float | None = None
    radius_hold: int = 0
    radius_ramp: int = 0
    lr_drop: float = 1.0
    drop_fraction: float = 0.75
    objective: str = "images"
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        fn = "TrainConfig"
        self.steps = check_int(fn, "steps", self.steps, minimum=0)
        self.batch_size = check_int(fn, "batch_size", self.batch_size, minimum=1)
        self.lr = check_float(fn, "lr", self.lr, positive=True)
        if self.decoder_lr is not None:
            self.decoder_lr = check_float(fn, "decoder_lr", self.decoder_lr, positive=True)
        if self.clip is not None:
            self.clip = check_float(fn, "clip", self.clip, positive=True)
        self.num_workers = check_int(fn, "num_workers", self.num_workers, minimum=0)
        self.checkpoint_every = check_int(fn, "checkpoint_every", self.checkpoint_every, minimum=0)
        self.log_every = check_int(fn, "log_every", self.log_every, minimum=1)
        self.seed = check_int(fn, "seed", self.seed)
        if not isinstance(self.use_ctf, bool):
            fail(fn, f"use_ctf must be True or False, got {self.use_ctf!r}", TypeError)
        if self.radius_start is not None:
            self.radius_start = check_float(fn, "radius_start", self.radius_start, positive=True)
        self.radius_hold = check_int(fn, "radius_hold", self.radius_hold, minimum=0)
        self.radius_ramp = check_int(fn, "radius_ramp", self.radius_ramp, minimum=0)
        self.lr_drop, self.drop_fraction = check_step_drop(fn, self.lr_drop, self.drop_fraction)
        if self.lr_drop > 1.0:
            fail(fn, f"lr_drop must be in (0, 1] (a factor that lowers the learning rates), got {self.lr_drop}")
        if self.objective not in OBJECTIVES:
            fail(fn, f"objective must be one of {list(OBJECTIVES)}, got {self.objective!r}")
        if self.radius_start is None and (self.radius_hold or self.radius_ramp):
            fail(fn, f"radius_hold = {self.radius_hold} and radius_ramp = {self.radius_ramp} need radius_start "
                     "(the curriculum's first radius), got radius_start=None")

    def lr_factor(self, step: int) -> float:
        """The learning-rate schedule: 1 before step ``round(drop_fraction × steps)``, ``lr_drop``
        from it on (a pure function of the step, so a resumed run follows it exactly)."""
        return step_drop_factor(step, self.steps, self.lr_drop, self.drop_fraction)

    def to_dict(self) -> dict:
        return asdict(self)


def loss_radius(step: int, radius: float, start: float | None = None, hold: int = 0, ramp: int = 0) -> float:
    """Radius (Fourier pixels) of the loss disk at optimisation step ``step`` (0-based) under
    the frequency curriculum of :class:`TrainConfig`::

        r(s) = start                                            s < hold
        r(s) = start + (radius − start) · (s − hold) / ramp     hold <= s < hold + ramp
        r(s) = radius                                           s >= hold + ramp

    ``start=None`` (no curriculum): ``radius`` at every step. A pure function of the step.
    """
    fn = "loss_radius"
    step = check_int(fn, "step", step, minimum=0)
    radius = check_float(fn, "radius", radius, positive=True)
    hold = check_int(fn, "hold", hold, minimum=0)
    ramp = check_int(fn, "ramp", ramp, minimum=0)
    if start is None:
        return radius
    start = check_float(fn, "start", start, positive=True)
    if start > radius:
        fail(fn, f"start must be <= radius = {radius:g} Fourier pixels, got {start:g}")
    if step < hold:
        return start
    if step >= hold + ramp:
        return radius
    return start + (radius - start) * (step - hold) / ramp


class _EpochBatches(torch.utils.data.Sampler):
    """Minibatches of epoch ``epoch``: a permutation drawn from ``(seed, epoch)`` cut into
    ``batch_size`` rows (a last partial batch is dropped, so batch statistics stay comparable),
    starting at batch ``start``. Mutable: the trainer sets ``epoch``/``start`` before iterating.

    Data-parallel (``world`` processes): the permutation is cut into global batches of
    ``world × batch_size`` rows, and process ``rank`` takes its ``batch_size`` rows of each, so
    the processes see disjoint particles and together the whole epoch."""

    def __init__(self, n: int, batch_size: int, seed: int, world: int = 1, rank: int = 0):
        self.n, self.batch_size, self.seed = n, min(batch_size, n // world), seed
        self.world, self.rank = world, rank
        self.epoch, self.start = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return self.n // (self.batch_size * self.world)

    def order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(self.n, generator=g)
        nb, b = self.batches_per_epoch, self.batch_size
        return perm[: nb * b * self.world].view(nb, self.world, b)[:, self.rank]

    def __iter__(self):
        for b in self.order(self.epoch)[self.start:]:
            yield b.tolist()

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start


def _collate(items: list[dict]) -> dict:
    return torch.utils.data.default_collate(items)


def _open_stack(fn: str, particles, *, data_dir=None, size=None, normalize="rms"):
    from ..io import ParticleStack, ParticleTable  # noqa: PLC0415

    if isinstance(particles, ParticleStack):
        return particles
    if not isinstance(particles, (str, os.PathLike, ParticleTable)):
        fail(fn, "particles must be a STAR/.cs path, a ParticleTable or a ParticleStack, got "
                 f"{type(particles).__name__}", TypeError)
    if not isinstance(particles, ParticleTable) and not pathlib.Path(particles).is_file():
        fail(fn, f"particles: {particles}: no such file", FileNotFoundError)
    return ParticleStack(particles, data_dir=data_dir, size=size, normalize=normalize)


def _batch_ctf(batch: dict, n: int, dtype) -> torch.Tensor:
    from ..physics import CTFParams  # noqa: PLC0415

    return CTFParams.from_batch(batch).evaluate(n, dtype=torch.float64).to(dtype)


def _stack_ctf(stack, rows, n: int) -> torch.Tensor:
    """CTF values ``(len(rows), n, n)`` (float32) of the particles ``rows`` of ``stack``."""
    return stack.ctf[torch.as_tensor(rows)].evaluate(n, dtype=torch.float64).float()


def _resolve_device(fn: str, device, model) -> torch.device:
    """``device`` parsed and checked (default: where ``model``'s parameters are)."""
    if device is None:
        p = next(model.parameters(), None)
        return p.device if p is not None else torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        fail(fn, f"device must be a torch device such as 'cpu' or 'cuda:0', got {device!r} ({exc})")
    if dev.type == "cuda" and not torch.cuda.is_available():
        fail(fn, f"device={device!r}: CUDA is not available to this torch ({torch.__version__})", RuntimeError)
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        fail(fn, f"device={device!r}: there are {torch.cuda.device_count()} CUDA devices")
    if dev.type not in ("cpu", "cuda"):
        fail(fn, f"device must be a CPU or CUDA device, got {device!r}")
    return dev


class Trainer:
    """Train an :class:`AmortizedModel` on a particle stack.

    Args:
        particles: a STAR / cryoSPARC path or an :class:`orbitcore.io.ParticleStack`. A path is
            opened with ``normalize="rms"`` (images divided by the stack's RMS; no mean
            subtraction, which would change the DC term inconsistently with the image model); a
            given stack is used as it is.
        model: an :class:`AmortizedModel`, a :class:`ModelConfig`, or a dict of
            :class:`ModelConfig` options (``n`` defaults to the stack's image size).
        config: a :class:`TrainConfig` or a dict of its options.
        out_dir: where checkpoints (``checkpoint.pt``) and the history (``history.json``) go
            (None: nothing is written unless :meth:`save_checkpoint` is given a path).
        data_dir, size: passed to :class:`~orbitcore.io.ParticleStack` (``size``: Fourier-crop
            the images to this side for training).
        verbose: progress bar.
        device: where the model and the batches live (``"cpu"``, ``"cuda"``, ``"cuda:1"``; default:
            where the model is). The data are read on the CPU and copied per batch.
        distributed: data-parallel training over a ``torch.distributed`` process group (``None``:
            when one with more than one process is initialised, e.g. under ``torchrun``). Each
            process takes ``batch_size`` particles of every global batch (disjoint, the same
            permutation), the gradients are averaged over the processes before clipping and Adam,
            and the normalisation layers' running statistics are rank 0's (broadcast before each
            step): the semantics of ``DistributedDataParallel`` without ``SyncBatchNorm`` (each
            process normalises with its own batch's statistics). The effective batch is
            ``world × batch_size``. Only rank 0 writes checkpoints and shows the progress bar;
            every process must call :meth:`fit` (the steps are collectives).

    Typical use::

        tr = Trainer("particles.star", {"decoder": "voxel"}, {"steps": 2000}, out_dir="run")
        tr.fit()
        res = evaluate(tr, out_dir="run", reference="truth.mrc")
    """

    def __init__(self, particles, model=None, config=None, out_dir=None, *, data_dir=None, size: int | None = None,
                 verbose: bool = True, device=None, distributed: bool | None = None):
        fn = "Trainer"
        from .. import _distributed  # noqa: PLC0415

        self.world, self.rank = _distributed.world(fn, distributed)
        self.stack = _open_stack(fn, particles, data_dir=data_dir, size=size)
        stack = self.stack
        if isinstance(config, TrainConfig):
            self.config = config
        elif config is None or isinstance(config, dict):
            self.config = TrainConfig(**(config or {}))
        else:
            fail(fn, f"config must be a TrainConfig or a dict, got {type(config).__name__}", TypeError)
        if isinstance(model, AmortizedModel):
            self.model = model
        else:
            if isinstance(model, ModelConfig):
                mc = model
            elif model is None or isinstance(model, dict):
                opts = dict(model or {})
                opts.setdefault("n", stack.size)
                mc = ModelConfig(**opts)
            else:
                fail(fn, f"model must be an AmortizedModel, ModelConfig or dict, got {type(model).__name__}",
                     TypeError)
            self.model = AmortizedModel(mc)
        mc = self.model.config
        if mc.n != stack.size:
            fail(fn, f"the model's image size n = {mc.n} differs from the stack's {stack.size} "
                     f"(pass size={mc.n} to downsample, or build the model with n={stack.size})")
        if self.config.use_ctf and stack.ctf is None:
            fail(fn, f"{stack.table.path}: the particle file has no CTF parameters (rlnDefocusU/V, rlnDefocusAngle, "
                     "rlnVoltage, rlnSphericalAberration, rlnAmplitudeContrast and a pixel size); train without "
                     "CTF (use_ctf=False, --no-ctf) if the images have none")
        if mc.encoder_input != "raw" and not self.config.use_ctf:
            fail(fn, f"encoder_input={mc.encoder_input!r} corrects each image by its CTF: it needs use_ctf=True")
        if self.config.objective == "poses" and stack.rotations is None:
            fail(fn, f"{stack.table.path}: objective='poses' learns the particle file's poses, and it has none "
                     "(rlnAngleRot, rlnAngleTilt, rlnAnglePsi); give the STAR file of a refinement "
                     "(orbitcore amortized refine) or train with objective='images'")
        if mc.shifts == "known" and stack.shifts is None:
            fail(fn, f"{stack.table.path}: shifts='known' needs rlnOriginX/Y(Angst) columns in the particle file")
        if self.config.radius_start is not None and self.config.radius_start > mc.radius:
            fail(fn, f"radius_start must be <= the model's radius {mc.radius:g} Fourier pixels, got "
                     f"{self.config.radius_start:g}")
        if len(stack) < 2 * self.world and mc.batch_norm:
            fail(fn, f"need at least 2 particles per process (batch normalisation), got {len(stack)} for "
                     f"{self.world} process(es)")
        if len(stack) < self.world:
            fail(fn, f"need at least one particle per process, got {len(stack)} for {self.world} processes")
        self.device = _resolve_device(fn, device, self.model)
        self.model.to(self.device)
        self.verbose = verbose and self.rank == 0
        self.out_dir = pathlib.Path(out_dir) if out_dir is not None else None
        dec_lr = self.config.decoder_lr
        if dec_lr is None:
            dec_lr = 0.16 / mc.n if mc.decoder == "voxel" else FOURIERNET_LR
        # fused=True: one kernel per step over all the parameters (PyTorch's fused Adam, same
        # update rule); on the CPU it takes ~2 ms a step against ~9 ms for the default multi-tensor
        # path with the default model (benchmarks/bench_amortized.py uses it on both sides).
        self.optimizer = torch.optim.Adam([
            {"params": list(self.model.encoder_parameters()), "lr": self.config.lr, "name": "encoder"},
            {"params": list(self.model.decoder_parameters()), "lr": dec_lr, "name": "decoder"},
        ], fused=self.model.mask.device.type in ("cpu", "cuda"))
        self._base_lrs = [self.config.lr, dec_lr]
        self.sampler = _EpochBatches(len(stack), self.config.batch_size, self.config.seed, self.world, self.rank)
        # what training changes among the buffers (the rest are constants, the same everywhere)
        from ..nn.encoders import BatchWhitening  # noqa: PLC0415

        norms = (torch.nn.modules.batchnorm._BatchNorm, BatchWhitening)
        self._running_statistics = [b for m in self.model.modules() if isinstance(m, norms)
                                    for b in m.buffers(recurse=False)]
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.history: list[dict] = []
        self.elapsed = 0.0
        self._loader = None

    # ------------------------------------------------------------------ data
    @property
    def batches_per_epoch(self) -> int:
        return self.sampler.batches_per_epoch

    def _make_loader(self):
        w = self.config.num_workers
        return torch.utils.data.DataLoader(self.stack, batch_sampler=self.sampler, num_workers=w,
                                           collate_fn=_collate, persistent_workers=w > 0,
                                           pin_memory=self.device.type == "cuda")

    def _batches(self):
        """Batches from the current (epoch, batch_in_epoch) on, forever."""
        if self._loader is None:
            self._loader = self._make_loader()
        while True:
            self.sampler.epoch, self.sampler.start = self.epoch, self.batch_in_epoch
            for batch in self._loader:
                yield batch
            self.epoch += 1
            self.batch_in_epoch = 0

    # ------------------------------------------------------------------ one step
    def radius_at(self, step: int | None = None) -> float:
        """Loss radius (Fourier pixels) at ``step`` (default: the next step), :func:`loss_radius`."""
        c = self.config
        return loss_radius(self.step if step is None else step, self.model.config.radius, c.radius_start,
                           c.radius_hold, c.radius_ramp)

    def train_step(self, batch: dict) -> dict:
        """One optimisation step on a collated batch (dict from the ParticleStack)."""
        model, c, dev = self.model, self.config, self.device
        images = batch["image"].to(dev, torch.float32, non_blocking=True)
        ctf = _batch_ctf(batch, model.n, images.dtype).to(dev) if c.use_ctf else None
        shifts = batch["shift"].to(dev, images.dtype) if model.config.shifts == "known" else None
        if self.world > 1:  # rank 0's running statistics, as DistributedDataParallel broadcasts them
            from .._distributed import broadcast_  # noqa: PLC0415

            broadcast_(self._running_statistics)
        model.train()
        radius = self.radius_at()
        self.optimizer.zero_grad(set_to_none=True)
        if c.objective == "poses":  # amortize the file's poses: regression + eq. 8 at them
            R_tgt = batch["rotation"].to(dev, images.dtype)
            t_tgt = batch["shift"].to(dev, images.dtype) if "shift" in batch else None
            pose_loss, image_loss = model.given_pose_losses(images, R_tgt, t_tgt, ctf, radius=radius)
            (pose_loss.mean() + image_loss.mean()).backward()
            stats = torch.stack([image_loss.detach().mean(), image_loss.detach().mean(),
                                 torch.zeros((), device=dev), pose_loss.detach().mean()])
        else:
            out = model(images, ctf, shifts, radius=radius)
            out.loss.backward()
            stats = torch.stack([out.loss.detach(), out.loss_direct.detach().mean(), out.flipped.float().mean(),
                                 torch.zeros((), device=dev)])
        if self.world > 1:
            stats = self._average_over_processes(stats)
        total = float(stats[0] + stats[3])  # the objective (image loss, plus the pose loss with "poses")
        if not math.isfinite(total):  # (every process stops: the loss is the mean over them)
            fail("Trainer.train_step", f"the loss became {total} at step {self.step} (diverged); lower the learning "
                                       "rates or the clipping threshold and resume from the last checkpoint",
                 FloatingPointError)
        gn = None
        if c.clip is not None:
            gn = float(torch.nn.utils.clip_grad_norm_(model.parameters(), c.clip))
        f = c.lr_factor(self.step)
        for group, base in zip(self.optimizer.param_groups, self._base_lrs):
            group["lr"] = base * f
        self.optimizer.step()
        self.step += 1
        self.batch_in_epoch += 1
        loss, loss_direct, flipped, pose_loss = stats.tolist()
        return {"loss": loss, "loss_direct": loss_direct, "flipped": flipped,
                "pose_loss": None if c.objective == "images" else pose_loss, "grad_norm": gn,
                "images": images.shape[0] * self.world, "radius": radius, "lr_factor": f}

    def _average_over_processes(self, stats: torch.Tensor) -> torch.Tensor:
        """Data-parallel: the gradients (in place) and ``stats`` averaged over the processes.
        A parameter keeps ``grad=None`` only where no process has a gradient for it (as in one
        process, so Adam skips it the same way)."""
        from .._distributed import all_reduce_sum_  # noqa: PLC0415

        params = list(self.model.parameters())
        has = torch.tensor([q.grad is not None for q in params], dtype=stats.dtype, device=stats.device)
        head = torch.cat([stats, has])
        all_reduce_sum_([head])
        grads = []
        for q, n in zip(params, head[stats.numel():].tolist()):
            if n > 0:
                if q.grad is None:
                    q.grad = torch.zeros_like(q)
                grads.append(q.grad)
        all_reduce_sum_(grads)
        for g_ in grads:
            g_.div_(self.world)
        return head[:stats.numel()] / self.world

    # ------------------------------------------------------------------ the loop
    def fit(self, steps: int | None = None, *, callback=None, callback_every: int | None = None) -> list[dict]:
        """Train until step ``steps`` (default ``config.steps``; counted from the start of the
        run, so a resumed trainer continues where it stopped).

        ``callback(trainer)`` runs every ``callback_every`` steps (e.g. to measure the FSC);
        what it returns (a dict) is added to the history. Checkpoints every
        ``config.checkpoint_every`` steps and at the end (when ``out_dir`` is set); Ctrl-C saves
        a checkpoint, then re-raises.
        """
        from tqdm.auto import tqdm  # noqa: PLC0415

        target = self.config.steps if steps is None else check_int("Trainer.fit", "steps", steps, minimum=0)
        if callback_every is not None:
            callback_every = check_int("Trainer.fit", "callback_every", callback_every, minimum=1)
        c = self.config
        window: list[dict] = []
        t_last = time.perf_counter()
        imgs_since = 0
        bar = tqdm(total=target, initial=min(self.step, target), unit="step", desc=f"train ({self.model.config.decoder})",
                   disable=not self.verbose, dynamic_ncols=True)
        it = self._batches() if self.step < target else iter(())
        try:
            while self.step < target:
                batch = next(it)
                t0 = time.perf_counter()
                r = self.train_step(batch)
                self.elapsed += time.perf_counter() - t0
                window.append(r)
                imgs_since += r["images"]
                bar.update(1)
                if self.step % c.log_every == 0 or self.step == target:
                    now = time.perf_counter()
                    rate = imgs_since / max(now - t_last, 1e-9)
                    entry = {"step": self.step, "epoch": self.epoch + self.batch_in_epoch / max(1, self.batches_per_epoch),
                             "loss": float(np.mean([w["loss"] for w in window])),
                             "loss_direct": float(np.mean([w["loss_direct"] for w in window])),
                             "flipped_fraction": float(np.mean([w["flipped"] for w in window])),
                             "grad_norm": (float(np.mean([w["grad_norm"] for w in window]))
                                           if window[0]["grad_norm"] is not None else None),
                             "radius": window[-1]["radius"], "lr_factor": window[-1]["lr_factor"],
                             "images_per_s": rate, "train_time_s": self.elapsed}
                    if window[0]["pose_loss"] is not None:
                        entry["pose_loss"] = float(np.mean([w["pose_loss"] for w in window]))
                    self.history.append(entry)
                    pose = {"pose_loss": f"{entry['pose_loss']:.4g}"} if "pose_loss" in entry else {}
                    bar.set_postfix(loss=f"{entry['loss']:.4g}", **pose, img_s=f"{rate:.0f}",
                                    epoch=f"{entry['epoch']:.2f}")
                    window, imgs_since, t_last = [], 0, now
                if callback is not None and callback_every and self.step % callback_every == 0:
                    extra = callback(self)
                    if extra:
                        self.history.append({"step": self.step, **extra})
                    t_last = time.perf_counter()
                if c.checkpoint_every and self.step % c.checkpoint_every == 0 and self._writes:
                    self.save_checkpoint()
        except KeyboardInterrupt:
            if self._writes:
                p = self.save_checkpoint()
                import sys  # noqa: PLC0415

                bar.write(f"interrupted at step {self.step}: checkpoint saved to {p}", file=sys.stderr)
            raise
        finally:
            bar.close()
        if self.world > 1:  # every process ends with rank 0's model (its running statistics too)
            from .._distributed import broadcast_  # noqa: PLC0415

            broadcast_(self._running_statistics)
        if self._writes and self.step > 0:
            self.save_checkpoint()
        return self.history

    @property
    def _writes(self) -> bool:
        """Whether this process writes the checkpoints (rank 0, with an ``out_dir``)."""
        return self.out_dir is not None and self.rank == 0

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict:
        """Everything a checkpoint holds (plain types and tensors: loadable with weights_only)."""
        st = self.stack
        return {
            "format": CHECKPOINT_FORMAT,
            "model_config": self.model.config.to_dict(),
            "train_config": self.config.to_dict(),
            "model": {k: v.cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "world_size": self.world,
            "rng_torch": torch.get_rng_state(),
            "data": {"particles": str(st.table.path) if st.table.path is not None else None,
                     "n_particles": len(st), "box": st.n, "size": st.size, "mean": float(st.mean),
                     "std": float(st.std)},
            "history": self.history, "train_time_s": self.elapsed,
        }

    def save_checkpoint(self, path=None) -> pathlib.Path:
        """Write the checkpoint atomically (default ``out_dir/checkpoint.pt``), and
        ``history.json`` next to it."""
        from ..io.mrc import atomic_path  # noqa: PLC0415

        if path is None:
            if self.out_dir is None:
                fail("Trainer.save_checkpoint", "no path given and the trainer has no out_dir")
            path = self.out_dir / "checkpoint.pt"
        path = pathlib.Path(path)
        with atomic_path(path, suffix=".pt") as tmp:
            torch.save(self.state(), tmp)
        with atomic_path(path.with_name("history.json"), suffix=".json") as tmp:
            tmp.write_text(json.dumps(self.history, indent=1))
        return path

    def load_state(self, state: dict) -> None:
        """Restore a :meth:`state` (model, optimiser, position, RNG, history)."""
        fn = "Trainer.load_state"
        if state.get("format") != CHECKPOINT_FORMAT:
            fail(fn, f"not an orbitcore amortized checkpoint (format {state.get('format')!r})")
        d = state["data"]
        if d["n_particles"] != len(self.stack) or d["size"] != self.stack.size:
            fail(fn, f"the checkpoint was trained on {d['n_particles']} particles of size {d['size']} "
                     f"({d['particles']}), this stack has {len(self.stack)} of size {self.stack.size}")
        if state["model_config"] != self.model.config.to_dict():
            fail(fn, "the checkpoint's model configuration differs from this trainer's model")
        was = int(state.get("world_size", 1))
        if was != self.world:
            import warnings  # noqa: PLC0415

            from .._validate import OrbitcoreWarning  # noqa: PLC0415

            warnings.warn(f"{fn}: the checkpoint was written by a run of {was} process(es), this one has "
                          f"{self.world}: it continues with other batches (an exact continuation needs the same "
                          "number of processes)", OrbitcoreWarning, stacklevel=2)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.epoch, self.batch_in_epoch = int(state["step"]), int(state["epoch"]), int(state["batch_in_epoch"])
        torch.set_rng_state(state["rng_torch"])
        self.history = list(state["history"])
        self.elapsed = float(state.get("train_time_s", 0.0))
        self._loader = None

    @classmethod
    def resume(cls, checkpoint, particles=None, out_dir=None, *, data_dir=None, steps: int | None = None,
               num_workers: int | None = None, verbose: bool = True, device=None,
               distributed: bool | None = None) -> "Trainer":
        """A trainer that continues a checkpoint exactly. ``particles`` defaults to the file the
        run was trained on; the normalisation is the checkpoint's. ``steps`` extends (or
        shortens) the run: a learning-rate drop (``lr_drop``) still to come moves with it
        (``drop_fraction × steps``), one that has already happened stays at its step, and a
        change that would alter the rate of a step already done is refused; ``num_workers`` may
        change (it does not affect the results);
        ``device`` and ``distributed`` as in :class:`Trainer` (a data-parallel run continues
        exactly with the same number of processes)."""
        state = _load_checkpoint("Trainer.resume", checkpoint)
        d = state["data"]
        cfg = dict(state["train_config"])
        if steps is not None:
            old = TrainConfig(**cfg)
            done = int(state["step"])
            at = round(old.drop_fraction * old.steps)
            if old.lr_drop != 1.0 and at <= done and at <= steps:
                cfg["drop_fraction"] = at / steps  # the drop has happened: it stays at step `at`
            new = TrainConfig(**{**cfg, "steps": steps})
            if any(old.lr_factor(s) != new.lr_factor(s) for s in range(done)):
                at = lambda c: round(c.drop_fraction * c.steps)  # noqa: E731
                fail("Trainer.resume", f"steps={steps}: the learning-rate drop (lr_drop={old.lr_drop:g} at "
                                       f"drop_fraction × steps) would move from step {at(old)} to {at(new)}, and "
                                       f"the run is at step {done}: the steps done would not follow the new "
                                       "schedule, so the resumed run could not be exact")
            cfg["steps"] = steps
        if num_workers is not None:
            cfg["num_workers"] = num_workers
        particles = particles if particles is not None else d["particles"]
        stack = _open_stack("Trainer.resume", particles, data_dir=data_dir,
                            size=d["size"] if d["size"] != d["box"] else None, normalize=(d["mean"], d["std"]))
        model = AmortizedModel(ModelConfig.from_dict(state["model_config"]))
        out = out_dir if out_dir is not None else pathlib.Path(checkpoint).parent
        tr = cls(stack, model, TrainConfig(**cfg), out, verbose=verbose, device=device, distributed=distributed)
        tr.load_state(state)
        return tr


def load_checkpoint(path) -> dict:
    """Read a checkpoint written by :meth:`Trainer.save_checkpoint` (clear errors for missing,
    truncated or foreign files)."""
    return _load_checkpoint("load_checkpoint", path)


def _load_checkpoint(fn: str, path) -> dict:
    p = check_path(fn, "path", path)
    if not p.is_file():
        fail(fn, f"{p}: no such checkpoint file", FileNotFoundError)
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        fail(fn, f"{p}: not a readable checkpoint ({type(exc).__name__}: {exc})")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        fail(fn, f"{p}: not an orbitcore amortized checkpoint")
    return state


def model_from_checkpoint(path) -> tuple[AmortizedModel, dict]:
    """The trained model (eval mode) and the checkpoint's state dict."""
    return _model_from_checkpoint("model_from_checkpoint", path)


def _model_from_checkpoint(fn: str, path) -> tuple[AmortizedModel, dict]:
    state = _load_checkpoint(fn, path)
    model = AmortizedModel(ModelConfig.from_dict(state["model_config"]))
    model.load_state_dict(state["model"])
    model.eval()
    return model, state


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------
def _check_model_stack(fn: str, model, stack) -> None:
    from ..io import ParticleStack  # noqa: PLC0415

    if not isinstance(model, AmortizedModel):
        fail(fn, f"model must be an AmortizedModel, got {type(model).__name__}", TypeError)
    if not isinstance(stack, ParticleStack):
        fail(fn, f"stack must be a ParticleStack, got {type(stack).__name__}", TypeError)


@torch.no_grad()
def recalibrate_statistics(model: AmortizedModel, stack, *, batch_size: int = 256) -> AmortizedModel:
    """Re-estimate the encoder's normalisation statistics (batch normalisation and the
    whitened rotation head) with the final weights: one pass over ``stack`` in training mode,
    the running estimates replaced by the average over the pass ("precise BN"). Training
    updates them by an exponential average over recent minibatches of *changing* weights,
    which can lag far behind the weights the poses are predicted with. Works on (and returns)
    a copy; ``model`` is not modified (and is returned as is when its encoder has no such layers). With the symmetric loss the π-rotated copies are
    included, as in training."""
    import copy  # noqa: PLC0415

    from ..nn.encoders import BatchWhitening  # noqa: PLC0415

    fn = "recalibrate_statistics"
    _check_model_stack(fn, model, stack)
    batch_size = check_int(fn, "batch_size", batch_size, minimum=2)
    if stack.size != model.n:
        fail(fn, f"the stack's images are {stack.size}x{stack.size}, the model expects {model.n}x{model.n}")
    kinds = (torch.nn.modules.batchnorm._BatchNorm, BatchWhitening)
    if not any(isinstance(mod, kinds) for mod in model.encoder.modules()):
        return model  # nothing to re-estimate
    m = copy.deepcopy(model)
    norms = [mod for mod in m.encoder.modules() if isinstance(mod, kinds)]
    for mod in norms:
        mod.reset_running_stats()
        mod.momentum = None  # cumulative average over the pass
    m.train()
    needs_ctf = m.config.encoder_input != "raw"
    if needs_ctf and stack.ctf is None:
        fail(fn, f"the model's encoder reads CTF-corrected images (encoder_input={m.config.encoder_input!r}), "
                 "but the particle file has no CTF parameters")
    dev = m.mask.device
    for rows, images in stack.batches(batch_size):
        if images.shape[0] < 2:
            continue
        x = images.to(dev, torch.float32)
        ctf = _stack_ctf(stack, rows, m.n).to(dev) if needs_ctf else None
        if m.config.symmetric:
            x = m.rotation_layer(x)
            ctf = None if ctf is None else torch.cat((ctf, ctf))  # the CTF is centrosymmetric
        m.encode(x, ctf)
    m.eval()
    return m


@torch.no_grad()
def predict_poses(model: AmortizedModel, stack, *, batch_size: int = 256, use_ctf: bool = True,
                  recalibrate: bool = False, verbose: bool = False) -> dict:
    """Poses of every particle of ``stack`` (in order), without gradients, model in eval mode
    (``recalibrate``: on a copy whose normalisation statistics were first re-estimated over
    ``stack`` with :func:`recalibrate_statistics`).

    Returns a dict of ``rotations (N, 3, 3)``, ``shifts (N, 2)`` (pixels of the stack's images),
    ``flipped (N,)`` (the π-rotated path was chosen), ``loss (N,)`` (per-image loss of the
    chosen path) and ``seconds`` (wall time).
    """
    from tqdm.auto import tqdm  # noqa: PLC0415

    fn = "predict_poses"
    _check_model_stack(fn, model, stack)
    batch_size = check_int(fn, "batch_size", batch_size, minimum=1)
    if stack.size != model.n:
        fail(fn, f"the stack's images are {stack.size}x{stack.size}, the model expects {model.n}x{model.n}")
    if use_ctf and stack.ctf is None:
        fail(fn, "use_ctf=True but the particle file has no CTF parameters")
    if not use_ctf and model.config.encoder_input != "raw":
        fail(fn, f"the model's encoder reads CTF-corrected images (encoder_input={model.config.encoder_input!r}): it needs "
                 "use_ctf=True")
    if recalibrate:
        model = recalibrate_statistics(model, stack, batch_size=max(batch_size, 2))
    was = model.training
    model.eval()
    N = len(stack)
    R = torch.empty(N, 3, 3)
    t = torch.empty(N, 2)
    fl = torch.zeros(N, dtype=torch.bool)
    loss = torch.empty(N)
    dev = model.mask.device  # the model's device; results come back to the CPU
    t0 = time.perf_counter()
    try:
        with tqdm(total=N, unit="img", desc="evaluate", disable=not verbose) as bar:
            for rows, images in stack.batches(batch_size):
                rows_t = torch.from_numpy(rows)
                ctf = _stack_ctf(stack, rows_t, model.n).to(dev) if use_ctf else None
                shifts = stack.shifts[rows_t].to(dev) if model.config.shifts == "known" else None
                out = model(images.to(dev, torch.float32), ctf, shifts)
                R[rows_t], t[rows_t] = out.rotations.cpu().float(), out.shifts.cpu().float()
                fl[rows_t], loss[rows_t] = out.flipped.cpu(), out.per_image.cpu().float()
                bar.update(len(rows))
    finally:
        model.train(was)
    return {"rotations": R, "shifts": t, "flipped": fl, "loss": loss, "seconds": time.perf_counter() - t0}


@dataclass
class EvaluationResult:
    """Result of :func:`evaluate`.

    Attributes:
        rotations: ``(N, 3, 3)`` predicted rotations. shifts: ``(N, 2)`` predicted shifts in
            pixels of the particle file's images (``t``, content moves by ``+t``).
        flipped: ``(N,)`` the π-rotated path was chosen. loss: ``(N,)`` per-image loss.
        volume: ``(D, D, D)`` reconstruction; pixel_size: Å per voxel.
        star_path, volume_path, json_path: files written (or None).
        fsc: :class:`orbitcore.metrics.FSCResult` against the reference after alignment (or None).
        alignment: :class:`orbitcore.metrics.AlignmentResult` (or None).
        pose_errors: :class:`orbitcore.metrics.PoseErrors` against the poses in the particle file
            (or None when it has none).
        images_per_s: rate of pose prediction over the stack.
    """

    rotations: torch.Tensor
    shifts: torch.Tensor
    flipped: torch.Tensor
    loss: torch.Tensor
    volume: torch.Tensor
    pixel_size: float
    star_path: pathlib.Path | None = None
    volume_path: pathlib.Path | None = None
    json_path: pathlib.Path | None = None
    fsc: object | None = None
    alignment: object | None = None
    pose_errors: object | None = None
    images_per_s: float = math.nan

    def summary(self) -> dict:
        d = {"n_particles": int(self.rotations.shape[0]), "pixel_size_A": self.pixel_size,
             "box": int(self.volume.shape[-1]), "images_per_s": self.images_per_s,
             "flipped_fraction": float(self.flipped.float().mean()), "mean_loss": float(self.loss.mean()),
             "star": str(self.star_path) if self.star_path else None,
             "volume": str(self.volume_path) if self.volume_path else None}
        if self.fsc is not None:
            d["fsc"] = {"resolution_05_A": self.fsc.resolution_05, "resolution_0143_A": self.fsc.resolution_0143,
                        "resolution_05_px": self.fsc.resolution_05_px,
                        "resolution_0143_px": self.fsc.resolution_0143_px,
                        "curve": self.fsc.curve.tolist(), "frequencies": self.fsc.frequencies.tolist()}
        if self.alignment is not None:
            from ..metrics import rotation_angle  # noqa: PLC0415

            a = self.alignment
            d["alignment"] = {"rotation_angle_deg": float(rotation_angle(a.rotation)), "shift_voxels": a.shift.tolist(),
                              "mirrored": a.mirror, "correlation": a.correlation}
        if self.pose_errors is not None:
            d["pose_errors"] = self.pose_errors.as_dict()
        return d


def _reference_volume(fn: str, reference, D: int, pixel_size: float) -> torch.Tensor:
    from .. import fourier  # noqa: PLC0415
    from ..io import read_mrc  # noqa: PLC0415

    if isinstance(reference, (str, pathlib.Path)):
        data, _ = read_mrc(reference)
        ref = torch.from_numpy(np.ascontiguousarray(data)).to(torch.float64)
        name = str(reference)
    else:
        ref = torch.as_tensor(reference).to(torch.float64)
        name = "reference"
    if ref.dim() != 3 or not (ref.shape[0] == ref.shape[1] == ref.shape[2]):
        fail(fn, f"{name}: the reference must be a cubic 3-D map, got shape {tuple(ref.shape)}")
    if ref.shape[0] < D:
        fail(fn, f"{name}: the reference box {ref.shape[0]} is smaller than the reconstruction's {D}")
    if ref.shape[0] > D:  # the training images were downsampled: bring the reference to the same grid
        ref = fourier.downsample(ref, D, 3)
    return ref


def evaluate(source, particles=None, *, out_dir=None, star_path=None, volume_path=None, reference=None,
             data_dir=None, batch_size: int = 256, align: bool = True, fsc_png: bool = True,
             recalibrate: bool = True, verbose: bool = True, device=None) -> EvaluationResult:
    """Predict every particle's pose, write them as STAR, export the volume (MRC) and compare
    with a reference (module docstring).

    Args:
        source: a :class:`Trainer` or the path of a checkpoint.
        particles: STAR path or ParticleStack (default: the trainer's stack / the file the
            checkpoint was trained on, with the training normalisation).
        out_dir: writes ``poses.star``, ``volume.mrc``, ``evaluation.json`` (and ``fsc.png``)
            there unless ``star_path`` / ``volume_path`` say otherwise.
        reference: optional reference map (MRC path or ``(D', D', D')`` array; Fourier-cropped to
            the reconstruction's box when larger): FSC after alignment (handedness included).
        align: align the reconstruction to the reference first (False: compare as is).
        recalibrate: predict with normalisation statistics re-estimated over the particles with
            the final weights (:func:`recalibrate_statistics`; the model itself is unchanged).
        batch_size: images per evaluation batch.
        device: where a checkpoint's model runs (default the CPU; a :class:`Trainer`'s model runs
            where it is). Results are returned on the CPU.

    Returns:
        :class:`EvaluationResult`.
    """
    fn = "evaluate"
    if isinstance(source, Trainer):
        model = source.model
        norm = (source.stack.mean, source.stack.std)
        use_ctf = source.config.use_ctf
        default = source.stack
    elif isinstance(source, (str, os.PathLike)):
        model, state = _model_from_checkpoint(fn, source)
        model.to(_resolve_device(fn, device, model))
        d = state["data"]
        norm = (d["mean"], d["std"])
        use_ctf = bool(state["train_config"]["use_ctf"])
        default = d["particles"]
    else:
        fail(fn, f"source must be a Trainer or a checkpoint path, got {type(source).__name__}", TypeError)
    from ..io import ParticleStack  # noqa: PLC0415

    src = default if particles is None else particles
    stack = src if isinstance(src, ParticleStack) else _open_stack(fn, src, data_dir=data_dir, size=model.n,
                                                                      normalize=norm)
    if use_ctf and stack.ctf is None:
        fail(fn, f"{stack.table.path}: the model was trained with the CTF but this particle file has no CTF "
                 "parameters")
    pred = predict_poses(model, stack, batch_size=batch_size, use_ctf=use_ctf, recalibrate=recalibrate,
                         verbose=verbose)
    scale = stack.n / stack.size  # shifts back to the particle file's pixels
    shifts = pred["shifts"] * scale
    px = float(stack.pixel_size[0]) if stack.pixel_size is not None else 1.0
    vol = model.volume().float().cpu()
    out = pathlib.Path(out_dir) if out_dir is not None else None
    if out is not None and star_path is None:
        star_path = out / "poses.star"
    if out is not None and volume_path is None:
        volume_path = out / "volume.mrc"
    res = EvaluationResult(rotations=pred["rotations"], shifts=shifts, flipped=pred["flipped"], loss=pred["loss"],
                           volume=vol, pixel_size=px, images_per_s=len(stack) / max(pred["seconds"], 1e-9))
    if star_path is not None:
        table = stack.table.with_poses(pred["rotations"], shifts)  # named for star_path's folder (relocated)
        res.star_path = table.relocated(pathlib.Path(star_path).parent, stack.data_dir).write(star_path)
    if volume_path is not None:
        from ..io import write_mrc  # noqa: PLC0415

        write_mrc(volume_path, vol.numpy(), voxel_size=px)
        res.volume_path = pathlib.Path(volume_path)
    if stack.rotations is not None:
        from ..metrics import pose_errors  # noqa: PLC0415

        true_t = stack.shifts * scale if stack.shifts is not None else None
        res.pose_errors = pose_errors(pred["rotations"], stack.rotations, shifts if true_t is not None else None,
                                      true_t)
    if reference is not None:
        from ..metrics import align_volumes, fsc  # noqa: PLC0415

        ref = _reference_volume(fn, reference, vol.shape[-1], px)
        v = vol.to(torch.float64)
        if align:
            res.alignment = align_volumes(ref, v, mirror=True, verbose=verbose)
            v = res.alignment.aligned
        res.fsc = fsc(ref, v, px)
        if out is not None and fsc_png:
            try:
                from ..metrics.plots import plot_fsc  # noqa: PLC0415

                plot_fsc(res.fsc, out / "fsc.png", title="amortized reconstruction vs reference")
            except ImportError:
                pass
    if out is not None:
        from ..io.mrc import atomic_path  # noqa: PLC0415

        res.json_path = out / "evaluation.json"
        with atomic_path(res.json_path, suffix=".json") as tmp:
            tmp.write_text(json.dumps(res.summary(), indent=1))
    return res
