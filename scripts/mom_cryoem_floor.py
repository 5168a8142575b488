"""Noise/sampling floor of the moment errors (Table 2 definitions, eq. 22) for a run of
``orbitcore mom-cryoem --simulate``: the errors of the *truth's* moments (the simulated volume,
the true vMF density integrated by a rule exact to degree 23) against the data moments.

    PYTHONPATH=python python scripts/mom_cryoem_floor.py RUN_DIR VOLUME [--volume-size n] [--pixel-size px]
"""
import argparse
import json

import torch

import orbitcore as oc
from orbitcore.geometry import VonMisesFisherMixture, so3_quadrature
from orbitcore.metrics.errors import moment_relative_error
from orbitcore.mom import cryoem as ce
from orbitcore.mom._cli_cryoem import _load_volume
from orbitcore.physics.projection import prepare_volume_ft

p = argparse.ArgumentParser(description=__doc__)
p.add_argument("run")
p.add_argument("volume")
p.add_argument("--volume-size", type=int, default=None)
p.add_argument("--pixel-size", type=float, default=None)
p.add_argument("--degree", type=int, default=23)
a = p.parse_args()
torch.set_num_threads(1)
mom = ce.CryoEMMoments.load(f"{a.run}/moments.pt")
v, _ = _load_volume(a.volume, a.volume_size, a.pixel_size)
v = v / v.norm()
vm = mom.meta["viewing"]
vmf = VonMisesFisherMixture(torch.tensor(vm["means"]), torch.tensor(vm["kappas"]), torch.tensor(vm["weights"]))
Q, _ = so3_quadrature(exact_degree=a.degree, dtype=torch.float64)
rho = vmf.so3_density(Q)
n = mom.size
vw = oc.fourier.downsample(v, n, 3) if v.shape[0] != n else v
S = mom.layout.gather(oc.fourier_slice(prepare_volume_ft(vw, 2), 2 * Q, n, mom.radius, hermitian=True, check=False))
M1, M2 = oc.model_moments(S, rho / rho.sum())
out = {"run": a.run, "quadrature_size": Q.shape[0], "count": mom.count, "sigma": mom.meta.get("sigma_original"),
       "truth_moment_error_1": moment_relative_error(M1, mom.M1), "truth_moment_error_2": moment_relative_error(M2, mom.M2)}
print(json.dumps(out))
