"""Batch normalisation fused with ReLU, and with ReLU and 2×2 max pooling (orbitcore.ops.norm):
against the float64 definition (ops/_reference.py), gradcheck, opcheck, running statistics
against nn.BatchNorm2d, layouts, ties in the pooling windows, threads, the encoder's DoubleConv
fused vs layer by layer, bad inputs, fuzz, CUDA."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from orbitcore import _ext
from orbitcore.nn.encoders import DoubleConv
from orbitcore.ops import _reference as ref
from orbitcore.ops.norm import batch_norm_relu, batch_norm_relu_max_pool2d


def _inputs(gen, shape, dtype, offset=0.0, scale=1.0):
    C = shape[1]
    x = (offset + scale * torch.randn(shape, generator=gen, dtype=torch.float64)).to(dtype)
    w = (0.5 + torch.rand(C, generator=gen, dtype=torch.float64)).to(dtype)
    b = (0.3 * torch.randn(C, generator=gen, dtype=torch.float64)).to(dtype)
    return x, w, b


def _check_against_reference(x, w, b, eps, tol, pool=False):
    """Forward, gradients (x, weight, bias) and running statistics against the float64 definition
    (with ``pool``: of ``batch_norm_relu_max_pool2d``)."""
    C = x.shape[1]
    rm, rv = torch.randn(C, dtype=x.dtype), 1 + torch.rand(C, dtype=x.dtype)
    rm0, rv0 = rm.clone(), rv.clone()
    xs, ws, bs = (t.detach().clone().requires_grad_() for t in (x, w, b))
    y = (batch_norm_relu_max_pool2d if pool else batch_norm_relu)(xs, rm, rv, ws, bs, True, 0.3, eps)
    xr, wr, br = (t.detach().double().requires_grad_() for t in (x, w, b))
    yr, mean, var = (ref.batch_norm_relu_max_pool2d if pool else ref.batch_norm_relu)(xr, wr, br, eps)
    assert y.shape == yr.shape and y.dtype == x.dtype
    if pool:
        assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y.double(), yr, rtol=tol, atol=tol)
    g = torch.randn(yr.shape, dtype=torch.float64)
    got = torch.autograd.grad(y, (xs, ws, bs), g.to(x.dtype))
    want = torch.autograd.grad(yr, (xr, wr, br), g)
    for name, u, e in zip(("x", "weight", "bias"), got, want):
        torch.testing.assert_close(u.double(), e, rtol=tol, atol=tol * float(e.abs().max() + 1),
                                   msg=lambda m, name=name: f"grad {name}: {m}")
    M = x.numel() // C
    torch.testing.assert_close(rm.double(), 0.7 * rm0.double() + 0.3 * mean, rtol=tol, atol=tol)
    torch.testing.assert_close(rv.double(), 0.7 * rv0.double() + 0.3 * var * M / (M - 1), rtol=tol, atol=tol)


def _check_pooled(x, w, b, eps, tol):
    _check_against_reference(x, w, b, eps, tol, pool=True)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_matches_definition_in_every_layout(gen, dtype, tol):
    x, w, b = _inputs(gen, (6, 5, 7, 9), dtype)
    _check_against_reference(x, w, b, 1e-5, tol)                                              # NCHW: copied
    _check_against_reference(x.contiguous(memory_format=torch.channels_last), w, b, 1e-5, tol)  # NHWC: a view
    _check_against_reference(x[:, :, 1:6, ::2], w, b, 1e-3, tol)                               # strided
    _check_against_reference(x.flatten(2), w, b, 1e-5, tol)                                    # (N, C, L)
    _check_against_reference(x[:, :, 0, 0], w, b, 1e-5, tol)                                   # (N, C)


def test_channels_last_in_channels_last_out(gen):
    x, w, b = _inputs(gen, (4, 8, 6, 6), torch.float32)
    y = batch_norm_relu(x.contiguous(memory_format=torch.channels_last), None, None, w, b, True)
    assert y.is_contiguous(memory_format=torch.channels_last)


def test_large_mean_keeps_the_variance(gen):
    """float32 activations far from zero: the shifted double sums keep var accurate."""
    x, w, b = _inputs(gen, (16, 3, 32, 32), torch.float32, offset=3e3, scale=0.5)
    _, mean, var = torch.ops.orbitcore.batch_norm_relu_forward(x.movedim(1, -1).reshape(-1, 3), w, b, 1e-5)
    _, mr, vr = ref.batch_norm_relu(x, w, b, 1e-5)
    torch.testing.assert_close(var.double(), vr, rtol=1e-4, atol=0)
    torch.testing.assert_close(mean.double(), mr, rtol=1e-6, atol=0)


def test_gradcheck_and_opcheck(gen):
    x, w, b = _inputs(gen, (3, 4, 5, 5), torch.float64)
    args = tuple(t.clone().requires_grad_() for t in (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w, b: batch_norm_relu(x, None, None, w, b, True, eps=1e-3), args)
    x2 = x.movedim(1, -1).reshape(-1, 4)
    torch.library.opcheck(torch.ops.orbitcore.batch_norm_relu_forward.default, (x2, w, b, 1e-5))
    y, mean, var = torch.ops.orbitcore.batch_norm_relu_forward(x2, w, b, 1e-5)
    torch.library.opcheck(torch.ops.orbitcore.batch_norm_relu_backward.default,
                          (torch.randn_like(x2), x2, w, b, mean, var, 1e-5))


def test_double_backward_raises_clearly(gen):
    x, w, b = (t.requires_grad_() for t in _inputs(gen, (3, 2, 4, 4), torch.float64))
    (gx,) = torch.autograd.grad(batch_norm_relu(x, None, None, w, b, True).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        gx.sum().backward()


@pytest.mark.parametrize("op", [batch_norm_relu, batch_norm_relu_max_pool2d])
def test_torch_compile_fullgraph(gen, op):
    torch._dynamo.reset()
    x, w, b = _inputs(gen, (4, 3, 6, 6), torch.float32)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    w.requires_grad_()

    def loss_fn(x, w):
        return op(x, None, None, w, b, True).square().sum()

    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    l_c = compiled(x, w)
    g_c = torch.autograd.grad(l_c, (x, w))
    l_e = loss_fn(x, w)
    g_e = torch.autograd.grad(l_e, (x, w))
    torch.testing.assert_close(l_c, l_e)
    for u, v in zip(g_c, g_e):
        torch.testing.assert_close(u, v)


def test_without_affine_and_without_running_stats(gen):
    x, _, _ = _inputs(gen, (5, 3, 4, 4), torch.float64)
    y = batch_norm_relu(x, None, None, None, None, True)
    yr, _, _ = ref.batch_norm_relu(x, torch.ones(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), 1e-5)
    torch.testing.assert_close(y, yr, rtol=1e-12, atol=1e-12)


def test_evaluation_mode_is_the_plain_pair(gen):
    x, w, b = _inputs(gen, (5, 3, 4, 4), torch.float64)
    rm, rv = torch.randn(3, dtype=torch.float64), 1 + torch.rand(3, dtype=torch.float64)
    y = batch_norm_relu(x, rm, rv, w, b, False)
    want = torch.relu((x - rm.view(1, 3, 1, 1)) / torch.sqrt(rv.view(1, 3, 1, 1) + 1e-5) * w.view(1, 3, 1, 1)
                      + b.view(1, 3, 1, 1))
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("op", [batch_norm_relu, batch_norm_relu_max_pool2d])
def test_threads_give_the_same_result(gen, op):
    x, w, b = _inputs(gen, (32, 16, 17, 16), torch.float64)  # above the parallel threshold; odd H
    n0 = torch.get_num_threads()
    out = []
    try:
        for nt in (1, 2, 3):
            torch.set_num_threads(nt)
            xs = x.clone().requires_grad_()
            y = op(xs, None, None, w, b, True)
            (gx,) = torch.autograd.grad(y, xs, torch.ones_like(y))
            out.append((y, gx))
    finally:
        torch.set_num_threads(n0)
    for y, gx in out[1:]:
        torch.testing.assert_close(y, out[0][0], rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(gx, out[0][1], rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_double_conv_fused_equals_layer_by_layer(gen, momentum):
    """The encoder block: fused BatchNorm → ReLU (training) against nn.Sequential's layers."""
    torch.manual_seed(0)
    a = DoubleConv(3, 8).double()
    for m in a.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = momentum
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.normal_(m.bias, 0.0, 0.2)
    b = DoubleConv(3, 8).double()
    b.load_state_dict(a.state_dict())
    for m in b.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = momentum  # not part of the state dict
    x = torch.randn(6, 3, 12, 12, generator=gen, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    for _ in range(3):  # several steps: running statistics and num_batches_tracked evolve alike
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = a(xa), b.forward_unfused(xb)
        torch.testing.assert_close(ya, yb, rtol=1e-12, atol=1e-12)
        g = torch.randn(ya.shape, generator=gen, dtype=torch.float64)
        ga = torch.autograd.grad(ya, [xa, *a.parameters()], g)
        gb = torch.autograd.grad(yb, [xb, *b.parameters()], g)
        for u, v in zip(ga, gb):
            torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-10)
        x = x + 0.5 * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    for (k, u), v in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-12, msg=lambda m, k=k: f"{k}: {m}")
    a[1].eval()  # one batch norm frozen on its own: the block must use its running statistics
    b[1].eval()
    torch.testing.assert_close(a(x), b.forward_unfused(x), rtol=1e-12, atol=1e-12)
    a.eval()
    b.eval()
    torch.testing.assert_close(a(x), b.forward_unfused(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("pool", [False, True])
def test_fuzz_shapes_against_definition(gen, pool):
    rng = np.random.default_rng(12 if pool else 11)
    for _ in range(12):
        lo = 2 if pool else 1  # pooling needs H, W >= 2
        shape = (int(rng.integers(1, 5)), int(rng.integers(1, 40)), int(rng.integers(lo, 9)), int(rng.integers(lo, 9)))
        if shape[0] * shape[2] * shape[3] < 2:
            continue
        x, w, b = _inputs(gen, shape, torch.float64, offset=float(rng.normal()), scale=float(rng.uniform(0.1, 3)))
        if not pool or rng.random() < 0.5:
            x = x.contiguous(memory_format=torch.channels_last)
        _check_against_reference(x, w, b, float(rng.uniform(1e-6, 1e-2)), 1e-10, pool=pool)


def test_bad_inputs_are_named():
    x = torch.randn(4, 3, 5, 5)
    w, b = torch.ones(3), torch.zeros(3)
    cases = [
        (lambda: batch_norm_relu(x.long(), None, None, w, b, True), "x must be float32 or float64"),
        (lambda: batch_norm_relu(x[0, 0, 0], None, None, w, b, True), "x must be a tensor of shape (N, C, ...)"),
        (lambda: batch_norm_relu(x, None, None, torch.ones(4), b, True), "weight must have shape (C,) = (3,)"),
        (lambda: batch_norm_relu(x, torch.zeros(3), None, w, b, True), "running_mean and running_var"),
        (lambda: batch_norm_relu(x, None, None, w, b, True, eps=0.0), "eps must be a positive number"),
        (lambda: batch_norm_relu(x, None, None, w, b, True, momentum=1.5), "momentum must be a number in [0, 1]"),
        (lambda: batch_norm_relu(x[:1, :, :1, :1], None, None, w, b, True), "more than one value per channel"),
        (lambda: batch_norm_relu(x, None, None, w, b, False), "evaluation mode needs running_mean"),
    ]
    for f, msg in cases:
        with pytest.raises(ValueError, match=r"^batch_norm_relu: .*" + __import__("re").escape(msg)):
            f()


def test_binding_checks_its_arguments():
    x = torch.randn(10, 3)
    w, b = torch.ones(3), torch.zeros(3)
    y, m, v = torch.empty_like(x), torch.empty(3), torch.empty(3)
    a = _ext.arg
    with pytest.raises(ValueError, match=r"batch_norm_relu_forward: x must be contiguous"):
        _ext.C.batch_norm_relu_forward(a(torch.randn(3, 10).t()), a(w), a(b), 1e-5, a(y), a(m), a(v), None, 1, "auto", 0)
    with pytest.raises(ValueError, match=r"batch_norm_relu_forward: weight must have shape \(C,\)"):
        _ext.C.batch_norm_relu_forward(a(x), a(torch.ones(4)), a(b), 1e-5, a(y), a(m), a(v), None, 1, "auto", 0)
    with pytest.raises(ValueError, match=r"batch_norm_relu_forward: eps must be a positive finite number"):
        _ext.C.batch_norm_relu_forward(a(x), a(w), a(b), float("nan"), a(y), a(m), a(v), None, 1, "auto", 0)
    with pytest.raises(ValueError, match=r"batch_norm_relu_backward: grad must have dtype float32, got float64"):
        _ext.C.batch_norm_relu_backward(a(x.double()), a(x), a(w), a(b), a(m), a(v), 1e-5, a(y), a(m), a(v), None, 1, "auto", 0)
    with pytest.raises(ValueError, match=r"needs more than one value per channel"):
        _ext.C.batch_norm_relu_forward(a(x[:1]), a(w), a(b), 1e-5, a(y[:1]), a(m), a(v), None, 1, "auto", 0)


# ----------------------------------------------------------------------------------------------
# batch norm + ReLU + 2×2 max pooling
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_pooled_matches_definition(gen, dtype, tol):
    for shape in ((6, 5, 8, 10), (3, 4, 7, 5), (4, 16, 2, 3)):  # even, odd (dropped edges), one window
        x, w, b = _inputs(gen, shape, dtype)
        _check_pooled(x, w, b, 1e-5, tol)                                               # NCHW: copied
        _check_pooled(x.contiguous(memory_format=torch.channels_last), w, b, 1e-5, tol)  # NHWC: a view
    x, w, b = _inputs(gen, (5, 6, 6, 6), dtype)
    _check_pooled(x, -w, b, 1e-5, tol)  # γ < 0: each window's winner is its smallest input


def test_pooled_ties_go_to_the_first_maximum(gen):
    """Integer-valued inputs tie within windows; γ = 0 makes every window a four-way tie. The
    gradient must reach the element max_pool2d chooses (the first in row-major order)."""
    x = torch.randint(0, 3, (4, 3, 6, 8), generator=gen).double()
    w = torch.tensor([1.0, 0.0, -2.0], dtype=torch.float64)
    b = torch.tensor([0.5, 0.7, 0.1], dtype=torch.float64)
    _check_pooled(x, w, b, 1e-5, 1e-12)
    _check_pooled(x.float(), w.float(), b.float(), 1e-5, 1e-5)
    xs = x.clone().requires_grad_()
    (gx,) = torch.autograd.grad(batch_norm_relu_max_pool2d(xs, None, None, w, b, True)[:, 1].sum(), xs)
    # channel 1 (γ = 0): dz = 1 at the top-left element of each window, 0 elsewhere; dx = γ s (...) = 0
    assert torch.count_nonzero(gx[:, 1]) == 0


def test_pooled_gradcheck_and_opcheck(gen):
    x, w, b = _inputs(gen, (3, 4, 6, 4), torch.float64)
    args = tuple(t.clone().requires_grad_() for t in (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w, b: batch_norm_relu_max_pool2d(x, None, None, w, b, True, eps=1e-3),
                                    args)
    xl = x.permute(0, 2, 3, 1).contiguous()
    torch.library.opcheck(torch.ops.orbitcore.batch_norm_relu_pool2_forward.default, (xl, w, b, 1e-5))
    y, mean, var = torch.ops.orbitcore.batch_norm_relu_pool2_forward(xl, w, b, 1e-5)
    assert y.shape == (3, 3, 2, 4)
    torch.library.opcheck(torch.ops.orbitcore.batch_norm_relu_pool2_backward.default,
                          (torch.randn_like(y), xl, w, b, mean, var, 1e-5))


def test_pooled_evaluation_mode_is_the_plain_triple(gen):
    x, w, b = _inputs(gen, (5, 3, 6, 7), torch.float64)
    rm, rv = torch.randn(3, dtype=torch.float64), 1 + torch.rand(3, dtype=torch.float64)
    y = batch_norm_relu_max_pool2d(x, rm, rv, w, b, False)
    want = torch.nn.functional.max_pool2d(batch_norm_relu(x, rm, rv, w, b, False), 2)
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)


def test_pooled_bad_inputs_are_named():
    x = torch.randn(4, 3, 5, 5)
    w, b = torch.ones(3), torch.zeros(3)
    fn = batch_norm_relu_max_pool2d
    cases = [
        (lambda: fn(x[:, :, 0], None, None, w, b, True), "x must have shape (N, C, H, W) with H, W >= 2"),
        (lambda: fn(x[:, :, :1], None, None, w, b, True), "x must have shape (N, C, H, W) with H, W >= 2"),
        (lambda: fn(x.long(), None, None, w, b, True), "x must be float32 or float64"),
        (lambda: fn(x, None, None, torch.ones(4), b, True), "weight must have shape (C,) = (3,)"),
        (lambda: fn(x, None, None, w, b, False), "evaluation mode needs running_mean"),
    ]
    for f, msg in cases:
        with pytest.raises(ValueError, match=r"^batch_norm_relu_max_pool2d: .*" + __import__("re").escape(msg)):
            f()
    xl = torch.randn(2, 4, 6, 3)
    m, v = torch.empty(3), torch.empty(3)
    a = _ext.arg
    with pytest.raises(ValueError, match=r"batch_norm_relu_pool2_forward: out must have shape"):
        _ext.C.batch_norm_relu_pool2_forward(a(xl), a(w), a(b), 1e-5, a(torch.empty_like(xl)), a(m), a(v), None, 1, "auto", 0)
    with pytest.raises(ValueError, match=r"batch_norm_relu_pool2_forward: x must be at least 2 x 2"):
        _ext.C.batch_norm_relu_pool2_forward(a(xl[:, :1].contiguous()), a(w), a(b), 1e-5, a(torch.empty(2, 0, 3, 3)), a(m), a(v),
                                             None, 1, "auto", 0)
    with pytest.raises(ValueError, match=r"batch_norm_relu_pool2_backward: grad must have shape"):
        _ext.C.batch_norm_relu_pool2_backward(a(torch.empty_like(xl)), a(xl), a(w), a(b), a(m), a(v), 1e-5, None,
                                              a(m), a(v), None, 1, "auto", 0)


def test_every_simd_variant_matches_the_definition(gen, simd, monkeypatch):
    """Each instruction-set build of the drivers (norm_simd_*.cpp), plain and pooled, float64
    against the definition and float32 within rounding, odd sizes included."""
    monkeypatch.setenv("ORBITCORE_CPU_SIMD", simd)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 2e-5)):
        x, w, b = _inputs(gen, (5, 19, 7, 9), dtype, offset=0.3)
        x = x.contiguous(memory_format=torch.channels_last)
        _check_against_reference(x, w, b, 1e-5, tol)
        _check_pooled(x, w, b, 1e-5, tol)
        _check_pooled(x, -w, b, 1e-5, tol)


def test_an_unknown_simd_level_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("ORBITCORE_CPU_SIMD", "sse9")
    with pytest.raises(ValueError, match=r"batch_norm_relu_forward: simd: unknown SIMD level 'sse9'"):
        batch_norm_relu(torch.randn(4, 3, 2, 2), None, None, None, None, True)


@pytest.mark.cuda
@pytest.mark.parametrize("op", [batch_norm_relu, batch_norm_relu_max_pool2d])
def test_cuda_matches_cpu(gen, op):
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        x, w, b = _inputs(gen, (8, 40, 9, 10), dtype, offset=1.0)  # odd H: a dropped row when pooling
        x = x.contiguous(memory_format=torch.channels_last)
        outs = []
        for dev in ("cpu", "cuda"):
            xs, ws, bs = (t.to(dev).requires_grad_() for t in (x, w, b))
            rm, rv = torch.zeros(40, dtype=dtype, device=dev), torch.ones(40, dtype=dtype, device=dev)
            y = op(xs, rm, rv, ws, bs, True)
            g = torch.autograd.grad(y, (xs, ws, bs), torch.ones_like(y))
            outs.append([t.cpu() for t in (y, *g, rm, rv)])
        for u, v in zip(*outs):
            torch.testing.assert_close(u, v, rtol=tol, atol=tol * 10)
