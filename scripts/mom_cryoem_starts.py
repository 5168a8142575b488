"""FSC (after alignment with handedness) of the starting volumes against a truth, for context
next to a fit: the voxel model's default start (an isotropic Gaussian blob) and 3 random starts
(smoothed noise).   PYTHONPATH=python python scripts/mom_cryoem_starts.py gaussians 25"""
import json
import sys

import torch

import orbitcore as oc
from orbitcore.mom._cli_cryoem import _load_volume
from orbitcore.mom.cryoem_models import gaussian_blob

torch.set_num_threads(1)
spec, n = sys.argv[1], int(sys.argv[2])
px = float(sys.argv[3]) if len(sys.argv) > 3 else None
v, px = _load_volume(spec, n, px)
v = v / v.norm()
out = {}
def res(u):
    al = oc.metrics.align_volumes(v, u)
    f = oc.metrics.fsc(v, al.aligned, px)
    return {"resolution_05_A": f.resolution_05, "correlation": al.correlation}
out["blob"] = res(gaussian_blob(n, dtype=torch.float64))
g = torch.Generator().manual_seed(1)
for i in range(3):
    u = torch.randn(n, n, n, generator=g, dtype=torch.float64)
    u = oc.fourier.ifft3c(oc.fourier.fft3c(u) * torch.exp(-oc.fourier.radial_frequency(n, 3) ** 2 / (2 * (n / 8) ** 2))).real
    out[f"random_{i}"] = res(u)
print(json.dumps({"volume": spec, "n": n, "pixel_size_A": px, **out}))
