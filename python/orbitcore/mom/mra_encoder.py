"""Moment encoders ξ^v and ξ^ρ for MRA (seeds/000 §4.1, appendix A.1, Fig. 11).

Each encoder is a two-branch 1-D CNN with periodic padding on the ``n`` frequency points:

* upper branch: ``input1D_{n,1}`` — M̂1 as a length-``n`` field, complex as 2 channels
  (real, imaginary) → ``conv1D_{w,c}`` layers → 2 channels;
* lower branch: ``input1D_{n,n}`` — M̂2 as ``n`` complex channels on the ``n`` points (2n real
  channels) → ``conv1D_{w,c}`` layers → 4 channels;
* the two are stacked into a 6-channel field of length ``n`` (as in Fig. 11), followed by
  more ``conv1D`` layers, a fully connected layer with ``tanh`` and a linear ``full`` layer.

Hidden activations are LeakyReLU with slope 0.02 (appendix A). Defaults (``n`` points,
window ``w = 5``): lower branch 2n → 64 → 32 → 4, upper branch 2 → 16 → 16 → 2, trunk
6 → 32 → 32, then ``full_{4n}`` with tanh and ``full_n``. The figure's exact widths are not in
the text; these are ours (constructor arguments).

Choices that differ from, or add to, the figure (why):

* **Channel order of M̂2.** The ``n`` channels at point ``k`` are the entries along the
  wrapped diagonals, ``X[d, k] = M̂2(k, k − d)``, ``d = 0 … n−1`` (indices mod n), instead of
  the raw row ``M̂2(k, :)``. Same numbers, permuted per point; with it a channel has one
  meaning at every point (eq. 15: ``M2(k, k − d) = v̂(k) ρ̂(d) v̂(k − d)^*`` carries the fixed
  ``ρ̂(d)``), which is what weight sharing along ``k`` in a convolution assumes.
* **Scale normalisation (no parameters).** The inputs are first put in the paper's unitary
  normalisation (``M1/√n``, ``M2/n``: our F is unnormalised, see ``orbitcore.mom.mra``) and
  divided by ``a`` and ``a²`` with ``a² = Re tr M̂2 = E‖v_j‖²`` (debiased: ``≈ ‖v‖²``); the
  signal output is multiplied by ``a``. This makes ξ^v exactly scale-equivariant and ξ^ρ
  scale-invariant (moments of ``c v`` give ``c`` times the signal and the same density), so
  training needs no assumption on the signal's amplitude.
* **Outputs.** ξ^ρ ends in a softmax: ``z_ρ`` is a probability vector on the ``n`` shifts.
  ξ^v's last layer gives the ``n`` real degrees of freedom of ``v̂`` — the data are real, so
  ``v̂`` is Hermitian-symmetric (``v̂(−k) = v̂(k)^*``) — as real-space samples ``z`` and
  ``z_v = F z`` is the complex spectrum (an exact linear parametrisation of that subspace; an
  unconstrained complex output would spend half its capacity on a part the data cannot have).
* No batch normalisation: the reconstruction phase refines the encoder on a single input.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .._validate import check_int, fail

__all__ = ["MomentCNN", "MRAEncoder", "moment_features"]

_SLOPE = 0.02


def _diag_index(n: int, device=None) -> torch.Tensor:
    """``idx[d, k] = (k − d) mod n``: the column of ``M2`` on wrapped diagonal ``d`` at row ``k``."""
    k = torch.arange(n, device=device)
    return (k[None, :] - k[:, None]) % n


def _check_complex(fn: str, M1, M2) -> None:
    """``M1`` and ``M2`` are complex torch tensors, or an error naming ``fn``."""
    for name, M in (("M1", M1), ("M2", M2)):
        if not isinstance(M, torch.Tensor) or not M.is_complex():
            got = M.dtype if isinstance(M, torch.Tensor) else type(M).__name__
            fail(fn, f"{name} must be a complex torch.Tensor (Fourier moments), got {got}", TypeError)


def moment_features(M1: torch.Tensor, M2: torch.Tensor, eps: float = 1e-12
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Encoder inputs from moments in the library's convention (unnormalised centred DFT).

    Args:
        M1: complex ``(B, n)``; M2: complex ``(B, n, n)``.

    Returns:
        ``x1`` real ``(B, 2, n)`` (re, im of ``M1 / (√n a)``), ``x2`` real ``(B, 2n, n)``
        (re, im of the wrapped diagonals of ``M2 / (n a²)``) and the scale ``a`` ``(B,)``
        (``a² = Re tr M2 / n``, i.e. ``E‖v_j‖²`` in real space).
    """
    return _moment_features("moment_features", M1, M2, eps)


def _moment_features(fn: str, M1, M2, eps: float = 1e-12):
    """:func:`moment_features` with errors naming ``fn`` (the public caller)."""
    _check_complex(fn, M1, M2)
    n = M1.shape[-1]
    if M1.dim() != 2 or M2.dim() != 3 or tuple(M2.shape) != (M1.shape[0], n, n):
        fail(fn, f"M1, M2 must have shapes (B, n), (B, n, n), got {tuple(M1.shape)} and {tuple(M2.shape)}")
    a2 = torch.diagonal(M2, dim1=-2, dim2=-1).real.sum(-1) / n
    a = torch.sqrt(a2.clamp_min(eps))
    m1 = M1 / (math.sqrt(n) * a[:, None])
    m2 = M2 / (n * a2.clamp_min(eps)[:, None, None])
    idx = _diag_index(n, M2.device)
    rows = torch.arange(n, device=M2.device)[None, :].expand(n, n)
    diag = m2[:, rows, idx]  # (B, d, k) = M2(k, k - d)
    x1 = torch.cat([m1.real[:, None], m1.imag[:, None]], dim=1)
    x2 = torch.cat([diag.real, diag.imag], dim=1)
    return x1, x2, a


def _conv_stack(c_in: int, widths: tuple[int, ...], c_out: int, window: int) -> nn.Sequential:
    """conv1D layers with periodic padding, LeakyReLU(0.02) between them; the last is linear."""
    layers: list[nn.Module] = []
    c = c_in
    for w in widths:
        layers += [nn.Conv1d(c, w, window, padding=window // 2, padding_mode="circular"),
                   nn.LeakyReLU(_SLOPE)]
        c = w
    layers.append(nn.Conv1d(c, c_out, window, padding=window // 2, padding_mode="circular"))
    return nn.Sequential(*layers)


class MomentCNN(nn.Module):
    """One encoder of appendix A.1: ``(M̂1, M̂2) → z`` (``z_ρ`` or ``z_v``).

    Args:
        n: number of grid points / frequencies.
        output: ``"density"`` (ξ^ρ: ``(B, n)`` probability vector, softmax) or ``"signal"``
            (ξ^v: ``(B, n)`` real-space samples of the signal, same units as the data).
        window: convolution window ``w`` (odd).
        m2_channels, m1_channels: hidden widths of the lower (M̂2) and upper (M̂1) branches.
        merged: channels after stacking the branches (Fig. 11: 6 = 4 from M̂2 + 2 from M̂1).
        trunk_channels: conv1D widths after the merge.
        hidden: width of the fully connected tanh layer (default ``4 n``).
    """

    def __init__(self, n: int, output: str = "density", *, window: int = 5,
                 m2_channels: tuple[int, ...] = (64, 32), m1_channels: tuple[int, ...] = (16, 16),
                 merged: int = 6, trunk_channels: tuple[int, ...] = (32, 32), hidden: int | None = None,
                 _fn: str = "MomentCNN"):
        super().__init__()
        fn = _fn  # MRAEncoder's networks name it
        self.n = check_int(fn, "n", n, minimum=2)
        if output not in ("density", "signal"):
            fail(fn, f"output must be 'density' or 'signal', got {output!r}")
        window = check_int(fn, "window", window, minimum=1)
        if window % 2 == 0:
            fail(fn, f"window must be odd (centred periodic convolution), got {window}")
        merged = check_int(fn, "merged", merged, minimum=2)
        hidden = 4 * self.n if hidden is None else check_int(fn, "hidden", hidden, minimum=1)
        self.output = output
        self.config = dict(n=self.n, output=output, window=window, m2_channels=tuple(m2_channels),
                           m1_channels=tuple(m1_channels), merged=merged,
                           trunk_channels=tuple(trunk_channels), hidden=hidden)
        c2 = merged - merged // 3  # 4 of 6 from the M2 branch
        self.lower = _conv_stack(2 * self.n, tuple(m2_channels), c2, window)
        self.upper = _conv_stack(2, tuple(m1_channels), merged - c2, window)
        self.trunk = nn.Sequential(nn.LeakyReLU(_SLOPE),
                                   _conv_stack(merged, tuple(trunk_channels)[:-1], trunk_channels[-1], window)
                                   if trunk_channels else nn.Identity(),
                                   nn.LeakyReLU(_SLOPE))
        c_last = trunk_channels[-1] if trunk_channels else merged
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c_last * self.n, hidden), nn.Tanh(),
                                  nn.Linear(hidden, self.n))

    def forward_features(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """Raw head output ``(B, n)`` from :func:`moment_features` inputs."""
        h = torch.cat([self.lower(x2), self.upper(x1)], dim=1)  # the 6-channel field
        return self.head(self.trunk(h))

    def forward(self, M1: torch.Tensor, M2: torch.Tensor) -> torch.Tensor:
        """``(B, n)`` complex ``M1`` and ``(B, n, n)`` ``M2`` (library convention) → ``(B, n)``."""
        return self.forward_from(*_moment_features(type(self).__name__, M1, M2))

    def forward_from(self, x1: torch.Tensor, x2: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` from precomputed :func:`moment_features`."""
        z = self.forward_features(x1.to(self._dtype()), x2.to(self._dtype()))
        if self.output == "density":
            return torch.softmax(z, dim=-1)
        # unit-norm-scale output times a ≈ ‖v‖ (real space; see module docstring)
        return z * a.to(z.dtype)[:, None]

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype


class MRAEncoder(nn.Module):
    """The encoder pair ``ξ_θ = (ξ^v_θ, ξ^ρ_θ)`` (two independent :class:`MomentCNN`).

    ``forward(M1, M2)`` takes moments in the library's convention — complex ``(n,)``/``(n, n)``
    or batched ``(B, n)``/``(B, n, n)`` — and returns ``(v, rho)``: the real-space signal
    ``(…, n)`` (``z_v = fft1c(v)``) and the density ``(…, n)`` on the shifts ``s = i − n//2``.
    Keyword arguments are passed to both networks.
    """

    def __init__(self, n: int, **kwargs):
        super().__init__()
        self.signal_net = MomentCNN(n, "signal", **kwargs, _fn="MRAEncoder")
        self.density_net = MomentCNN(n, "density", **kwargs, _fn="MRAEncoder")
        self.n = self.signal_net.n
        self.config = {k: v for k, v in self.signal_net.config.items() if k not in ("output", "n")}

    def forward(self, M1: torch.Tensor, M2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fn = "MRAEncoder"
        _check_complex(fn, M1, M2)
        single = M1.dim() == 1
        if single:
            M1, M2 = M1[None], M2[None]
        n = self.n
        if M1.dim() != 2 or M1.shape[-1] != n or M2.dim() != 3 or tuple(M2.shape[-2:]) != (n, n) \
                or M2.shape[0] != M1.shape[0]:
            fail(fn, f"M1, M2 must have shapes (n,), (n, n) or (B, n), (B, n, n) with n = {n}, got "
                     f"{tuple(M1.shape)} and {tuple(M2.shape)}")
        feats = moment_features(M1, M2)
        v = self.signal_net.forward_from(*feats)
        rho = self.density_net.forward_from(*feats)
        if single:
            return v[0], rho[0]
        return v, rho
