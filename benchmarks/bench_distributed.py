"""Data-parallel scaling: amortized training and EM with P processes against one, in the same run.

Amortized (``orbitcore.amortized.Trainer``, voxel decoder, the default model at n = 32, CTF,
symmetric loss): training images/s of
  * one process, batch B (the baseline),
  * one process with P times the threads (what the cores give without torch.distributed),
  * P gloo processes with B/P particles each (the same global batch of B: a P× faster step at
    perfect scaling, the same optimisation), and
  * P processes with B particles each (a P× larger global batch).
Each process runs ``--threads`` threads; the time of the collectives alone (the gradient
all-reduce and the statistics broadcast) is measured in the P-process run.

EM (``orbitcore.em.reconstruct``, full-batch E-steps, K = 552, ℓmax 8, Shepp–Logan micrographs): seconds per
iteration with one process against P processes that split every E-step.

The ratio is what a user gets from P cores (or GPUs) for this model; on a machine with other
work running it is meaningless (load average recorded). Command:

    cd benchmarks && PYTHONPATH=../python python bench_distributed.py --threads 1 --procs 2
"""
from __future__ import annotations

from _common import emit, parser  # first: sets OMP_WAIT_POLICY before torch loads libgomp

import json  # noqa: E402
import os  # noqa: E402
import pathlib  # noqa: E402
import socket  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

import orbitcore as oc  # noqa: E402
from orbitcore import em  # noqa: E402


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_rate(star: str, batch: int, warm: int, steps: int, threads: int, distributed: bool) -> dict:
    from orbitcore import _distributed
    from orbitcore.amortized import Trainer

    torch.set_num_threads(threads)
    tr = Trainer(star, {"decoder": "voxel"}, {"steps": warm + steps, "batch_size": batch, "num_workers": 0,
                                              "checkpoint_every": 0}, verbose=False, distributed=distributed)
    tr.fit(warm)
    comm = 0.0
    if distributed:  # time the collectives alone: the step's gradient all-reduce and buffer broadcast
        grads = [torch.zeros_like(q) for q in tr.model.parameters()]
        bufs = list(tr.model.buffers())
        t0 = time.perf_counter()
        for _ in range(steps):
            _distributed.all_reduce_sum_(grads)
            _distributed.broadcast_(bufs)
        comm = (time.perf_counter() - t0) / steps
    t0 = time.perf_counter()
    tr.fit(warm + steps)
    dt = time.perf_counter() - t0
    return {"images_per_s": steps * batch * tr.world / dt, "step_s": dt / steps, "collectives_s": comm,
            "global_batch": batch * tr.world}


def _em_rate(micrograph: str, sigma: float, iterations: int, threads: int, distributed: bool) -> dict:
    from orbitcore import em
    from orbitcore.io import read_mrc

    torch.set_num_threads(threads)
    m, _ = read_mrc(micrograph)
    x = em.extract_patches(torch.from_numpy(m).double(), 11)
    if distributed:  # the group's first collective sets up its connections: not part of an iteration
        import torch.distributed as dist

        dist.all_reduce(torch.zeros(1, dtype=torch.float64))
    t0 = time.perf_counter()
    _, st, _ = em.reconstruct(x, sigma, L=11, ell_max=[8], K=552, iterations=iterations, S=1.0,
                              epsilon=-float("inf"), distributed=distributed)
    h = st.history[1:]  # the first iteration also builds the operator
    return {"s_per_iteration": sum(e["seconds"] for e in h) / len(h),
            "e_step_s": sum(e["e_step_seconds"] for e in h) / len(h),
            "m_step_s": sum(e["m_step_seconds"] for e in h) / len(h),
            "wall_s": time.perf_counter() - t0, "patches": int(x.shape[0]), "Q_last": st.history[-1]["Q"]}


def _worker(rank, world, port, job, out):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        kind, kw = job
        r = _train_rate(**kw, distributed=True) if kind == "train" else _em_rate(**kw, distributed=True)
        if rank == 0:
            pathlib.Path(out).write_text(json.dumps(r))
    finally:
        dist.destroy_process_group()


def _spawn(procs: int, job) -> dict:
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "r.json")
        mp.spawn(_worker, args=(procs, _port(), job, out), nprocs=procs, join=True)
        return json.loads(pathlib.Path(out).read_text())


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--procs", type=int, default=2, help="processes of the data-parallel runs (default 2)")
    p.add_argument("--batch", type=int, default=64, help="global batch of the baseline (default 64)")
    p.add_argument("--steps", type=int, default=20, help="timed training steps (default 20)")
    args = p.parse_args()
    threads = args.threads or 1
    steps, warm = (5, 2) if args.quick else (args.steps, 3)
    P, B = args.procs, args.batch
    res = {"procs": P, "threads_per_process": threads, "amortized": {}, "em": {}}
    with tempfile.TemporaryDirectory() as d:
        vol = oc.physics.pseudo_molecule(32)
        oc.physics.simulate_particles(vol, 2048, pixel_size=4.0, snr_db=0.0, shift_std=4.0,
                                      out=pathlib.Path(d) / "p.star", seed=0)
        star = str(pathlib.Path(d) / "p.star")
        kw = {"star": star, "warm": warm, "steps": steps, "threads": threads}
        one = _train_rate(batch=B, distributed=False, **kw)
        wide = _train_rate(batch=B, distributed=False, **{**kw, "threads": threads * P})
        torch.set_num_threads(threads)
        same = _spawn(P, ("train", {**kw, "batch": B // P}))
        larger = _spawn(P, ("train", {**kw, "batch": B}))
        a = res["amortized"]
        a["one_process"] = one
        a["one_process_all_threads"] = {**wide, "threads": threads * P,
                                        "speedup": wide["images_per_s"] / one["images_per_s"]}
        a["same_global_batch"] = {**same, "speedup": same["images_per_s"] / one["images_per_s"]}
        a["batch_per_process"] = {**larger, "speedup": larger["images_per_s"] / one["images_per_s"]}
        print(f"amortized: 1 process {one['images_per_s']:.1f} img/s "
              f"({threads * P} threads: {wide['images_per_s']:.1f}); "
              f"{P} processes, global batch {B}: "
              f"{same['images_per_s']:.1f} img/s ({a['same_global_batch']['speedup']:.2f}x); {P} x {B}: "
              f"{larger['images_per_s']:.1f} img/s ({a['batch_per_process']['speedup']:.2f}x); collectives "
              f"{1e3 * same['collectives_s']:.1f} ms a step", flush=True)

        sim = em.simulate_micrographs(oc.physics.shepp_logan_3d(11, dtype=torch.float64), 60 if args.quick else 1000,
                                         gamma=0.1, snr=1.0, L=11, ell_max=6, seed=0)
        mic = str(pathlib.Path(d) / "m.mrc")
        oc.io.write_mrc(mic, sim.micrographs[0].float().numpy(), 1.0)
        ekw = {"micrograph": mic, "sigma": float(sim.sigma), "iterations": 3 if args.quick else 4, "threads": threads}
        e1 = _em_rate(distributed=False, **ekw)
        eP = _spawn(P, ("em", ekw))
        res["em"] = {"one_process": e1, "split": {**eP, "speedup": e1["s_per_iteration"] / eP["s_per_iteration"]}}
        print(f"EM: 1 process {e1['s_per_iteration']:.3f} s/iteration (E-step {e1['e_step_s']:.3f} s), {P} processes "
              f"{eP['s_per_iteration']:.3f} s (E-step {eP['e_step_s']:.3f} s; {res['em']['split']['speedup']:.2f}x), "
              f"{e1['patches']} patches", flush=True)
    emit("distributed", res, args)


if __name__ == "__main__":
    main()
