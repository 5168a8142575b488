import os
import pathlib

import pytest
import torch

import orbitcore
from orbitcore import _distributed

def _find_shared_data() -> pathlib.Path:
    """``../shared/data`` seen from the repository: the nearest ``shared/data`` above the tests
    (a checkout at /work/main and a worktree at /work/wt/<name> both find /work/shared/data)."""
    if os.environ.get("ORBITCORE_SHARED_DATA"):
        return pathlib.Path(os.environ["ORBITCORE_SHARED_DATA"])
    here = pathlib.Path(__file__).resolve()
    for parent in here.parents[1:]:
        cand = parent / "shared" / "data"
        if cand.is_dir():
            return cand
    return here.parents[2] / "shared" / "data"


SHARED_DATA = _find_shared_data()


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU and orbitcore's CUDA kernels "
                                        f"(cuda_available() is False; built_with_cuda={orbitcore.built_with_cuda()})")
    for item in items:
        if "cuda" in item.keywords and not orbitcore.cuda_available():
            item.add_marker(skip_cuda)


SIMD_LEVELS = ("generic", "avx2", "avx512")


def pytest_generate_tests(metafunc):
    """A test that takes ``simd`` runs once per CPU variant of the kernels (the E-step, moment and
    norm kernels share the run-time dispatch ``ORBITCORE_CPU_SIMD``). A variant this CPU cannot
    run is a visible skip with the reason, never a parameter left out of the collection."""
    if "simd" not in metafunc.fixturenames:
        return
    from orbitcore.ops.em import cpu_simd
    params = []
    for name in SIMD_LEVELS:
        try:
            cpu_simd(name)
            params.append(name)
        except ValueError as e:
            params.append(pytest.param(name, marks=pytest.mark.skip(reason=f"this CPU cannot run the {name} kernels: {e}")))
    metafunc.parametrize("simd", params)


@pytest.fixture
def gen():
    g = torch.Generator().manual_seed(1234)
    return g


@pytest.fixture(scope="session")
def shared_data():
    """../shared/data: real files written by RELION / cryoSPARC / ASPIRE (never copied here)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared test data not found at {SHARED_DATA} (set ORBITCORE_SHARED_DATA)")
    return SHARED_DATA


# ---------------------------------------------------------------------------------------------
# torch.distributed tests: two gloo processes on this machine (`@pytest.mark.distributed`)
# ---------------------------------------------------------------------------------------------
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gloo_entry(rank, world, port, fn, args, init):
    """A spawned process: the rendezvous address; with ``init`` the gloo group is joined (and left)
    here, without it the environment is what ``torchrun`` sets and ``fn`` joins it itself (the CLI)."""
    import faulthandler

    import torch.distributed as dist

    faulthandler.enable()  # a native abort in a worker prints every thread's Python stack
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if not init:
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    if init:
        dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
    except BaseException:
        if init and dist.is_initialized():
            dist.destroy_process_group()  # no barrier: the other processes may never reach it
        raise
    if init:
        _distributed.leave()  # a barrier, then destroy: no process closes while another is mid-collective


@pytest.fixture
def spawn_gloo():
    """``spawn_gloo(fn, *args, world=2, init=True)`` runs ``fn(rank, world, *args)`` in ``world``
    processes (``fn`` must be a module-level function) and raises if any of them fails."""
    import torch.multiprocessing as mp

    def run(fn, *args, world: int = 2, init: bool = True):
        mp.spawn(_gloo_entry, args=(world, _free_port(), fn, args, init), nprocs=world, join=True)

    return run


@pytest.fixture(scope="module")
def small_stack(tmp_path_factory):
    """``small_stack(n_images, shift_std=2.0, seed=2)``: a STAR file of CTF-modulated, shifted,
    lightly noisy (SNR 10) 16² projections of a small pseudo-molecule (3 Å pixels)."""
    def make(n_images: int, shift_std: float = 2.0, seed: int = 2):
        d = tmp_path_factory.mktemp("stack")
        vol = orbitcore.physics.pseudo_molecule(16, n_atoms=40, seed=4)
        orbitcore.physics.simulate_particles(vol, n_images, pixel_size=3.0, snr=10.0, shift_std=shift_std,
                                             out=d / "p.star", seed=seed)
        return d / "p.star"

    return make
