"""orbitcore.mom.mra: the MRA method of moments against independent references — direct float64
sums over the shifts (eqs. 6, 25), the closed form of eq. 15 and the spectrum of eq. 16, the
analytic Fourier series of a wrapped Gaussian, brute-force shift searches, Monte Carlo error
bars — plus learning, refinement, checkpoint/resume and input validation."""
import math
import pathlib

import numpy as np
import pytest
import torch

from orbitcore import fourier
from orbitcore.metrics.errors import moment_relative_error, mra_relative_error
from orbitcore.mom import _moments, mra

C128 = torch.complex128


# ------------------------------------------------------------------------------------------------
# independent references
# ------------------------------------------------------------------------------------------------
def direct_moments(v, rho):
    """Eq. 6 / 25 by brute force: the expectation over the shifts of F(s∘v) and its outer product,
    every shifted copy made by index arithmetic (no FFT phase formula)."""
    n = v.shape[0]
    M1 = torch.zeros(n, dtype=C128)
    M2 = torch.zeros(n, n, dtype=C128)
    for j in range(n):
        s = j - n // 2
        vs = torch.tensor([float(v[(i - s) % n]) for i in range(n)], dtype=torch.float64)
        f = fourier.fft1c(vs)
        M1 += float(rho[j]) * f
        M2 += float(rho[j]) * torch.outer(f, f.conj())
    return M1, M2


def brute_orbit_error(u, v):
    n = v.shape[0]
    return min(float(torch.linalg.vector_norm(torch.roll(v, s) - u) / torch.linalg.vector_norm(v)) for s in range(n))


def instance(n, k=2, seed=0):
    v, rho = mra.random_instances(n, k, 1, generator=seed)
    return v[0], rho[0]


# ------------------------------------------------------------------------------------------------
# moments: eqs. 15, 16, 24, 25
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [7, 8, 13])
def test_eq15_and_eq25_match_direct_expectation(n):
    v, rho = instance(n, 2, seed=n)
    D1, D2 = direct_moments(v, rho)
    P1, P2 = mra.population_moments(v, rho)      # eq. 15, closed form
    K1, K2 = mra.model_moments(v, rho)           # eq. 25, through the moment kernel
    for A, B in ((P1, D1), (P2, D2), (K1, D1), (K2, D2)):
        assert float((A - B).abs().max() / B.abs().max()) < 1e-13
    # eq. 15 entry by entry: M2(k1, k2) = v^(k1) rho^(k1 - k2) conj(v^(k2)), rho^(k) = sum_s rho(s) e^{-2 pi i k s/n}
    k = torch.arange(n) - n // 2
    s = mra.shifts(n).double()
    vh = fourier.fft1c(v)
    rho_hat = lambda kk: (rho * torch.exp(-2j * math.pi * kk * s / n)).sum()  # noqa: E731
    for a in range(n):
        for b in range(n):
            want = vh[a] * rho_hat(float(k[a] - k[b])) * vh[b].conj()
            assert abs(complex(D2[a, b] - want)) < 1e-12 * float(D2.abs().max())


def test_eq16_eigenvalues_are_the_density():
    # |v^(k)| = 1: M2 = diag(v^) C diag(v^)^*, C circulant in rho^, so its eigenvalues are the
    # density itself (times n in our unnormalised convention; exactly rho for the paper's unitary F).
    n = 16
    g = torch.Generator().manual_seed(3)
    phase = torch.rand(n, generator=g, dtype=torch.float64) * 2 * math.pi
    vh = torch.polar(torch.ones(n, dtype=torch.float64), phase)
    vh = 0.5 * (vh + vh.flip(0).roll(1).conj())          # Hermitian symmetric (k -> -k, n even)
    vh = vh / vh.abs()
    v = fourier.ifft1c(vh).real
    rho = mra.random_densities(n, 2, 1, generator=g)[0]
    _, M2 = mra.population_moments(v, rho)
    assert float((M2 - M2.mH).abs().max()) < 1e-13
    ev = torch.linalg.eigvalsh(M2 / n)
    assert torch.allclose(ev, rho.sort().values, atol=1e-13)


def test_data_moments_exact_for_the_same_samples_in_any_chunking():
    n, N, sigma = 10, 3001, 0.7
    v, rho = instance(n, 1, seed=1)
    x = mra.sample_observations(v, rho, N, sigma, generator=5)
    X = fourier.fft1c(x)
    want1 = X.mean(0)
    want2 = sum(torch.outer(X[j], X[j].conj()) for j in range(N)) / N - n * sigma**2 * torch.eye(n, dtype=C128)
    for chunk in (1, 7, 1000, N):
        batches = (x[i:i + chunk] for i in range(0, N, chunk))
        M1, M2, count = mra.data_moments(batches, n, sigma)
        assert count == N
        assert float((M1 - want1).abs().max()) < 1e-12 * float(want1.abs().max())
        assert float((M2 - want2).abs().max()) < 1e-12 * float(want2.abs().max())
    # NumPy batches are accepted too
    M1n, _, _ = mra.data_moments([x.numpy()], n, sigma)
    assert torch.allclose(M1n, want1, atol=1e-12)


def test_debiased_moments_match_eq15_within_monte_carlo_error():
    n, N, sigma = 8, 40000, 1.0
    v, rho = instance(n, 2, seed=2)
    x = mra.sample_observations(v, rho, N, sigma, generator=11)
    M1, M2, _ = mra.data_moments([x], n, sigma)
    P1, P2 = mra.population_moments(v, rho)
    X = fourier.fft1c(x)
    outer = X[:, :, None] * X.conj()[:, None, :]
    se2 = (outer.real.std(0).square() + outer.imag.std(0).square()).sqrt() / math.sqrt(N)
    se1 = X.std(0) / math.sqrt(N)
    assert bool(((M2 - P2).abs() < 5 * se2).all())
    assert bool(((M1 - P1).abs() < 5 * se1).all())
    raw = mra.data_moments([x], n, 0.0)[1]   # without debiasing the diagonal is off by n sigma^2
    assert float((raw - P2).diagonal().real.mean()) == pytest.approx(n * sigma**2, rel=0.05)


def test_a_million_observations_stream_routinely():
    n, N, sigma = 16, 10**6, 1.0
    v, rho = instance(n, 2, seed=4)
    M1, M2 = mra.simulate_moments(v, rho, N, sigma, batch_size=1 << 17, generator=0)
    P1, P2 = mra.population_moments(v, rho)
    # entries have standard errors ~ (|v|^2 + n sigma^2) / sqrt(N); relative errors are small
    assert moment_relative_error(M1, P1) < 0.03
    assert moment_relative_error(M2, P2) < 0.03
    assert float((M2 - M2.mH).abs().max()) < 1e-9 * float(M2.abs().max())


# ------------------------------------------------------------------------------------------------
# the moment primitives: plain-torch versions vs brute force, kernels vs plain torch
# ------------------------------------------------------------------------------------------------
def _impls():
    return [("torch", _moments.torch_model_moments, _moments.torch_moment_loss),
            ("kernel", _moments.model_moments, _moments.moment_loss),
            ("kernel-real-basis", _moments.model_moments,
             lambda a, b, s, w, lam: _moments.moment_loss(a, b, s, w, lam, hermitian=True))]


@pytest.mark.parametrize("name,mm,loss", _impls(), ids=[i[0] for i in _impls()])
def test_moment_primitives_against_brute_force(name, mm, loss):
    n = 9
    v, rho = instance(n, 2, seed=9)
    S = mra.shift_slices(v)
    M1, M2 = mm(S, rho)
    D1, D2 = direct_moments(v, rho)
    assert torch.allclose(M1, D1, atol=1e-12) and torch.allclose(M2, D2, atol=1e-12)
    g = torch.Generator().manual_seed(0)
    A1 = D1 + 0.1 * torch.randn(n, generator=g, dtype=C128)
    A2 = D2 + 0.1 * torch.randn(n, n, generator=g, dtype=C128)
    want = float(torch.linalg.vector_norm(A1 - D1) + 0.3 * torch.linalg.vector_norm(A2 - D2))
    assert float(loss(A1, A2, S, rho, 0.3)) == pytest.approx(want, rel=1e-12)


def test_torch_accumulator_and_conjugate_map():
    n = 11
    x = torch.randn(50, n, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    M1, M2 = _moments.TorchMomentAccumulator(n, 0.5).update(x[:20]).update(x[20:]).result()
    X = fourier.fft1c(x)
    assert torch.allclose(M1, X.mean(0), atol=1e-13)
    assert torch.allclose(M2, X.mT @ X.conj() / 50 - n * 0.5 * torch.eye(n, dtype=C128), atol=1e-12)
    acc = _moments.accumulator(n, 0.5).update(x)
    K1, K2 = acc.result()
    assert torch.allclose(K1, M1, atol=1e-12) and torch.allclose(K2, M2, atol=1e-12)
    for m in (8, 9):  # the spectrum of a real signal: F(-k) = conj(F(k))
        conj = _moments.conjugate_map(m)
        f = fourier.fft1c(torch.randn(m, dtype=torch.float64))
        assert torch.allclose(f[conj], f.conj(), atol=1e-12)


# ------------------------------------------------------------------------------------------------
# generators and the data model
# ------------------------------------------------------------------------------------------------
def test_wrapped_gaussian_matches_its_fourier_series():
    # A periodic Gaussian of width w has Fourier coefficients prop. to exp(-2 pi^2 w^2 k^2) e^{-2 pi i k mu}
    # (Poisson summation); the sampled DFT equals them up to aliases of size exp(-2 pi^2 w^2 (n/2)^2).
    n, w = 32, 0.1
    f = mra.gaussian_mixture(n, 1, 1, widths=(w, w), weights=(1.0, 1.0), generator=7)[0]
    F = fourier.fft1c(f)
    k = (torch.arange(n) - n // 2).double()
    mag = F.abs() / F.abs()[n // 2]
    assert torch.allclose(mag, torch.exp(-2 * math.pi**2 * w**2 * k**2), atol=1e-12)
    assert float(F.abs()[n // 2]) == pytest.approx(n * w * math.sqrt(2 * math.pi), rel=1e-12)
    mu = -float(torch.angle(F[n // 2 + 1])) / (2 * math.pi)       # recover the centre from k = 1
    lowk = slice(n // 2 - 4, n // 2 + 5)
    want = torch.polar(torch.ones(n, dtype=torch.float64), -2 * math.pi * k * mu)
    assert torch.allclose((F / F.abs())[lowk], want[lowk], atol=1e-10)


def test_generators_are_seeded_and_well_formed():
    v1, r1 = mra.random_instances(24, 3, 5, generator=123)
    v2, r2 = mra.random_instances(24, 3, 5, generator=123)
    v3, _ = mra.random_instances(24, 3, 5, generator=124)
    assert torch.equal(v1, v2) and torch.equal(r1, r2) and not torch.equal(v1, v3)
    assert v1.shape == (5, 24) and r1.shape == (5, 24)
    assert bool((r1 >= 0).all()) and torch.allclose(r1.sum(-1), torch.ones(5, dtype=torch.float64))
    # peaks of well-separated narrow bumps: k local maxima on the circle
    f = mra.gaussian_mixture(64, 3, 20, widths=(0.01, 0.01), generator=0)
    for row in f:
        locs = torch.nonzero((row > row.roll(1)) & (row > row.roll(-1)) & (row > 1e-3)).flatten()
        assert 1 <= len(locs) <= 3


def test_observations_follow_the_shift_distribution():
    n, N = 6, 60000
    v = torch.zeros(n, dtype=torch.float64)
    v[n // 2] = 1.0                                   # a spike at the origin: v_j reveals s_j
    rho = torch.tensor([0.05, 0.1, 0.4, 0.2, 0.0, 0.25], dtype=torch.float64)
    x = mra.sample_observations(v, rho, N, 0.0, generator=3)
    pos = x.argmax(-1) - n // 2                        # content moved by +s
    freq = torch.bincount(pos + n // 2, minlength=n).double() / N
    assert torch.allclose(freq, rho, atol=0.01)
    assert float(freq[4]) == 0.0
    noisy = mra.sample_observations(v, rho, N, 0.5, generator=3)
    assert float((noisy - x).std()) == pytest.approx(0.5, rel=0.02)


# ------------------------------------------------------------------------------------------------
# errors (eqs. 21, 22) and the loss (eq. 26)
# ------------------------------------------------------------------------------------------------
def test_orbit_error_against_brute_force_and_its_gradient():
    g = torch.Generator().manual_seed(0)
    for n in (5, 8):
        v = torch.randn(n, generator=g, dtype=torch.float64)
        u = torch.randn(n, generator=g, dtype=torch.float64)
        assert float(mra_relative_error(u, v)) == pytest.approx(brute_orbit_error(u, v), rel=1e-12)
        assert float(mra.orbit_error(u[None], v[None])[0]) == pytest.approx(brute_orbit_error(u, v), rel=1e-12)
        err, s = mra_relative_error(torch.roll(v, 3), v, return_shift=True)
        assert float(err) < 1e-7 and int(s) == 3
    u = torch.randn(3, 7, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(3, 7, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a: mra.orbit_error(a, v), (u,))


def _bl_shift(x, s):
    """Band-limited shift by a real s (samples), real part (the reference, element by element)."""
    n = x.shape[-1]
    k = (torch.arange(n) - n // 2).double()
    return fourier.ifft1c(fourier.fft1c(x) * torch.exp(-2j * math.pi * k * s / n)).real


def test_moments_are_nearly_invariant_under_a_joint_subsample_shift():
    # eq. 15: M1 = v^ rho^ and M2(k1, k2) = v^(k1) rho^(k1 - k2) conj(v^(k2)); shifting v by +s and rho by
    # -s (any real s, band-limited) leaves M1 (up to the Nyquist term) and M2 (up to the wrapped entries |k1 - k2| > n/2,
    # which carry only v's high frequencies) unchanged. At n = 32 a half-sample joint shift is invisible in the
    # moments while eq. 21 on the grid calls it a large error: what continuous_orbit_error is for.
    n, s = 32, 0.5
    for seed in range(3):
        v, rho = instance(n, 2, seed=40 + seed)
        v2, rho2 = _bl_shift(v, s), _bl_shift(rho, -s)
        assert float(rho2.min()) > -1e-4 and float(rho2.sum()) == pytest.approx(1.0, abs=1e-12)

        def moments(a, b):
            ah, bh = fourier.fft1c(a), fourier.fft1c(b)
            i = torch.arange(n)
            d = (i[:, None] - i[None, :] + n // 2) % n
            return ah * bh, ah[:, None] * bh[d] * ah.conj()[None, :]

        M1, M2 = moments(v, rho)
        J1, J2 = moments(v2, rho2)
        V1, V2 = moments(v2, rho)
        assert moment_relative_error(J1, M1) < 1e-6 and moment_relative_error(J2, M2) < 1e-3
        assert moment_relative_error(V1, M1) > 1e-2 and moment_relative_error(V2, M2) > 1e-2
        assert float(mra_relative_error(v2, v)) > 0.1
        assert float(mra.continuous_orbit_error(v2, v)) < 1e-2   # the Nyquist share of even n


def test_continuous_orbit_error():
    g = torch.Generator().manual_seed(4)
    for n in (15, 16):
        v = mra.random_signals(n, 2, 1, generator=n, widths=(0.08, 0.1))[0]
        for s in (0.375, 4.25):   # on the 1/32 search grid
            u = _bl_shift(v, s)
            err = float(mra.continuous_orbit_error(u, v))
            assert err < (1e-10 if n % 2 else 1e-3), (n, s, err)      # even n: the Nyquist share stays
            assert float(mra_relative_error(u, v)) > 10 * err + 0.01
        # against a brute-force search with the reference shift; never above eq. 21
        u = torch.randn(3, n, generator=g, dtype=torch.float64)
        vv = torch.randn(3, n, generator=g, dtype=torch.float64)
        got = mra.continuous_orbit_error(u, vv, upsample=8)
        for b in range(3):
            want = min(float(torch.linalg.vector_norm(_bl_shift(vv[b], j / 8) - u[b]) / torch.linalg.vector_norm(vv[b]))
                       for j in range(8 * n))
            assert float(got[b]) == pytest.approx(want, rel=1e-10)
        assert bool((got <= mra_relative_error(u, vv) + 1e-12).all())


def test_moment_relative_error_definition():
    A = torch.randn(6, 6, dtype=C128, generator=torch.Generator().manual_seed(2))
    B = A + 0.25 * A
    assert moment_relative_error(B, A) == pytest.approx(0.25, rel=1e-12)


@pytest.mark.parametrize("real_basis", [False, True])
def test_reconstruction_loss_is_eq26_in_the_papers_normalisation_with_gradients(real_basis, monkeypatch):
    # both evaluations of the kernel loss: complex (short signals) and real basis (long ones)
    monkeypatch.setattr(mra, "_HERMITIAN_FROM", 2 if real_basis else 10**9)
    n, lam = 12, 0.7
    v, rho = instance(n, 2, seed=5)
    D1, D2 = direct_moments(v, rho)
    g = torch.Generator().manual_seed(1)
    A1 = D1 + torch.randn(n, generator=g, dtype=C128)
    A2 = D2 + torch.randn(n, n, generator=g, dtype=C128)
    u = (v + 0.1 * torch.randn(n, generator=g, dtype=torch.float64)).requires_grad_()
    logits = torch.randn(n, generator=g, dtype=torch.float64, requires_grad=True)
    loss = mra.reconstruction_loss(A1, A2, u, torch.softmax(logits, 0), lam)
    gu, gl = torch.autograd.grad(loss, (u, logits))

    def ref(u, logits):  # the paper's unitary F: moments / sqrt(n) and / n; model moments by rolling
        w = torch.softmax(logits, 0)
        F = torch.stack([fourier.fft1c(torch.roll(u, j - n // 2)) for j in range(n)]) / math.sqrt(n)
        M1 = (w.to(C128)[:, None] * F).sum(0)
        M2 = (w.to(C128)[:, None, None] * F[:, :, None] * F.conj()[:, None, :]).sum(0)
        return torch.linalg.vector_norm(A1 / math.sqrt(n) - M1) + lam * torch.linalg.vector_norm(A2 / n - M2)

    r = ref(u, logits)
    ru, rl = torch.autograd.grad(r, (u, logits))
    assert float(loss.detach()) == pytest.approx(float(r.detach()), rel=1e-12)
    assert torch.allclose(gu, ru, atol=1e-10) and torch.allclose(gl, rl, atol=1e-10)
    # zero at the truth with its own moments
    assert float(mra.reconstruction_loss(D1, D2, v, rho)) < 1e-12


def test_alignment_recovers_the_relative_shift():
    n = 20
    v, rho = instance(n, 2, seed=8)
    M1, M2 = mra.population_moments(v, rho)
    for t in (0, 3, 11):
        best, losses = mra.align_to_moments(M1, M2, torch.roll(v, t), rho)
        assert (best + t) % n == 0
        assert float(losses[best]) < 1e-12 and float(losses.sort().values[1]) > 1e-3


# ------------------------------------------------------------------------------------------------
# encoders (appendix A.1)
# ------------------------------------------------------------------------------------------------
def test_encoder_layout_shapes_and_scale_equivariance():
    n = 10
    v, rho = mra.random_instances(n, 2, 3, generator=0)
    M1, M2 = mra.population_moments(v, rho)
    x1, x2, a = mra.moment_features(M1, M2)
    assert x1.shape == (3, 2, n) and x2.shape == (3, 2 * n, n)
    for d in range(n):  # wrapped diagonals: channel d at point k is M2(k, k - d) (unitary, / a^2)
        for kk in range(n):
            want = M2[:, kk, (kk - d) % n] / (n * a**2)
            assert torch.allclose(x2[:, d, kk], want.real) and torch.allclose(x2[:, n + d, kk], want.imag)
    assert torch.allclose(a, torch.linalg.vector_norm(v, dim=-1), rtol=1e-12)   # a = ||v|| (noise-free)
    torch.manual_seed(0)
    enc = mra.MRAEncoder(n).double()
    z_v, z_rho = enc(M1, M2)
    assert z_v.shape == (3, n) and z_rho.shape == (3, n) and z_v.dtype == torch.float64
    assert bool((z_rho >= 0).all()) and torch.allclose(z_rho.sum(-1), torch.ones(3, dtype=torch.float64))
    c = 3.7
    z_v2, z_rho2 = enc(c * M1, c * c * M2)
    assert torch.allclose(z_v2, c * z_v, rtol=1e-10) and torch.allclose(z_rho2, z_rho, atol=1e-12)
    one_v, one_rho = enc(M1[0], M2[0])                          # unbatched
    assert torch.allclose(one_v, z_v[0]) and torch.allclose(one_rho, z_rho[0])


def test_learning_rate_schedule_is_the_papers_thirds():
    lrs = [mra.learning_rate(e, 30) for e in range(30)]
    assert lrs == [1e-4] * 10 + [1e-5] * 10 + [1e-6] * 10
    assert mra.TrainConfig().lrs == (1e-4, 1e-5, 1e-6)


# ------------------------------------------------------------------------------------------------
# supervised phase: learning, checkpoint/resume
# ------------------------------------------------------------------------------------------------
TINY = dict(n=12, n_gaussians=1, batch_size=32, train_size=512, test_size=256, lrs=(3e-3, 1e-3, 3e-4),
            encoder=dict(m2_channels=(32,), m1_channels=(8,), trunk_channels=(16, 16)))


def test_supervised_phase_learns_the_moment_inversion():
    trainer = mra.train_supervised(mra.TrainConfig(epochs=15, **TINY), verbose=False)
    test = trainer.evaluate("test")
    # the paper's Table 1 (1 Gaussian, 1.75 M pairs) has 0.05; a few hundred steps must at least
    # beat the trivial predictor (constant signal with the right mean, uniform density) by far
    assert test["v"] < 0.4 * test["trivial_v"], test
    assert test["rho"] < 0.4 * test["trivial_rho"], test
    hist = trainer.history
    assert hist[-1]["loss"] < 0.5 * hist[0]["loss"]
    assert [h["lr"] for h in hist] == [3e-3] * 5 + [1e-3] * 5 + [3e-4] * 5


def test_checkpoint_resume_reproduces_the_uninterrupted_run(tmp_path):
    cfg = mra.TrainConfig(epochs=4, **{**TINY, "train_size": 128})
    straight = mra.SupervisedTrainer(cfg)
    straight.run()
    ck = tmp_path / "ck.pt"
    first = mra.SupervisedTrainer(cfg)
    first.run(epochs=2, checkpoint=ck)
    del first
    resumed = mra.SupervisedTrainer.load(ck)
    assert resumed.epoch == 2
    nxt = resumed.train_epoch()                                   # the very next epoch...
    assert nxt == straight.history[2]                             # ...is the uninterrupted one
    resumed.run()
    for (k, a), b in zip(straight.encoder.state_dict().items(), resumed.encoder.state_dict().values()):
        assert torch.equal(a, b), k
    assert resumed.history == straight.history
    # train_supervised resumes from the file; a different config is refused
    again = mra.train_supervised(cfg, checkpoint=ck, verbose=False)
    assert again.epoch == 4
    with pytest.raises(ValueError, match=r"train_supervised: checkpoint .* different settings \(batch_size\)"):
        mra.train_supervised(cfg, checkpoint=ck, verbose=False, batch_size=16)
    enc = mra.load_encoder(ck)
    assert all(torch.equal(a, b) for a, b in zip(enc.state_dict().values(), resumed.encoder.state_dict().values()))


def test_an_interrupted_checkpoint_write_keeps_the_previous_file(tmp_path, monkeypatch):
    cfg = mra.TrainConfig(epochs=2, **{**TINY, "train_size": 64})
    tr = mra.SupervisedTrainer(cfg)
    ck = tmp_path / "ck.pt"
    tr.run(epochs=1, checkpoint=ck)
    before = ck.read_bytes()

    def boom(obj, f, *a, **k):
        pathlib.Path(f).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        tr.run(checkpoint=ck)
    assert ck.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt"]


# ------------------------------------------------------------------------------------------------
# reconstruction phase and the classical baseline
# ------------------------------------------------------------------------------------------------
def test_refinement_lowers_eq26_monotonically_on_average():
    n, iters = 12, 90
    curves = []
    for seed in range(4):
        v, rho = instance(n, 1, seed=100 + seed)
        M1, M2 = mra.simulate_moments(v, rho, 20000, 0.5, generator=seed)
        rec = mra.reconstruct(M1, M2, None, iters=iters, lr=1e-3, seed=seed, truth=(v, rho),
                              encoder_kwargs=TINY["encoder"])
        assert len(rec.history["loss"]) == iters + 1
        assert rec.loss == rec.history["loss"][-1]
        curves.append(rec.history["loss"])
    mean = np.mean(np.array(curves), axis=0)
    blocks = mean[1:].reshape(9, 10).mean(1)                      # averages over blocks of 10 steps
    assert mean[0] > blocks[0] and np.all(np.diff(blocks) < 0), (mean[0], blocks)
    assert mean[-1] < 0.5 * mean[0]


def test_reconstruct_aligns_and_does_not_modify_the_encoder():
    n = 12
    v, rho = instance(n, 1, seed=3)
    M1, M2 = mra.population_moments(v, rho)
    torch.manual_seed(1)
    enc = mra.MRAEncoder(n, **TINY["encoder"])
    before = {k: t.clone() for k, t in enc.state_dict().items()}
    rec = mra.reconstruct(M1, M2, enc, iters=3, lr=1e-3)
    assert all(torch.equal(before[k], t) for k, t in enc.state_dict().items())
    z_v, z_rho = enc(M1.to(torch.complex64), M2.to(torch.complex64))
    best, losses = mra.align_to_moments(M1, M2, z_v.detach(), z_rho.detach())
    assert rec.shift == best
    assert rec.history["loss"][0] == pytest.approx(float(losses.min()), rel=1e-4)
    assert rec.history["loss"][0] <= float(losses[0]) + 1e-6


def test_classical_baseline_recovers_a_one_gaussian_instance():
    n = 12
    v, rho = instance(n, 1, seed=21)
    M1, M2 = mra.population_moments(v, rho)
    rec = mra.fit_moments_classical(M1, M2, restarts=2, iters=400, lr=0.03, generator=0, truth=(v, rho))
    assert len(rec.restart_losses) == 2 and rec.loss == min(rec.restart_losses)
    assert rec.history["loss"][-1] < 0.05 * rec.history["loss"][0]
    triv = mra.trivial_errors(v, rho)
    assert rec.history["v_error"][-1] < 0.25 * triv["v"] and rec.history["rho_error"][-1] < 0.25 * triv["rho"]
    assert torch.allclose(rec.v_hat, fourier.fft1c(rec.v))


# ------------------------------------------------------------------------------------------------
# bad inputs
# ------------------------------------------------------------------------------------------------
def test_bad_inputs_give_clear_errors():
    n = 8
    v, rho = instance(n, 1, seed=0)
    M1, M2 = mra.population_moments(v, rho)
    bad_rho = rho.clone()
    bad_rho[0] += 0.5
    cases = [
        (lambda: mra.random_signals(1, 2), ValueError, r"random_signals: n must be >= 2, got 1"),
        (lambda: mra.random_signals(8, 0), ValueError, r"random_signals: k must be >= 1, got 0"),
        (lambda: mra.gaussian_mixture(8, 1, widths=(0.1, 0.3)), ValueError, r"widths must be <= 0.15"),
        (lambda: mra.random_instances(8, 1, generator="seed"), TypeError,
         r"random_instances: generator must be a torch.Generator, an integer seed or None, got str"),
        (lambda: mra.sample_observations(v, bad_rho, 10, 1.0), ValueError, r"sample_observations: rho must sum to 1"),
        (lambda: mra.sample_observations(v, -rho, 10, 1.0), ValueError,
         r"sample_observations: rho must be a probability vector \(non-negative\)"),
        (lambda: mra.sample_observations(v, rho[:5], 10, 1.0), ValueError,
         r"sample_observations: rho must have n = 8 points to match the signal, got \(5,\)"),
        (lambda: mra.sample_observations(v, rho, 10, -1.0), ValueError, r"sample_observations: sigma must be >= 0"),
        (lambda: mra.sample_observations(v.to(C128), rho, 10, 1.0), TypeError,
         r"sample_observations: v must be a real floating-point array"),
        (lambda: mra.population_moments(v * float("nan"), rho), ValueError, r"population_moments: v must be finite"),
        (lambda: mra.data_moments([torch.zeros(3, 5)], n, 1.0), ValueError,
         r"data_moments: batches must have shape \(B, n\) with n = 8, got \(3, 5\)"),
        (lambda: mra.data_moments([], n, 1.0), ValueError, r"data_moments: no observations were given"),
        (lambda: mra.reconstruction_loss(M1.real, M2, v, rho), TypeError,
         r"reconstruction_loss: M1_hat and M2_hat must be complex"),
        (lambda: mra.reconstruction_loss(M1, M2[:4], v, rho), ValueError,
         r"reconstruction_loss: M1_hat must be \(n,\) and M2_hat \(n, n\), got \(8,\) and \(4, 8\)"),
        (lambda: mra.reconstruction_loss(M1, M2, v, rho, lam=-1), ValueError, r"reconstruction_loss: lam must be >= 0"),
        (lambda: mra.reconstruct(M1, M2, mra.MRAEncoder(10)), ValueError,
         r"reconstruct: encoder was built for n = 10, but the moments have n = 8"),
        (lambda: mra.reconstruct(M1, M2, "encoder"), TypeError, r"reconstruct: encoder must be an MRAEncoder"),
        (lambda: mra.reconstruct(M1, M2, iters=-1), ValueError, r"reconstruct: iters must be >= 0"),
        (lambda: mra.reconstruct(M1, M2, truth=v), TypeError, r"reconstruct: truth must be a \(v, rho\) pair"),
        (lambda: mra.fit_moments_classical(M1, M2, restarts=0), ValueError,
         r"fit_moments_classical: restarts must be >= 1, got 0"),
        (lambda: mra.MomentCNN(8, "volume"), ValueError, r"MomentCNN: output must be 'density' or 'signal'"),
        (lambda: mra.MomentCNN(8, window=4), ValueError, r"MomentCNN: window must be odd"),
        (lambda: mra.MRAEncoder(8)(M1, M2[:, :4]), ValueError, r"MRAEncoder: M1, M2 must have shapes"),
        (lambda: mra.TrainConfig(lrs=(1e-3,)).validate(), ValueError, r"TrainConfig: lrs must hold 3 learning rates"),
        (lambda: mra.TrainConfig(dtype="float16").validate(), ValueError, r"TrainConfig: dtype must be"),
        (lambda: mra.train_supervised(epochz=3), TypeError, r"train_supervised: unknown setting 'epochz'"),
        (lambda: mra.load_encoder("/nonexistent/ck.pt"), FileNotFoundError, r"load_encoder: /nonexistent/ck.pt: no such"),
        (lambda: mra.shift_signals(v, 1.5), TypeError, r"shift_signals: s must hold integer shifts"),
        (lambda: mra_relative_error(v[:4], v), ValueError, r"mra_relative_error: estimate and truth must have the same last axis"),
        (lambda: mra_relative_error(v, torch.zeros(n)), ValueError, r"mra_relative_error: truth must not be zero"),
        (lambda: moment_relative_error(M1, M2), ValueError, r"moment_relative_error: model must have the shape"),
    ]
    for f, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            f()


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path):
    p = tmp_path / "x.pt"
    torch.save({"weights": torch.zeros(2)}, p)
    with pytest.raises(ValueError, match=r"load_encoder: .*x.pt: not an orbitcore MRA supervised checkpoint"):
        mra.load_encoder(p)
    p.write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"SupervisedTrainer.load: .*x.pt: not a readable checkpoint"):
        mra.SupervisedTrainer.load(p)


# ------------------------------------------------------------------------------------------------
# end to end at the evidence scale (minutes): -m slow
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_2g():
    torch.set_num_threads(1)
    cfg = mra.TrainConfig(n=32, n_gaussians=2, epochs=30, batch_size=64, train_size=8192, test_size=2048,
                          lrs=(1e-3, 1e-4, 1e-5), seed=2)
    return mra.train_supervised(cfg, verbose=False)


@pytest.mark.slow
def test_two_gaussian_encoder_approaches_the_papers_table1(trained_2g):
    # the paper (Table 1, 2 Gaussians, 1.75 M pairs, 30 000 epochs): test errors 0.141 (rho), 0.170 (v);
    # 8192 pairs and 30 epochs (about 4 min on one core) must come within a factor 1.6 of them
    test = trained_2g.evaluate("test")
    assert test["rho"] < 1.6 * 0.141 and test["v"] < 1.6 * 0.170, test


@pytest.mark.slow
def test_pretrained_encoder_converges_faster_than_a_random_one(trained_2g):
    # Figure 4 in small: 3 instances, 10^6 observations, sigma = 1; the pretrained encoder's mean
    # errors are below the random encoder's over the first 100 iterations
    pre, rnd = [], []
    for i in range(3):
        v, rho = instance(32, 2, seed=500 + i)
        M1, M2 = mra.simulate_moments(v, rho, 10**6, 1.0, generator=i)
        for enc, acc in ((trained_2g.encoder, pre), (None, rnd)):
            rec = mra.reconstruct(M1, M2, enc, iters=100, lr=1e-4, truth=(v, rho), seed=i)
            acc.append([np.array(rec.history[k]) for k in ("v_error", "rho_error", "m1_error", "m2_error")])
    for j in range(4):
        p = np.mean([r[j] for r in pre], axis=0)
        q = np.mean([r[j] for r in rnd], axis=0)
        assert np.all(p < q), j
