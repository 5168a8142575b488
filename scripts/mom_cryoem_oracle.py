#!/usr/bin/env python
"""Issue-8 diagnostic: can the 70S ribosome be recovered from *exact* moments?

Exact moments (N = ∞: the true 8-component vMF density evaluated on the model's own 100 × 12
quadrature, eq. 20) of the 70S map Fourier-cropped to n; the voxel volume fitted from the
Gaussian-blob start by L-BFGS (float64, squared eq. 28), optionally with the density fixed to the
truth ("oracle") and with frequency marching (the loss restricted to |k| <= r for each r of
``--radii`` in turn, ``--iters`` L-BFGS iterations per stage). Prints, per stage, the moment
errors (eq. 22) and the aligned FSC / correlation against the cropped truth.

    PYTHONPATH=python python scripts/mom_cryoem_oracle.py --n 17 --radii 8 --iters 1500 --density oracle
    PYTHONPATH=python python scripts/mom_cryoem_oracle.py --n 17 --radii 2,3,4,5,6,7,8 --iters 200 --density free
    PYTHONPATH=python python scripts/mom_cryoem_oracle.py --n 17 --truth-only --band-limit disk
    PYTHONPATH=python python scripts/mom_cryoem_oracle.py --n 17 --start-noise 0.3 --iters 800
    PYTHONPATH=python python scripts/mom_cryoem_oracle.py --n 17 --start 1 --radii 8,8,8,8 --iters 1000
    PYTHONPATH=python python scripts/mom_cryoem_oracle.py --n 17 --density projected --start 1 \
        --radii 8,8,8,8 --iters 500 --shrink 1,0.1,0.01,0
    PYTHONPATH=python python scripts/mom_cryoem_oracle.py --n 17 --density directions --smooth 20 \
        --start 1 --radii 8,8,8,8 --iters 500
    PYTHONPATH=python python scripts/mom_cryoem_oracle.py --n 17 --density directions \
        --smooth 90,60,35,20,0 --start 1 --radii 8,8,8,8,8 --iters 1000     # annealed smoothing

``--band-limit`` (default ``cube``, the consistent model here; the library's default is
``disk``): FitConfig.band_limit. Results of 2026-11-21: docs/evidence/mom_cryoem/oracle_band_limit.txt.
"""
from __future__ import annotations

import argparse
import pathlib
import time

import torch

import orbitcore as oc
from orbitcore.geometry import VonMisesFisherMixture, so3_quadrature
from orbitcore.io import read_mrc
from orbitcore.mom import cryoem as ce
from orbitcore.mom.cryoem_models import FreeDensity

ROOT = pathlib.Path(__file__).resolve().parent.parent


class _DirectionDensity(torch.nn.Module):
    """z_j = (K softmax(θ))[d(j)] / (rules per direction): free logits per viewing direction
    Q_j e_z, uniform over the in-plane angles. ``smooth_deg > 0``: K is a heat kernel on the
    sphere, ``K_ab ∝ exp(-angle(d_a, d_b)² / 2h²)`` with columns summing to 1 (so ``K p`` is
    still a density), a smoothness prior that leaves the density fewer degrees of freedom to
    absorb the volume's errors; ``0``: K = I."""

    def __init__(self, rotations, smooth_deg: float = 0.0):
        super().__init__()
        dirs, d = ce.viewing_groups(rotations)
        d = d.to(rotations.device)
        self.register_buffer("group", d)
        self.register_buffer("count", torch.bincount(d).to(rotations.dtype))
        self.logits = torch.nn.Parameter(torch.zeros(len(self.count), dtype=rotations.dtype))
        self.register_buffer("angles", torch.acos((dirs @ dirs.T).clamp(-1, 1)).to(torch.float64))
        self.register_buffer("K", torch.eye(len(self.count), dtype=rotations.dtype))
        self.set_smoothing(smooth_deg)

    def set_smoothing(self, smooth_deg: float) -> None:
        """A new kernel bandwidth (degrees; 0: none), keeping the logits (annealing stages)."""
        if smooth_deg > 0:
            K = torch.exp(-0.5 * (self.angles / torch.deg2rad(torch.tensor(smooth_deg, dtype=torch.float64))) ** 2)
            K = K / K.sum(0, keepdim=True)
        else:
            K = torch.eye(len(self.count), dtype=torch.float64)
        self.K.copy_(K.to(self.K.dtype))

    def forward(self, M1=None, M2=None):
        return ((self.K @ torch.softmax(self.logits, 0)) / self.count)[self.group]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--map", default=str(ROOT.parent / "shared" / "data" / "clean70SRibosome_vol_65p.mrc"))
    p.add_argument("--n", type=int, default=17)
    p.add_argument("--radii", default="8", help="comma-separated disk radii of the marching stages")
    p.add_argument("--iters", type=int, default=1500, help="L-BFGS iterations per stage")
    p.add_argument("--density", choices=("oracle", "free", "directions", "projected"), default="oracle",
                   help="oracle: fixed to the truth; free: 1200 free logits; directions: free logits per viewing "
                        "direction, uniform over the in-plane angles; projected: the directions model eliminated "
                        "exactly at every evaluation (variable projection, FitConfig density='projected')")
    p.add_argument("--shrink", default="0",
                   help="with --density projected: comma-separated ProjectedDensity shrink factors, one per stage "
                        "of --radii (a continuation from a near-uniform density to the exact one)")
    p.add_argument("--smooth", default="0",
                   help="--density directions: heat-kernel smoothing of the direction density, degrees (0: none); "
                        "comma-separated: one per stage (annealing; the last repeats)")
    p.add_argument("--kappa", default="2,20", help="range of the vMF concentrations (VonMisesFisherMixture.random)")
    p.add_argument("--start", type=int, default=-1, help="-1: the Gaussian blob; k >= 0: a random smooth start, seed k")
    p.add_argument("--start-noise", type=float, default=0.0,
                   help="> 0: start from the truth plus white noise of this relative norm (overrides --start)")
    p.add_argument("--bandlimit-truth", action="store_true",
                   help="zero the truth's frequencies beyond the moments' disk radius (the voxel model's band "
                        "limit) before taking its moments")
    p.add_argument("--band-limit", choices=("cube", "disk"), default="cube", help="FitConfig.band_limit of the model")
    p.add_argument("--truth-only", action="store_true",
                   help="print the moment errors of the model set to the truth (oracle density) and exit")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    smooths = [float(x) for x in a.smooth.split(",")]
    torch.set_num_threads(a.threads)
    data, _ = read_mrc(a.map)
    vol = oc.fourier.downsample(torch.from_numpy(data).double(), a.n, 3)
    vol = vol / vol.norm()
    kappa = tuple(float(x) for x in a.kappa.split(","))
    vmf = VonMisesFisherMixture.random(8, kappa, generator=torch.Generator().manual_seed(0))
    if a.bandlimit_truth:
        from orbitcore.mom.cryoem_models import _half_spectrum_of, _volume_from_half_spectrum, band_mask  # noqa: PLC0415

        vol = _volume_from_half_spectrum(_half_spectrum_of(vol) * band_mask(a.n, ce.default_radius(a.n)), a.n)
    mom = ce.exact_moments(vol, vmf, so3_quadrature(dtype=torch.float64)[0])
    cfg = ce.FitConfig(model="voxel", density="projected" if a.density == "projected" else "free", squared=True,
                       dtype="float64", band_limit=a.band_limit).validate()
    band = None if a.band_limit == "cube" else mom.radius  # the script's optimiser is L-BFGS
    scale = ce._moment_scale(mom.M2)
    M1n, M2n = ce._normalised(mom, scale, torch.float64)
    model = ce.build_model(mom, cfg)
    if a.start >= 0:
        from orbitcore.mom.cryoem_models import VoxelVolume, gaussian_blob  # noqa: PLC0415

        g = torch.Generator().manual_seed(a.start)
        u = torch.randn(a.n, a.n, a.n, generator=g, dtype=torch.float64)
        u = oc.fourier.ifft3c(oc.fourier.fft3c(u) * torch.exp(-oc.fourier.radial_frequency(a.n, 3) ** 2 / 8)).real
        b = gaussian_blob(a.n, dtype=torch.float64)
        model.volume = VoxelVolume(a.n, b + 0.5 * float(b.max()) * u / u.abs().max(), radius=band,
                                   dtype=torch.float64)
    if a.start_noise > 0:
        from orbitcore.mom.cryoem_models import VoxelVolume  # noqa: PLC0415

        w = torch.randn(a.n, a.n, a.n, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
        model.volume = VoxelVolume(a.n, (vol + a.start_noise * w * vol.norm() / w.norm()) / scale, radius=band,
                                   dtype=torch.float64)
    params = list(model.volume.parameters())
    if a.density == "oracle":
        with torch.no_grad():
            model.density.logits.copy_(torch.log(vmf.so3_density(model.rotations)))
    elif a.density != "projected":
        if a.density == "directions":
            model.density = _DirectionDensity(model.rotations, smooths[0])
        params += list(model.density.parameters())
    if a.truth_only:
        from orbitcore.mom.cryoem_models import VoxelVolume  # noqa: PLC0415

        model.volume = VoxelVolume(a.n, vol / scale, radius=band, dtype=torch.float64)
        model.density = FreeDensity(model.q).double()  # (the projected density would re-solve it)
        with torch.no_grad():
            model.density.logits.copy_(torch.log(vmf.so3_density(model.rotations)))
        res = ce.MoMResult(model, cfg, mom, scale, float(M1n.norm() / M2n.norm()), {"loss": [0.0]}, 0.0)
        kept = float((model.volume.volume() * scale - vol).norm() / vol.norm())
        e1, e2 = res.moment_errors()
        print(f"n={a.n} band limit {a.band_limit}: the truth's moment errors {e1:.5f} / {e2:.5f}; "
              f"the band cut changes the map by {kept:.3f} of its norm")
        return
    lay = mom.layout
    k2 = (lay.frequencies.double() ** 2).sum(1)
    t0 = time.time()
    shrinks = [float(x) for x in a.shrink.split(",")]
    for stage, r in enumerate(float(x) for x in a.radii.split(",")):
        tau = shrinks[min(stage, len(shrinks) - 1)]
        if isinstance(model.density, _DirectionDensity):
            model.density.set_smoothing(smooths[min(stage, len(smooths) - 1)])
        sel = (k2 <= r * r + 1e-9).nonzero()[:, 0]
        pos = torch.full((lay.m,), -1, dtype=torch.long)
        pos[sel] = torch.arange(len(sel))
        conj = pos[lay.conjugate[sel]]
        A1, A2 = M1n[sel], M2n[sel][:, sel]
        lam = float(A1.norm() / A2.norm())
        opt = torch.optim.LBFGS(params, lr=1, max_iter=a.iters, history_size=50, line_search_fn="strong_wolfe",
                                tolerance_grad=1e-14, tolerance_change=1e-16)

        def closure():
            opt.zero_grad()
            S, z = model(M1n, M2n)
            if a.density == "projected":
                z = model.density.solve(S[:, sel], A1, A2, lam, conj, shrink=tau)
            L = oc.moment_loss(A1, A2, S[:, sel], z, lam, conjugate=conj, squared=True)
            L.backward()
            return L

        print(f"  start: squared loss {float(closure()):.3e}", flush=True)
        opt.step(closure)
        st = opt.state[opt._params[0]]
        print(f"  L-BFGS: {st.get('n_iter', 0)} iterations, {st.get('func_evals', 0)} evaluations, "
              f"final squared loss {float(closure()):.3e}", flush=True)
        res = ce.MoMResult(model, cfg, mom, scale, float(M1n.norm() / M2n.norm()), {"loss": [0.0]}, 0.0)
        ev = ce.evaluate(res, vol)
        sm = f" smooth={smooths[min(stage, len(smooths) - 1)]:g}" if a.density == "directions" else ""
        print(f"n={a.n} kappa={a.kappa} start={a.start} r={r:g} density={a.density}{sm} shrink={tau:g} "
              f"{time.time() - t0:.0f}s  moment errors "
              f"{ev['moment_error_1']:.5f} / {ev['moment_error_2']:.5f}  FSC-0.5 {ev['resolution_05_px']:.2f} px  "
              f"corr {ev['correlation']:.3f}", flush=True)


if __name__ == "__main__":
    main()
