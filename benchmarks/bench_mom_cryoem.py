"""Cryo-EM method of moments (issue 8): time of one optimisation step of eq. 28 — forward and
backward — against the same step written in plain PyTorch, measured in the same run on the
same threads.

Step (working size n = 25 and 33, disk |k| <= (n−1)//2, q = 1200 = the paper's 100 × 12
quadrature, float32, density z = softmax(free logits)):

  voxel model
    baseline  v (n³) → padded, gridding-corrected FT (``prepare_volume_ft``, shared) →
              ``torch.nn.functional.grid_sample`` (trilinear, real and imaginary parts as two
              channels) at the q rotated disks → dense ``M2 = (S^T z) @ conj(S)`` →
              ``‖M̂1 − M1‖ + λ‖M̂2 − M2‖`` with ``torch.linalg.norm`` → autograd.
    orbitcore ``VoxelVolume.slices`` (``fourier_slice`` kernel, Hermitian half-slices) →
              ``moment_loss(..., conjugate=)`` (the real basis) → autograd through both ops.
  FourierNet model (the paper's v̂_φ, hidden 256; the same network on both sides)
    baseline  the network at all q·m rotated frequencies, its activations the plain PyTorch
              ``torch.sin(w0 · z)`` (``orbitcore.nn.plain_sine``) → dense M2 → norms → autograd.
    orbitcore ``FourierNetVolume(query="direct")``: the network at one representative of each
              pair ±k (Hermitian symmetry) and at one rotation of each pair Q, Q·Rz(π) of
              the quadrature (its slice is S(−k)): a quarter of the queries, the same
              values, the SIREN activations on orbitcore's sine kernel → ``moment_loss``;
              and ``query="grid"`` (network on the n³ half spectrum → inverse FT →
              ``fourier_slice``).

Each figure: median of ``--repeat`` steps after a warm-up; baseline and orbitcore are timed
alternately (the machine is shared). The loss values of baseline and orbitcore are checked to
agree (same slices up to float32 rounding for the voxel model; the FourierNet baseline is the
same function).
"""
from __future__ import annotations

import statistics
import time

from _common import emit, parser, setup_threads  # first: sets OMP_WAIT_POLICY before torch loads libgomp

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import orbitcore as oc  # noqa: E402
from orbitcore.geometry import so3_quadrature  # noqa: E402
from orbitcore.mom.cryoem_models import FourierNetVolume, VoxelVolume, gaussian_blob  # noqa: E402
from orbitcore.nn import plain_sine  # noqa: E402
from orbitcore.physics.projection import prepare_volume_ft  # noqa: E402


def baseline_slices_voxel(v: torch.Tensor, Q: torch.Tensor, freqs: torch.Tensor, pad: int = 2) -> torch.Tensor:
    """``(q, m)`` complex: trilinear samples of the padded FT at ``pad · Q (kx, ky, 0)`` by grid_sample."""
    V = prepare_volume_ft(v, pad)  # (N, N, N) complex, [z, y, x], centre N // 2
    N = V.shape[-1]
    vol = torch.stack((V.real, V.imag))[None]  # (1, 2, N, N, N)
    k = torch.cat((freqs.to(v.dtype), torch.zeros(freqs.shape[0], 1, dtype=v.dtype)), 1)  # (m, 3) (x, y, z)
    p = pad * torch.einsum("qij,mj->qmi", Q, k) + N // 2  # voxel index (x, y, z)
    grid = (2 * p / (N - 1) - 1)[None, :, :, None, :]  # (1, q, m, 1, 3), align_corners=True
    s = F.grid_sample(vol, grid, mode="bilinear", padding_mode="zeros", align_corners=True)  # (1, 2, q, m, 1)
    return torch.complex(s[0, 0, :, :, 0], s[0, 1, :, :, 0])


def baseline_loss(S, z, M1h, M2h, lam):
    M1 = z.to(S.dtype) @ S
    M2 = (S.mT * z.to(S.dtype)) @ S.conj()
    return torch.linalg.norm(M1h - M1) + lam * torch.linalg.norm(M2h - M2)


def alternate(fns: dict, repeat: int) -> dict:
    times = {k: [] for k in fns}
    for f in fns.values():  # warm-up
        f()
    for _ in range(repeat):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: {"median_s": statistics.median(v), "min_s": min(v), "repeats": len(v)} for k, v in times.items()}


def run_size(n: int, repeat: int, hidden: int) -> dict:
    r = (n - 1) // 2
    lay = oc.MomentLayout(n, 2, r)
    Q, _ = so3_quadrature(dtype=torch.float32)
    q = Q.shape[0]
    g = torch.Generator().manual_seed(0)
    # data moments: those of a random volume under a random density (any Hermitian data will do)
    truth = torch.rand(n, n, n, generator=g, dtype=torch.float64) * gaussian_blob(n, dtype=torch.float64)
    zt = torch.softmax(torch.randn(q, generator=g, dtype=torch.float64), 0)
    St = lay.gather(oc.fourier_slice(prepare_volume_ft(truth, 2), 2 * Q.double(), n, r, hermitian=True, check=False))
    M1h, M2h = oc.model_moments(St, zt)
    a = float(torch.diagonal(M2h).real.max()) ** 0.5
    M1h, M2h = (M1h / a).to(torch.complex64), (M2h / a**2).to(torch.complex64)
    lam = float(M1h.norm() / M2h.norm())
    logits = torch.zeros(q, requires_grad=True)
    freqs = lay.frequencies
    conj = lay.conjugate

    vox = VoxelVolume(n, radius=None)
    v_base = vox.volume_differentiable().detach().clone().requires_grad_(True)

    def voxel_ours():
        S = vox.slices(Q, lay)
        L = oc.moment_loss(M1h, M2h, S, torch.softmax(logits, 0), lam, conjugate=conj)
        vox.zero_grad(set_to_none=True)
        logits.grad = None
        L.backward()
        return float(L.detach())

    def voxel_base():
        S = baseline_slices_voxel(v_base, Q, freqs)
        L = baseline_loss(S, torch.softmax(logits, 0), M1h, M2h, lam)
        v_base.grad = None
        logits.grad = None
        L.backward()
        return float(L.detach())

    torch.manual_seed(0)
    fn_direct = FourierNetVolume(n, hidden, radius=r)
    fn_grid = FourierNetVolume(n, hidden, radius=r, query="grid")
    fn_grid.load_state_dict(fn_direct.state_dict())
    kall = torch.cat((freqs.float(), torch.zeros(lay.m, 1)), 1)

    def fourier_ours(model):
        def f():
            S = model.slices(Q, lay)
            L = oc.moment_loss(M1h, M2h, S, torch.softmax(logits, 0), lam, conjugate=conj)
            model.zero_grad(set_to_none=True)
            logits.grad = None
            L.backward()
            return float(L.detach())
        return f

    def fourier_base():
        with plain_sine():
            S = fn_direct.net(torch.einsum("qij,mj->qmi", Q, kall))
            L = baseline_loss(S, torch.softmax(logits, 0), M1h, M2h, lam)
            fn_direct.zero_grad(set_to_none=True)
            logits.grad = None
            L.backward()
        return float(L.detach())

    # agreement of the loss values
    agree = {"voxel": abs(voxel_ours() - voxel_base()) / voxel_base(),
             "fouriernet_direct": abs(fourier_ours(fn_direct)() - fourier_base()) / fourier_base()}
    tv = alternate({"baseline": voxel_base, "orbitcore": voxel_ours}, repeat)
    tf = alternate({"baseline": fourier_base, "orbitcore_direct": fourier_ours(fn_direct),
                    "orbitcore_grid": fourier_ours(fn_grid)}, max(2, repeat // 2))
    out = {"n": n, "radius": r, "m": lay.m, "q": q, "hidden": hidden, "loss_relative_difference": agree,
           "voxel": {**tv, "speedup": tv["baseline"]["median_s"] / tv["orbitcore"]["median_s"]},
           "fouriernet": {**tf,
                          "speedup_direct": tf["baseline"]["median_s"] / tf["orbitcore_direct"]["median_s"],
                          "speedup_grid": tf["baseline"]["median_s"] / tf["orbitcore_grid"]["median_s"]}}
    print(f"n={n} m={lay.m} q={q}: voxel baseline {tv['baseline']['median_s']:.3f}s orbitcore "
          f"{tv['orbitcore']['median_s']:.3f}s ({out['voxel']['speedup']:.1f}x); FourierNet baseline "
          f"{tf['baseline']['median_s']:.3f}s direct {tf['orbitcore_direct']['median_s']:.3f}s "
          f"({out['fouriernet']['speedup_direct']:.1f}x) grid {tf['orbitcore_grid']['median_s']:.3f}s "
          f"({out['fouriernet']['speedup_grid']:.1f}x); loss agreement {agree}", flush=True)
    return out


def main():
    p = parser(__doc__)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--hidden", type=int, default=64,
                   help="FourierNet width (default 64: at the paper's 256 the baseline step takes minutes here)")
    args = p.parse_args()
    setup_threads(args)
    sizes = [25] if args.quick else [25, 33]
    res = [run_size(n, 2 if args.quick else args.repeat, args.hidden) for n in sizes]
    emit("mom_cryoem", {"sizes": res}, args)


if __name__ == "__main__":
    main()
