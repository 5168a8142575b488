"""Second moments: streaming data moments and the moment-matching loss, against the natural
PyTorch baselines, measured in the same run on the same threads.

Accumulation (M̂1, M̂2 of N real n x n images, batches of 1000, float32 images):
  baseline  per batch: ``Z = fft2c(images)[:, mask]`` (complex64), ``M2 += Z^T conj(Z)``
            (complex matmul, complex64), ``M1 += Z.sum(0)``; finally divide by N.
  orbitcore ``MomentAccumulator(n, radius=...)`` (float64 accumulation, the default):
            ``update`` per batch and ``result()`` (the conversion to Fourier) included.
  The two run batch by batch alternately and each sums its own time (the machine is shared:
  alternating exposes both to the same load); N = 4000: best of 3 passes, N = 20000: 1 pass.
  Sizes n = 33, 63; m = n² ("full") and the disk |k| <= n // 2 ("disk"); N = 4000, 20000.
  ``speedup`` compares the same m; ``speedup_vs_full_baseline`` compares the disk-masked
  accumulator with the baseline over all n² frequencies. Peak memory of the accumulator is
  measured in fresh processes for two N (the batches are generated on the fly): it must not
  depend on N.

Loss (forward + backward, m = disk-masked 63² frequencies, q = 1200 slices, complex64):
  baseline  ``M2 = (S^T ρ) @ conj(S)`` with matmul, ``‖M̂1 − M1‖ + λ‖M̂2 − M2‖`` with
            torch.linalg.norm, gradients by autograd (with respect to S and ρ).
  orbitcore ``moment_loss`` on general complex slices (``form="auto"`` = Gram here) and on
            Hermitian-symmetric slices with ``conjugate=`` (the real basis; the slices of a
            real volume / spectra of real signals are such).
  The slices are the disk-masked spectra of random real images (Hermitian symmetric), so all
  three compute the same loss; its value is checked against a float64 evaluation.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

from _common import emit, parser, setup_threads, timeit  # first: sets OMP_WAIT_POLICY before torch loads libgomp

import torch  # noqa: E402

import orbitcore as oc
from orbitcore import fourier


def baseline_accumulate(batches, mask, m):
    M2 = torch.zeros(m, m, dtype=torch.complex64)
    M1 = torch.zeros(m, dtype=torch.complex64)
    N = 0
    for x in batches:
        Z = fourier.fft2c(x)[:, mask] if mask is not None else fourier.fft2c(x).reshape(x.shape[0], -1)
        M2 += Z.mT @ Z.conj()
        M1 += Z.sum(0)
        N += x.shape[0]
    return M1 / N, M2 / N


def ours_accumulate(batches, n, radius):
    acc = oc.MomentAccumulator(n, radius=radius)
    for x in batches:
        acc.update(x)
    return acc.result()


def interleaved(batches, n, radius, mask, m):
    """Wall time of both pipelines, batch by batch alternately (the load of a shared machine
    drifts; alternating exposes both to the same conditions). Returns (baseline_s, ours_s)."""
    M2 = torch.zeros(m, m, dtype=torch.complex64)
    M1 = torch.zeros(m, dtype=torch.complex64)
    acc = oc.MomentAccumulator(n, radius=radius)
    tb = to = 0.0
    N = 0
    for x in batches:
        t0 = time.perf_counter()
        Z = fourier.fft2c(x)[:, mask] if mask is not None else fourier.fft2c(x).reshape(x.shape[0], -1)
        M2 += Z.mT @ Z.conj()
        M1 += Z.sum(0)
        t1 = time.perf_counter()
        acc.update(x)
        t2 = time.perf_counter()
        tb += t1 - t0
        to += t2 - t1
        N += x.shape[0]
    t0 = time.perf_counter()
    M1, M2 = M1 / N, M2 / N
    t1 = time.perf_counter()
    acc.result()
    t2 = time.perf_counter()
    return tb + (t1 - t0), to + (t2 - t1)


def bench_accumulation(args):
    sizes = [17, 33] if args.quick else [33, 63]
    Ns = [1000, 3000] if args.quick else [4000, 20000]
    bs = 500 if args.quick else 1000
    gen = torch.Generator().manual_seed(0)
    rows = []
    for n in sizes:
        data = torch.randn(max(Ns), n, n, generator=gen)
        for N in Ns:
            batches = [data[b:b + bs] for b in range(0, N, bs)]
            passes = 3 if N <= 4000 else 1
            base_full = None
            for mname, radius in (("full", None), ("disk", n // 2)):
                lay = oc.MomentLayout(n, radius=radius)
                mask = None if radius is None else lay.mask
                interleaved(batches[:2], n, radius, mask, lay.m)  # warm-up
                runs = [interleaved(batches, n, radius, mask, lay.m) for _ in range(passes)]
                tb = min(r[0] for r in runs)
                to = min(r[1] for r in runs)
                if radius is None:
                    base_full = tb
                # agreement with the baseline on the first 2 batches
                b1, b2 = baseline_accumulate(batches[:2], mask, lay.m)
                r = ours_accumulate(batches[:2], n, radius)
                diff = float((r.M2 - b2.to(r.M2.dtype)).abs().max() / b2.abs().max())
                row = {"n": n, "mask": mname, "m": lay.m, "N": N, "batch": bs, "passes": passes,
                       "baseline_s": tb, "orbitcore_s": to, "speedup": tb / to,
                       "orbitcore_images_per_s": N / to, "max_rel_diff_vs_baseline": diff}
                if radius is not None:
                    row["speedup_vs_full_baseline"] = base_full / to
                rows.append(row)
                print(row, flush=True)
    return rows


def peak_growth_of(code: str) -> int:
    """Peak RSS growth (bytes) of ``code`` in a fresh process: the kernel's high-water mark is
    reset (/proc/self/clear_refs) after the imports and a warm-up, then VmHWM - VmRSS.

    glibc's malloc raises its mmap threshold as large blocks are freed, after which per-batch
    buffers come from the heap and RSS drifts up by fragmentation (to a plateau, ~+15 MB at
    n = 33); a fixed MALLOC_MMAP_THRESHOLD_ (1 MiB) makes the probe measure what is live."""
    prog = (
        "import torch, orbitcore\n"
        "def status(key):\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith(key): return int(line.split()[1]) * 1024\n"
        "orbitcore.MomentAccumulator(9, radius=4).update(torch.randn(4, 9, 9)).result()\n"
        "open('/proc/self/clear_refs', 'w').write('5')\n"
        "start = status('VmRSS')\n"
        f"{code}\n"
        "print(status('VmHWM') - start)\n"
    )
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "1048576"}
    out = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, check=True, env=env)
    return int(out.stdout.strip().splitlines()[-1])


def bench_memory(args):
    n = 33 if args.quick else 63
    out = []
    for N in ([2000, 6000] if args.quick else [4000, 20000]):
        code = (
            f"torch.set_num_threads({torch.get_num_threads()})\n"
            "g = torch.Generator().manual_seed(0)\n"
            f"acc = orbitcore.MomentAccumulator({n}, radius={n // 2})\n"
            f"for b in range(0, {N}, 1000):\n"
            f"    acc.update(torch.randn(1000, {n}, {n}, generator=g))\n"
            "r = acc.result()\n"
        )
        extra = peak_growth_of(code)
        m = oc.MomentLayout(n, radius=n // 2).m
        out.append({"n": n, "N": N, "m": m, "peak_extra_bytes": extra,
                    "accumulator_bytes": 8 * (m * m + m), "result_bytes": 16 * (m * m + m),
                    "batch_bytes": 1000 * n * n * 4})
        print(out[-1], flush=True)
    return out


def bench_loss(args):
    n = 33 if args.quick else 63
    q = 300 if args.quick else 1200
    gen = torch.Generator().manual_seed(1)
    lay = oc.MomentLayout(n, radius=n // 2)
    m = lay.m
    C = torch.complex64
    S = (lay.gather(fourier.fft2c(torch.randn(q, n, n, generator=gen))) / n).to(C)
    w = torch.softmax(torch.randn(q, generator=gen), 0)
    data = oc.MomentAccumulator(n, radius=n // 2, dtype=torch.float32)
    for _ in range(2):
        data.update(torch.randn(1000, n, n, generator=gen) / n)
    mom = data.result()
    M1h, M2h, conj = mom.M1, mom.M2, mom.conjugate
    lam = 1.0

    def naive():
        Sg, wg = S.clone().requires_grad_(), w.clone().requires_grad_()
        M1 = wg.to(C) @ Sg
        M2 = (Sg.mT * wg.to(C)) @ Sg.conj()
        L = torch.linalg.norm(M1h - M1) + lam * torch.linalg.norm(M2h - M2)
        L.backward()
        return L.detach()

    def ours(conjugate=None, form="auto"):
        Sg, wg = S.clone().requires_grad_(), w.clone().requires_grad_()
        L = oc.moment_loss(M1h, M2h, Sg, wg, lam, conjugate=conjugate, form=form)
        L.backward()
        return L.detach()

    # float64 value of the loss (the reference every path is compared with)
    Sd, wd = S.to(torch.complex128), w.double()
    M1d = wd.to(torch.complex128) @ Sd
    M2d = (Sd.mT * wd) @ Sd.conj()
    exact = float((M1h.to(torch.complex128) - M1d).abs().square().sum().sqrt()
                  + lam * (M2h.to(torch.complex128) - M2d).abs().square().sum().sqrt())
    rep = 3 if args.quick else 5
    tb = timeit(naive, repeat=rep)
    res = {"n": n, "m": m, "q": q, "dtype": "complex64", "baseline_s": tb["median_s"],
           "baseline_rel_err_vs_float64": abs(float(naive()) - exact) / exact,
           "gram_is_cheaper(q, m)": oc.ops.moments.gram_is_cheaper(q, m)}
    for name, kw in (("complex_auto", {}), ("complex_dense", {"form": "dense"}),
                     ("hermitian_auto", {"conjugate": conj}), ("hermitian_dense", {"conjugate": conj, "form": "dense"})):
        t = timeit(lambda kw=kw: ours(**kw), repeat=rep)
        res[f"{name}_s"] = t["median_s"]
        res[f"{name}_speedup"] = tb["median_s"] / t["median_s"]
        res[f"{name}_rel_err_vs_float64"] = abs(float(ours(**kw)) - exact) / exact
    print(res, flush=True)
    return res


def main():
    p = parser(__doc__)
    p.add_argument("--skip", nargs="*", default=[], choices=["accumulation", "memory", "loss"])
    args = p.parse_args()
    setup_threads(args)
    out = {}
    if "loss" not in args.skip:
        out["loss"] = bench_loss(args)
    if "accumulation" not in args.skip:
        out["accumulation"] = bench_accumulation(args)
    if "memory" not in args.skip:
        out["memory"] = bench_memory(args)
    out["targets"] = {"accumulation_speedup_n63_N20000": 5.0, "loss_fwd_bwd_speedup_m63disk_q1200": 3.0}
    emit("moments", out, args)


if __name__ == "__main__":
    main()
