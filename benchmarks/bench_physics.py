"""Forward-model throughput and 3-D alignment, each against a plain PyTorch baseline measured in
the same run.

simulate: ``orbitcore.physics.simulate_particles`` (uniform rotations, Gaussian shifts, CTF with
log-normal defocus and astigmatism, noise at SNR 0.1) in images/s, against the natural PyTorch
implementation of the same model: slice the 2×-padded, gridding-corrected FT with
``torch.nn.functional.grid_sample`` (trilinear, [Re, Im] channels), multiply by the shift
phases and the CTF written out in torch, inverse FFT, add noise. The two agree to interpolation
precision (``max_rel_diff`` in the output).

align: ``orbitcore.metrics.align_volumes`` on the 64³ chiral pseudo-molecule moved by a random
rotation, shift and mirror (atoms moved analytically, so the truth is exact): total time and
accuracy (rotation error in degrees, shift error in voxels) over several trials. Baseline for
the global search: the same rotation grid and FFT translation search in plain PyTorch (rotate
the downsampled volume in real space with ``affine_grid`` + ``grid_sample``, ``rfftn``
cross-correlation); the ratio compares our global stage with it.
"""
from __future__ import annotations

import math
import time

from _common import emit, parser, setup_threads, timeit  # first: sets OMP_WAIT_POLICY before torch loads libgomp

import torch  # noqa: E402

import orbitcore as oc
from orbitcore import fourier
from orbitcore.geometry import random_rotations
from orbitcore.physics import pseudo_molecule, pseudo_molecule_atoms, gaussian_mixture_volume, simulate_particles
from orbitcore.physics.projection import prepare_volume_ft


# ----------------------------------------------------------------------------------------------
# simulate
# ----------------------------------------------------------------------------------------------
def baseline_simulate(vol, n, px, chunk, gen):
    """Plain PyTorch forward model (same physics, grid_sample slicing)."""
    D = vol.shape[-1]
    pad = 2
    V = prepare_volume_ft(vol, pad).to(torch.complex64)
    N = pad * D
    V2 = torch.view_as_real(V).permute(3, 0, 1, 2)[None].contiguous()
    k = torch.arange(D, dtype=torch.float32) - D // 2
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    plane = torch.stack((kx, ky, torch.zeros_like(kx)), -1)  # (D, D, 3)
    s2 = (kx ** 2 + ky ** 2) / (D * px) ** 2
    theta = torch.atan2(ky, kx)
    lam = 12.2643247 / math.sqrt(300e3 * (1 + 0.978466e-6 * 300e3))
    out = torch.empty(n, D, D)
    power = None
    for s in range(0, n, chunk):
        b = min(chunk, n - s)
        R = random_rotations(b, generator=gen)
        t = torch.randn(b, 2, generator=gen)
        d = torch.exp(math.log(15000.0) + 0.3 * torch.randn(b, generator=gen))
        ang = torch.rand(b, generator=gen) * 180
        P = pad * torch.einsum("bij,yxj->byxi", R, plane) + N // 2
        g = (P * (2.0 / (N - 1)) - 1.0)[None]
        S = torch.nn.functional.grid_sample(V2, g, mode="bilinear", padding_mode="zeros", align_corners=True)
        S = torch.complex(S[0, 0], S[0, 1])
        ph = torch.exp(-2j * math.pi * (kx * t[:, 0, None, None] + ky * t[:, 1, None, None]) / D)
        df = d[:, None, None] + 100 * torch.cos(2 * (theta - torch.deg2rad(ang)[:, None, None]))
        chi = -math.pi * lam * df * s2 + 0.5 * math.pi * 2.7e7 * lam ** 3 * s2 ** 2 - math.atan(0.1 / math.sqrt(0.99))
        img = torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(S * ph * -torch.sin(chi), dim=(-2, -1))),
                                 dim=(-2, -1)).real
        if power is None:
            power = float(img.pow(2).mean())
        out[s:s + b] = img + math.sqrt(power / 0.1) * torch.randn(b, D, D, generator=gen)
    return out


def bench_simulate(D, n, rep):
    vol = pseudo_molecule(D)
    px = 1.5
    chunk = 512

    def ours():
        return simulate_particles(vol, n, pixel_size=px, snr=0.1, shift_std=1.5, astigmatism_std=200.0,
                                  chunk_size=chunk, generator=torch.Generator().manual_seed(0))

    def base():
        return baseline_simulate(vol, n, px, chunk, torch.Generator().manual_seed(0))

    # same model: compare noise-free images of the same poses (interpolation-level agreement)
    r = simulate_particles(vol, 32, pixel_size=px, ctf=False, seed=1)
    V = prepare_volume_ft(vol, 2).to(torch.complex64)
    N = 2 * D
    V2 = torch.view_as_real(V).permute(3, 0, 1, 2)[None].contiguous()
    k = torch.arange(D, dtype=torch.float32) - D // 2
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    plane = torch.stack((kx, ky, torch.zeros_like(kx)), -1)
    g = ((2 * torch.einsum("bij,yxj->byxi", r.rotations, plane) + N // 2) * (2.0 / (N - 1)) - 1.0)[None]
    S = torch.nn.functional.grid_sample(V2, g, mode="bilinear", padding_mode="zeros", align_corners=True)
    b_img = fourier.ifft2c(torch.complex(S[0, 0], S[0, 1]) * (fourier.radial_frequency(D) <= D / 2 - 0.5)).real
    rel = float(((b_img - r.images).norm(dim=(-1, -2)) / r.images.norm(dim=(-1, -2))).max())

    t_o = timeit(ours, repeat=rep)
    t_b = timeit(base, repeat=rep)
    return {"D": D, "n_images": n, "chunk": chunk, "max_rel_diff_vs_baseline": rel,
            "orbitcore_s": t_o["median_s"], "baseline_s": t_b["median_s"],
            "orbitcore_images_per_s": n / t_o["median_s"], "baseline_images_per_s": n / t_b["median_s"],
            "speedup": t_b["median_s"] / t_o["median_s"]}


# ----------------------------------------------------------------------------------------------
# align
# ----------------------------------------------------------------------------------------------
F = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))


def moved_phantom(D, M=None, t0=None):
    x, w = pseudo_molecule_atoms(300, seed=0)
    c = x * 0.34 * D
    if M is not None:
        c = c @ M + t0
    return gaussian_mixture_volume(D, c, max(1.2, D / 30), w, dtype=torch.float64)


def baseline_coarse(ref, vol, m, grid, mirror=True):
    """Plain PyTorch global search: real-space rotation (affine_grid + grid_sample) of the
    downsampled volume for every grid rotation, rfftn cross-correlation with the reference."""
    r = fourier.downsample(ref, m, 3).float()
    v = fourier.downsample(vol, m, 3).float()
    r, v = r - r.mean(), v - v.mean()
    Fr = torch.fft.rfftn(r)
    best = []
    for hand in ((False, True) if mirror else (False,)):
        Fm = F.float() if hand else torch.eye(3)
        for s in range(0, len(grid), 256):
            Rg = grid[s:s + 256].float()
            M = Fm @ Rg.transpose(-1, -2)  # out(x) = v(M x)
            # affine_grid works on normalised (x, y, z) coordinates: the same linear map
            theta = torch.cat((M, torch.zeros(len(Rg), 3, 1)), 2)
            gr = torch.nn.functional.affine_grid(theta, (len(Rg), 1, m, m, m), align_corners=False)
            rot = torch.nn.functional.grid_sample(v[None, None].expand(len(Rg), 1, m, m, m), gr,
                                                  align_corners=False)[:, 0]
            cc = torch.fft.irfftn(Fr * torch.fft.rfftn(rot).conj(), s=(m, m, m))
            best.append(cc.reshape(len(Rg), -1).max(1).values)
    return torch.cat(best)


def bench_align(D, trials, rep):
    from orbitcore.metrics import align_volumes, rotation_angle, so3_grid

    rows = []
    g = torch.Generator().manual_seed(7)
    ref = moved_phantom(D)
    for i in range(trials):
        R0 = random_rotations(1, generator=g, dtype=torch.float64)[0]
        t0 = 3.0 * torch.randn(3, generator=g, dtype=torch.float64)
        mirror = i % 2 == 1
        M = (F @ R0.T) if mirror else R0.T
        vol = moved_phantom(D, M, t0)
        t1 = time.perf_counter()
        res = align_volumes(ref, vol)
        el = time.perf_counter() - t1
        R_want = M @ (F if mirror else torch.eye(3, dtype=torch.float64))
        rows.append({"trial": i, "mirror": mirror, "mirror_found": res.mirror, "seconds": el,
                     "rotation_error_deg": float(rotation_angle(res.rotation, R_want)),
                     "shift_error_voxels": float((res.shift + M @ t0).norm()), "correlation": res.correlation,
                     **{k: v for k, v in res.timings.items()}})
    grid = so3_grid(20.0)
    vol = moved_phantom(D, R0.T, t0)

    def ours():
        from orbitcore.metrics.align import _CoarseScorer

        sc = _CoarseScorer(ref, vol, 24)
        for hand in (False, True):
            Fm = F if hand else torch.eye(3, dtype=torch.float64)
            for s in range(0, len(grid), 256):
                sc.translation_scores(Fm @ grid[s:s + 256].transpose(-1, -2))

    t_o = timeit(ours, repeat=rep)
    t_b = timeit(lambda: baseline_coarse(ref, vol, 24, grid), repeat=rep)
    return {"D": D, "trials": rows,
            "max_rotation_error_deg": max(r["rotation_error_deg"] for r in rows),
            "max_shift_error_voxels": max(r["shift_error_voxels"] for r in rows),
            "handedness_correct": all(r["mirror"] == r["mirror_found"] for r in rows),
            "median_total_s": sorted(r["seconds"] for r in rows)[len(rows) // 2],
            "coarse_search": {"rotations": 2 * len(grid), "size": 24, "orbitcore_s": t_o["median_s"],
                              "baseline_s": t_b["median_s"], "speedup": t_b["median_s"] / t_o["median_s"]}}


def main():
    p = parser(__doc__)
    args = p.parse_args()
    setup_threads(args)
    if args.device != "cpu":
        raise SystemExit("bench_physics runs on the CPU (the simulator is CPU-side in this version)")
    quick = args.quick
    sims = [bench_simulate(D, n, 2 if quick else 3) for D, n in ([(64, 1024)] if quick else [(64, 4096), (128, 2048)])]
    al = bench_align(64, 2 if quick else 4, 1 if quick else 3)
    emit("physics", {"simulate": sims, "align": al}, args)


if __name__ == "__main__":
    main()
