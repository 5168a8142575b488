"""The step learning-rate schedule shared by the fitting loops (``mom.cryoem.fit`` and the
amortized ``Trainer``): full rate, then ``lr_drop`` times it from ``drop_fraction × steps`` on."""
from __future__ import annotations

from ._validate import check_float, fail


def check_step_drop(fn: str, lr_drop, drop_fraction) -> tuple[float, float]:
    """Validated ``(lr_drop, drop_fraction)``: a positive factor and a fraction in [0, 1]."""
    lr_drop = check_float(fn, "lr_drop", lr_drop, positive=True)
    d = check_float(fn, "drop_fraction", drop_fraction, minimum=0.0)
    if d > 1:
        fail(fn, f"drop_fraction must be in [0, 1], got {d}")
    return lr_drop, d


def step_drop_factor(step: int, steps: int, lr_drop: float, drop_fraction: float) -> float:
    """1 before step ``round(drop_fraction × steps)``, ``lr_drop`` from it on (a pure function of
    the step, so a resumed run follows it exactly)."""
    return 1.0 if step < round(drop_fraction * steps) else float(lr_drop)
