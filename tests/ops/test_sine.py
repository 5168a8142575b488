"""The SIREN activation sin(w0 · x) (orbitcore.ops.sine): forward and backward against float64
torch.sin / torch.cos, over the fast range, its edges and beyond (the C-library path), non-finite
inputs, every SIMD variant, threads, layouts, gradcheck, opcheck, torch.compile, SineLayer /
SIREN against the plain PyTorch layer, bad inputs, fuzz, CUDA."""
from __future__ import annotations

import math

import pytest
import torch

from orbitcore import _ext
from orbitcore.nn import SIREN, SineLayer, plain_sine
from orbitcore.ops import sine_activation

# the fast reduction's ranges (src/orbitcore/sine.hpp: 2^12 · π/2 for float, 2^20 · π/2 for double)
RANGE = {torch.float32: 2 ** 12 * math.pi / 2, torch.float64: 2 ** 20 * math.pi / 2}
# tolerances against the float64 reference, relative to max(1, |value|): about two ulps
TOL = {torch.float32: 1.5e-7, torch.float64: 5e-16}


def _reference(x: torch.Tensor, w0: float, grad: torch.Tensor | None = None):
    """sin(w0 · x) and grad · w0 · cos(w0 · x) in float64, with w0 · x formed in x's precision
    (as the kernel and PyTorch's ``w0 * x`` both form it)."""
    z = (torch.tensor(w0, dtype=x.dtype) * x).double()
    y = torch.sin(z)
    dx = None if grad is None else grad.double() * w0 * torch.cos(z)
    return y, dx


def _check(x: torch.Tensor, w0: float):
    g = torch.randn(x.shape, dtype=torch.float64).to(x.dtype)
    xs = x.detach().clone().requires_grad_()
    y = sine_activation(xs, w0)
    (dx,) = torch.autograd.grad(y, xs, g)
    yr, dxr = _reference(x, w0, g)
    assert y.shape == x.shape and y.dtype == x.dtype and dx.dtype == x.dtype
    tol = TOL[x.dtype]
    finite = torch.isfinite(yr)
    assert torch.equal(torch.isnan(y), ~finite), "non-finite w0 · x must give NaN, finite must not"
    y, dx = y.detach(), dx.detach()
    err_y = (y.double() - yr).abs()[finite]
    err_dx = ((dx.double() - dxr).abs() / dxr.abs().clamp_min(1.0))[finite]
    assert err_y.numel() == 0 or float(err_y.max()) <= tol, f"forward error {float(err_y.max()):.3g} > {tol}"
    assert err_dx.numel() == 0 or float(err_dx.max()) <= 3 * tol, f"backward error {float(err_dx.max()):.3g}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("w0", [30.0, 1.0, -2.5, 0.0])
def test_matches_float64_sin_and_cos(gen, dtype, w0):
    """Typical SIREN pre-activations (|w0 · x| up to ~100), and a spread of magnitudes."""
    x = torch.cat([torch.randn(50_001, generator=gen, dtype=torch.float64) * 3,
                   torch.randn(10_000, generator=gen, dtype=torch.float64) * 1e-4,
                   torch.linspace(-4, 4, 9999, dtype=torch.float64)])
    _check(x.to(dtype), w0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_quadrant_boundaries_and_the_edges_of_the_fast_range(gen, dtype):
    """Multiples of π/4 (where the reduction changes quadrant or rounds q), the largest arguments
    of the fast path, and just beyond it (the C-library pass)."""
    R = RANGE[dtype]
    k = torch.arange(-4000, 4001, dtype=torch.float64)
    eps = torch.tensor([-1e-9, 0.0, 1e-9], dtype=torch.float64)
    near_quadrants = (k[:, None] * math.pi / 4 + eps[None, :]).flatten()
    edges = torch.cat([R * (1 - torch.rand(2000, generator=gen, dtype=torch.float64) * 1e-3),
                       R * (1 + torch.rand(2000, generator=gen, dtype=torch.float64) * 1e-3)])
    x = torch.cat([near_quadrants, edges, -edges])
    _check(x.to(dtype), 1.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_arguments_beyond_the_fast_range_and_non_finite(gen, dtype):
    big = torch.tensor([1e5, -3e7, 1.5e12, 6.5e3, -6.44e3, 2e6, -1e15], dtype=torch.float64)
    mixed = torch.randn(8192, generator=gen, dtype=torch.float64)
    mixed[::97] = 1e7 * torch.randn(mixed[::97].shape, generator=gen, dtype=torch.float64)  # a few per block
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0], dtype=torch.float64)
    _check(torch.cat([big, mixed, special]).to(dtype), 1.0)
    # w0 · x overflowing to inf in float32 gives NaN, as sin(inf) does
    y = sine_activation(torch.tensor([3e38], dtype=torch.float32), 30.0)
    assert torch.isnan(y).all()


def test_every_simd_variant_matches(gen, simd, monkeypatch):
    """Each instruction-set build of the drivers (sine_simd_*.cpp), both dtypes, odd sizes and
    blocks with and without out-of-range elements."""
    monkeypatch.setenv("ORBITCORE_CPU_SIMD", simd)
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(3 * 4096 + 17, generator=gen, dtype=torch.float64) * 5
        x[5000] = 1e8  # one block takes the second pass
        _check(x.to(dtype), 30.0)
        _check(x[:7].to(dtype), 30.0)


def test_threads_layouts_and_shapes(gen):
    x = torch.randn(64, 33, 5, generator=gen)  # above the drivers' parallel threshold
    g = torch.randn(x.shape, generator=gen)
    n0 = torch.get_num_threads()
    out = []
    try:
        for nt in (1, 2):
            torch.set_num_threads(nt)
            xs = x.clone().requires_grad_()
            y = sine_activation(xs, 30.0)
            out.append((y.detach(), torch.autograd.grad(y, xs, g)[0]))
    finally:
        torch.set_num_threads(n0)
    assert all(torch.equal(u, v) for u, v in zip(*out)), "an elementwise kernel must not depend on the thread count"
    one = out[0][0]
    t = x.transpose(0, 2)  # non-contiguous: copied once, same values
    assert torch.equal(sine_activation(t, 30.0), one.transpose(0, 2))
    assert sine_activation(torch.empty(0, 4), 30.0).shape == (0, 4)
    s = sine_activation(torch.tensor(0.25), 2.0)
    assert s.shape == () and abs(float(s) - math.sin(0.5)) < 1e-7


def test_gradcheck_opcheck_and_compile(gen):
    x = torch.randn(40, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: sine_activation(t, 7.0), (x,))
    torch.library.opcheck(torch.ops.orbitcore.sine_forward.default, (x.detach().requires_grad_(), 30.0))
    torch.library.opcheck(torch.ops.orbitcore.sine_backward.default, (torch.randn_like(x), x.detach(), 30.0))
    f = torch.compile(lambda t: sine_activation(t, 30.0) * 2, fullgraph=True, backend="eager")
    xf = x.detach().float()
    torch.testing.assert_close(f(xf), 2 * sine_activation(xf, 30.0))


def test_siren_layers_use_the_kernel_and_match_plain_pytorch(gen):
    """SineLayer / SIREN on the kernel against the same layers computed with torch.sin (float64:
    to rounding; float32: within float rounding through depth), values and parameter gradients."""
    torch.manual_seed(0)
    net = SIREN(3, 2, hidden=32, hidden_layers=2, w0=30.0)
    x = torch.rand(500, 3, generator=gen) * 2 - 1

    def plain(module, inp):
        h = inp
        for layer in module.body:
            h = torch.sin(layer.w0 * layer.linear(h))
        return module.out(h)

    for dtype, tol in ((torch.float64, 1e-13), (torch.float32, 2e-5)):
        m = net.to(dtype)
        xi = x.to(dtype)
        m.zero_grad()
        y = m(xi)
        y.square().sum().backward()
        g_kernel = [p.grad.clone() for p in m.parameters()]
        m.zero_grad()
        yp = plain(m, xi)
        yp.square().sum().backward()
        g_plain = [p.grad.clone() for p in m.parameters()]
        torch.testing.assert_close(y, yp, rtol=tol, atol=tol)
        for a, b in zip(g_kernel, g_plain):
            torch.testing.assert_close(a, b, rtol=tol * 10, atol=tol * 10)
    # the layer really runs on the kernel (not torch.sin): its profile names the custom op
    layer = SineLayer(3, 8)
    with torch.profiler.profile() as prof:
        layer(torch.rand(10, 3))
    names = {e.key for e in prof.key_averages()}
    assert "orbitcore::sine_forward" in names and "aten::sin" not in names
    with plain_sine(), torch.profiler.profile() as prof:  # the benchmarks' plain-PyTorch baseline
        y_plain = layer(torch.rand(10, 3))
    names = {e.key for e in prof.key_averages()}
    assert "aten::sin" in names and not any(k.startswith("orbitcore::sine") for k in names)
    assert y_plain.requires_grad
    # without gradients the layer overwrites its linear map's output in place: the same values
    xi = torch.rand(300, 3, generator=gen)
    with torch.no_grad():
        y_nograd = layer(xi)
        z = layer.linear(xi)
    torch.testing.assert_close(y_nograd, torch.sin(30.0 * z), rtol=0, atol=2e-7)
    assert torch.equal(y_nograd, layer(xi).detach())
    x2 = torch.randn(64, 5, generator=gen, dtype=torch.float64)
    torch.library.opcheck(torch.ops.orbitcore.sine_.default, (x2, 3.0))
    # half precision has no kernel: the layer falls back to torch.sin
    h = layer.to(torch.bfloat16)(torch.rand(10, 3, dtype=torch.bfloat16))
    assert h.dtype == torch.bfloat16


def test_bad_inputs_are_clear_errors():
    with pytest.raises(TypeError, match=r"^sine_activation: x must be a torch.Tensor, got list"):
        sine_activation([1.0], 30.0)
    with pytest.raises(TypeError, match=r"^sine_activation: x must be a float32 or float64 tensor, got dtype torch.int64"):
        sine_activation(torch.arange(3), 30.0)
    with pytest.raises(TypeError, match=r"^sine_activation: x must be a float32 or float64 tensor, got dtype torch.complex64"):
        sine_activation(torch.ones(3, dtype=torch.complex64), 30.0)
    for w0 in (float("nan"), float("inf"), "30", True, None):
        with pytest.raises(ValueError, match=r"^sine_activation: w0 must be a finite number, got"):
            sine_activation(torch.ones(3), w0)
    a = _ext.arg
    x = torch.ones(4)
    with pytest.raises(ValueError, match=r"sine_forward: out must have shape"):
        _ext.C.sine_forward(a(x), 1.0, a(torch.empty(5)), 1, "auto", 0)
    with pytest.raises(ValueError, match=r"sine_forward: out must have dtype float32, got float64"):
        _ext.C.sine_forward(a(x), 1.0, a(torch.empty(4, dtype=torch.float64)), 1, "auto", 0)
    with pytest.raises(ValueError, match=r"sine_forward: x must be contiguous"):
        _ext.C.sine_forward(a(torch.ones(4, 4).t()), 1.0, a(torch.empty(4, 4)), 1, "auto", 0)
    with pytest.raises(ValueError, match=r"sine_forward: w0 must be a finite number"):
        _ext.C.sine_forward(a(x), float("nan"), a(torch.empty(4)), 1, "auto", 0)
    with pytest.raises(ValueError, match=r"sine_backward: grad must have shape"):
        _ext.C.sine_backward(a(torch.ones(3)), a(x), 1.0, a(torch.empty(4)), 1, "auto", 0)
    with pytest.raises(ValueError, match=r"sine_forward: simd: unknown SIMD level 'sse9'"):
        _ext.C.sine_forward(a(x), 1.0, a(torch.empty(4)), 1, "sse9", 0)


def test_fuzz(gen):
    """Random shapes, dtypes, w0 and magnitudes (log-uniform over 1e-6 … 1e8, so some blocks hold
    out-of-range elements), against the reference."""
    for _ in range(30):
        dtype = (torch.float32, torch.float64)[int(torch.randint(2, (1,), generator=gen))]
        shape = tuple(int(s) for s in torch.randint(1, 40, (int(torch.randint(1, 4, (1,), generator=gen)),),
                                                    generator=gen))
        mag = 10 ** (torch.rand(shape, generator=gen, dtype=torch.float64) * 14 - 6)
        sign = torch.where(torch.rand(shape, generator=gen) < 0.5, -1.0, 1.0).double()
        w0 = float(torch.randn(1, generator=gen) * 20)
        _check((sign * mag).to(dtype), w0)


@pytest.mark.cuda
def test_cuda_matches_cpu(gen):
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(100_003, generator=gen, dtype=torch.float64) * 4
        x[::1000] = 1e7
        x = x.to(dtype)
        g = torch.randn_like(x)
        outs = []
        for dev in ("cpu", "cuda"):
            xs = x.to(dev).requires_grad_()
            y = sine_activation(xs, 30.0)
            (dx,) = torch.autograd.grad(y, xs, g.to(dev))
            outs.append((y.cpu(), dx.cpu()))
        tol = TOL[dtype]
        for u, v in zip(*outs):
            torch.testing.assert_close(u, v, rtol=3 * tol, atol=3 * tol)
