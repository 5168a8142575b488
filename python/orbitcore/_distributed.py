"""torch.distributed plumbing shared by the algorithms (ARCHITECTURE.md, "Scale-out").

The library does not run its own communication layer: a process group is what ``torchrun`` (or
the caller's ``torch.distributed.init_process_group``) sets up, and the algorithms use
collectives on it (gloo for CPU tensors, nccl for CUDA tensors).

* :func:`world` — ``(world_size, rank)`` for an algorithm's ``distributed`` argument.
* :func:`init_from_env` — the command line's entry: joins the group ``torchrun`` describes in
  the environment (``WORLD_SIZE`` > 1), choosing the backend from the device.
* :func:`leave` — the command line's exit: a barrier, then ``destroy_process_group``.
* :func:`all_reduce_sum_` / :func:`broadcast_` — one collective over many tensors (flattened
  into one buffer, so a model's gradients cost one call, not one per parameter).
"""
from __future__ import annotations

import os

import torch

from ._validate import fail


def _dist():
    import torch.distributed as dist  # noqa: PLC0415

    return dist


def is_initialized() -> bool:
    dist = _dist()
    return dist.is_available() and dist.is_initialized()


def require_group(fn: str) -> None:
    """Raise (naming ``fn``) unless a process group is initialised."""
    if not is_initialized():
        fail(fn, "torch.distributed is not initialised (call torch.distributed.init_process_group "
                 "first)", RuntimeError)


def world(fn: str, distributed) -> tuple[int, int]:
    """``(world_size, rank)`` for ``distributed``: ``None`` = data-parallel when a process group
    with more than one process is initialised; ``True`` = it must be; ``False`` = ``(1, 0)``."""
    if distributed is not None and not isinstance(distributed, bool):
        fail(fn, f"distributed must be None, True or False, got {distributed!r}", TypeError)
    active = is_initialized()
    if distributed is None:
        distributed = active and _dist().get_world_size() > 1
    if not distributed:
        return 1, 0
    if not active:
        fail(fn, "distributed=True needs an initialised torch.distributed process group (launch with torchrun, "
                 "or call torch.distributed.init_process_group first)", RuntimeError)
    return _dist().get_world_size(), _dist().get_rank()


def init_from_env(device: str | None = None) -> bool:
    """Join the process group described by ``torchrun``'s environment (``WORLD_SIZE`` > 1;
    ``MASTER_ADDR``/``MASTER_PORT``/``RANK``). Backend: nccl when ``device`` is CUDA, else gloo.
    Returns whether this process is part of a group of more than one process."""
    if is_initialized():
        return _dist().get_world_size() > 1
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    cuda = device is not None and torch.device(device).type == "cuda"
    if cuda and torch.device(device).index is not None:
        torch.cuda.set_device(torch.device(device))  # nccl's barrier runs on this process's own GPU
    _dist().init_process_group("nccl" if cuda else "gloo")
    return True


def leave() -> None:
    """Leave the process group (no-op when none is initialised): a barrier first, so that no
    process closes its connections (rank 0 also hosts the rendezvous store) while another is
    still inside a collective, then ``destroy_process_group``."""
    if is_initialized():
        dist = _dist()
        if dist.get_backend() == "nccl":  # without device_ids nccl would guess a GPU for the barrier
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()
        dist.destroy_process_group()


def local_device(device: str | None) -> str | None:
    """Under torchrun each process takes its own GPU: ``"cuda"`` -> ``"cuda:LOCAL_RANK"``."""
    if device is not None and device == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return device


def _flat(tensors: list[torch.Tensor], collective) -> None:
    """Run ``collective`` on one flat buffer per dtype and copy the result back into ``tensors``."""
    by_dtype: dict = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group in by_dtype.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        collective(flat)
        i = 0
        for t in group:
            t.copy_(flat[i:i + t.numel()].view_as(t))
            i += t.numel()


def all_reduce_sum_(tensors: list[torch.Tensor], group=None) -> None:
    """Sum ``tensors`` over the process group, in place (one collective per dtype)."""
    _flat(tensors, lambda flat: _dist().all_reduce(flat, group=group))


def broadcast_(tensors: list[torch.Tensor], src: int = 0) -> None:
    """Overwrite ``tensors`` with rank ``src``'s values (one collective per dtype)."""
    _flat(tensors, lambda flat: _dist().broadcast(flat, src))
