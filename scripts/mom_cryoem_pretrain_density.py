#!/usr/bin/env python
"""Issue-8 experiment: ξ^ρ pre-trained on simulated volumes and vMF mixtures, then applied to
the 70S ribosome.

The cryo-EM fits of ``orbitcore.mom.cryoem`` start ξ^ρ (the density encoder, appendix A.2)
untrained, as seeds/000 §5.2 does; every 70S fit with a fitted density ends in the correlation
≈ 0.4 basin, while the same volume fit with the *true* density recovers the map
(docs/evidence/mom_cryoem/README.md, passes 3–7). The paper pre-trains its MRA encoder on
simulated densities (§5.1). This script asks whether the same helps cryo-EM:

1. **Training set.** Random volumes at the working size: pseudo-molecules
   (:func:`orbitcore.physics.pseudo_molecule`, random seed, atom count, radius and atom width)
   and random Gaussian mixtures (2–30 blobs of random widths), each Fourier-cropped to ``n`` and
   scaled to unit norm as the fits do; for each volume several random 8-component vMF mixtures
   (:meth:`VonMisesFisherMixture.random`, the distribution family of the 70S runs, seeds that
   do not include the test's). Exact moments (eq. 20 on the 100 × 12 rule), normalised as
   :func:`orbitcore.mom.cryoem.fit` normalises data moments.
2. **Supervised ξ^ρ.** :class:`MomentEncoder` trained with the cross-entropy
   ``−Σ_j z_j log ẑ_j`` against the true ``z_ρ`` on the rule, its inputs standardised feature
   by feature over the training set (``--no-standardise``: as the fits feed them).
3. **Transfer.** The encoder applied to the 70S's exact moments (vMF seed 0: the density of
   every 70S run); reported: the cross-entropy and the correlation of the density on the viewing
   directions with the truth, against a uniform guess and the free fit's 0.39.
4. **Fit** (``--fit-iters > 0``): the voxel volume fitted by L-BFGS (float64, squared eq. 28,
   ``cube`` band limit, as ``scripts/mom_cryoem_oracle.py``) with the density fixed to the
   encoder's prediction; compared with the same fit with the true density.

    PYTHONPATH=python python scripts/mom_cryoem_pretrain_density.py --volumes 400 --densities 8 \
        --steps 4000 --out /tmp/pretrain                      # 8 min on one core
    PYTHONPATH=python python scripts/mom_cryoem_pretrain_density.py --volumes 1 --densities 600 \
        --holdout 0.167 --steps 1500 --out /tmp/pretrain_control   # one fixed volume

``--volumes 1`` is the control: with one volume the map z → M2 is linear, so the density is
identifiable from the moments and a working encoder must learn it.

``--canonical``: the labels in each volume's principal-axis frame. Rotating a volume by A and
its density with it (ρ'(R) = ρ(Aᵀ R)) leaves every image moment unchanged, so across random
volumes the density is fixed by the moments only up to that joint rotation. With this flag the
label of (v, ρ) is ρ' for A = the rotation into v's principal axes (eigenvectors of the second
moment of v⁺, signs fixed by the third moments, det +1): the density as seen from a canonical
frame, which the moments do determine. The 70S's label is taken the same way. The script also
checks the invariance numerically on the first volume (``invariance_check`` in the report).

    PYTHONPATH=python python scripts/mom_cryoem_pretrain_density.py --volumes 400 --densities 8 \
        --steps 4000 --canonical --out /tmp/pretrain_canonical
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import time

import torch

import orbitcore as oc
from orbitcore import MomentLayout
from orbitcore.geometry import VonMisesFisherMixture, so3_quadrature
from orbitcore.io import read_mrc
from orbitcore.mom import cryoem as ce
from orbitcore.mom.cryoem_models import FreeDensity, MomentEncoder, VoxelVolume, gaussian_blob
from orbitcore.ops.slice import fourier_slice
from orbitcore.physics import pseudo_molecule
from orbitcore.physics.projection import prepare_volume_ft

ROOT = pathlib.Path(__file__).resolve().parent.parent


def random_volume(n: int, g: torch.Generator) -> torch.Tensor:
    """A random unit-norm volume at ``n``: a pseudo-molecule or a Gaussian mixture (module doc)."""
    u = lambda lo, hi: lo + (hi - lo) * float(torch.rand((), generator=g, dtype=torch.float64))  # noqa: E731
    big = 2 * n - 1
    if torch.rand((), generator=g) < 0.5:
        v = pseudo_molecule(big, n_atoms=int(u(100, 1500)), radius=u(0.25, 0.42) * big,
                            atom_sigma=u(0.6, 2.5), seed=int(torch.randint(0, 2**31 - 1, (), generator=g)),
                            dtype=torch.float64)
    else:
        k = int(torch.randint(2, 31, (), generator=g))
        x = torch.arange(big, dtype=torch.float64) - big // 2
        X = torch.stack(torch.meshgrid(x, x, x, indexing="ij"), -1)
        v = torch.zeros(big, big, big, dtype=torch.float64)
        R = u(0.2, 0.35) * big
        for _ in range(k):
            c = torch.randn(3, generator=g, dtype=torch.float64)
            c = c / c.norm() * R * float(torch.rand((), generator=g, dtype=torch.float64)) ** (1 / 3)
            s = u(0.04, 0.2) * big
            v += u(0.3, 1.0) * torch.exp(-((X - c) ** 2).sum(-1) / (2 * s * s))
    v = oc.fourier.downsample(v, n, 3)
    return v / v.norm()


def principal_frame(v: torch.Tensor) -> torch.Tensor:
    """The rotation A (3 × 3, float64) that takes ``v``'s principal axes to the coordinate axes:
    rows = eigenvectors of the second moment of ``max(v, 0)`` about its centre of mass, in
    (x, y, z) coordinates (``v`` indexed [z, y, x]), largest eigenvalue first; each axis' sign
    chosen so the third moment along it is positive; the last row flipped if needed for det +1."""
    n = v.shape[0]
    w = v.clamp_min(0).double()
    i = torch.arange(n, dtype=torch.float64) - n // 2
    Z, Y, X = torch.meshgrid(i, i, i, indexing="ij")
    P = torch.stack((X, Y, Z), -1).reshape(-1, 3)
    w = w.reshape(-1) / w.sum()
    c = (w[:, None] * P).sum(0)
    D = P - c
    C = (w[:, None, None] * D[:, :, None] * D[:, None, :]).sum(0)
    _, E = torch.linalg.eigh(C)
    A = E.flip(1).T.clone()  # rows: principal axes, largest variance first
    skew = (w[:, None] * (D @ A.T) ** 3).sum(0)
    A = A * torch.where(skew < 0, -1.0, 1.0).double()[:, None]
    if torch.linalg.det(A) < 0:
        A[2] = -A[2]
    return A


def slices_of(v: torch.Tensor, Q: torch.Tensor, lay: MomentLayout) -> torch.Tensor:
    """``(q, m)`` complex128: the volume's slices on the moments' disk (exact_moments' path)."""
    V = prepare_volume_ft(v, 2)
    return lay.gather(fourier_slice(V, 2 * Q, lay.size, lay.radius, hermitian=True, check=False))


def normalised_moments(S: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    M1, M2 = oc.model_moments(S, z)
    a = math.sqrt(float(torch.diagonal(M2).real.max()))
    return M1 / a, M2 / (a * a)


def features(enc: MomentEncoder, M1: torch.Tensor, M2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched ``MomentEncoder.features``: ``(B, m)``, ``(B, m, m)`` → ``(B, 2, n, n)``, ``(B, 2m, n, n)``."""
    B, n, m = M1.shape[0], enc.n, enc.m
    g1 = M1.new_zeros(B, n * n).index_copy(1, enc.flat, M1)
    x1 = torch.stack((g1.real, g1.imag), 1).reshape(B, 2, n, n)
    g2 = M2.new_zeros(B, n * n, m).index_copy(1, enc.flat, M2)
    x2 = torch.cat((g2.real, g2.imag), 2).transpose(1, 2).reshape(B, 2 * m, n, n)
    return x1.float(), x2.float()


def logits(enc: MomentEncoder, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    h = torch.cat((enc.lower(x2), enc.upper(x1)), 1)
    return enc.head(enc.pool(enc.trunk(h)))


def invariance_check(v, A, vmf, Q, lay, z, label) -> dict:
    """Relative differences of the moments: (v rotated by A, its density rho(A^T R)) against
    (v, rho), which the invariance says agree up to quadrature error; and (v, rho(A^T R)) against
    (v, rho), the size of a density change of that kind. The rotated volume's slices on Q are
    v's slices at A^T Q (its FT is V(A^T k))."""
    M1, M2 = normalised_moments(slices_of(v, Q, lay), z)
    J1, J2 = normalised_moments(slices_of(v, A.T @ Q, lay), label)
    K1, K2 = normalised_moments(slices_of(v, Q, lay), label)
    rel = lambda x, y: float((x - y).norm() / y.norm())  # noqa: E731
    return {"rotated_pair_vs_pair": [rel(J1, M1), rel(J2, M2)], "relabelled_vs_pair": [rel(K1, M1), rel(K2, M2)]}


def direction_corr(z: torch.Tensor, zt: torch.Tensor, group: torch.Tensor) -> float:
    q1 = int(group.max()) + 1
    a = torch.zeros(q1, dtype=torch.float64).index_add_(0, group, z.double())
    b = torch.zeros(q1, dtype=torch.float64).index_add_(0, group, zt.double())
    return float(torch.corrcoef(torch.stack((a, b)))[0, 1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--map", default=str(ROOT.parent / "shared" / "data" / "clean70SRibosome_vol_65p.mrc"))
    p.add_argument("--n", type=int, default=17)
    p.add_argument("--volumes", type=int, default=300)
    p.add_argument("--densities", type=int, default=8, help="vMF mixtures per volume")
    p.add_argument("--holdout", type=float, default=0.1, help="fraction of the volumes held out")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--fit-iters", type=int, default=0, help="L-BFGS iterations of the 70S fits (0: none)")
    p.add_argument("--start", type=int, default=1, help="fit start: -1 the Gaussian blob, k a random smooth start")
    p.add_argument("--out", default="/tmp/pretrain")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--canonical", action="store_true",
                   help="labels in each volume's principal-axis frame (module docstring)")
    p.add_argument("--no-standardise", action="store_true",
                   help="feed the normalised moments as the fits do, without the per-feature standardisation")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    n = a.n
    Q = so3_quadrature(dtype=torch.float64)[0]
    lay = MomentLayout(n, 2, ce.default_radius(n))
    group = ce.viewing_groups(Q)[1]
    report: dict = {"args": vars(a)}

    # 1. the training set (cached)
    cache = out / f"set_n{n}_v{a.volumes}_d{a.densities}{'_canonical' if a.canonical else ''}.pt"
    if cache.is_file():
        data = torch.load(cache)
    else:
        g = torch.Generator().manual_seed(1000 + a.seed)
        M1s, M2s, zs, vid = [], [], [], []
        t0 = time.time()
        for i in range(a.volumes):
            v = random_volume(n, g)
            S = slices_of(v, Q, lay)
            A = principal_frame(v) if a.canonical else None
            for _ in range(a.densities):
                vmf = VonMisesFisherMixture.random(8, (2.0, 20.0), generator=g)
                z = vmf.so3_density(Q).double()
                z = z / z.sum()
                M1, M2 = normalised_moments(S, z)
                label = z
                if A is not None:  # the same pair seen from v's principal frame: rho'(R) = rho(A^T R)
                    label = vmf.so3_density(A.T @ Q).double()
                    label = label / label.sum()
                    if i == 0 and "invariance_check" not in report:
                        report["invariance_check"] = invariance_check(v, A, vmf, Q, lay, z, label)
                        print("invariance check:", json.dumps(report["invariance_check"]), flush=True)
                M1s.append(M1.to(torch.complex64)), M2s.append(M2.to(torch.complex64)), zs.append(label.float())
                vid.append(i)
            if (i + 1) % 25 == 0:
                print(f"  {i + 1}/{a.volumes} volumes, {time.time() - t0:.0f} s", flush=True)
        data = {"M1": torch.stack(M1s), "M2": torch.stack(M2s), "z": torch.stack(zs), "volume": torch.tensor(vid)}
        torch.save(data, cache)
    if a.volumes == 1:  # the control: one volume, so z -> M2 is linear; held out: the last densities
        N = len(data["z"])
        test = torch.arange(N) >= N - max(1, int(a.holdout * N))
    else:  # held out: whole volumes
        test = data["volume"] >= a.volumes - max(1, int(a.holdout * a.volumes))
    train = ~test
    print(f"training set: {int(train.sum())} samples, held out {int(test.sum())}", flush=True)

    # the 70S test case: the exact moments of every 70S run's density (vMF seed 0)
    d, _ = read_mrc(a.map)
    vol = oc.fourier.downsample(torch.from_numpy(d).double(), n, 3)
    vol = vol / vol.norm()
    vmf0 = VonMisesFisherMixture.random(8, (2.0, 20.0), generator=torch.Generator().manual_seed(0))
    z70 = vmf0.so3_density(Q).double()
    z70 = z70 / z70.sum()
    S70 = slices_of(vol, Q, lay)
    R1, R2 = normalised_moments(S70, z70)
    if a.canonical:  # the 70S's label in its own principal frame (the moments are those of the map as given)
        z70 = vmf0.so3_density(principal_frame(vol).T @ Q).double()
        z70 = z70 / z70.sum()

    # 2. supervised xi^rho
    torch.manual_seed(a.seed)
    enc = MomentEncoder(lay, len(Q), "density")
    opt = torch.optim.Adam(enc.parameters(), lr=a.lr)
    idx = train.nonzero()[:, 0]
    tidx = test.nonzero()[:, 0]
    u = torch.full((len(Q),), 1.0 / len(Q))
    # The inputs standardised feature by feature over the training set: the density changes M2 by
    # a small fraction of its mean, and on the raw normalised moments the encoder does not learn
    # even with one fixed volume (where z -> M2 is linear); standardised, it does (report).
    X1, X2 = features(enc, data["M1"], data["M2"])
    mu1, sd1 = X1[idx].mean(0), X1[idx].std(0) + 1e-6
    mu2, sd2 = X2[idx].mean(0), X2[idx].std(0) + 1e-6
    if a.no_standardise:
        mu1, sd1, mu2, sd2 = 0.0, 1.0, 0.0, 1.0
    X1, X2 = (X1 - mu1) / sd1, (X2 - mu2) / sd2
    f70 = features(enc, R1[None].to(torch.complex64), R2[None].to(torch.complex64))
    f70 = ((f70[0] - mu1) / sd1, (f70[1] - mu2) / sd2)

    def held_out() -> dict:
        with torch.no_grad():
            ce_t, corr = [], []
            for j in tidx.split(64):
                lz = torch.log_softmax(logits(enc, X1[j], X2[j]), 1)
                ce_t.append(-(data["z"][j] * lz).sum(1))
                corr += [direction_corr(lz[k].exp(), data["z"][j][k], group) for k in range(len(j))]
            lz = torch.log_softmax(logits(enc, *f70), 1)[0]
            return {"heldout_ce": float(torch.cat(ce_t).mean()), "heldout_corr": float(torch.tensor(corr).median()),
                    "r70s_ce": float(-(z70.float() * lz).sum()), "r70s_corr": direction_corr(lz.exp(), z70, group)}

    ent = float(-(data["z"][tidx] * torch.log(data["z"][tidx])).sum(1).mean())
    base = {"uniform_ce_heldout": float(-(data["z"][tidx] * torch.log(u)).sum(1).mean()), "entropy_heldout": ent,
            "uniform_ce_70s": float(-(z70 * torch.log(u.double())).sum()),
            "entropy_70s": float(-(z70 * torch.log(z70)).sum())}
    print("reference:", json.dumps(base), flush=True)
    report["reference"] = base
    hist = []
    g = torch.Generator().manual_seed(a.seed)
    t0 = time.time()
    for step in range(1, a.steps + 1):
        j = idx[torch.randint(len(idx), (a.batch,), generator=g)]
        lz = torch.log_softmax(logits(enc, X1[j], X2[j]), 1)
        loss = -(data["z"][j] * lz).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % max(1, a.steps // 10) == 0 or step == a.steps:
            r = {"step": step, "train_ce": float(loss), "seconds": time.time() - t0, **held_out()}
            hist.append(r)
            print(json.dumps(r), flush=True)
    report["pretraining"] = hist
    torch.save(enc.state_dict(), out / "xi_rho.pt")

    # 4. fits of the 70S from its exact moments
    if a.fit_iters > 0:
        mom = ce.exact_moments(vol, vmf0, Q)
        scale = ce._moment_scale(mom.M2)
        M1n, M2n = ce._normalised(mom, scale, torch.float64)
        lam = float(M1n.norm() / M2n.norm())
        cfg = ce.FitConfig(model="voxel", density="encoder", squared=True, dtype="float64",
                           band_limit="cube").validate()
        with torch.no_grad():
            zhat = torch.softmax(logits(enc, *f70), 1)[0].double()
        fits = {}
        for mode in ("predicted_fixed", "oracle_fixed"):
            model = ce.build_model(mom, cfg)
            if a.start >= 0:
                gs = torch.Generator().manual_seed(a.start)
                w = torch.randn(n, n, n, generator=gs, dtype=torch.float64)
                w = oc.fourier.ifft3c(oc.fourier.fft3c(w) * torch.exp(-oc.fourier.radial_frequency(n, 3) ** 2 / 8)).real
                b = gaussian_blob(n, dtype=torch.float64)
                model.volume = VoxelVolume(n, b + 0.5 * float(b.max()) * w / w.abs().max(), radius=None,
                                           dtype=torch.float64)
            params = list(model.volume.parameters())
            model.density = FreeDensity(len(Q)).double()
            with torch.no_grad():
                model.density.logits.copy_(torch.log(zhat if mode == "predicted_fixed" else z70))
            opt2 = torch.optim.LBFGS(params, lr=1, max_iter=a.fit_iters, history_size=50,
                                     line_search_fn="strong_wolfe", tolerance_grad=1e-14, tolerance_change=1e-16)

            def closure():
                opt2.zero_grad()
                L, _, _ = model.loss(M1n, M2n, lam, squared=True)
                L.backward()
                return L

            t1 = time.time()
            opt2.step(closure)
            res = ce.MoMResult(model, cfg, mom, scale, lam, {"loss": [0.0]}, 0.0)
            ev = ce.evaluate(res, vol)
            with torch.no_grad():
                zf = model(M1n, M2n)[1]
            fits[mode] = {"correlation": ev["correlation"], "fsc05_px": ev["resolution_05_px"],
                          "moment_errors": [ev["moment_error_1"], ev["moment_error_2"]],
                          "direction_corr": direction_corr(zf, z70, group), "seconds": time.time() - t1}
            print(mode, json.dumps(fits[mode]), flush=True)
        report["fits"] = fits
    (out / "report.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
