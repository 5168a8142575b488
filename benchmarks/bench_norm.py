"""Batch normalisation fused with ReLU (orbitcore.ops.norm.batch_norm_relu) against PyTorch's
``relu_(batch_norm(x))`` (``nn.BatchNorm2d`` then ``nn.ReLU(inplace=True)``, what the public
encoders run), and fused with ReLU and 2×2 max pooling
(``batch_norm_relu_max_pool2d``) against ``max_pool2d(relu_(batch_norm(x)), 2)``: training
mode, forward and backward, measured in the same run.

Shapes: the activations of the amortized pose encoder's blocks (channels 16-32-64-128 on 32²
images, 2B = 128 images: the benchmark batch of ``bench_amortized.py``), channels-last as the
encoder runs them (``--layout nchw`` for the default layout; the fused op then copies to
channels-last once). Every row first checks both against the float64 definition
(``orbitcore.ops._reference.batch_norm_relu``: the output and the three gradients, relative
Frobenius norm) and records their errors: the fused op within 1e-4, PyTorch within 1e-2 (its
float32 channels-last kernel is the less accurate one, up to ~2e-3 here).
"""
from __future__ import annotations

from _common import emit, parser, setup_threads, sync, timeit  # first: sets OMP_WAIT_POLICY before torch loads libgomp

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from orbitcore.ops import _reference as ref  # noqa: E402
from orbitcore.ops.norm import batch_norm_relu, batch_norm_relu_max_pool2d  # noqa: E402


def bench_shape(N: int, C: int, s: int, layout: str, device: str, rep: int, gen, pool: bool = False) -> dict:
    fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    x = torch.randn(N, C, s, s, generator=gen).to(device).contiguous(memory_format=fmt).requires_grad_()
    w = (0.5 + torch.rand(C, generator=gen)).to(device).requires_grad_()
    b = (0.1 * torch.randn(C, generator=gen)).to(device).requires_grad_()
    so = s // 2 if pool else s
    g = torch.randn(N, C, so, so, generator=gen).to(device).contiguous(memory_format=fmt)
    rm, rv = torch.zeros(C, device=device), torch.ones(C, device=device)

    def ours():
        if pool:
            return batch_norm_relu_max_pool2d(x, rm, rv, w, b, True, 0.1, 1e-5)
        return batch_norm_relu(x, rm, rv, w, b, True, 0.1, 1e-5)

    def base():
        y = F.relu(F.batch_norm(x, rm, rv, w, b, True, 0.1, 1e-5), inplace=True)  # nn.ReLU(inplace=True)
        return F.max_pool2d(y, 2) if pool else y

    # the same function: outputs and gradients (x, weight, bias) of both against float64, in
    # relative Frobenius norm (an element whose pre-activation rounds to the other side of 0
    # flips its ReLU gate, so a max-norm comparison of dx would measure rounding, not agreement)
    yo, yb = ours(), base()
    go, gb = torch.autograd.grad(yo, (x, w, b), g), torch.autograd.grad(yb, (x, w, b), g)
    xr, wr, br = (t.detach().double().requires_grad_() for t in (x, w, b))
    yr, _, _ = (ref.batch_norm_relu_max_pool2d if pool else ref.batch_norm_relu)(xr, wr, br, 1e-5)
    gr = torch.autograd.grad(yr, (xr, wr, br), g.double())

    def rel(u, v):
        return float(torch.linalg.vector_norm(u.detach().double() - v.detach().double())
                     / torch.linalg.vector_norm(v.detach().double()))

    err_o = max(rel(u, v) for u, v in zip((yo, *go), (yr, *gr)))
    err_b = max(rel(u, v) for u, v in zip((yb, *gb), (yr, *gr)))
    # PyTorch's float32 channels-last batch norm on the CPU is the less accurate of the two
    # (its bias gradient is off by up to ~3e-3 relative at these sizes), hence two bounds
    if not (err_o < 1e-4 and err_b < 1e-2):
        raise SystemExit(f"bench_norm: at {(N, C, s, s)} the outputs and gradients differ from float64 by "
                         f"{err_o:g} (fused) and {err_b:g} (PyTorch): not the same function")
    row_acc = {"max_rel_error_vs_float64_ours": err_o, "max_rel_error_vs_float64_baseline": err_b,
               "output_max_abs_error_vs_float64_ours": float((yo.detach().double() - yr.detach()).abs().max()),
               "output_max_abs_error_vs_float64_baseline": float((yb.detach().double() - yr.detach()).abs().max()),
               "grad_x_rel_error_vs_float64_ours": rel(go[0], gr[0]),
               "grad_x_rel_error_vs_float64_baseline": rel(gb[0], gr[0])}

    def fb(f):
        return lambda: torch.autograd.grad(f(), (x, w, b), g)

    row = {"shape": [N, C, s, s], "layout": layout, "max_pool2d": pool, **row_acc}
    for name, fn in (("forward", lambda f: f), ("forward_backward", fb)):
        tb = timeit(fn(base), repeat=rep, warmup=2, device=device, min_time=0.3)
        to = timeit(fn(ours), repeat=rep, warmup=2, device=device, min_time=0.3)
        row[f"{name}_ms_baseline"] = 1e3 * tb["median_s"]
        row[f"{name}_ms_ours"] = 1e3 * to["median_s"]
        row[f"{name}_speedup"] = tb["median_s"] / to["median_s"]
    sync(device)
    return row


def main():
    p = parser(__doc__)
    p.add_argument("--layout", choices=("nhwc", "nchw"), default="nhwc")
    args = p.parse_args()
    setup_threads(args)
    gen = torch.Generator().manual_seed(0)
    N = 32 if args.quick else 128
    shapes = [(16, 32), (32, 16), (64, 8), (128, 4)]
    rep = 3 if args.quick else 7
    rows = [bench_shape(N, C, s, args.layout, args.device, rep, gen) for C, s in shapes]
    pooled = [bench_shape(N, C, s, args.layout, args.device, rep, gen, pool=True) for C, s in shapes]

    def total(rs, side):
        return sum(r[f"forward_backward_ms_{side}"] for r in rs)

    # an encoder block = one plain pair + one pair followed by the pooling
    blocks_b, blocks_o = total(rows, "baseline") + total(pooled, "baseline"), total(rows, "ours") + total(pooled, "ours")
    emit("norm", {"rows": rows, "pooled_rows": pooled,
                  "pairs_forward_backward_speedup": total(rows, "baseline") / total(rows, "ours"),
                  "pooled_forward_backward_speedup": total(pooled, "baseline") / total(pooled, "ours"),
                  "encoder_blocks_forward_backward_speedup": blocks_b / blocks_o,
                  "encoder_blocks_forward_backward_ms": {"baseline": blocks_b, "ours": blocks_o},
                  "note": "rows: one BatchNorm -> ReLU pair per shape; pooled_rows: BatchNorm -> ReLU -> "
                          "MaxPool2d(2); each encoder block has one of each"}, args)


if __name__ == "__main__":
    main()
