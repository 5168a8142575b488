"""Data-parallel amortized training (torch.distributed, gloo, two processes on this machine) and
device placement.

Reference for the data-parallel step, written independently in one process: every step, both
shards of the global batch are run through one model from the same state (rank 0's running
statistics at the start of the step, as DistributedDataParallel broadcasts them), their
gradients averaged, then clipping and Adam; rank 0's running statistics are those after its own
shard. Two processes must end where this reference ends, hold identical models, and continue
identically from a checkpoint."""
import pytest
import torch

import orbitcore as oc
from orbitcore.amortized import Trainer
from orbitcore.amortized.train import _batch_ctf, _collate, _EpochBatches

MODEL = {"channels": (4, 8), "hidden": (16,), "filters": 2}
CFG = {"steps": 5, "batch_size": 8, "num_workers": 0, "checkpoint_every": 0, "lr": 1e-3, "clip": 0.5}
WORLD, SPLIT, TOTAL = 2, 2, 5  # 48 particles: 3 global batches of 2 x 8 per epoch; the run crosses an epoch


@pytest.fixture(scope="module")
def stack_file(small_stack):
    return small_stack(48)


def _worker(rank, world, star, out, objective):
    import torch.distributed as dist

    a = Trainer(star, MODEL, {**CFG, "objective": objective}, verbose=False)  # distributed=None: the initialised group is used
    assert (a.world, a.rank) == (world, rank)
    a.fit(SPLIT)
    if rank == 0:
        a.save_checkpoint(f"{out}/split.pt")
    dist.barrier()
    a.fit(TOTAL)
    b = Trainer.resume(f"{out}/split.pt", out_dir=None, verbose=False, distributed=True)
    b.fit(TOTAL)
    if rank == 0:  # a one-process run continuing the two-process checkpoint is told it is not exact
        import warnings

        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            Trainer.resume(f"{out}/split.pt", out_dir=None, verbose=False, distributed=False)
        assert any("written by a run of 2 process(es), this one has 1" in str(x.message) for x in w)
    torch.save({"a": {k: v.clone() for k, v in a.model.state_dict().items()},
                "b": {k: v.clone() for k, v in b.model.state_dict().items()},
                "history": [h["loss"] for h in a.history], "grad_norm": [h["grad_norm"] for h in a.history],
                "epoch": a.epoch,
                "batch_in_epoch": a.batch_in_epoch}, f"{out}/rank{rank}.pt")


def _reference(star, objective) -> tuple[dict, list]:
    """The data-parallel steps in one process (module docstring)."""
    tr = Trainer(star, MODEL, {**CFG, "objective": objective}, verbose=False)
    model, opt, c = tr.model, tr.optimizer, tr.config
    shards = [_EpochBatches(len(tr.stack), c.batch_size, c.seed, WORLD, r) for r in range(WORLD)]
    per_epoch = shards[0].batches_per_epoch
    losses, norms = [], []
    model.train()
    for step in range(TOTAL):
        epoch, j = divmod(step, per_epoch)
        start = {k: v.clone() for k, v in model.named_buffers()}
        grads, step_loss = {}, 0.0
        for r in (1, 0):  # rank 0 last: its running statistics are the ones kept
            with torch.no_grad():
                for k, v in model.named_buffers():
                    v.copy_(start[k])
            batch = _collate([tr.stack[i] for i in shards[r].order(epoch)[j].tolist()])
            images = batch["image"].float()
            opt.zero_grad(set_to_none=True)
            ctf = _batch_ctf(batch, model.n, images.dtype)
            if objective == "poses":  # regression onto the file's poses + eq. 8 at them; logged: the image loss
                d, e = model.given_pose_losses(images, batch["rotation"], batch["shift"], ctf, radius=tr.radius_at(step))
                (d.mean() + e.mean()).backward()
                step_loss += float(e.mean().detach()) / WORLD
            else:
                out = model(images, ctf, None, radius=tr.radius_at(step))
                out.loss.backward()
                step_loss += float(out.loss.detach()) / WORLD
            for name, q in model.named_parameters():
                if q.grad is not None:
                    grads[name] = grads.get(name, 0) + q.grad / WORLD
        for name, q in model.named_parameters():
            q.grad = grads.get(name)
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), c.clip)))
        opt.step()
        losses.append(step_loss)
    return {k: v.clone() for k, v in model.state_dict().items()}, losses, norms


@pytest.mark.distributed
@pytest.mark.parametrize("objective", ["images", "poses"])
def test_two_process_training_matches_the_averaged_gradient_reference_and_resumes(stack_file, tmp_path, spawn_gloo,
                                                                                  objective):
    spawn_gloo(_worker, str(stack_file), str(tmp_path), objective, world=WORLD)
    got = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    ref, ref_losses, ref_norms = _reference(stack_file, objective)
    for k in ref:
        # both processes hold the same model (running statistics included) ...
        assert torch.equal(got[0]["a"][k], got[1]["a"][k]), k
        # ... and the run continued from the step-2 checkpoint ends bit for bit where it did
        assert torch.equal(got[0]["b"][k], got[0]["a"][k]), k
        assert torch.equal(got[1]["b"][k], got[1]["a"][k]), k
        # the reference's weights (float32, sums in another order). Biases are compared through
        # the function below: a bias followed by a normalisation has a zero gradient up to
        # rounding, which Adam scales up to steps of the learning rate, so its value (and the
        # running mean it shifts) is set by rounding noise, while the function does not see it.
        if not (k.endswith("bias") or k.endswith("running_mean")):
            # (voxels with near-zero gradients move by rounding-set Adam steps too: ~1 % of lr = 1e-3)
            torch.testing.assert_close(got[0]["a"][k].double(), ref[k].double(), rtol=2e-5, atol=3e-5, msg=k)
    # the same function: losses and poses of one batch in training mode
    outs = []
    for state in (got[0]["a"], ref):
        tr = Trainer(stack_file, MODEL, CFG, verbose=False)
        tr.model.load_state_dict(state)
        tr.model.train()
        batch = _collate([tr.stack[i] for i in range(16)])
        with torch.no_grad():
            outs.append(tr.model(batch["image"].float(), _batch_ctf(batch, 16, torch.float32)))
    torch.testing.assert_close(outs[0].per_image, outs[1].per_image, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(outs[0].rotations, outs[1].rotations, rtol=0, atol=1e-3)  # measured 1.5e-4
    # the logged loss is the mean over the processes
    # (one entry at the end of each fit: steps 1-2, then 3-5)
    assert got[0]["history"] == pytest.approx([sum(ref_losses[:2]) / 2, sum(ref_losses[2:]) / 3], rel=1e-5)
    assert got[0]["history"] == got[1]["history"]
    # the gradient is the mean over the processes, not their sum (Adam would not tell: it is
    # invariant to the gradient's scale; the norm before clipping does)
    assert got[0]["grad_norm"] == pytest.approx([sum(ref_norms[:2]) / 2, sum(ref_norms[2:]) / 3], rel=1e-4)
    assert (got[0]["epoch"], got[0]["batch_in_epoch"]) == (1, 2)
    # training changed the model (the comparison is not between two untouched initialisations)
    init = Trainer(stack_file, MODEL, CFG, verbose=False).model.state_dict()
    assert not all(torch.equal(init[k], ref[k]) for k in ref)


def test_shards_are_disjoint_and_cover_the_global_batches():
    one = _EpochBatches(50, 16, 3)  # one process, batch 16
    parts = [_EpochBatches(50, 8, 3, 2, r) for r in range(2)]
    assert parts[0].batches_per_epoch == one.batches_per_epoch == 3
    for e in range(2):
        assert torch.equal(torch.cat([p.order(e) for p in parts], 1), one.order(e))
    a, b = (set(p.order(0).reshape(-1).tolist()) for p in parts)
    assert not a & b and len(a) == len(b) == 24


def test_distributed_and_device_arguments_are_checked(stack_file):
    with pytest.raises(RuntimeError, match="Trainer: distributed=True needs an initialised torch.distributed"):
        Trainer(stack_file, MODEL, CFG, verbose=False, distributed=True)
    with pytest.raises(TypeError, match="Trainer: distributed must be None, True or False"):
        Trainer(stack_file, MODEL, CFG, verbose=False, distributed="yes")
    with pytest.raises(ValueError, match="Trainer: device must be a torch device"):
        Trainer(stack_file, MODEL, CFG, verbose=False, device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="Trainer: device='cuda': CUDA is not available"):
            Trainer(stack_file, MODEL, CFG, verbose=False, device="cuda")
    path = Trainer(stack_file, MODEL, CFG, verbose=False).save_checkpoint(stack_file.parent / "one.pt")
    with pytest.raises(ValueError, match="evaluate: device must be a torch device"):
        oc.amortized.evaluate(path, device="gpu0", verbose=False)
    tr = Trainer(stack_file, MODEL, CFG, verbose=False, device="cpu")
    assert tr.device == torch.device("cpu") and (tr.world, tr.rank) == (1, 0)


@pytest.mark.cuda
def test_training_on_the_gpu_matches_the_cpu(stack_file):
    """The same two steps on the GPU and on the CPU (float32; the GPU's reductions differ)."""
    a = Trainer(stack_file, MODEL, {**CFG, "steps": 2}, verbose=False)
    b = Trainer(stack_file, MODEL, {**CFG, "steps": 2}, verbose=False, device="cuda")
    a.fit()
    b.fit()
    assert b.device.type == "cuda" and next(b.model.parameters()).is_cuda
    for (k, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        torch.testing.assert_close(y.cpu().double(), x.double(), rtol=1e-3, atol=1e-4, msg=k)
    res = oc.amortized.evaluate(b, verbose=False)
    assert res.rotations.device.type == "cpu" and res.volume.device.type == "cpu"


def _cli_worker(rank, world, star, out):
    from orbitcore.cli import main

    rc = main(["amortized", "train", "--particles", star, "--out", out, "--steps", "3", "--channels", "4", "8",
               "--batch-size", "8", "--workers", "0", "--quiet"])
    assert rc == 0
    assert not torch.distributed.is_initialized()  # the command left the group it joined


@pytest.mark.distributed
def test_cli_under_torchrun_environment_trains_data_parallel_and_rank0_writes(stack_file, tmp_path, spawn_gloo):
    import json

    out = tmp_path / "run"
    spawn_gloo(_cli_worker, str(stack_file), str(out), world=WORLD, init=False)  # the CLI joins the group
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "evaluation.json", "history.json",
                                                      "poses.star", "volume.mrc"]
    ck = oc.amortized.load_checkpoint(out / "checkpoint.pt")
    assert ck["step"] == 3 and ck["epoch"] == 0 and ck["batch_in_epoch"] == 3  # 48 // (2 x 8) = 3 steps an epoch
    hist = json.loads((out / "history.json").read_text())
    assert hist[-1]["step"] == 3 and hist[-1]["epoch"] == 1.0
