"""The SIREN activation (orbitcore.ops.sine_activation, ``sin(w0 · z)`` on the sine kernel)
against PyTorch's ``torch.sin(w0 * z)``, what the public SIREN / FourierNet layers run:
forward and backward of the activation alone, and a whole SIREN layer (``nn.Linear`` then the
activation) inside the FourierNet of the amortized runs (width 64 and 256, 3 → 64 → 64 … → 2),
measured in the same run, alternately (``timeit_pair``).

Also (``--sections step``) the whole FourierNet training step of the amortized recipe (16 pose
hypotheses, grid scoring, width 64, batch 32, n = 32 and 64) with the SIRENs on the kernel
against the same model under ``plain_sine()``, alternating.

Shapes: P query points × width, P = 2^16 and 2^19 (at n = 64 the grid scoring of
``bench_amortized`` queries ~5.7·10^5 points a batch). Every row first checks both against the
float64 reference (max error relative to max(1, |value|)); the kernel must be within 2e-7 forward
and 4e-7 backward (float32; 1e-15 and 2e-15 in float64).
"""
from __future__ import annotations

from _common import emit, parser, setup_threads, timeit_pair  # first: sets OMP_WAIT_POLICY before torch loads libgomp

import torch  # noqa: E402

from orbitcore.nn import SIREN, plain_sine  # noqa: E402
from orbitcore.ops import sine_activation  # noqa: E402

W0 = 30.0


def bench_activation(P: int, width: int, dtype, rep: int, gen) -> dict:
    z = (torch.randn(P, width, generator=gen, dtype=torch.float64) * 2).to(dtype).requires_grad_()
    g = torch.randn(P, width, generator=gen, dtype=torch.float64).to(dtype)

    def ours():
        torch.autograd.grad(sine_activation(z, W0), z, g)

    def base():
        torch.autograd.grad(torch.sin(W0 * z), z, g)

    zr = (torch.tensor(W0, dtype=dtype) * z.detach()).double()
    yr, dr = torch.sin(zr), g.double() * W0 * torch.cos(zr)

    def err(y, d):  # forward error, backward error (the latter: three roundings, so a wider bound)
        return max(float((y.detach().double() - yr).abs().max()),
                   float(((d.double() - dr).abs() / dr.abs().clamp_min(1)).max()) / 2)

    y_o = sine_activation(z, W0)
    y_b = torch.sin(W0 * z)
    e_o = err(y_o, torch.autograd.grad(y_o, z, g)[0])
    e_b = err(y_b, torch.autograd.grad(y_b, z, g)[0])
    bound = 2e-7 if dtype == torch.float32 else 1e-15
    if not e_o <= bound:
        raise SystemExit(f"bench_sine: the kernel's error {e_o:.3g} exceeds {bound} (P={P}, {dtype})")
    for mode, grad in (("forward", False), ("forward+backward", True)):
        if not grad:
            with torch.no_grad():
                pr = timeit_pair(lambda: torch.sin(W0 * z), lambda: sine_activation(z, W0), repeat=rep)
        else:
            pr = timeit_pair(base, ours, repeat=rep)
        yield {"what": "activation", "mode": mode, "points": P, "width": width, "dtype": str(dtype).split(".")[1],
               "elements": P * width, "max_error_ours": e_o, "max_error_torch": e_b,
               "ns_per_element_torch": pr["baseline"]["median_s"] / (P * width) * 1e9,
               "ns_per_element_ours": pr["ours"]["median_s"] / (P * width) * 1e9,
               "speedup": pr["speedup"], "speedup_range": [pr["speedup_min"], pr["speedup_max"]]}


def bench_siren(P: int, width: int, layers: int, rep: int, gen) -> dict:
    torch.manual_seed(0)
    net = SIREN(3, 2, width, layers, w0=W0)
    x = torch.rand(P, 3, generator=gen) * 2 - 1
    params = list(net.parameters())

    def ours():
        torch.autograd.grad(net(x).square().sum(), params)

    def base():
        with plain_sine():
            torch.autograd.grad(net(x).square().sum(), params)

    with torch.no_grad():
        y_o = net(x)
        with plain_sine():
            y_b = net(x)
    diff = float((y_o - y_b).abs().max() / y_b.abs().max())
    pr = timeit_pair(base, ours, repeat=rep)
    with torch.no_grad():
        def base_ng():
            with plain_sine():
                net(x)
        pn = timeit_pair(base_ng, lambda: net(x), repeat=rep)
    return {"what": "siren", "points": P, "width": width, "hidden_layers": layers, "relative_difference": diff,
            "train_s_torch": pr["baseline"]["median_s"], "train_s_ours": pr["ours"]["median_s"],
            "train_speedup": pr["speedup"], "train_speedup_range": [pr["speedup_min"], pr["speedup_max"]],
            "query_s_torch": pn["baseline"]["median_s"], "query_s_ours": pn["ours"]["median_s"],
            "query_speedup": pn["speedup"]}


def bench_step(n: int, rep: int, gen) -> dict:
    """One training step of the amortized FourierNet recipe, kernel against plain_sine()."""
    from bench_amortized import _data  # noqa: E402  (same synthetic batch as that benchmark)
    from orbitcore.amortized import AmortizedModel

    imgs, C, _ = _data(n, 32, gen)
    kw = dict(channels=(16, 32, 64, 128), pose_heads=16, whiten_rotation=True, fourier_scoring="grid",
              fourier_hidden=64, encoder_size=32)
    model = AmortizedModel.create(n, decoder="fouriernet", **kw)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=0.0, fused=True)  # lr 0: every step sees the same model

    def ours():
        opt.zero_grad(set_to_none=True)
        model(imgs, C).loss.backward()
        opt.step()

    def base():
        with plain_sine():
            ours()

    pr = timeit_pair(base, ours, repeat=rep)
    return {"what": "fouriernet_step", "n": n, "batch": 32, "pose_heads": 16, "scoring": "grid", "hidden": 64,
            "step_s_torch": pr["baseline"]["median_s"], "step_s_ours": pr["ours"]["median_s"],
            "speedup": pr["speedup"], "speedup_range": [pr["speedup_min"], pr["speedup_max"]]}


def main():
    p = parser(__doc__)
    p.add_argument("--sections", nargs="+", choices=("activation", "siren", "step"),
                   default=["activation", "siren", "step"])
    args = p.parse_args()
    setup_threads(args)
    gen = torch.Generator().manual_seed(0)
    rep = 3 if args.quick else 7
    sizes = [1 << 14] if args.quick else [1 << 16, 1 << 19]
    rows = []
    for P in sizes if "activation" in args.sections else []:
        for dtype in (torch.float32, torch.float64):
            for row in bench_activation(P, 64, dtype, rep, gen):
                rows.append(row)
                print(f"# activation {row['mode']} P={P} {row['dtype']}: torch {row['ns_per_element_torch']:.2f} "
                      f"ns/elem, ours {row['ns_per_element_ours']:.2f} ({row['speedup']:.2f}x)", flush=True)
    for P in sizes if "siren" in args.sections else []:
        for width, layers in ((64, 3), (256, 3)):
            if width == 256 and P > (1 << 16):
                continue
            row = bench_siren(P, width, layers, rep, gen)
            rows.append(row)
            print(f"# SIREN P={P} width={width}: train {row['train_speedup']:.2f}x, query {row['query_speedup']:.2f}x",
                  flush=True)
    for n in ((32,) if args.quick else (32, 64)) if "step" in args.sections else ():
        row = bench_step(n, max(3, rep - 2), gen)
        rows.append(row)
        print(f"# FourierNet step n={n}: torch.sin {row['step_s_torch']:.3f} s, kernel {row['step_s_ours']:.3f} s "
              f"({row['speedup']:.2f}x)", flush=True)
    emit("sine", {"rows": rows}, args)


if __name__ == "__main__":
    main()
