"""The EM E-step kernel (seeds/002 eq. 18-25) against a brute-force float64 evaluation of eq. 24
over the paper's full shift set {0..2L-1}^2 (explicit zero-padding, circular shift and crop;
orbitcore.ops._reference.em_estep_reference), every shift and every rotation."""
import math
import os

import pytest
import torch

from orbitcore.ops import _reference as ref
from orbitcore.ops import em as ops_em


def _rho_full(L, gen):
    r = torch.rand(2 * L, 2 * L, generator=gen, dtype=torch.float64) + 0.2
    return r / r.sum()


def _log_prior_from_full(rho):
    """Kernel prior (D displacements + empty state) of the paper's rho over {0..2L-1}^2."""
    L = rho.shape[0] // 2
    d = ops_em.displacements(L)
    l0 = torch.where(d[:, 0] >= 0, d[:, 0], d[:, 0] + 2 * L)
    l1 = torch.where(d[:, 1] >= 0, d[:, 1], d[:, 1] + 2 * L)
    lp = torch.log(rho[l0, l1])
    empty = rho[L, :].sum() + rho[:, L].sum() - rho[L, L]
    return torch.cat([lp, torch.log(empty)[None]])


def _fold_reference(out, L):
    """Reference posterior (P, 2L, 2L, K) -> kernel layout: shift weights (K, D), empty (P,),
    shift posterior (P, D)."""
    d = ops_em.displacements(L)
    l0 = torch.where(d[:, 0] >= 0, d[:, 0], d[:, 0] + 2 * L)
    l1 = torch.where(d[:, 1] >= 0, d[:, 1], d[:, 1] + 2 * L)
    post = out["posterior"]
    sw = post.sum(0)[l0, l1, :].T                      # (K, D)
    sp = post.sum(-1)[:, l0, l1]                       # (P, D)
    emask = torch.zeros(2 * L, 2 * L, dtype=torch.bool)
    emask[L, :] = True
    emask[:, L] = True
    ep = post.sum(-1)[:, emask].sum(-1)
    return sw, sp, ep


def _problem(L, P, K, gen, support=None, planted=True):
    g = torch.randn(K, L, L, generator=gen, dtype=torch.float64)
    if support is not None:
        g = g * support
    x = 0.7 * torch.randn(P, L, L, generator=gen, dtype=torch.float64)
    if planted:  # some patches hold (shifted) projections, so that the posteriors are peaked
        for p in range(0, P, 2):
            l0, l1 = int(torch.randint(0, 2 * L, (1,), generator=gen)), int(torch.randint(0, 2 * L, (1,), generator=gen))
            x[p] += ref.em_patch_model(g[p % K], l0, l1)
    return x, g


def test_forcing_an_unknown_simd_level_is_an_error():
    with pytest.raises(ValueError, match="sse9"):
        ops_em.cpu_simd("sse9")


@pytest.mark.parametrize("L,P,K", [(3, 5, 4), (4, 7, 9), (5, 6, 37)])
def test_estep_float64_matches_bruteforce(L, P, K, simd, gen, monkeypatch):
    monkeypatch.setenv("ORBITCORE_CPU_SIMD", simd)
    x, g = _problem(L, P, K, gen)
    rho = _rho_full(L, gen)
    sigma = 0.9
    out = ref.em_estep_reference(x, g, sigma, rho)
    sw_ref, sp_ref, ep_ref = _fold_reference(out, L)
    res = ops_em.em_estep(x, g, sigma, _log_prior_from_full(rho), posterior=True)
    torch.testing.assert_close(res.log_evidence, out["log_evidence"], rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(res.shift_weights, sw_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(res.empty_posterior, ep_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(res.shift_posterior, sp_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(res.backprojection, out["backprojection"], rtol=1e-10, atol=1e-10)
    # posteriors are distributions
    torch.testing.assert_close(res.shift_posterior.sum(1) + res.empty_posterior,
                               torch.ones(P, dtype=torch.float64))


def test_estep_float32_and_support(gen):
    L, P, K = 7, 11, 40
    yy, xx = torch.meshgrid(torch.arange(L), torch.arange(L), indexing="ij")
    support = ((yy - L // 2) ** 2 + (xx - L // 2) ** 2) <= (L // 2) ** 2
    x, g = _problem(L, P, K, gen, support=support)
    rho = _rho_full(L, gen)
    sigma = 1.3
    out = ref.em_estep_reference(x, g, sigma, rho)
    sw_ref, sp_ref, ep_ref = _fold_reference(out, L)
    lp = _log_prior_from_full(rho)
    res = ops_em.em_estep(x, g, sigma, lp, support=support, posterior=True)
    torch.testing.assert_close(res.log_evidence, out["log_evidence"], rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(res.shift_weights, sw_ref, rtol=1e-10, atol=1e-12)
    # the back-projection is reported on the support only
    torch.testing.assert_close(res.backprojection, out["backprojection"] * support, rtol=1e-10, atol=1e-10)
    r32 = ops_em.em_estep(x.float(), g.float(), sigma, lp.float(), support=support, posterior=True)
    assert r32.log_evidence.dtype == torch.float64
    torch.testing.assert_close(r32.log_evidence, out["log_evidence"], rtol=1e-5, atol=2e-3)
    torch.testing.assert_close(r32.shift_weights, sw_ref, rtol=0, atol=2e-3 * P)
    torch.testing.assert_close(r32.empty_posterior, ep_ref, rtol=0, atol=2e-3)
    torch.testing.assert_close(r32.backprojection, out["backprojection"] * support, rtol=0, atol=5e-3 * P)


def test_estep_patch_weights_and_threads(gen):
    L, P, K = 4, 13, 20
    x, g = _problem(L, P, K, gen)
    lp = _log_prior_from_full(_rho_full(L, gen))
    c = torch.rand(P, generator=gen, dtype=torch.float64)
    full = ops_em.em_estep(x, g, 1.0, lp, posterior=True)
    wtd = ops_em.em_estep(x, g, 1.0, lp, patch_weights=c)
    # statistics weighted patch by patch = sum of single-patch statistics times c_p
    sw = sum(c[p] * ops_em.em_estep(x[p:p + 1], g, 1.0, lp).shift_weights for p in range(P))
    torch.testing.assert_close(wtd.shift_weights, sw, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(wtd.log_evidence, full.log_evidence, rtol=0, atol=0)
    # thread count does not change the result beyond summation order
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops_em.em_estep(x, g, 1.0, lp)
    finally:
        torch.set_num_threads(prev)
    torch.testing.assert_close(one.backprojection, full.backprojection, rtol=1e-12, atol=1e-12)


def test_estep_gradient_matches_finite_differences(gen):
    L, P, K = 3, 4, 5
    x, g = _problem(L, P, K, gen)
    lp = _log_prior_from_full(_rho_full(L, gen))
    gg = g.clone().requires_grad_(True)
    lpp = lp.clone().requires_grad_(True)
    torch.autograd.gradcheck(lambda a, b: ops_em.em_estep(x, a, 0.8, b).log_evidence, (gg, lpp), eps=1e-6, atol=1e-6)


def test_estep_zero_patches(gen):
    g = torch.randn(3, 4, 4, generator=gen, dtype=torch.float64)
    lp = torch.full(((2 * 4 - 1) ** 2 + 1,), -math.log((2 * 4 - 1) ** 2 + 1), dtype=torch.float64)
    res = ops_em.em_estep(torch.zeros(0, 4, 4, dtype=torch.float64), g, 1.0, lp)
    assert res.log_evidence.shape == (0,)
    assert float(res.shift_weights.abs().sum()) == 0.0


def test_estep_bad_inputs(gen):
    L = 4
    D = (2 * L - 1) ** 2
    x = torch.randn(3, L, L, dtype=torch.float64)
    g = torch.randn(2, L, L, dtype=torch.float64)
    lp = torch.zeros(D + 1, dtype=torch.float64)
    with pytest.raises(ValueError, match="em_estep.*patches.*finite|em_estep.*patches.*NaN|em_estep.*non-finite"):
        ops_em.em_estep(torch.full_like(x, float("nan")), g, 1.0, lp)
    with pytest.raises(ValueError, match="em_estep.*projections must have shape"):
        ops_em.em_estep(x, torch.randn(2, L, L + 1, dtype=torch.float64), 1.0, lp)
    with pytest.raises(ValueError, match="em_estep.*log_prior must have shape"):
        ops_em.em_estep(x, g, 1.0, lp[:-1])
    with pytest.raises(ValueError, match="em_estep.*sigma"):
        ops_em.em_estep(x, g, -1.0, lp)
    with pytest.raises(ValueError, match="em_estep.*all entries are -inf"):
        ops_em.em_estep(x, g, 1.0, torch.full_like(lp, -math.inf))
    with pytest.raises(TypeError, match="em_estep.*dtype"):
        ops_em.em_estep(x, g.float(), 1.0, lp)
    sup = torch.zeros(L, L, dtype=torch.bool)
    with pytest.raises(ValueError, match="em_estep.*vanish outside support"):
        ops_em.em_estep(x, g, 1.0, lp, support=sup)
    with pytest.raises(ValueError, match="em_estep.*patch_weights"):
        ops_em.em_estep(x, g, 1.0, lp, patch_weights=torch.ones(2, dtype=torch.float64))


def test_binding_rejects_bad_k_lists():
    """The binding checks every k-list entry on the CPU (the kernel never reads outside a patch)."""
    from orbitcore import _ext

    L, P, K = 3, 2, 2
    D = (2 * L - 1) ** 2
    x = torch.randn(P, L, L, dtype=torch.float64)
    g = torch.randn(K, L, L, dtype=torch.float64)
    klist, kstart = ops_em.k_lists(torch.ones(L, L, dtype=torch.bool))
    f64 = dict(dtype=torch.float64)
    outs = [torch.empty(P, **f64), torch.empty(P, **f64), torch.empty(K, D, **f64), torch.empty(K, L, L, **f64)]

    def call(kl, ks):
        _ext.C.em_estep(_ext.arg(x), _ext.arg(g), _ext.arg(ops_em.shift_norms(g)), _ext.arg(torch.zeros(D + 1, **f64)),
                        _ext.arg(None), _ext.arg(kl), _ext.arg(ks), 0.5, *[_ext.arg(o) for o in outs],
                        _ext.arg(None), _ext.arg(None), _ext.arg(None), 1, "auto", 0)

    call(klist, kstart)  # the valid lists pass
    bad = klist.clone()
    bad[0] = 0  # displacement (-2, -2) meets only patch pixel (2, 2) = 8, not (0, 0)
    with pytest.raises(ValueError, match="em_estep.*klist\\[0\\] = 0 is not a patch pixel"):
        call(bad, kstart)
    ks = kstart.clone()
    ks[0] = 1
    with pytest.raises(ValueError, match="em_estep.*kstart\\[0\\] must be 0"):
        call(klist, ks)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_estep_cuda_matches_bruteforce(dtype, gen):
    L, P, K = 5, 9, 37
    yy, xx = torch.meshgrid(torch.arange(L), torch.arange(L), indexing="ij")
    support = ((yy - L // 2) ** 2 + (xx - L // 2) ** 2) <= (L // 2) ** 2
    x, g = _problem(L, P, K, gen, support=support)
    rho = _rho_full(L, gen)
    out = ref.em_estep_reference(x, g, 0.9, rho)
    sw_ref, sp_ref, ep_ref = _fold_reference(out, L)
    lp = _log_prior_from_full(rho)
    r = ops_em.em_estep(x.to("cuda", dtype), g.to("cuda", dtype), 0.9, lp.to(dtype), support=support, posterior=True)
    tol = dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=1e-4, atol=2e-3 * P)
    torch.testing.assert_close(r.log_evidence.cpu(), out["log_evidence"], **tol)
    torch.testing.assert_close(r.shift_weights.cpu(), sw_ref, **tol)
    torch.testing.assert_close(r.empty_posterior.cpu(), ep_ref, **tol)
    torch.testing.assert_close(r.shift_posterior.cpu(), sp_ref, **tol)
    torch.testing.assert_close(r.backprojection.cpu(), out["backprojection"] * support, **tol)
