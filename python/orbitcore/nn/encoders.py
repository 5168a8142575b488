"""Image → pose encoders (CryoAI seeds/003 §3.3 and supp. B; CryoPoseNet seeds/004 §3).

``PoseEncoder``: optional fixed Gaussian low-pass filter bank, a VGG-style stack of
"DoubleConv" blocks (two 3×3 convolutions with ReLU, then 2×2 max-pooling), and two fully
connected heads (ReLU, hidden sizes 512 and 256 as in the paper) predicting

* the rotation, as ``s2s2`` (6-D, Gram–Schmidt → matrix; default, fastest to converge in
  seeds/004), ``quaternion`` (4-D, normalised) or ``euler`` (RELION ZYZ angles, radians);
* the translation ``t = (tx, ty)`` in pixels (content moved by ``+t``, ARCHITECTURE.md).

The paper's channel widths (64, 128, 256, 1024, 2048 for 128² inputs) are a GPU-scale choice;
the default here (32, 64, 128, 256) suits CPU runs at n = 64. Both are a constructor argument.

``RotationLayer`` is CryoAI's "rotation" layer (supp. B, Fig. S1): it duplicates each image and
rotates one copy by π in-plane (exactly, :func:`orbitcore.physics.rotate180`), concatenating
the copies batch-wise, for the symmetric loss (eq. 10).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .._validate import check_int, fail
from ..geometry import quaternion_to_matrix, relion_euler_to_matrix, s2s2_to_matrix
from ..ops.norm import batch_norm_relu, batch_norm_relu_max_pool2d

ROTATION_HEADS = {"s2s2": 6, "quaternion": 4, "euler": 3}


class GaussianFilterBank(nn.Module):
    """Fixed (non-trainable) Gaussian low-pass filters: ``(B, 1, n, n) → (B, F, n, n)``.

    Standard deviations (pixels) are spaced geometrically in ``[sigma_min, sigma_max]``; the
    paper's "5 filters of size 11 with cutoffs between 0.1 and 10" is read as those σ. A filter
    with σ ≪ 1 is the identity. Borders are reflected (replicated when the image is smaller than
    the half-width).

    Each 2-D kernel is the outer product ``g gᵀ`` of a 1-D Gaussian, and reflecting the border
    acts on each axis alone, so the filtered image is ``G_f X G_fᵀ`` with ``G_f`` the ``n × n``
    matrix of "reflect, then correlate with ``g_f``" along one axis. That is two small matrix
    products per filter instead of an ``size × size`` convolution: the same values (``weight``
    holds the 2-D kernels, and :meth:`dense` is the direct convolution with them), several times
    faster on a CPU, where the direct convolution took most of the encoder's forward pass.
    """

    def __init__(self, n_filters: int = 5, size: int = 11, sigma_min: float = 0.1, sigma_max: float = 10.0):
        super().__init__()
        n_filters = check_int("GaussianFilterBank", "n_filters", n_filters, minimum=1)
        size = check_int("GaussianFilterBank", "size", size, minimum=1)
        if size % 2 == 0:
            fail("GaussianFilterBank", f"size must be odd, got {size}")
        sig = torch.logspace(math.log10(sigma_min), math.log10(sigma_max), n_filters, dtype=torch.float64)
        r = torch.arange(size, dtype=torch.float64) - size // 2
        g = torch.exp(-(r[None, :] ** 2) / (2 * sig[:, None] ** 2))
        g = g / g.sum(-1, keepdim=True)
        k2 = g[:, :, None] * g[:, None, :]
        self.register_buffer("weight", k2[:, None].to(torch.float32))
        self.register_buffer("g", g, persistent=False)  # (F, size) float64, the 1-D factors
        self.pad = size // 2
        self._axis_cache: dict = {}

    def _mode(self, n: int) -> str:
        return "reflect" if n > self.pad else "replicate"

    def axis_operators(self, n: int, dtype=torch.float32, device=None) -> torch.Tensor:
        """``(F, n, n)``: row ``i`` of ``G_f`` holds the weights of the inputs of output ``i``."""
        device = self.g.device if device is None else device
        key = (n, dtype, str(device))
        G = self._axis_cache.get(key)
        if G is None:
            g = self.g.to(torch.float64)
            eye = torch.eye(n, dtype=torch.float64, device=g.device)[:, None]  # n unit signals
            padded = nn.functional.pad(eye, (self.pad, self.pad), mode=self._mode(n))
            cols = nn.functional.conv1d(padded, g[:, None])  # (n inputs, F, n outputs)
            G = cols.permute(1, 2, 0).to(dtype=dtype, device=device).contiguous()
            self._axis_cache[key] = G
        return G

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 1 or x.shape[-1] != x.shape[-2]:
            fail("GaussianFilterBank", f"x must have shape (B, 1, n, n), got {tuple(x.shape)}")
        G = self.axis_operators(x.shape[-1], x.dtype, x.device)
        return torch.matmul(torch.matmul(G, x), G.transpose(1, 2))  # G_f X G_fᵀ, (B, F, n, n)

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        """The same filters as a direct 2-D convolution with ``weight`` (reference and baseline)."""
        x = nn.functional.pad(x, (self.pad,) * 4, mode=self._mode(x.shape[-1]))
        return nn.functional.conv2d(x, self.weight.to(x.dtype))


class RotationLayer(nn.Module):
    """``(B, n, n) → (2B, n, n)``: the images followed by their exact in-plane π rotations
    (CryoAI supp. B "rotation" layer; ``rotate180`` maps pose ``R`` to ``R · Rz(π)`` and shift
    ``t`` to ``-t``). Works on real images and centred Fourier images alike."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 3 or images.shape[-1] != images.shape[-2]:
            fail("RotationLayer", f"images must have shape (B, n, n), got {tuple(images.shape)}")
        from ..physics.transforms import rotate180  # noqa: PLC0415

        return torch.cat((images, rotate180(images)), 0)


class BatchWhitening(nn.Module):
    """Whitening across the batch: ``(B, d) → (B, d)`` with zero mean and identity covariance
    (``x ↦ (x − μ) L⁻ᵀ`` with ``Σ + εI = L Lᵀ``, Cholesky; decorrelated batch normalisation).
    Training mode uses the batch's ``μ, Σ`` (differentiably) and updates running estimates
    (``momentum``; None: the cumulative average since :meth:`reset_running_stats`, as
    ``nn.BatchNorm``); evaluation mode uses the running estimates.

    ``groups = G``: the ``d`` features are ``G`` consecutive blocks of ``d / G``, each whitened
    on its own (one pose hypothesis per block): ``G`` small ``(d/G)²`` covariances instead of one
    ``d²`` covariance that a batch smaller than ``d`` could not estimate."""

    def __init__(self, d: int, *, momentum: float | None = 0.1, eps: float = 1e-3, groups: int = 1):
        super().__init__()
        self.d = check_int("BatchWhitening", "d", d, minimum=1)
        self.groups = check_int("BatchWhitening", "groups", groups, minimum=1)
        if self.d % self.groups:
            fail("BatchWhitening", f"d = {self.d} must be a multiple of groups, got groups = {self.groups}")
        self.momentum = None if momentum is None else float(momentum)
        self.eps = float(eps)
        self._count = 0
        g = self.d // self.groups
        self.register_buffer("running_mean", torch.zeros(self.d))
        cov = torch.eye(self.d) if self.groups == 1 else torch.eye(g).expand(self.groups, g, g).clone()
        self.register_buffer("running_cov", cov)

    def reset_running_stats(self) -> None:
        self.running_mean.zero_()
        g = self.d // self.groups
        self.running_cov.copy_(torch.eye(g).expand_as(self.running_cov.view(self.groups, g, g))
                               .reshape(self.running_cov.shape))
        self._count = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.d:
            fail("BatchWhitening", f"input must have shape (B, {self.d}), got {tuple(x.shape)}")
        G, g = self.groups, self.d // self.groups
        eye = torch.eye(g, dtype=x.dtype, device=x.device)
        if self.training:
            if x.shape[0] < 2:
                fail("BatchWhitening", f"training needs a batch of at least 2, got {x.shape[0]}")
            mu = x.mean(0)
            xc = (x - mu).view(-1, G, g).transpose(0, 1)          # (G, B, g)
            cov = xc.transpose(1, 2) @ xc / (x.shape[0] - 1)       # (G, g, g)
            with torch.no_grad():
                self._count += 1
                w = self.momentum if self.momentum is not None else 1.0 / self._count
                self.running_mean.lerp_(mu.detach().to(self.running_mean), w)
                self.running_cov.lerp_(cov.detach().view(self.running_cov.shape).to(self.running_cov), w)
        else:
            mu = self.running_mean.to(x)
            xc = (x - mu).view(-1, G, g).transpose(0, 1)
            cov = self.running_cov.to(x).view(G, g, g)
        L = torch.linalg.cholesky(cov + self.eps * eye)
        # (x - mu) L^{-T}: solve L y^T = (x - mu)^T, per group
        y = torch.linalg.solve_triangular(L, xc.transpose(1, 2), upper=False)  # (G, g, B)
        return y.permute(2, 0, 1).reshape(x.shape[0], self.d)


def _fused_norm_runs_on(x: torch.Tensor) -> bool:
    """Whether the encoder uses orbitcore's fused batch-norm + ReLU kernel for ``x``: CPU float
    tensors, where it was measured faster and more accurate than PyTorch's channels-last batch
    norm (benchmarks/RESULTS.md, "norm"). On a GPU the op exists (``orbitcore.ops.norm``) but the
    encoder keeps cuDNN's batch norm until the two have been compared there."""
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)


def _batch_norm_relu(bn: nn.BatchNorm2d, x: torch.Tensor, op=batch_norm_relu) -> torch.Tensor:
    """``relu(bn(x))`` (``op=batch_norm_relu``) or ``max_pool2d(relu(bn(x)), 2)``
    (``op=batch_norm_relu_max_pool2d``) for a BatchNorm2d in training mode, through the fused
    kernel; running statistics and ``num_batches_tracked`` are updated as ``nn.BatchNorm2d``
    updates them."""
    momentum = bn.momentum
    if bn.track_running_stats:
        bn.num_batches_tracked.add_(1)
        if momentum is None:  # cumulative moving average
            momentum = 1.0 / float(bn.num_batches_tracked)
    return op(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, True, 0.0 if momentum is None else momentum,
              bn.eps)


def _is_plain_pool2(pool: nn.Module) -> bool:
    """Whether ``pool`` is ``nn.MaxPool2d(2)`` exactly (what the fused kernel computes)."""
    def pair(v):
        return tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    return (type(pool) is nn.MaxPool2d and pair(pool.kernel_size) == (2, 2) and pair(pool.stride) == (2, 2)
            and pair(pool.padding) == (0, 0) and pair(pool.dilation) == (1, 1) and not pool.ceil_mode
            and not pool.return_indices)


class DoubleConv(nn.Sequential):
    """Conv 3×3 → BatchNorm → ReLU → Conv 3×3 → BatchNorm → ReLU → MaxPool 2×2.

    In training mode on the CPU the first BatchNorm → ReLU pair runs as one fused kernel
    (:func:`orbitcore.ops.norm.batch_norm_relu`) and the second with the max pooling as another
    (:func:`orbitcore.ops.norm.batch_norm_relu_max_pool2d`): the same function and running-statistics
    updates, fewer passes over the activations, no pooling indices, float32 sums kept accurate.
    :meth:`forward_unfused` is the layer-by-layer ``nn.Sequential`` evaluation (reference and
    benchmark baseline); evaluation mode uses it too.
    """

    def __init__(self, c_in: int, c_out: int, batch_norm: bool = True):
        c_in = check_int("DoubleConv", "c_in", c_in, minimum=1)
        c_out = check_int("DoubleConv", "c_out", c_out, minimum=1)
        layers = [nn.Conv2d(c_in, c_out, 3, padding=1)]
        if batch_norm:
            layers.append(nn.BatchNorm2d(c_out))
        layers += [nn.ReLU(inplace=True), nn.Conv2d(c_out, c_out, 3, padding=1)]
        if batch_norm:
            layers.append(nn.BatchNorm2d(c_out))
        layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        super().__init__(*layers)
        self.batch_norm = batch_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.batch_norm and _fused_norm_runs_on(x)):
            return self.forward_unfused(x)
        conv1, bn1, _, conv2, bn2, _, pool = self
        if not (bn1.training and bn2.training):  # a batch norm put in evaluation mode on its own
            return self.forward_unfused(x)
        x = _batch_norm_relu(bn1, conv1(x))
        x = conv2(x)
        if _is_plain_pool2(pool) and x.shape[-2] >= 2 and x.shape[-1] >= 2:
            return _batch_norm_relu(bn2, x, batch_norm_relu_max_pool2d)
        return pool(_batch_norm_relu(bn2, x))

    def forward_unfused(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)


def _mlp(d_in: int, hidden: tuple[int, ...], d_out: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(d_in, h), nn.ReLU(inplace=True)]
        d_in = h
    layers.append(nn.Linear(d_in, d_out))
    return nn.Sequential(*layers)


class PoseEncoder(nn.Module):
    """Images ``(B, n, n)`` (real space) → rotations ``(B, 3, 3)`` and translations ``(B, 2)`` (pixels).

    Args:
        n: image side.
        channels: output channels of the DoubleConv blocks (each halves the image side).
        filters: number of Gaussian low-pass filters (0: none, the raw image is the only channel).
        rotation: ``"s2s2"``, ``"quaternion"`` or ``"euler"``.
        hidden: hidden sizes of the two heads.
        max_shift: translations are ``max_shift · tanh(·)`` pixels (None: unbounded linear output).
        batch_norm: batch normalisation in the convolution blocks.
        whiten_rotation: whiten the raw rotation output across the batch
            (:class:`BatchWhitening`: zero mean, identity covariance; running statistics at
            evaluation). For ``"s2s2"`` this is a pose prior: the Gram–Schmidt frame of two
            independent isotropic Gaussian 3-vectors is uniformly distributed on SO(3), so
            whitened outputs cannot collapse onto one orientation, the stable failure of
            amortized training from scratch (every predicted viewing direction equal, the
            volume the mean image extruded along it). Not in the papers; off by default here.
        heads: number of rotation hypotheses per image (multi-choice encoder, cf. CryoSPIN):
            the rotation head predicts ``heads`` rotations (each whitened on its own when
            ``whiten_rotation``); ``forward`` then returns rotations ``(B, heads, 3, 3)``. The
            translation head stays single. 1 (default): rotations ``(B, 3, 3)``.
    """

    def __init__(self, n: int, channels: tuple[int, ...] = (32, 64, 128, 256), filters: int = 5,
                 rotation: str = "s2s2", hidden: tuple[int, ...] = (512, 256), max_shift: float | None = None,
                 batch_norm: bool = True, whiten_rotation: bool = False, heads: int = 1):
        super().__init__()
        fn = "PoseEncoder"
        self.n = check_int(fn, "n", n, minimum=4)
        self.heads = check_int(fn, "heads", heads, minimum=1)
        if rotation not in ROTATION_HEADS:
            fail(fn, f"rotation must be one of {sorted(ROTATION_HEADS)}, got {rotation!r}")
        if len(channels) < 1 or self.n >> len(channels) < 1:
            fail(fn, f"channels must have 1..{int(math.log2(self.n))} entries for n = {self.n}, got {len(channels)}")
        self.rotation = rotation
        self.max_shift = max_shift
        self.filters = GaussianFilterBank(filters) if filters > 0 else None
        c = filters if filters > 0 else 1
        blocks = []
        for c_out in channels:
            blocks.append(DoubleConv(c, c_out, batch_norm))
            c = c_out
        self.features = nn.Sequential(*blocks)
        side = self.n >> len(channels)
        d = c * side * side
        self.rotation_head = _mlp(d, tuple(hidden), self.heads * ROTATION_HEADS[rotation])
        if whiten_rotation:
            self.rotation_head.append(BatchWhitening(self.heads * ROTATION_HEADS[rotation], groups=self.heads))
        self.translation_head = _mlp(d, tuple(hidden), 2)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 3 or images.shape[-1] != self.n or images.shape[-2] != self.n:
            fail("PoseEncoder", f"images must have shape (B, {self.n}, {self.n}), got {tuple(images.shape)}")
        x = images[:, None]
        if self.filters is not None:
            x = self.filters(x)
        # channels-last activations: oneDNN's convolutions, batch norm and pooling are faster in
        # NHWC on a CPU (about 1.3x on this encoder's forward + backward); same values
        x = x.contiguous(memory_format=torch.channels_last)
        return self.features(x).flatten(1)

    def rotation_from_head(self, h: torch.Tensor) -> torch.Tensor:
        if self.rotation == "s2s2":
            return s2s2_to_matrix(h)
        if self.rotation == "quaternion":
            return quaternion_to_matrix(h)
        deg = torch.rad2deg(h)
        return relion_euler_to_matrix(deg[:, 0], deg[:, 1], deg[:, 2])

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotations ``(B, 3, 3)`` (``(B, heads, 3, 3)`` with several heads), shifts ``(B, 2)``."""
        return self.poses_from_features(self.embed(images))

    def poses_from_features(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two heads on the flattened features ``(B, d)`` of :meth:`embed`."""
        h = self.rotation_head(f)
        B = h.shape[0]
        R = self.rotation_from_head(h.reshape(B * self.heads, -1))
        R = R.view(B, self.heads, 3, 3) if self.heads > 1 else R.view(B, 3, 3)
        t = self.translation_head(f)
        if self.max_shift is not None:
            t = self.max_shift * torch.tanh(t)
        return R, t
