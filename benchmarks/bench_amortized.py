"""Amortized pose inference (orbitcore.amortized): training and evaluation throughput against a
plain PyTorch implementation of the same model, measured in the same run.

Baseline: the same encoder weights, the same losses (Fourier L2 inside the disk, symmetric loss
with the exact π rotation), the same CTF and shift phases, written the way the public
implementations write them:

* encoder: the fixed Gaussian filter bank as a direct 11 × 11 ``conv2d``, then the CNN in the
  default NCHW layout, one layer after the other (``BatchNorm2d`` then ``ReLU``);
* voxel: the 2×-padded, gridding-corrected centred FT of the volume with ``fft3c`` of the
  zero-padded array (``fftshift``/``ifftshift`` + ``fftn``), sliced with
  ``torch.nn.functional.grid_sample`` (trilinear on the [Re, Im] channels) over the full
  ``n × n`` plane, then masked;
* fouriernet: the network evaluated at every point of the ``n × n`` plane (the Hermitian rule
  of eq. 7 applied point by point), its SIREN activations the plain ``torch.sin(w0 · z)``
  (``orbitcore.nn.plain_sine``), then masked.

orbitcore: the filter bank as two small matrix products per filter (``G X Gᵀ``, the Gaussian
is separable), the CNN on channels-last activations with each block's first BatchNorm → ReLU
pair fused into one kernel (``orbitcore.ops.norm.batch_norm_relu``) and its second with the
2×2 max pooling into another (``batch_norm_relu_max_pool2d``) (``PoseEncoder``); ``fft3c_padded``
(pruned real FFTs), kept as its ``kx >= 0`` half, and ``fourier_slice(..., half=True)`` with the
Hermitian half-plane and the disk (voxel);
``FourierNet.slice`` on the half-disk only, the SIREN activations on the sine kernel
(``orbitcore.ops.sine_activation``: one pass forward, one backward) (fouriernet; with ``fourier_scoring="grid"`` the
paths are scored on a 2×-oversampled grid of the network, the one row where the two sides'
losses may differ: a winner chosen by the approximate score, its loss exact); and every path (two per image with the
symmetric loss, times the pose hypotheses) scored without gradients, only the winners rendered
again with them (``AmortizedModel.forward``: the same loss and gradients).

Each row also reports ``roofline`` (:func:`conv_roofline`): how far the encoder's
convolutions, the same oneDNN arithmetic on both sides, cap the training speed-up here.

Reported, per decoder: training images/s (one optimisation step = forward of the batch and of
its π-rotated copy, backward, Adam: the Trainer's fused Adam on both sides), the encoder alone (forward and backward on the 2B images),
the decoder alone (slices of 2B poses + CTF + shift + loss, forward and backward to the volume
and the rotations), and the evaluation rate (pose prediction over a stack, no gradients: the
encoder alone, and with the symmetric path choice, which also runs the decoder). Every row
checks first that the two implementations give the same loss. The two sides' steps alternate
(``timeit_pair``: a slow spell of the shared machine hits both alike); the speed-up quoted is
the median of the seven pair ratios, and ``train_speedup_range`` their spread.
"""
from __future__ import annotations

import math

from _common import emit, parser, setup_threads, timeit, timeit_pair  # first: sets OMP_WAIT_POLICY before torch loads libgomp

import torch  # noqa: E402

import orbitcore as oc
from orbitcore import fourier
from orbitcore.amortized import AmortizedModel
from orbitcore.amortized.losses import fourier_l2, symmetric_loss
from orbitcore.nn import plain_sine
from orbitcore.physics import CTFParams, Projector, pseudo_molecule, rotate180
from orbitcore.physics.projection import gridding_correction


# ----------------------------------------------------------------------------------------------
# The baseline model: same encoder and losses, plain PyTorch decoders
# ----------------------------------------------------------------------------------------------
def _plane(n: int, dtype=torch.float32) -> torch.Tensor:
    k = torch.arange(n, dtype=dtype) - n // 2
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    return torch.stack((kx, ky, torch.zeros_like(kx)), -1)  # (n, n, 3)


def _shift_phase(n: int, t: torch.Tensor) -> torch.Tensor:
    k = torch.arange(n, dtype=t.dtype) - n // 2
    ph = -2 * math.pi * (t[:, 0, None, None] * k[None, None, :] + t[:, 1, None, None] * k[None, :, None]) / n
    return torch.polar(torch.ones_like(ph), ph)


class BaselineModel(torch.nn.Module):
    """``AmortizedModel``'s computation with plain-PyTorch decoders (module docstring)."""

    def __init__(self, model: AmortizedModel):
        super().__init__()
        self.m = model
        c = model.config
        self.n, self.radius = c.n, c.radius
        self.register_buffer("plane", _plane(c.n))
        self.register_buffer("mask", oc.fourier.radial_frequency(c.n, 2, dtype=torch.float32) <= c.radius)
        if c.decoder == "voxel":
            self.pad = model.decoder.pad
            N = self.pad * c.n
            self.register_buffer("grid_corr", gridding_correction(N, c.n).float())

    def slices(self, R: torch.Tensor) -> torch.Tensor:
        n, dec = self.n, self.m.decoder
        if self.m.config.decoder == "voxel":
            D, pad = n, self.pad
            N = pad * D
            o = N // 2 - D // 2
            big = dec.volume_real.new_zeros((N, N, N))
            big[o:o + D, o:o + D, o:o + D] = dec.volume_real / self.grid_corr
            V = torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(big)))  # fft3c of the padded volume
            V2 = torch.view_as_real(V).permute(3, 0, 1, 2)[None]
            P = pad * torch.einsum("bij,yxj->byxi", R, self.plane) + N // 2
            g = (P * (2.0 / (N - 1)) - 1.0)[None]
            S = torch.nn.functional.grid_sample(V2, g, mode="bilinear", padding_mode="zeros", align_corners=True)
            S = torch.complex(S[0, 0], S[0, 1])
        else:
            k = torch.einsum("bij,yxj->byxi", R, self.plane)
            S = dec.scale * dec.net(k)
        return S * self.mask

    def encode(self, images: torch.Tensor):
        """The same encoder (same weights, same function) as the public codes run it: the Gaussian
        filter bank as a direct 11 × 11 convolution, then the CNN in the default NCHW layout."""
        enc, c = self.m.encoder, self.m.config
        x = images if c.encoder_size == self.n else fourier.downsample(images, c.encoder_size)
        x = x[:, None]
        if enc.filters is not None:
            x = enc.filters.dense(x)
        for block in enc.features:  # Conv, BatchNorm2d, ReLU, ... one layer after the other
            x = block.forward_unfused(x)
        return enc.poses_from_features(x.flatten(1))

    def forward(self, images: torch.Tensor, ctf: torch.Tensor):
        with plain_sine():  # the public codes' SIREN layer: torch.sin(w0 * (W x + b))
            return self._forward(images, ctf)

    def _forward(self, images: torch.Tensor, ctf: torch.Tensor):
        B = images.shape[0]
        Y = fourier.fft2c(images)
        x = torch.cat((images, rotate180(images)))
        Y = torch.cat((Y, rotate180(Y)))
        C = torch.cat((ctf, ctf))
        R, t = self.encode(x)
        K = self.m.config.pose_heads
        if K > 1:  # K rotation hypotheses per image, the loss keeps the best (winner takes all)
            R = R.reshape(-1, 3, 3)
            Y, C, t = Y.repeat_interleave(K, 0), C.repeat_interleave(K, 0), t.repeat_interleave(K, 0)
        X = self.slices(R) * C * _shift_phase(self.n, t)
        d = fourier_l2(Y, X, self.mask).view(2 * B, K).min(1).values
        loss, _ = symmetric_loss(d[:B], d[B:])
        return loss.mean()


# ----------------------------------------------------------------------------------------------
def _data(n: int, B: int, gen):
    vol = pseudo_molecule(n)
    R = oc.geometry.random_rotations(B, generator=gen)
    t = torch.randn(B, 2, generator=gen)
    ctf = CTFParams.create(15000 * torch.exp(0.3 * torch.randn(B, generator=gen)), pixel_size=2.0)
    imgs = Projector(vol)(R, t, ctf)
    imgs = imgs + imgs.std() * torch.randn(imgs.shape, generator=gen)  # SNR 0 dB
    imgs = (imgs - imgs.mean()) / imgs.std()
    return imgs, ctf.evaluate(n, dtype=torch.float64).float(), vol


def bench_decoder(decoder: str, n: int, B: int, rep: int, gen, model_kw: dict) -> dict:
    imgs, C, vol = _data(n, B, gen)
    model = AmortizedModel.create(n, decoder=decoder, **model_kw)
    if decoder == "voxel":
        with torch.no_grad():
            model.decoder.volume_real.copy_(vol * 0.05)
    base = BaselineModel(model)
    model.train()
    # the two implementations compute the same model
    with torch.no_grad():
        model.eval()
        l_ours = float(model(imgs, C).loss)
        l_base = float(base(imgs, C))
        model.train()
    row = {"decoder": decoder, "n": n, "batch": B, "loss_ours": l_ours, "loss_baseline": l_base,
           "loss_rel_diff": abs(l_ours - l_base) / abs(l_base), "model": {k: (list(v) if isinstance(v, tuple) else v)
                                                                          for k, v in model_kw.items()}}
    # grid scoring (FourierNet, ModelConfig.fourier_scoring="grid") may choose another winner where
    # two paths score alike; the winners' losses are exact, so its loss is never below the exact
    # minimum and, for the same model, within a small tolerance above it
    grid = model_kw.get("fourier_scoring", "exact") == "grid"
    tol = 2e-2 if grid else 1e-5
    if not row["loss_rel_diff"] < tol or (grid and l_ours < l_base * (1 - 1e-5)):
        raise SystemExit(f"bench_amortized: the baseline and orbitcore losses differ ({l_base} vs {l_ours}), "
                         f"{decoder} n={n}: the comparison would not be of the same model")
    # the Trainer's optimiser (PyTorch's fused Adam) on both sides: the optimiser is not part of
    # the model, and the default multi-tensor Adam would add the same ~7 ms to both steps
    opt = torch.optim.Adam(model.parameters(), lr=1e-5, fused=True)

    def step_ours():
        opt.zero_grad(set_to_none=True)
        model(imgs, C).loss.backward()
        opt.step()

    def step_base():
        opt.zero_grad(set_to_none=True)
        base(imgs, C).backward()
        opt.step()

    pr = timeit_pair(step_base, step_ours, repeat=rep)
    tb = pr["baseline"]
    row["train_images_per_s_baseline"] = B / tb["median_s"]
    row["train_images_per_s_ours"] = B / pr["ours"]["median_s"]
    row["train_speedup"] = pr["speedup"]
    row["train_speedup_range"] = [pr["speedup_min"], pr["speedup_max"]]

    # the decoder alone: slices of 2B poses + CTF + shift + loss, forward and backward
    R = oc.geometry.random_rotations(2 * B, generator=gen).requires_grad_()
    t = torch.randn(2 * B, 2, generator=gen).requires_grad_()
    Y = fourier.fft2c(torch.cat((imgs, rotate180(imgs))))
    C2 = torch.cat((C, C))
    params = [p for p in model.decoder.parameters()]

    def dec_ours():
        X = model.decode(R, t, C2)
        torch.autograd.grad(fourier_l2(Y, X, model.mask).sum(), params + [R, t])

    def dec_base():
        with plain_sine():
            X = base.slices(R) * C2 * _shift_phase(n, t)
            torch.autograd.grad(fourier_l2(Y, X, base.mask).sum(), params + [R, t])

    # the encoder alone: forward and backward on the 2B images (the batch and its π rotations)
    x2 = torch.cat((imgs, rotate180(imgs)))
    enc_params = list(model.encoder.parameters())

    def enc_ours():
        R2, t2 = model.encode(x2)
        torch.autograd.grad(R2.square().sum() + t2.square().sum(), enc_params, allow_unused=True)

    def enc_base():
        R2, t2 = base.encode(x2)
        torch.autograd.grad(R2.square().sum() + t2.square().sum(), enc_params, allow_unused=True)

    pe = timeit_pair(enc_base, enc_ours, repeat=rep)
    row["encoder_images_per_s_baseline"] = B / pe["baseline"]["median_s"]
    row["encoder_images_per_s_ours"] = B / pe["ours"]["median_s"]
    row["encoder_speedup"] = pe["speedup"]

    pd = timeit_pair(dec_base, dec_ours, repeat=rep)
    db = pd["baseline"]
    row["decoder_images_per_s_baseline"] = B / db["median_s"]
    row["decoder_images_per_s_ours"] = B / pd["ours"]["median_s"]
    row["decoder_speedup"] = pd["speedup"]
    row["decoder_share_of_baseline_step"] = db["median_s"] / tb["median_s"]
    row["roofline"] = conv_roofline(model, 2 * B, tb["median_s"], pr["ours"]["median_s"], rep)
    return row


def gemm_rate(n: int = 1024, repeat: int = 5) -> float:
    """FLOP/s of one ``n × n`` float32 matrix product on the current threads: what this machine's
    BLAS attains, the practical ceiling for a convolution."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2.0 * n ** 3 / timeit(lambda: a @ b, repeat=repeat, warmup=2)["median_s"]


def conv_roofline(model: AmortizedModel, images: int, t_base: float, t_ours: float, rep: int) -> dict:
    """How far the encoder's convolutions cap the training speed-up.

    Both sides run the same 3×3 convolutions (oneDNN's): the same arithmetic, ``conv_flops`` per
    step (forward, gradients to the inputs except the first layer's, gradients to the weights,
    over the ``images`` = 2B images of a step). ``conv_s`` is their time here on orbitcore's
    channels-last layout, each layer's forward and backward timed alone. Two ceilings on the
    training speed-up follow, both for implementations that keep the arithmetic:
    ``speedup_if_convs_at_gemm_rate``, the baseline's step over ``t_ours - conv_s + conv_flops /
    gemm_flops_per_s`` (the convolutions at the rate of a large matrix product, the rest of our
    step as it is; ``t_ours`` and ``conv_s`` are separate medians, so on a noisy machine the
    measured ratio can exceed it), and ``speedup_ceiling_convs_only``, the baseline's step over
    ``conv_flops / gemm_flops_per_s`` (everything but the convolutions free).
    """
    enc = model.encoder
    side = enc.n
    flops, layers = 0.0, []
    for block in enc.features:
        for conv in (block[i] for i in range(len(block)) if isinstance(block[i], torch.nn.Conv2d)):
            f = 2.0 * images * side * side * conv.in_channels * conv.out_channels * 9
            flops += f * (2 if not layers else 3)  # the first layer needs no input gradient
            layers.append((conv.in_channels, conv.out_channels, side, not layers))
        side //= 2
    gen = torch.Generator().manual_seed(1)
    total = 0.0
    for ci, co, s, first in layers:
        x = torch.randn(images, ci, s, s, generator=gen).contiguous(memory_format=torch.channels_last)
        x.requires_grad_(not first)
        w = (0.1 * torch.randn(co, ci, 3, 3, generator=gen)).requires_grad_()
        g = torch.randn(images, co, s, s, generator=gen).contiguous(memory_format=torch.channels_last)

        def fwd_bwd(x=x, w=w, g=g):
            y = torch.nn.functional.conv2d(x, w, padding=1)
            torch.autograd.grad(y, [w] if not x.requires_grad else [x, w], g)

        total += timeit(fwd_bwd, repeat=rep, warmup=1)["median_s"]
    peak = gemm_rate()
    best = t_ours - total + flops / peak
    return {"conv_flops": flops, "conv_s": total, "conv_flops_per_s": flops / total, "gemm_flops_per_s": peak,
            "conv_share_of_step": total / t_ours, "speedup_if_convs_at_gemm_rate": t_base / best,
            "speedup_ceiling_convs_only": t_base * peak / flops}


def bench_evaluation(n: int, N: int, rep: int, gen, model_kw: dict) -> dict:
    imgs, C, _ = _data(n, N, gen)
    model = AmortizedModel.create(n, decoder="voxel", **model_kw).eval()
    base = BaselineModel(model).eval()
    bs = 256

    def encoder_baseline():
        with torch.no_grad():
            for s in range(0, N, bs):
                base.encode(imgs[s:s + bs])

    def encoder_only():
        with torch.no_grad():
            for s in range(0, N, bs):
                model.encode(imgs[s:s + bs])

    def with_choice():
        with torch.no_grad():
            for s in range(0, N, bs):
                model(imgs[s:s + bs], C[s:s + bs])

    tb = timeit(encoder_baseline, repeat=rep, warmup=1)
    te = timeit(encoder_only, repeat=rep, warmup=1)
    tc = timeit(with_choice, repeat=rep, warmup=1)
    return {"n": n, "images": N, "batch": bs, "model": {k: (list(v) if isinstance(v, tuple) else v)
                                                         for k, v in model_kw.items()},
            "encoder_only_images_per_s_baseline": N / tb["median_s"],
            "encoder_only_images_per_s": N / te["median_s"],
            "symmetric_choice_images_per_s": N / tc["median_s"]}


def main():
    p = parser(__doc__)
    p.add_argument("--batch", type=int, default=None, help="override every batch size")
    p.add_argument("--rows", type=int, nargs="+", default=None,
                   help="run only these training configurations (0-based indices into the list in main)")
    p.add_argument("--tune-allocator", action="store_true",
                   help="apply orbitcore.tune_allocator() first, as the orbitcore command does (both sides "
                        "run in this one process, so the baseline gets it too)")
    args = p.parse_args()
    setup_threads(args)
    tuned = oc.tune_allocator() if args.tune_allocator else False
    gen = torch.Generator().manual_seed(0)
    rep = 3 if args.quick else 7  # alternating pairs (timeit_pair): the speed-up is the median pair ratio
    small = {"channels": (16, 32, 64, 128)}
    # (n, decoder, batch, model options): 32² is the evidence runs' configuration; 64² the
    # dataset size of the issue with the encoder on 32² Fourier-cropped copies (the decoder keeps
    # 64²). FourierNet batches are smaller: the baseline evaluates the SIRENs on every pixel.
    configs = [
        (32, "voxel", 64, small),
        (32, "fouriernet", 16, {**small, "fourier_hidden": 128}),
        (64, "voxel", 32, {**small, "encoder_size": 32}),
        (64, "fouriernet", 8, {**small, "encoder_size": 32, "fourier_hidden": 128}),
        # the recipe that recovers poses from scratch (docs/evidence/amortized): 16 whitened
        # rotation hypotheses per image, so 16x the decoder work per image
        (32, "voxel", 32, {**small, "pose_heads": 16, "whiten_rotation": True}),
        (64, "voxel", 16, {**small, "encoder_size": 32, "pose_heads": 16, "whiten_rotation": True}),
        # the recipe with FourierNet (n = 32 only: the baseline's step takes seconds), the paths
        # scored exactly, and scored on the oversampled grid (ModelConfig.fourier_scoring)
        (32, "fouriernet", 16, {**small, "fourier_hidden": 128, "pose_heads": 16, "whiten_rotation": True}),
        (32, "fouriernet", 16, {**small, "fourier_hidden": 128, "pose_heads": 16, "whiten_rotation": True,
                                "fourier_scoring": "grid"}),
    ]
    if args.quick:
        configs = [(n, d, 8, kw) for n, d, _, kw in configs[:2] + configs[4:5]]
    elif args.batch:
        configs = [(n, d, args.batch, kw) for n, d, _, kw in configs]
    if args.rows:
        bad = [i for i in args.rows if not 0 <= i < len(configs)]
        if bad:
            raise SystemExit(f"bench_amortized: --rows must be in 0..{len(configs) - 1}, got {bad}")
        configs = [configs[i] for i in args.rows]
    rows = []
    for n, dec, B, kw in configs:
        print(f"# {dec} n={n} batch={B}", flush=True)
        rows.append(bench_decoder(dec, n, B, rep, gen, kw))
    ev = [bench_evaluation(n, 512 if args.quick else 2048, 3, gen, kw)
          for n, kw in ((32, small), (64, {**small, "encoder_size": 32}))]
    emit("amortized", {"rows": rows, "evaluation": ev, "targets": {"voxel_train_speedup": 3.0},
                       "allocator_tuned": tuned}, args)


if __name__ == "__main__":
    main()
