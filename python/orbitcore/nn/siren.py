"""Sinusoidal representation networks (SIREN; Sitzmann et al. 2020)."""
from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from .._validate import check_float, check_int
from ..ops.sine import _sine_, _sine_forward, kernel_supports


_PLAIN_SINE = False


@contextlib.contextmanager
def plain_sine():
    """Within the block every :class:`SineLayer` runs the plain PyTorch activation,
    ``torch.sin(w0 * z)``, instead of orbitcore's sine kernel: for baselines (``benchmarks/``)
    and A/B checks. A process-wide switch, not per thread."""
    global _PLAIN_SINE
    old, _PLAIN_SINE = _PLAIN_SINE, True
    try:
        yield
    finally:
        _PLAIN_SINE = old


class SineLayer(nn.Module):
    """``sin(w0 · (W x + b))`` with SIREN's initialisation: the first layer draws weights from
    U(-1/in, 1/in), later layers from U(-sqrt(6/in)/w0, sqrt(6/in)/w0), so activations stay
    arcsine-distributed through depth.

    The activation runs on orbitcore's sine kernel (:func:`orbitcore.ops.sine_activation`: one
    pass forward and one backward) for float32/float64 tensors on the CPU or a GPU with the
    CUDA build, and as ``torch.sin(w0 * z)`` otherwise; the two agree to rounding. Without
    gradients (evaluation, ``torch.no_grad``) it overwrites the linear map's output in place."""

    def __init__(self, in_features: int, out_features: int, *, w0: float = 30.0, first: bool = False):
        super().__init__()
        fn = "SineLayer"
        in_features = check_int(fn, "in_features", in_features, minimum=1)
        out_features = check_int(fn, "out_features", out_features, minimum=1)
        check_float(fn, "w0", w0, positive=True)
        self.w0 = w0
        self.linear = nn.Linear(in_features, out_features)
        bound = 1.0 / in_features if first else math.sqrt(6.0 / in_features) / w0
        with torch.no_grad():
            self.linear.weight.uniform_(-bound, bound)
            self.linear.bias.uniform_(-bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.linear(x)
        if _PLAIN_SINE or not kernel_supports(z):
            return torch.sin(self.w0 * z)
        if z.requires_grad:
            return _sine_forward(z, float(self.w0))
        _sine_(z, float(self.w0))  # no gradient wanted: z is a temporary, overwrite it
        return z


class SIREN(nn.Module):
    """MLP with sine activations: ``in_features -> hidden x (hidden_layers + 1) -> out_features``
    (linear output layer).

    Args:
        in_features, out_features: input and output widths.
        hidden: hidden width.
        hidden_layers: number of hidden-to-hidden sine layers after the first sine layer.
        w0: frequency of the first layer (30 in the SIREN paper); ``w0_hidden`` of the others.
    """

    def __init__(self, in_features: int, out_features: int, hidden: int = 256, hidden_layers: int = 3,
                 *, w0: float = 30.0, w0_hidden: float = 30.0):
        super().__init__()
        fn = "SIREN"
        in_features = check_int(fn, "in_features", in_features, minimum=1)
        out_features = check_int(fn, "out_features", out_features, minimum=1)
        hidden = check_int(fn, "hidden", hidden, minimum=1)
        hidden_layers = check_int(fn, "hidden_layers", hidden_layers, minimum=0)
        check_float(fn, "w0", w0, positive=True)
        layers = [SineLayer(in_features, hidden, w0=w0, first=True)]
        layers += [SineLayer(hidden, hidden, w0=w0_hidden) for _ in range(hidden_layers)]
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(hidden, out_features)
        bound = math.sqrt(6.0 / hidden) / w0_hidden
        with torch.no_grad():
            self.out.weight.uniform_(-bound, bound)
            self.out.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x))
