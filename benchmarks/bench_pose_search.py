"""Global pose search (orbitcore.amortized.search_poses): images/s against a plain PyTorch
implementation of the same search, measured in the same run.

Both sides run the same algorithm on the same data (the pseudo-molecule, CTF, known shifts,
SNR 0 dB): templates on an SO(3) grid, scores ``2 Re⟨C S^* Î, P̂⟩ − ⟨C², |P̂|²⟩`` as two matrix
products per batch of images, then ``refine`` rounds of a 27-rotation local stencil. The
baseline writes the parts the way one writes them by hand:

* templates: the 2×-padded, gridding-corrected centred FT of the volume (``fftn`` of the
  zero-padded array) sliced with ``torch.nn.functional.grid_sample`` (trilinear on the
  [Re, Im] channels) over the full ``n × n`` plane;
* scores over the full disk (both Hermitian halves), complex arithmetic.

orbitcore: ``fourier_slice`` on the disk, the Hermitian half-disk with weights (half the
template memory and half the matrix-product work), real arithmetic.

Reported per size: images/s of the whole search (global + refinement) on each side, the
speed-up, the templates' memory, and the agreement (fraction of images whose two answers are
within 2° of each other; the two interpolations differ by rounding only).
"""
from __future__ import annotations

from _common import emit, parser, setup_threads, timeit  # first: sets OMP_WAIT_POLICY before torch loads libgomp

import torch  # noqa: E402

import orbitcore as oc  # noqa: E402
from orbitcore import fourier  # noqa: E402
from orbitcore.amortized import search_poses  # noqa: E402
from orbitcore.amortized.search import _stencil  # noqa: E402
from orbitcore.physics import CTFParams, Projector, pseudo_molecule, shift_phases  # noqa: E402
from orbitcore.physics.projection import gridding_correction  # noqa: E402


class BaselineSearch:
    """The same search in plain PyTorch (module docstring)."""

    def __init__(self, vol: torch.Tensor, pad: int = 2):
        D = vol.shape[-1]
        N = pad * D
        o = N // 2 - D // 2
        big = vol.new_zeros((N, N, N))
        big[o:o + D, o:o + D, o:o + D] = vol / gridding_correction(N, D).to(vol.dtype)
        V = torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(big)))
        self.V2 = torch.view_as_real(V).permute(3, 0, 1, 2)[None].contiguous()
        k = torch.arange(D, dtype=vol.dtype) - D // 2
        ky, kx = torch.meshgrid(k, k, indexing="ij")
        self.plane = torch.stack((kx, ky, torch.zeros_like(kx)), -1)
        self.mask = (kx ** 2 + ky ** 2).sqrt() <= D / 2 - 1
        self.D, self.N, self.pad = D, N, pad

    def slices(self, R: torch.Tensor) -> torch.Tensor:
        out = []
        for s in range(0, R.shape[0], 2048):
            P = self.pad * torch.einsum("bij,yxj->byxi", R[s:s + 2048], self.plane) + self.N // 2
            g = (P * (2.0 / (self.N - 1)) - 1.0)[None]
            S = torch.nn.functional.grid_sample(self.V2, g, mode="bilinear", padding_mode="zeros", align_corners=True)
            out.append(torch.complex(S[0, 0], S[0, 1]))
        return torch.cat(out)

    def search(self, images, C, t, step: float, refine: int, batch: int = 128) -> torch.Tensor:
        grid = oc.metrics.so3_grid(step).to(images.dtype)
        T = self.slices(grid)[:, self.mask]                                     # (M, K) complex
        T2 = T.abs() ** 2
        best = []
        for s in range(0, images.shape[0], batch):
            F = fourier.fft2c(images[s:s + batch]) * shift_phases(self.D, -t[s:s + batch]) * C[s:s + batch]
            a, c2 = F[:, self.mask], (C[s:s + batch] ** 2)[:, self.mask]
            sc = 2 * (a.conj() @ T.T).real - c2 @ T2.T
            Rb = grid[sc.argmax(1)]
            st = step / 2
            for _ in range(refine):
                cand = Rb[:, None] @ _stencil(st, images.dtype)[None]
                Tc = self.slices(cand.reshape(-1, 3, 3)).reshape(len(Rb), 27, self.D, self.D)[..., self.mask]
                sc = 2 * (a.conj()[:, None] * Tc).real.sum(-1) - (c2[:, None] * Tc.abs() ** 2).sum(-1)
                Rb = cand[torch.arange(len(Rb)), sc.argmax(1)]
                st /= 2
            best.append(Rb)
        return torch.cat(best)


def bench(n: int, N: int, step: float, refine: int, rep: int, gen) -> dict:
    vol = pseudo_molecule(n)
    R = oc.geometry.random_rotations(N, generator=gen)
    t = 0.5 * torch.randn(N, 2, generator=gen)
    ctf = CTFParams.create(15000 * torch.exp(0.3 * torch.randn(N, generator=gen)), pixel_size=4.0)
    imgs = Projector(vol)(R, t, ctf)
    imgs = imgs + imgs.std() * torch.randn(imgs.shape, generator=gen)  # SNR 0 dB
    C = ctf.evaluate(n, dtype=torch.float64).float()
    base = BaselineSearch(vol)
    out = {}

    def ours():
        out["ours"] = search_poses(vol, imgs, ctf=C, shifts=t, step=step, refine=refine, fit_scale=False).rotations

    def theirs():
        out["base"] = base.search(imgs, C, t, step, refine)

    to = timeit(ours, repeat=rep, warmup=1)
    tb = timeit(theirs, repeat=rep, warmup=1)
    agree = oc.metrics.rotation_angle(out["ours"], out["base"].double()) < 2.0
    err = oc.metrics.rotation_angle(R.double(), out["ours"])
    M = oc.metrics.so3_grid(step).shape[0]
    K = int(base.mask.sum())
    return {"n": n, "images": N, "step_deg": step, "refine": refine, "grid_rotations": M,
            "orbitcore_images_per_s": N / to["median_s"], "baseline_images_per_s": N / tb["median_s"],
            "speedup": tb["median_s"] / to["median_s"],
            "templates_MB": {"orbitcore": M * (K + 1) * 3 * 4 / 1e6 / 2, "baseline": M * K * 12 / 1e6},
            "agreement_within_2deg": float(agree.double().mean()),
            "median_error_vs_truth_deg": float(err.median()),
            "seconds": {"orbitcore": to, "baseline": tb}}


def main():
    p = parser(__doc__)
    args = p.parse_args()
    setup_threads(args)
    gen = torch.Generator().manual_seed(0)
    configs = [(32, 512, 7.5, 3), (64, 256, 10.0, 3)]
    if args.quick:
        configs = [(16, 64, 15.0, 2)]
    rows = []
    for n, N, step, refine in configs:
        print(f"# n={n} images={N} step={step}", flush=True)
        rows.append(bench(n, N, step, refine, 1 if args.quick else 3, gen))
    emit("pose_search", {"rows": rows, "targets": {}}, args)


if __name__ == "__main__":
    main()
