"""Every public callable names itself when given a wrong-typed argument.

The project's standard: a public function validates its inputs and raises a clear error naming the
function, the argument, what was expected and what it got. This sweep calls each callable listed in
the public modules' ``__all__`` (public names where a package has no ``__all__``) with ``object()``
for every required positional argument and expects a TypeError or ValueError whose message names
the callable (``"<name>: ..."``), not an AttributeError, a raw torch/NumPy error or an internal
helper's name.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect

import pytest

MODULES = [
    "orbitcore", "orbitcore.fourier", "orbitcore.basis", "orbitcore.basis.wigner", "orbitcore.io",
    "orbitcore.physics", "orbitcore.geometry", "orbitcore.metrics", "orbitcore.amortized", "orbitcore.em",
    "orbitcore.mom.cryoem", "orbitcore.mom.cryoem_models", "orbitcore.mom.mra", "orbitcore.nn",
    "orbitcore.ops", "orbitcore.ops.em", "orbitcore.ops.moments", "orbitcore.ops.norm", "orbitcore.ops.pswf",
    "orbitcore.ops.sine", "orbitcore.ops.slice",
]

# Exempt: plain containers the library returns (dataclasses without validation of their own, a
# NamedTuple and a header record; the functions that build them check the inputs) and classes that
# legitimately take any object. Config dataclasses checked by ``.validate()`` (mom.cryoem.FitConfig,
# mom.mra.TrainConfig) need no exemption: they have no required arguments. Those that validate in
# ``__post_init__`` (CTFParams, ModelConfig, VonMisesFisherMixture) are swept.
EXEMPT = {
    # result / record containers
    "orbitcore.ops.moments.Moments",
    "orbitcore.ops.em.EStepResult",  # NamedTuple of em_estep
    "orbitcore.em.Micrographs",
    "orbitcore.em.Statistics",
    "orbitcore.em.EMState",
    "orbitcore.mom.cryoem.CryoEMMoments",
    "orbitcore.mom.cryoem.MoMResult",
    "orbitcore.physics.simulate.SimulatedParticles",
    "orbitcore.amortized.model.ModelOutput",
    "orbitcore.amortized.search.RefinementResult",
    "orbitcore.amortized.search.SearchResult",
    "orbitcore.amortized.train.EvaluationResult",
    "orbitcore.metrics.align.AlignmentResult",
    "orbitcore.metrics.fsc.FSCResult",
    "orbitcore.metrics.poses.PoseErrors",
    "orbitcore.io.mrc.MRCInfo",  # header record of mrc_info (a plain class)
    "orbitcore.io.star.ParticleTable",  # of read_star / read_cryosparc; make_particle_table builds one from arrays
    "orbitcore.mom.mra.Reconstruction",
    # exceptions and warnings take any message object
    "orbitcore._validate.OrbitcoreWarning",
    "orbitcore.geometry.so3.DesignNotFoundError",
}


def _public_names(mod):
    names = getattr(mod, "__all__", None)
    if names is None:  # packages that re-export without __all__: their public attributes
        names = [n for n in dir(mod) if not n.startswith("_")]
    return names


def _collect():
    seen, out = set(), []
    for modname in MODULES:
        mod = importlib.import_module(modname)
        for name in _public_names(mod):
            obj = getattr(mod, name)
            if not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            if not getattr(obj, "__module__", "").startswith("orbitcore") or id(obj) in seen:
                continue
            seen.add(id(obj))
            out.append(obj)
    return out


def _qualname(obj):
    return f"{obj.__module__}.{obj.__qualname__}"


def _required(obj):
    """The names of the required positional and the required keyword-only parameters."""
    params = inspect.signature(obj).parameters.values()
    req = [p for p in params if p.default is p.empty]
    return ([p.name for p in req if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)],
            [p.name for p in req if p.kind == p.KEYWORD_ONLY])


CALLABLES = [obj for obj in _collect() if _qualname(obj) not in EXEMPT and _required(obj)[0]]


def test_exemptions_exist_and_are_plain_containers():
    """Every exemption names a collected callable; the dataclasses among them validate nothing on
    construction (a ``__post_init__`` would make them subject to the sweep)."""
    collected = {_qualname(obj): obj for obj in _collect()}
    for name in EXEMPT:
        assert name in collected, f"exemption {name} is not a public callable any more"
        obj = collected[name]
        assert inspect.isclass(obj), f"exemption {name} is a function"
        if dataclasses.is_dataclass(obj):
            assert not hasattr(obj, "__post_init__"), f"{name} validates in __post_init__: not exempt"


@pytest.mark.parametrize("obj", CALLABLES, ids=_qualname)
def test_wrong_type_names_the_callable(obj):
    positional, keyword = _required(obj)  # required keyword-only ones get an object() too
    with pytest.raises((TypeError, ValueError)) as info:
        obj(*[object() for _ in positional], **{k: object() for k in keyword})
    msg = str(info.value)
    name = obj.__name__
    assert msg.startswith(f"{name}:") or f"{name}:" in msg, \
        f"{_qualname(obj)} raised {type(info.value).__name__}: {msg}"


# ---- a few wrong values (not only wrong types) -------------------------------------------------
def test_missing_files_name_the_function_called(tmp_path):
    from orbitcore.amortized import Trainer
    from orbitcore.io import ParticleStack, read_star

    missing = tmp_path / "missing.star"
    with pytest.raises(FileNotFoundError, match=r"^read_star: .*missing\.star: no such file"):
        read_star(missing)
    with pytest.raises(FileNotFoundError, match=r"^ParticleStack: .*missing\.star: no such file"):
        ParticleStack(str(missing))
    with pytest.raises(FileNotFoundError, match=r"^Trainer: particles: .*missing\.star: no such file"):
        Trainer(missing, verbose=False)


def test_path_arguments_reject_non_paths():
    from orbitcore.io import read_mrc
    from orbitcore.mom.mra import load_encoder

    with pytest.raises(TypeError, match=r"^read_mrc: path must be a file path \(str or os\.PathLike\), got int"):
        read_mrc(3)
    with pytest.raises(TypeError, match=r"^load_encoder: checkpoint must be a file path .*, got bytes"):
        load_encoder(b"ck.pt")


def test_max_ell_negative():
    from orbitcore.basis import max_ell

    with pytest.raises(ValueError, match=r"^max_ell: L must be >= 1, got -1"):
        max_ell(-1)


def test_snr_to_db_negative():
    from orbitcore.physics import db_to_snr, snr_to_db

    with pytest.raises(ValueError, match=r"^snr_to_db: snr must be >= 0, got -1.0"):
        snr_to_db(-1.0)
    with pytest.raises(TypeError, match=r"^db_to_snr: db must be a real number, got str"):
        db_to_snr("nonsense")


def test_learning_rate_needs_three_rates():
    from orbitcore.mom.mra import learning_rate

    with pytest.raises(ValueError, match=r"^learning_rate: lrs must hold 3 learning rates"):
        learning_rate(0, 10, (1e-4, 1e-5))
    with pytest.raises(ValueError, match=r"^learning_rate: epoch must be >= 0, got -1"):
        learning_rate(-1, 10)


def test_forwarding_functions_name_themselves():
    import torch

    from orbitcore.fourier import downsample, fft2c, frequency_grid_3d, ifft3c

    with pytest.raises(ValueError, match=r"^fft2c: x must have at least 2 dimensions"):
        fft2c(torch.zeros(4))
    with pytest.raises(ValueError, match=r"^ifft3c: x must have at least 3 dimensions"):
        ifft3c(torch.zeros(4, 4))
    with pytest.raises(ValueError, match=r"^frequency_grid_3d: pixel_size must be > 0"):
        frequency_grid_3d(4, -1.5)
    with pytest.raises(ValueError, match=r"^downsample: x must have 2 equal last axes"):
        downsample(torch.zeros(4, 6), 2)
