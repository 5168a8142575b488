"""Second moments: MomentAccumulator / moments_from_stack against direct float64 formulas,
streaming, merge and all-reduce, noise debiasing (eq. 15), and model_moments / moment_loss
against the dense reference, autograd, opcheck and bad inputs."""
import math

import numpy as np
import pytest
import torch

import orbitcore as oc
from orbitcore import _ext, fourier
from orbitcore.io import write_mrc
from orbitcore.ops import _reference as ref
from orbitcore.ops.moments import gram_is_cheaper

C128 = torch.complex128


def rel(a, b):
    return float((a.to(b.dtype) - b).abs().max() / b.abs().max().clamp_min(1e-300))


# ------------------------------------------------------------------------------------------------
# Data side: exact against the direct computation
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ndim,n,radius", [(2, 7, None), (2, 8, None), (2, 9, 3.5), (2, 10, 5.0),
                                           (1, 12, None), (1, 13, 4.0), (2, 1, None), (1, 2, None)])
@pytest.mark.parametrize("acc_dtype", [torch.float64, torch.float32])
def test_accumulator_matches_direct(ndim, n, radius, acc_dtype, gen):
    x = torch.randn(57, *([n] * ndim), generator=gen, dtype=torch.float64) + 0.3
    acc = oc.MomentAccumulator(n, ndim, radius=radius, sigma2=0.25, dtype=acc_dtype)
    acc.update(x[:20]).update(x[20:])
    r = acc.result()
    M1, M2 = ref.data_moments(x, ndim, radius, sigma2=0.25)
    assert r.M1.shape == M1.shape and r.M2.shape == M2.shape and r.count == 57
    tol = 1e-13 if acc_dtype == torch.float64 else 2e-6
    assert rel(r.M1, M1) < tol
    assert rel(r.M2, M2) < tol
    assert r.M2.dtype == (C128 if acc_dtype == torch.float64 else torch.complex64)


@pytest.mark.parametrize("data_dtype,acc_dtype", [(torch.float32, torch.float32), (torch.float32, torch.float64),
                                                  (torch.float64, torch.float64)])
def test_every_simd_variant_matches_direct(simd, data_dtype, acc_dtype, gen, monkeypatch):
    # Sizes that leave partial register tiles, several row blocks and > 1 sample block (384).
    monkeypatch.setenv("ORBITCORE_CPU_SIMD", simd)
    n, radius = 17, 7.5
    x = torch.randn(800, n, n, generator=gen, dtype=torch.float64)
    acc = oc.MomentAccumulator(n, radius=radius, dtype=acc_dtype)
    acc.update(x.to(data_dtype))
    r = acc.result()
    Z = fourier.fft2c(x.to(data_dtype).double())[:, acc.layout.mask]
    M2 = Z.mT @ Z.conj() / x.shape[0]
    tol = 1e-13 if data_dtype == torch.float64 else 3e-6
    assert rel(r.M2, M2) < tol
    assert rel(r.M1, Z.mean(0)) < tol


def test_unknown_or_unsupported_simd_level_is_an_error(gen, monkeypatch):
    monkeypatch.setenv("ORBITCORE_CPU_SIMD", "sse9")
    acc = oc.MomentAccumulator(5)
    with pytest.raises(ValueError, match="moments_accumulate: simd: unknown SIMD level 'sse9'"):
        acc.update(torch.randn(3, 5, 5, generator=gen))


def test_streaming_in_chunks_of_any_size(gen):
    n, N = 11, 1100
    x = torch.randn(N, n, n, generator=gen, dtype=torch.float64)
    whole = oc.MomentAccumulator(n, radius=4.5).update(x).result()
    sizes = [1, 2, 383, 384, 385, 1, 7, 200]
    acc = oc.MomentAccumulator(n, radius=4.5)
    s = 0
    for k in sizes:
        acc.update(x[s:s + k])
        s += k
    acc.update(x[s:])
    chunked = acc.result()
    assert chunked.count == N
    torch.testing.assert_close(chunked.M2, whole.M2, rtol=1e-13, atol=1e-13 * float(whole.M2.abs().max()))
    torch.testing.assert_close(chunked.M1, whole.M1, rtol=1e-13, atol=1e-13 * float(whole.M1.abs().max()))
    # single observations and leading batch dimensions
    acc2 = oc.MomentAccumulator(n, radius=4.5)
    acc2.update(x[0]).update(x[1:].reshape(7, -1, n, n))  # 1099 = 7 x 157
    torch.testing.assert_close(acc2.result().M2, whole.M2, rtol=1e-13, atol=1e-13 * float(whole.M2.abs().max()))


def test_float32_accumulation_error_does_not_grow_with_blocks(gen):
    # float32 data into the float64 accumulator: each block of <= 384 products is summed in
    # float32, blocks in float64 -> the relative error stays at float32 rounding of one block.
    n, N = 6, 20000
    x = (torch.randn(N, n, n, generator=gen) + 2.0)
    r = oc.MomentAccumulator(n).update(x).result()
    Z = fourier.fft2c(x.double())
    Z = Z.reshape(N, -1)
    M2 = Z.mT @ Z.conj() / N
    assert rel(r.M2, M2) < 2e-6


def test_m2_is_hermitian_psd_and_layout_is_consistent(gen):
    n = 10
    x = torch.randn(40, n, n, generator=gen, dtype=torch.float64)
    r = oc.MomentAccumulator(n, radius=4.0).update(x).result()
    assert torch.equal(r.M2, r.M2.mH)  # exactly Hermitian
    assert torch.all(r.M2.diagonal().imag == 0)
    ev = torch.linalg.eigvalsh(r.M2)
    assert float(ev.min()) > -1e-10 * float(ev.max())
    lay = r.layout
    # order: boolean-mask order of the centred grid; frequencies are (kx, ky)
    k = torch.arange(n) - n // 2
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    assert torch.equal(lay.frequencies, torch.stack([kx[lay.mask], ky[lay.mask]], 1))
    assert torch.equal(lay.gather(fourier.fft2c(x)), fourier.fft2c(x)[:, lay.mask])
    torch.testing.assert_close(lay.scatter(lay.gather(fourier.fft2c(x))), fourier.fft2c(x) * lay.mask)
    # conjugate: position of -k (wrapped); real data -> M1[conj] = conj(M1)
    neg = (-lay.frequencies + n // 2) % n - n // 2
    assert torch.equal(lay.frequencies[lay.conjugate], neg)
    torch.testing.assert_close(r.M1[lay.conjugate], r.M1.conj(), rtol=0, atol=1e-12)
    torch.testing.assert_close(r.M2[lay.conjugate][:, lay.conjugate], r.M2.conj(), rtol=0, atol=1e-10)


def test_white_noise_power_is_n_to_the_d_sigma2(gen):
    # Unnormalised DFT: white noise of variance s2 per pixel has E|F e(k)|^2 = n^d s2, and
    # distinct frequencies are uncorrelated. Known sigma2 removes exactly that.
    s2 = 0.7
    for ndim, n, N in ((2, 9, 6000), (1, 16, 20000)):
        e = torch.randn(N, *([n] * ndim), generator=gen, dtype=torch.float64) * math.sqrt(s2)
        raw = oc.MomentAccumulator(n, ndim).update(e).result()
        d = raw.M2.diagonal().real / (n**ndim * s2)
        assert abs(float(d.mean()) - 1.0) < 0.02  # the mean over m diagonal entries
        off = raw.M2 - torch.diag(raw.M2.diagonal())
        assert float(off.abs().mean()) < 0.05 * n**ndim * s2
        deb = oc.MomentAccumulator(n, ndim, sigma2=s2).update(e).result()
        assert abs(float(deb.M2.diagonal().real.mean())) < 0.02 * n**ndim * s2
        torch.testing.assert_close(deb.M2, raw.M2 - n**ndim * s2 * torch.eye(raw.m, dtype=C128))


def test_sigma2_estimators(gen):
    n, N, s2 = 32, 3000, 0.5
    c = n // 2
    yy, xx = torch.meshgrid(torch.arange(n) - c, torch.arange(n) - c, indexing="ij")
    rr = (xx**2 + yy**2).double()
    # signal: random smooth blobs inside radius 10 (zero in the corners, low-pass)
    amp = torch.randn(N, 1, 1, generator=gen, dtype=torch.float64)
    sig = amp * torch.exp(-rr / 18.0) * (rr < 100)
    x = sig + torch.randn(N, n, n, generator=gen, dtype=torch.float64) * math.sqrt(s2)
    corners = oc.MomentAccumulator(n, radius=8, sigma2="corners").update(x)
    est = corners.noise_estimate()
    assert abs(est - s2) / s2 < 0.01
    assert corners.result().sigma2 == pytest.approx(est)
    hf = oc.MomentAccumulator(n, radius=8, sigma2="high_frequency", noise_radius=12).update(x)
    assert abs(hf.noise_estimate() - s2) / s2 < 0.02
    # the debiased diagonal at a signal-free frequency is ~0
    r = hf.result()
    far = (r.layout.frequencies.double().norm(dim=1) > 7.5)
    assert float(r.M2.diagonal().real[far].abs().mean()) < 0.05 * n * n * s2
    # 1-D signals: the region must be given
    sig1 = torch.randn(N, 1, generator=gen, dtype=torch.float64) * torch.exp(-((torch.arange(40) - 20.0) / 3) ** 2)
    y = sig1 + torch.randn(N, 40, generator=gen, dtype=torch.float64) * math.sqrt(s2)
    acc1 = oc.MomentAccumulator(40, 1, sigma2="corners", noise_radius=12).update(y)
    assert abs(acc1.noise_estimate() - s2) / s2 < 0.02


def test_mra_debiased_moments_match_eq15_within_monte_carlo_error(gen):
    # MRA (eq. 23): v_j = shift_{s_j}(v) + noise, s_j ~ rho on Z_n. With our shift convention
    # (content moves by +s: F v_j(k) = e^{-2 pi i k s / n} v^(k)):
    #   E M1(k) = v^(k) rho^(k),  E M2(k1, k2) = v^(k1) rho^(k1 - k2) conj(v^(k2))   (eq. 15)
    # with rho^(k) = sum_s rho(s) e^{-2 pi i k s / n}. Check every entry within 5 standard errors,
    # and that without debiasing the diagonal is far off.
    n, N, sigma = 12, 30000, 1.0
    t = torch.arange(n, dtype=torch.float64)
    v = torch.exp(-0.5 * ((t - 4.0) / 1.3) ** 2) - 0.6 * torch.exp(-0.5 * ((t - 8.0) / 0.8) ** 2)
    rho = torch.exp(-0.5 * ((t - 3.0) / 1.5) ** 2) + 0.5 * torch.exp(-0.5 * ((t - 9.0) / 1.0) ** 2)
    rho = rho / rho.sum()
    s = torch.multinomial(rho, N, replacement=True, generator=gen)
    idx = (torch.arange(n)[None, :] - s[:, None]) % n
    x = v[idx] + sigma * torch.randn(N, n, generator=gen, dtype=torch.float64)
    acc = oc.MomentAccumulator(n, 1, sigma2=sigma**2)
    for b in range(0, N, 4096):
        acc.update(x[b:b + 4096])
    r = acc.result()
    k = torch.arange(n) - n // 2
    vh = fourier.fft1c(v)
    rho_h = lambda kk: (rho[None, :] * torch.exp(-2j * math.pi * kk[..., None] * t / n)).sum(-1)  # noqa: E731
    M1_true = vh * rho_h(k.double())
    M2_true = vh[:, None] * rho_h((k[:, None] - k[None, :]).double()) * vh.conj()[None, :]
    # standard errors from the samples themselves
    Z = fourier.fft1c(x)
    P = Z[:, :, None] * Z.conj()[:, None, :]
    se2 = (P.real.std(0) ** 2 + P.imag.std(0) ** 2).sqrt() / math.sqrt(N)
    se1 = Z.std(0) / math.sqrt(N)
    assert torch.all((r.M2 - M2_true).abs() < 5 * se2 + 1e-12)
    assert torch.all((r.M1 - M1_true).abs() < 5 * se1 + 1e-12)
    raw = oc.MomentAccumulator(n, 1).update(x).result()
    assert torch.all((raw.M2 - M2_true).diagonal().real > 10 * se2.diagonal())


def test_merge_is_the_single_accumulator_result(gen):
    n = 9
    x = torch.randn(300, n, n, generator=gen, dtype=torch.float64)
    one = oc.MomentAccumulator(n, radius=4, sigma2="corners", noise_radius=3.5).update(x)
    a = oc.MomentAccumulator(n, radius=4, sigma2="corners", noise_radius=3.5).update(x[:100])
    b = oc.MomentAccumulator(n, radius=4, sigma2="corners", noise_radius=3.5).update(x[100:])
    r1, r2 = one.result(), a.merge(b).result()
    assert r2.count == 300
    assert r2.sigma2 == pytest.approx(r1.sigma2, rel=1e-12)
    torch.testing.assert_close(r2.M2, r1.M2, rtol=1e-13, atol=1e-13 * float(r1.M2.abs().max()))
    M1, M2 = ref.data_moments(x, 2, 4, sigma2=r1.sigma2)
    assert rel(r2.M2, M2) < 1e-12
    # state_dict round trip
    c = oc.MomentAccumulator.from_state_dict(one.state_dict())
    torch.testing.assert_close(c.result().M2, r1.M2, rtol=0, atol=0)


def _all_reduce_worker(rank, world, path, x):
    acc = oc.MomentAccumulator(x.shape[-1], radius=4, sigma2="corners", noise_radius=3.5)
    acc.update(x[rank::world])  # each process its own shard
    acc.all_reduce()
    r = acc.result()
    torch.save({"M1": r.M1, "M2": r.M2, "count": r.count, "sigma2": r.sigma2}, f"{path}.{rank}")


@pytest.mark.distributed
def test_all_reduce_gloo_two_processes_equals_single_process(gen, tmp_path, spawn_gloo):
    x = torch.randn(150, 9, 9, generator=gen, dtype=torch.float64)
    spawn_gloo(_all_reduce_worker, str(tmp_path / "res"), x)
    single = oc.MomentAccumulator(9, radius=4, sigma2="corners", noise_radius=3.5).update(x).result()
    for rank in range(2):
        got = torch.load(tmp_path / f"res.{rank}")
        assert got["count"] == 150
        assert got["sigma2"] == pytest.approx(single.sigma2, rel=1e-12)
        torch.testing.assert_close(got["M2"], single.M2, rtol=1e-13, atol=1e-13 * float(single.M2.abs().max()))
        torch.testing.assert_close(got["M1"], single.M1, rtol=1e-13, atol=1e-13 * float(single.M1.abs().max()))


def test_moments_from_stack_sources_agree(gen, tmp_path):
    import starfile
    import pandas as pd

    n = 8
    x = torch.randn(70, n, n, generator=gen)
    want = oc.MomentAccumulator(n, radius=3).update(x).result()
    write_mrc(tmp_path / "a.mrcs", x[:40])
    (tmp_path / "sub").mkdir()
    write_mrc(tmp_path / "sub" / "b.mrcs", x[40:])
    # .mrcs directly (first 40 images)
    r = oc.moments_from_stack(tmp_path / "a.mrcs", radius=3, batch_size=16, verbose=False)
    # (float32 images: products are summed in float32 per kernel call, so batching changes the
    # rounding at the float32 level)
    torch.testing.assert_close(r.M2, oc.MomentAccumulator(n, radius=3).update(x[:40]).result().M2,
                               rtol=1e-5, atol=1e-5)
    # STAR naming images in shuffled order across two stacks
    names = [f"{i + 1:06d}@a.mrcs" for i in range(40)] + [f"{i + 1:06d}@sub/b.mrcs" for i in range(30)]
    order = np.random.default_rng(0).permutation(70)
    starfile.write({"particles": pd.DataFrame({"rlnImageName": [names[i] for i in order]})}, tmp_path / "p.star")
    r = oc.moments_from_stack(tmp_path / "p.star", radius=3, batch_size=9, verbose=False)
    assert r.count == 70
    torch.testing.assert_close(r.M2, want.M2, rtol=1e-5, atol=1e-5)
    # an array, a map-style dataset of (image, label) items, an iterable of batches, a limit
    for src in (x.numpy(), [(x[i], i) for i in range(70)], (x[i:i + 13] for i in range(0, 70, 13))):
        r = oc.moments_from_stack(src, radius=3, batch_size=11, verbose=False)
        torch.testing.assert_close(r.M2, want.M2, rtol=1e-5, atol=1e-5)
    r = oc.moments_from_stack(x, radius=3, limit=25, verbose=True)
    torch.testing.assert_close(r.M2, oc.MomentAccumulator(n, radius=3).update(x[:25]).result().M2,
                               rtol=1e-5, atol=1e-5)
    # 1-D signals
    y = torch.randn(30, 12, generator=gen, dtype=torch.float64)
    r = oc.moments_from_stack(y, ndim=1, verbose=False)
    torch.testing.assert_close(r.M2, ref.data_moments(y, 1)[1], rtol=1e-12, atol=1e-12)


def test_moments_from_stack_bad_sources(tmp_path):
    import starfile
    import pandas as pd

    with pytest.raises(FileNotFoundError, match="moments_from_stack: .*no such file"):
        oc.moments_from_stack(tmp_path / "missing.mrcs")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ValueError, match="expected an .mrcs/.mrc stack or a .star file"):
        oc.moments_from_stack(tmp_path / "x.txt")
    starfile.write({"particles": pd.DataFrame({"rlnImageName": ["1@nope.mrcs"]})}, tmp_path / "p.star")
    with pytest.raises(FileNotFoundError, match="image file.*not found: nope.mrcs"):
        oc.moments_from_stack(tmp_path / "p.star")
    write_mrc(tmp_path / "a.mrcs", torch.zeros(3, 4, 4))
    starfile.write({"particles": pd.DataFrame({"rlnImageName": ["5@a.mrcs"]})}, tmp_path / "q.star")
    with pytest.raises(IndexError, match="points at image 5, but .*a.mrcs holds 3 image"):
        oc.moments_from_stack(tmp_path / "q.star", verbose=False)
    with pytest.raises(ValueError, match="the source yielded no observations"):
        oc.moments_from_stack(iter([]), verbose=False)
    with pytest.raises(ValueError, match="square images"):
        oc.moments_from_stack(torch.zeros(3, 4, 5), verbose=False)
    with pytest.raises(TypeError, match="source must be a path, an array"):
        oc.moments_from_stack(3.5)


def test_accumulator_bad_inputs(gen):
    acc = oc.MomentAccumulator(6, radius=2)
    cases = [
        (lambda: acc.update(torch.randn(3, 6, 5)), ValueError, r"update: batch must have shape \(B, n, n\) with n = 6, got \(3, 6, 5\)"),
        (lambda: acc.update(torch.randn(3, 6, 6, dtype=C128)), TypeError, "batch must be real observations"),
        (lambda: acc.update(torch.full((2, 6, 6), float("nan"))), ValueError, "batch must be finite"),
        (lambda: acc.update("x"), TypeError, "batch must be a torch.Tensor"),
        (lambda: acc.result(), ValueError, "no observations were accumulated"),
        (lambda: oc.MomentAccumulator(0), ValueError, "MomentAccumulator: size must be >= 1"),
        (lambda: oc.MomentAccumulator(6, 3), ValueError, "ndim must be 1 .* or 2"),
        (lambda: oc.MomentAccumulator(6, radius=-1), ValueError, "radius must be >= 0"),
        (lambda: oc.MomentAccumulator(6, sigma2=-0.1), ValueError, "sigma2 must be >= 0"),
        (lambda: oc.MomentAccumulator(6, sigma2="median"), ValueError, "sigma2 must be None, a number"),
        (lambda: oc.MomentAccumulator(6, 1, sigma2="corners"), ValueError, "needs noise_radius"),
        (lambda: oc.MomentAccumulator(6, sigma2="corners", noise_radius=10), ValueError, "no pixels beyond noise_radius"),
        (lambda: oc.MomentAccumulator(6, dtype=torch.float16), TypeError, "dtype must be torch.float32 or torch.float64"),
        (lambda: oc.MomentAccumulator(6, device="meta"), ValueError, "device must be 'cpu' or a CUDA device"),
        (lambda: acc.merge(oc.MomentAccumulator(6, radius=3)), ValueError, "merge: accumulators differ"),
        (lambda: acc.merge(3), TypeError, "other must be a MomentAccumulator"),
        (lambda: acc.all_reduce(), RuntimeError, "torch.distributed is not initialised"),
    ]
    for call, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            call()
    # integer data is accepted (converted to float32)
    acc.update(torch.randint(0, 5, (4, 6, 6), generator=gen))
    assert acc.count == 4
    with pytest.raises(TypeError, match="result: dtype must be torch.complex64 or torch.complex128"):
        acc.result(dtype=torch.float32)


def test_binding_validates_raw_calls():
    # (descriptors hold raw pointers: every tensor stays referenced by a name during the call)
    C, a = _ext.C, _ext.arg
    X, Xd, Xt = torch.zeros(3, 10), torch.zeros(3, 10, dtype=torch.float64), torch.zeros(10, 3).mT
    G, s = torch.zeros(4, 4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
    Gf, sf = G.float(), s.float()
    bad_cols, cols4, cols3 = torch.tensor([0, 1, 10, 3]), torch.arange(4), torch.arange(3)
    with pytest.raises(ValueError, match=r"moments_accumulate: columns\[2\] = 10 is out of range for data with L = 10"):
        C.moments_accumulate(a(X), a(bad_cols), a(G), a(s), 1, "auto", 0)
    with pytest.raises(ValueError, match="gram must be float64 for float64 data"):
        C.moments_accumulate(a(Xd), a(cols4), a(Gf), a(sf), 1, "auto", 0)
    with pytest.raises(ValueError, match=r"moments_accumulate: gram must have shape \(p, p\)"):
        C.moments_accumulate(a(X), a(cols3), a(G), a(s), 1, "auto", 0)
    with pytest.raises(ValueError, match="data must be contiguous"):
        C.moments_accumulate(a(Xt), a(cols4), a(G), a(s), 1, "auto", 0)
    slots, phase = torch.tensor([[0, 5, 1]], dtype=torch.int32), torch.zeros(1, 2, dtype=torch.float64)
    m1, m2 = torch.zeros(1, dtype=C128), torch.zeros(1, 1, dtype=C128)
    with pytest.raises(ValueError, match=r"moments_finalize: slots\[0\] = \(0, 5, 1\) is invalid for p = 4"):
        C.moments_finalize(a(G), a(s), a(slots), a(phase), 1.0, 0.0, a(m1), a(m2), 1, 0)
    A3, idx = torch.zeros(3, 3, dtype=C128), torch.tensor([[0, 0], [7, 0]])
    coef, out = torch.zeros(2, 2, 2, dtype=torch.float64), torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"moments_real_target: index\[1, 0\] = 7 is out of range for m = 3"):
        C.moments_real_target(a(A3), a(idx), a(coef), a(out), 1, 0)


def test_fuzz_accumulator_against_direct():
    g = torch.Generator().manual_seed(11)
    for trial in range(20):
        ndim = 1 + trial % 2
        n = int(torch.randint(1, 15 if ndim == 2 else 40, (1,), generator=g))
        radius = None if trial % 3 == 0 else float(torch.rand(1, generator=g)) * n * 0.8
        N = int(torch.randint(1, 60, (1,), generator=g))
        x = torch.randn(N, *([n] * ndim), generator=g, dtype=torch.float64)
        acc = oc.MomentAccumulator(n, ndim, radius=radius)
        cut = int(torch.randint(0, N + 1, (1,), generator=g))
        acc.update(x[:cut]).update(x[cut:])
        r = acc.result()
        M1, M2 = ref.data_moments(x, ndim, radius)
        assert rel(r.M2, M2) < 1e-12, f"trial {trial}: ndim={ndim} n={n} radius={radius} N={N}"
        assert rel(r.M1, M1) < 1e-12, f"trial {trial}"
        assert r.layout.p == r.layout.m


@pytest.mark.cuda
def test_cuda_accumulator_matches_cpu(gen):
    n = 21
    x = torch.randn(700, n, n, generator=gen)
    for dt in (torch.float32, torch.float64):
        cpu = oc.MomentAccumulator(n, radius=9, dtype=dt).update(x).result()
        gpu = oc.MomentAccumulator(n, radius=9, dtype=dt, device="cuda").update(x.cuda()).result()
        assert rel(gpu.M2.cpu(), cpu.M2) < 1e-5
        assert rel(gpu.M1.cpu(), cpu.M1) < 1e-5
    A = torch.randn(cpu.m, cpu.m, generator=gen, dtype=C128)
    from orbitcore.ops.moments import _real_basis, _target_real
    b = _real_basis(cpu.layout.conjugate)
    torch.testing.assert_close(_target_real(A.cuda(), tuple(t.cuda() if torch.is_tensor(t) else t for t in b)).cpu(),
                               _target_real(A, b))


# ------------------------------------------------------------------------------------------------
# Model side
# ------------------------------------------------------------------------------------------------
def hermitian_slices(q, n, radius, gen, dtype=C128):
    """Slices of real images (Hermitian symmetric) at the layout's frequencies."""
    lay = oc.MomentLayout(n, radius=radius)
    S = lay.gather(fourier.fft2c(torch.randn(q, n, n, generator=gen, dtype=torch.float64))) / n
    return lay, S.to(dtype)


def targets(m, gen, dtype=C128):
    M1 = torch.randn(m, generator=gen, dtype=dtype)
    X = torch.randn(m, m, generator=gen, dtype=dtype)
    return M1, (X + X.mH) / 2


def test_model_moments_match_reference(gen):
    q, m = 7, 13
    S = torch.randn(q, m, generator=gen, dtype=C128)
    w = torch.rand(q, generator=gen, dtype=torch.float64)
    M1, M2 = oc.model_moments(S, w)
    R1, R2 = ref.model_moments(S, w)
    torch.testing.assert_close(M1, R1, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(M2, R2, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(M2, M2.mH, rtol=0, atol=1e-14)  # Hermitian up to GEMM rounding
    # complex64 / NumPy
    M1n, M2n = oc.model_moments(S.to(torch.complex64).numpy(), w.float().numpy())
    assert isinstance(M2n, np.ndarray) and M2n.dtype == np.complex64
    np.testing.assert_allclose(M2n, R2.numpy(), rtol=1e-5, atol=1e-5)
    # weights are used as given (not renormalised)
    torch.testing.assert_close(oc.model_moments(S, 3 * w)[1], 3 * R2)


def test_model_moments_gradcheck_and_opcheck(gen):
    S = torch.randn(4, 5, generator=gen, dtype=C128, requires_grad=True)
    w = (torch.rand(4, generator=gen, dtype=torch.float64) + 0.1).requires_grad_()
    assert torch.autograd.gradcheck(lambda S, w: oc.model_moments(S, w), (S, w))
    assert torch.autograd.gradcheck(lambda S, w: oc.model_moments(S, w)[1], (S, w))
    torch.library.opcheck(torch.ops.orbitcore.model_moments.default, (S, w))
    g1 = torch.randn(5, generator=gen, dtype=C128)
    g2 = torch.randn(5, 5, generator=gen, dtype=C128)
    torch.library.opcheck(torch.ops.orbitcore.model_moments_backward.default, (g1, g2, S.detach(), w.detach(), True, True))


@pytest.mark.parametrize("form", ["gram", "dense"])
@pytest.mark.parametrize("hermitian", [False, True])
@pytest.mark.parametrize("squared", [False, True])
def test_moment_loss_matches_direct_formula(form, hermitian, squared, gen):
    lay, S = hermitian_slices(9, 9, 3.5, gen)
    if not hermitian:
        S = S + 0.3 * torch.randn(S.shape, generator=gen, dtype=C128)  # break the symmetry
    w = torch.rand(9, generator=gen, dtype=torch.float64)
    M1h, M2h = targets(lay.m, gen)
    conj = lay.conjugate if hermitian else None
    got = oc.moment_loss(M1h, M2h, S, w, 0.8, conjugate=conj, form=form, squared=squared)
    want = ref.moment_loss(M1h, M2h, S, w, 0.8, conjugate=conj, squared=squared)
    assert abs(float(got) - float(want)) <= 1e-12 * abs(float(want))
    ts = [t.clone().requires_grad_() for t in (M1h, M2h, S, w)]
    g = torch.autograd.grad(oc.moment_loss(*ts, 0.8, conjugate=conj, form=form, squared=squared), ts)
    gr = torch.autograd.grad(ref.moment_loss(*ts, 0.8, conjugate=conj, squared=squared), ts)
    for a, b in zip(g, gr):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_real_path_equals_complex_path_for_hermitian_slices(gen):
    lay, S = hermitian_slices(30, 11, 4.0, gen)
    w = torch.softmax(torch.randn(30, generator=gen, dtype=torch.float64), 0)
    x = torch.randn(200, 11, 11, generator=gen, dtype=torch.float64)
    data = oc.MomentAccumulator(11, radius=4.0).update(x).result()
    vals = [float(oc.moment_loss(data.M1, data.M2, S, w, 2.0, conjugate=c, form=f))
            for c in (None, data.conjugate) for f in ("gram", "dense")]
    for v in vals[1:]:
        assert abs(v - vals[0]) <= 1e-12 * vals[0]
    # gradients w.r.t. slices agree too (the upstream of real slices is Hermitian)
    Sg = S.clone().requires_grad_()
    g_c = torch.autograd.grad(oc.moment_loss(data.M1, data.M2, Sg, w, 2.0), Sg)[0]
    g_r = torch.autograd.grad(oc.moment_loss(data.M1, data.M2, Sg, w, 2.0, conjugate=data.conjugate), Sg)[0]
    # the complex-path gradient of Hermitian inputs is itself Hermitian; compare on that subspace
    sym = lambda g: 0.5 * (g + g[:, lay.conjugate].conj())  # noqa: E731
    torch.testing.assert_close(sym(g_c), g_r, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("hermitian", [False, True])
@pytest.mark.parametrize("form", ["gram", "dense"])
def test_moment_loss_gradcheck(hermitian, form, gen):
    lay, S = hermitian_slices(4, 5, 2.0, gen)
    S = S + 0.2 * torch.randn(S.shape, generator=gen, dtype=C128)
    w = torch.rand(4, generator=gen, dtype=torch.float64) + 0.2
    M1h, M2h = targets(lay.m, gen)
    conj = lay.conjugate if hermitian else None
    args = [t.clone().requires_grad_() for t in (M1h, M2h, S, w)]
    for squared in (False, True):
        assert torch.autograd.gradcheck(
            lambda a, b, c, d: oc.moment_loss(a, b, c, d, 0.6, conjugate=conj, form=form, squared=squared), args)


def test_moment_loss_opcheck_and_double_backward(gen):
    lay, S = hermitian_slices(3, 5, 2.0, gen)
    w = torch.rand(3, generator=gen, dtype=torch.float64) + 0.1
    M1h, M2h = targets(lay.m, gen)
    ts = [t.clone().requires_grad_() for t in (M1h, M2h, S, w)]
    empty = torch.empty(0, dtype=torch.int64)
    for conj in (empty, lay.conjugate):
        for form in ("gram", "dense"):
            torch.library.opcheck(torch.ops.orbitcore.moment_loss.default, (*ts, 0.5, conj, form, False))
            out = torch.ops.orbitcore.moment_loss(*[t.detach() for t in ts], 0.5, conj, form, False)
            torch.library.opcheck(torch.ops.orbitcore.moment_loss_backward.default,
                                  (torch.tensor(1.0, dtype=torch.float64), *[t.detach() for t in ts], 0.5, conj,
                                   form, False, *out[1:], True, True, True, True))
    L = oc.moment_loss(*ts)
    g = torch.autograd.grad(L, ts[2], create_graph=True)[0]
    with pytest.raises(RuntimeError, match="double backward"):
        g.abs().sum().backward()


def test_moment_loss_auto_form_rule_and_torch_compile(gen):
    assert gram_is_cheaper(1200, 3001) and not gram_is_cheaper(64, 64)
    lay, S = hermitian_slices(6, 9, 4.0, gen, dtype=torch.complex64)
    w = torch.softmax(torch.randn(6, generator=gen), 0)
    M1h, M2h = targets(lay.m, gen, torch.complex64)
    assert 2 * 6 < lay.m  # auto -> gram here
    torch.testing.assert_close(oc.moment_loss(M1h, M2h, S, w), oc.moment_loss(M1h, M2h, S, w, form="gram"))
    torch._dynamo.reset()
    conj = lay.conjugate

    def f(S, w):
        return oc.moment_loss(M1h, M2h, S, w, 0.5, conjugate=conj)

    Sg, wg = S.clone().requires_grad_(), w.clone().requires_grad_()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    lc = compiled(Sg, wg)
    gc = torch.autograd.grad(lc, (Sg, wg))
    le = f(Sg, wg)
    ge = torch.autograd.grad(le, (Sg, wg))
    torch.testing.assert_close(lc, le)
    for a, b in zip(gc, ge):
        torch.testing.assert_close(a, b)


def test_gram_form_at_a_perfect_fit(gen):
    # the squared residual is a difference of large terms: clamped at 0, gradient 0 at 0
    lay, S = hermitian_slices(5, 7, 3.0, gen)
    w = torch.full((5,), 0.2, dtype=torch.float64)
    M1, M2 = oc.model_moments(S, w)
    Sg = S.clone().requires_grad_()
    L = oc.moment_loss(M1, M2, Sg, w, 1.0, form="gram")
    assert 0.0 <= float(L.detach()) < 1e-5
    (g,) = torch.autograd.grad(L, Sg)
    assert torch.isfinite(torch.view_as_real(g)).all()


def test_moment_loss_bad_inputs(gen):
    lay, S = hermitian_slices(4, 6, 2.5, gen)
    m = lay.m
    w = torch.rand(4, generator=gen, dtype=torch.float64)
    M1h, M2h = targets(m, gen)
    L = oc.moment_loss
    cases = [
        (lambda: L(M1h, M2h, S.real, w), TypeError, "moment_loss: slices must be complex64 or complex128"),
        (lambda: L(M1h, M2h, S[0], w), ValueError, r"slices must have shape \(q, m\)"),
        (lambda: L(M1h, M2h, S, w[:3]), ValueError, r"weights must have shape \(q,\) = \(4,\)"),
        (lambda: L(M1h, M2h, S, w.float()), TypeError, "weights must have dtype torch.float64"),
        (lambda: L(M1h, M2h, S, w.long()), TypeError, "weights must be a real floating-point"),
        (lambda: L(M1h, M2h, S, -w), ValueError, r"weights must be >= 0 .* weights\[0\]"),
        (lambda: L(M1h, M2h, S, w * float("nan")), ValueError, "weights must be finite"),
        (lambda: L(M1h[:-1], M2h, S, w), ValueError, rf"M1_hat must have shape \({m},\)"),
        (lambda: L(M1h, M2h[:, :-1], S, w), ValueError, rf"M2_hat must have shape \({m}, {m}\)"),
        (lambda: L(M1h.to(torch.complex64), M2h, S, w), TypeError, "M1_hat must have dtype torch.complex128"),
        (lambda: L(M1h, M2h.to("meta"), S, w), ValueError, "M2_hat must be on the same device as slices"),
        (lambda: L(M1h, M2h, S, w.to("meta")), ValueError, "weights must be on the same device as slices"),
        (lambda: L(M1h, M2h, S, w, -1.0), ValueError, "lam must be finite and >= 0"),
        (lambda: L(M1h, M2h, S, w, "1"), TypeError, "lam must be a real number"),
        (lambda: L(M1h, M2h, S, w, form="fast"), ValueError, "form must be 'auto', 'gram' or 'dense'"),
        (lambda: L(M1h, M2h, S, w, conjugate=torch.arange(m)[:-1]), ValueError, "conjugate must be an int64 array"),
        (lambda: L(M1h, M2h, S, w, conjugate=torch.arange(m).roll(1)), ValueError, "conjugate must be an involution"),
        (lambda: L(M1h, M2h, S * float("nan"), w), ValueError, "moment_loss: slices must be finite"),
        (lambda: L(M1h, M2h * float("inf"), S, w), ValueError, "moment_loss: M2_hat must be finite"),
        (lambda: oc.model_moments(S, -w), ValueError, "model_moments: weights must be >= 0"),
        (lambda: oc.model_moments(S * float("nan"), w), ValueError, "model_moments: slices must be finite"),
    ]
    for call, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            call()
    # signed weights are allowed on request, and then follow the formula
    got = L(M1h, M2h, S, -w, check=False)
    torch.testing.assert_close(got, ref.moment_loss(M1h, M2h, S, -w))


def test_fuzz_moment_loss():
    g = torch.Generator().manual_seed(5)
    for trial in range(12):
        n = int(torch.randint(2, 10, (1,), generator=g))
        radius = None if trial % 3 == 0 else 0.5 + float(torch.rand(1, generator=g)) * n / 2
        q = int(torch.randint(1, 20, (1,), generator=g))
        lay = oc.MomentLayout(n, radius=radius)
        S = lay.gather(fourier.fft2c(torch.randn(q, n, n, generator=g, dtype=torch.float64)))
        w = torch.rand(q, generator=g, dtype=torch.float64)
        M1h, M2h = targets(lay.m, g)
        lam = float(torch.rand(1, generator=g)) * 2
        want = float(ref.moment_loss(M1h, M2h, S, w, lam))
        for conj in (None, lay.conjugate):
            for form in ("auto", "gram", "dense"):
                got = float(oc.moment_loss(M1h, M2h, S, w, lam, conjugate=conj, form=form))
                assert abs(got - want) <= 1e-11 * want, f"trial {trial}: n={n} q={q} form={form}"


@pytest.mark.cuda
def test_cuda_model_side_matches_cpu(gen):
    lay, S = hermitian_slices(40, 15, 6.0, gen, dtype=torch.complex64)
    w = torch.softmax(torch.randn(40, generator=gen), 0)
    M1h, M2h = targets(lay.m, gen, torch.complex64)
    for conj in (None, lay.conjugate):
        for form in ("gram", "dense"):
            cpu = [t.clone().requires_grad_() for t in (S, w)]
            gpu = [t.cuda().requires_grad_() for t in (S, w)]
            lc = oc.moment_loss(M1h, M2h, *cpu, 0.7, conjugate=conj, form=form)
            lg = oc.moment_loss(M1h.cuda(), M2h.cuda(), *gpu, 0.7,
                                conjugate=None if conj is None else conj.cuda(), form=form)
            torch.testing.assert_close(lg.cpu(), lc, rtol=1e-4, atol=1e-4)
            for a, b in zip(torch.autograd.grad(lg, gpu), torch.autograd.grad(lc, cpu)):
                torch.testing.assert_close(a.cpu(), b, rtol=1e-3, atol=1e-4)
