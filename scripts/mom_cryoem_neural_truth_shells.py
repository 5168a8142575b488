"""Issue 8, seeds/000 §5.2: what the paper's *neural ground truth* changes in the 70S map at a
working size, shell by shell. The map (5 Å/voxel, 65³) is Fourier-cropped to n and scaled to unit
norm, as ``orbitcore mom-cryoem --simulate`` does; its FourierNet fit
(:func:`orbitcore.mom.cryoem.neural_ground_truth`, width 256, Adam 1e-4) is stopped at the paper's
approximation error (eq. 27: 0.043 for EMD-0409) and after fixed step counts. Printed per Fourier
shell: the relative error of the network's FT against the map's, and the ratio of their powers
(< 1 where the network is smoother than the map).

    PYTHONPATH=python python scripts/mom_cryoem_neural_truth_shells.py [MAP] [n]   # ~1 min, 1 thread
"""
import sys

import torch

from orbitcore import fourier
from orbitcore.metrics import fsc
from orbitcore.mom import cryoem as ce
from orbitcore.mom._cli_cryoem import _load_volume

torch.set_num_threads(1)
path = sys.argv[1] if len(sys.argv) > 1 else "/work/shared/data/clean70SRibosome_vol_65p.mrc"
n = int(sys.argv[2]) if len(sys.argv) > 2 else 17
v, px = _load_volume(path, n, 5.0)
v = v / v.norm()
V = fourier.fft3c(v)
shell = torch.round(fourier.frequency_grid_3d(n, dtype=torch.float64).norm(dim=-1)).long()
for label, kw in [("target 0.043", dict(steps=2000, target_error=0.043)), ("30 steps", dict(steps=30)),
                  ("60 steps", dict(steps=60)), ("300 steps", dict(steps=300))]:
    u, info = ce.neural_ground_truth(v, **kw)
    U = fourier.fft3c(u)
    f = fsc(v, u, px)
    rows = []
    for s in range(int(shell.max()) + 1):
        m = shell == s
        err = float((U[m] - V[m]).abs().norm() / V[m].abs().norm())
        pr = float(U[m].abs().square().sum() / V[m].abs().square().sum())
        rows.append(f"{s}:{err:.3f}/{pr:.3f}")
    print(f"{label}: {info['steps_done']} steps ({info['seconds']:.1f} s), eq. 27 error {info['relative_error']:.3g}, "
          f"min FSC map vs network {float(f.curve.min()):.5f}, correlation "
          f"{float((v * u).sum() / (v.norm() * u.norm())):.5f}")
    print("  shell:relative error/power ratio  " + " ".join(rows), flush=True)
