"""Benchmark of the MRA method of moments (issue 5), each figure against a plain PyTorch
implementation of the same steps, measured in the same run on the same threads:

1. moments (eq. 24) of 10⁶ observations of length n = 64, streamed in batches of 65 536:
   ``mra.data_moments`` (through ``orbitcore.MomentAccumulator``, the compiled moment kernel)
   vs FFT each batch + complex ``X^T conj(X)`` accumulation in complex128
   (``TorchMomentAccumulator``);
2. one refinement iteration of the reconstruction phase (§5.1.2) at n = 64: encoder forward,
   eq. 26, backward, Adam step — with the kernel-backed ``mra.reconstruction_loss`` vs the same
   iteration with the dense plain-PyTorch loss (form M2, Frobenius norm, autograd);
3. one iteration of the classical baseline (no network), the same two ways.

    PYTHONPATH=python python benchmarks/bench_mom_mra.py [--threads 2] [--quick]
"""
from __future__ import annotations

import math
import time

from _common import emit, parser, setup_threads, timeit  # first: sets OMP_WAIT_POLICY before torch loads libgomp

import torch  # noqa: E402


from orbitcore.mom import _moments, mra


def moments_case(n: int, N: int, batch: int, repeat: int) -> dict:
    v, rho = mra.random_instances(n, 2, 1, generator=0)
    x = mra.sample_observations(v[0], rho[0], N, 1.0, generator=1).to(torch.float32)
    batches = [x[i:i + batch] for i in range(0, N, batch)]

    def ours():
        return mra.data_moments(batches, n, 1.0)

    def plain():
        acc = _moments.TorchMomentAccumulator(n, 1.0)
        for b in batches:
            acc.update(b)
        return acc.result()

    a1, a2, _ = ours()
    b1, b2 = plain()
    agree = float((a2 - b2).abs().max() / b2.abs().max())
    t_ours = timeit(ours, repeat=repeat, warmup=1)
    t_plain = timeit(plain, repeat=repeat, warmup=1)
    t0 = time.perf_counter()
    mra.simulate_moments(v[0], rho[0], N, 1.0, batch_size=batch, generator=2)
    t_sim = time.perf_counter() - t0
    return {
        "n": n, "N": N, "batch": batch, "orbitcore_s": t_ours["median_s"], "plain_torch_s": t_plain["median_s"],
        "speedup": t_plain["median_s"] / t_ours["median_s"],
        "orbitcore_obs_per_s": N / t_ours["median_s"], "max_rel_difference_M2": agree,
        "simulate_and_accumulate_s": t_sim,
    }


def refinement_case(n: int, repeat: int) -> dict:
    v, rho = mra.random_instances(n, 2, 1, generator=3)
    M1, M2 = mra.simulate_moments(v[0], rho[0], 10**5, 1.0, generator=4)
    torch.manual_seed(0)
    enc = mra.MRAEncoder(n)
    Mi1, Mi2 = M1.to(torch.complex64), M2.to(torch.complex64)

    def plain_loss(A1, A2, u, w, lam=1.0):
        S = mra.shift_slices(u) / math.sqrt(n)
        c = S.dtype
        return _moments.torch_moment_loss(A1.to(c) / math.sqrt(n), A2.to(c) / n, S, w, lam)

    def make_net_step(loss_fn):
        e = mra.MRAEncoder(n)
        e.load_state_dict(enc.state_dict())
        opt = torch.optim.Adam(e.parameters(), lr=1e-4, foreach=True)

        def step():
            z_v, z_rho = e(Mi1, Mi2)
            loss = loss_fn(M1, M2, z_v, z_rho)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    def make_direct_step(loss_fn):
        g = torch.Generator().manual_seed(5)
        u = torch.randn(n, generator=g, dtype=torch.float64).requires_grad_()
        logits = torch.randn(n, generator=g, dtype=torch.float64).requires_grad_()
        opt = torch.optim.Adam([u, logits], lr=1e-2)

        def step():
            loss = loss_fn(M1, M2, u, torch.softmax(logits, 0))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    # same value both ways (sanity)
    diff = abs(float(mra.reconstruction_loss(M1, M2, v[0], rho[0])) - float(plain_loss(M1, M2, v[0], rho[0])))
    out = {"n": n, "loss_agreement_abs": diff}
    for name, maker in (("encoder_iteration", make_net_step), ("classical_iteration", make_direct_step)):
        t_ours = timeit(maker(mra.reconstruction_loss), repeat=repeat, warmup=3, min_time=1.0)
        t_plain = timeit(maker(plain_loss), repeat=repeat, warmup=3, min_time=1.0)
        out[name] = {"orbitcore_s": t_ours["median_s"], "plain_torch_s": t_plain["median_s"],
                     "speedup": t_plain["median_s"] / t_ours["median_s"]}
    # the loss alone, forward + backward, at the encoder's output
    u = v[0].float().requires_grad_()
    w = rho[0].float().requires_grad_()

    def lf(fn):
        def f():
            loss = fn(M1, M2, u, w)
            loss.backward()
        return f
    t_ours = timeit(lf(mra.reconstruction_loss), repeat=repeat, warmup=3, min_time=1.0)
    t_plain = timeit(lf(plain_loss), repeat=repeat, warmup=3, min_time=1.0)
    out["loss_forward_backward"] = {"orbitcore_s": t_ours["median_s"], "plain_torch_s": t_plain["median_s"],
                                    "speedup": t_plain["median_s"] / t_ours["median_s"]}
    return out


def main() -> None:
    args = parser(__doc__).parse_args()
    setup_threads(args)
    n = 32 if args.quick else 64
    N = 10**5 if args.quick else 10**6
    repeat = 3 if args.quick else 5
    res = {
        "moments": moments_case(n, N, 65536, repeat),
        "refinement": refinement_case(n, repeat),
    }
    emit("mom_mra", res, args)


if __name__ == "__main__":
    main()
