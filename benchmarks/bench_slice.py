"""Fourier-slice throughput against the natural PyTorch baseline.

Baseline: ``torch.nn.functional.grid_sample`` on the [Re, Im] channels of the volume,
trilinear, ``align_corners=True``, zero padding, with the sampling grid built from the same
rotations (this is how public implementations slice). orbitcore: ``fourier_slice`` with the
full square plane ("full"), with the disk mask (radius D/2 - 1) and Hermitian half
("disk+hermitian", the setting for real volumes), and the same reading a half volume
("disk+hermitian+half": the ``kx >= 0`` half of a real volume's FT, ``half=True``, what the
amortized voxel decoder and ``physics.Projector`` slice; the op costs the same, the saving is
upstream, in the volume's FT and memory). Forward+backward takes gradients with respect
to both the volume and the rotations. Peak memory of forward+backward is measured in fresh
processes for two batch sizes: it must not grow with B beyond the output and its gradient.
"""
from __future__ import annotations

from _common import emit, parser, peak_rss_of, setup_threads, timeit  # first: sets OMP_WAIT_POLICY before torch loads libgomp

import torch  # noqa: E402

import orbitcore as oc


def plane_grid(R: torch.Tensor, n: int, D: int) -> torch.Tensor:
    k = torch.arange(n, dtype=R.dtype, device=R.device) - n // 2
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    q = torch.stack((kx, ky, torch.zeros_like(kx)), -1)
    P = torch.einsum("bij,yxj->byxi", R, q) + D // 2  # grid index (x, y, z)
    return P * (2.0 / (D - 1)) - 1.0  # align_corners=True normalisation


def baseline_slice(vol2: torch.Tensor, R: torch.Tensor, n: int) -> torch.Tensor:
    D = vol2.shape[-1]
    g = plane_grid(R, n, D)[None]
    out = torch.nn.functional.grid_sample(vol2, g, mode="bilinear", padding_mode="zeros", align_corners=True)
    return torch.complex(out[0, 0], out[0, 1])  # (B, n, n)


def main():
    p = parser(__doc__)
    p.add_argument("--sizes", type=int, nargs="*", default=None)
    p.add_argument("--batch", type=int, default=256)
    args = p.parse_args()
    setup_threads(args)
    dev = args.device
    sizes = args.sizes or ([32, 64] if args.quick else [64, 128])
    B = 64 if args.quick else args.batch
    rep = 3 if args.quick else 7
    gen = torch.Generator().manual_seed(0)
    rows = []
    for D in sizes:
        n = D
        vol = torch.randn(D, D, D, generator=gen, dtype=torch.complex64).to(dev)
        R = oc.geometry.random_rotations(B, generator=gen).to(dev)
        vol2 = torch.view_as_real(vol).permute(3, 0, 1, 2)[None].contiguous()
        # correctness of the comparison: the baseline computes the same numbers
        err = (baseline_slice(vol2, R, n) - oc.fourier_slice(vol, R)).abs().max().item()
        # (volume, options) per variant; the half volume is the kx >= 0 half of vol's layout
        half = torch.cat((vol[..., D // 2:], vol[..., :1]), -1).contiguous()
        configs = {"full": (vol, {}), "disk+hermitian": (vol, {"radius": D // 2 - 1, "hermitian": True}),
                   "disk+hermitian+half": (half, {"radius": D // 2 - 1, "hermitian": True, "half": True})}
        t_base = timeit(lambda: baseline_slice(vol2, R, n), repeat=rep, device=dev)
        row = {"D": D, "B": B, "n": n, "max_abs_diff_vs_baseline": err, "baseline_forward_s": t_base["median_s"]}
        for name, (v_, kw) in configs.items():
            t = timeit(lambda: oc.fourier_slice(v_, R, check=False, **kw), repeat=rep, device=dev)
            row[f"{name}_forward_s"] = t["median_s"]
            row[f"{name}_forward_speedup"] = t_base["median_s"] / t["median_s"]

        vr = vol2.clone().requires_grad_()
        Rr = R.clone().requires_grad_()

        G = torch.randn(B, n, n, generator=gen, dtype=torch.complex64).to(dev)  # fixed upstream gradient

        def base_fb():
            out = baseline_slice(vr, Rr, n)
            torch.autograd.grad(out, (vr, Rr), G)

        t_base_fb = timeit(base_fb, repeat=max(3, rep // 2), device=dev)
        row["baseline_forward_backward_s"] = t_base_fb["median_s"]
        for name, (v_, kw) in configs.items():
            vv = v_.clone().requires_grad_()

            def ours_fb(kw=kw, vv=vv):
                out = oc.fourier_slice(vv, Rr, check=False, **kw)
                torch.autograd.grad(out, (vv, Rr), G)
            t = timeit(ours_fb, repeat=max(3, rep // 2), device=dev)
            row[f"{name}_forward_backward_s"] = t["median_s"]
            row[f"{name}_forward_backward_speedup"] = t_base_fb["median_s"] / t["median_s"]
        rows.append(row)

    # Peak memory of forward+backward vs batch size (fresh processes, CPU).
    mem = []
    if dev == "cpu":
        D = sizes[-1]
        for b in ([16, 64] if args.quick else [64, 256]):
            setup = (
                f"torch.set_num_threads({torch.get_num_threads()})\n"
                f"v = torch.randn({D}, {D}, {D}, dtype=torch.complex64, requires_grad=True)\n"
                f"R = orbitcore.geometry.random_rotations({b}).requires_grad_()\n"
                # warm-up: first-call initialisation (thread pools, dispatcher) is not per-batch memory
                "w = orbitcore.fourier_slice(v, R[:2], check=False)\n"
                "torch.autograd.grad(w, (v, R), torch.ones_like(w))\n"
                "del w\n"
            )
            code = (
                f"out = orbitcore.fourier_slice(v, R, radius={D // 2 - 1}, hermitian=True, check=False)\n"
                "gv, gR = torch.autograd.grad(out, (v, R), torch.ones_like(out))\n"
            )
            extra = peak_rss_of(code, setup)
            out_bytes = b * D * D * 8
            mem.append({"D": D, "B": b, "peak_extra_bytes": extra, "output_bytes": out_bytes,
                        "output_plus_grad_bytes": 2 * out_bytes, "volume_grad_bytes": D ** 3 * 8,
                        "beyond_output_grad_and_volume_grad_bytes": extra - 2 * out_bytes - D ** 3 * 8})
    if len(mem) == 2:
        a, b = mem
        growth = b["peak_extra_bytes"] - a["peak_extra_bytes"]
        allowed = b["output_plus_grad_bytes"] - a["output_plus_grad_bytes"]
        mem.append({"growth_bytes_from_B%d_to_B%d" % (a["B"], b["B"]): growth,
                    "output_plus_grad_growth_bytes": allowed,
                    "growth_beyond_output_and_grad_bytes": growth - allowed})
    emit("slice", {"rows": rows, "memory": mem,
                   "targets": {"forward_speedup_D128": 5.0, "forward_backward_speedup_D128": 10.0}}, args)


if __name__ == "__main__":
    main()
