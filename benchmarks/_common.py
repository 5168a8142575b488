"""Shared benchmark harness: timing (median of repeats after warm-up), peak-memory probes in
fresh subprocesses, machine description, JSON output.

Every figure a benchmark reports is a ratio against a baseline measured in the same run, on the
same threads; absolute times are recorded alongside for context.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable

# libgomp's default active spin-wait makes every OpenMP region cost milliseconds on shared cores
# (see RESULTS.md, "Note on threads"); both sides of every comparison run under the same setting,
# and an explicit value in the environment wins (``OMP_WAIT_POLICY=default`` runs under libgomp's
# own default: spin briefly, then sleep). Must be set before torch loads libgomp.
if os.environ.get("OMP_WAIT_POLICY", "").lower() == "default":
    del os.environ["OMP_WAIT_POLICY"]
else:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "libgomp default"),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    try:
        import orbitcore  # noqa: PLC0415

        info["orbitcore"] = orbitcore.__version__
        info["orbitcore_cuda"] = orbitcore.cuda_available()
    except ImportError:
        pass
    return info


def sync(device: str | torch.device = "cpu") -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timeit(fn: Callable[[], object], *, repeat: int = 5, warmup: int = 1, device="cpu",
           min_time: float = 0.0) -> dict:
    """Median wall time of ``fn()`` over ``repeat`` runs (after ``warmup``)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    t_start = time.perf_counter()
    while len(times) < repeat or (time.perf_counter() - t_start) < min_time:
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
        if len(times) >= 50:
            break
    return {"median_s": statistics.median(times), "min_s": min(times), "repeats": len(times)}


def timeit_pair(baseline: Callable[[], object], ours: Callable[[], object], *, repeat: int = 7, warmup: int = 1,
                device="cpu") -> dict:
    """Both functions timed alternately (baseline, ours, baseline, ...), so that a slow spell of a
    shared machine hits both sides alike. Returns each side's median and the median of the
    per-pair ratios ``baseline / ours`` (the speed-up to quote)."""
    for _ in range(warmup):
        baseline()
        ours()
    sync(device)
    tb, to = [], []
    for _ in range(repeat):
        for fn, out in ((baseline, tb), (ours, to)):
            t0 = time.perf_counter()
            fn()
            sync(device)
            out.append(time.perf_counter() - t0)
    ratios = [b / o for b, o in zip(tb, to)]
    return {"baseline": {"median_s": statistics.median(tb), "min_s": min(tb), "repeats": repeat},
            "ours": {"median_s": statistics.median(to), "min_s": min(to), "repeats": repeat},
            "speedup": statistics.median(ratios), "speedup_min": min(ratios), "speedup_max": max(ratios)}


def peak_rss_of(code: str, setup: str = "", env: dict | None = None) -> int:
    """Peak resident-memory growth (bytes) while a fresh Python process runs ``code``.

    ``setup`` runs first (after `import torch, orbitcore`); then the kernel's high-water mark is
    reset (``/proc/self/clear_refs``), ``code`` runs, and the returned figure is the new peak
    minus the resident size just before ``code``. Linux only.
    """
    prog = (
        "import torch, orbitcore\n"
        f"{setup}\n"
        "def _status(key):\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith(key):\n"
        "            return int(line.split()[1]) * 1024\n"
        "open('/proc/self/clear_refs', 'w').write('5')\n"
        "base = _status('VmRSS:')\n"
        f"{code}\n"
        "print(_status('VmHWM:') - base)\n"
    )
    out = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, check=True,
                         env={**os.environ, **(env or {})})
    return int(out.stdout.strip().splitlines()[-1])


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--threads", type=int, default=None, help="torch/orbitcore threads (default: all)")
    p.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats (smoke run)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", default=None, help="JSON output path (default benchmarks/results/<name>.json)")
    return p


def setup_threads(args) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)


def emit(name: str, results: dict, args) -> pathlib.Path:
    """Print the JSON document and write it to benchmarks/results/<name>.json (or --out)."""
    doc = {"benchmark": name, "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M"), **results}
    text = json.dumps(doc, indent=1)
    print(text)
    path = pathlib.Path(args.out) if args.out else RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path
