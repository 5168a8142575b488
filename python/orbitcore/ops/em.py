"""Custom ops of the EM family: the E-step of the approximate EM of seeds/002 (eq. 18–25) over a
set of patches, for all shifts and all rotations at once.

Shifts. The paper's patch model (eq. 18–19) zero-pads a projection ``g`` to ``2L x 2L``, shifts it
circularly by ``l in {0..2L-1}^2`` and crops ``L x L``. We index shifts by the displacement
``d = (d0, d1)`` in ``[-(L-1), L-1]^2`` (``d_a = l_a`` for ``l_a < L``, ``l_a - 2L`` for ``l_a > L``):
``patch[i, j] = g[i + d0, j + d1]`` where that index lies in ``[0, L)``, else 0 (array axes 0 and 1).
The ``4L - 1`` shifts with ``l_0 = L`` or ``l_1 = L`` show nothing of the projection and are one
*empty* state. Displacement ``k`` of ``D = (2L - 1)^2`` is ``d0 = k // (2L-1) - (L-1)``,
``d1 = k % (2L-1) - (L-1)`` (:func:`displacements`).

Scores. For patch ``p``, displacement ``k`` and rotation ``w`` (eq. 24, 23)::

    s[p, k, w] = (2 <I_p, C T_k Z g_w> - |C T_k Z g_w|^2) / (2 sigma^2) + log rho[k] - log K
    s_empty    = log rho_empty
    w[p, k, w] = exp(s[p, k, w] - lse_p),   lse_p = log(sum_{k,w} exp(s) + exp(s_empty))
    log p(I_p) = lse_p - |I_p|^2 / (2 sigma^2) - (L^2 / 2) log(2 pi sigma^2)

The correlations for all shifts come from one register-tiled product per shift over the pixels
where patch and projection overlap (only projection pixels in the ``support`` count: the PSWF
projections of seeds/002 vanish outside the disk), fused with the log-sum-exp and the
accumulation of the sufficient statistics of the M-step (``src/orbitcore/em.hpp``,
``cpu/em_estep.inl``); no ``(patches x shifts x rotations)`` array is formed.

Autograd: the log-evidence is differentiable with respect to ``projections`` (on the support),
``norms`` and ``log_prior``; the gradient is itself an E-step with the incoming gradient as patch
weights (``d lse_p / d g_w = (1 / sigma^2) sum_k w[p,k,w] (C T_k Z)^T I_p``). Gradients with
respect to the patches are not implemented (an error is raised if they are requested).
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from .. import _ext
from .. import _validate as V
from .._validate import fail, from_tensor, to_tensor

__all__ = ["EStepResult", "em_estep", "displacements", "shift_norms", "k_lists", "cpu_simd"]

_WORKSPACE_BYTES = 1 << 28  # CUDA score buffer per call (patches are processed in chunks)


def cpu_simd(name: str = "auto") -> str:
    """The SIMD variant of the CPU E-step that ``name`` resolves to on this CPU (the E-step, the
    moment kernels and the norm kernels share one run-time dispatch, ``ORBITCORE_CPU_SIMD``). Raises ValueError for
    an unknown level or one this CPU lacks."""
    return str(_ext.C.cpu_simd(name))


@functools.lru_cache(maxsize=64)
def _displacements(L: int) -> Tensor:
    n = 2 * L - 1
    k = torch.arange(n * n)
    return torch.stack([k // n - (L - 1), k % n - (L - 1)], -1)


def displacements(L: int) -> Tensor:
    """int64 ``(D, 2)``: the displacement ``(d0, d1)`` of each of the ``D = (2L - 1)^2`` shift
    indices ``k`` (module docstring)."""
    L = V.check_int("displacements", "L", L, minimum=1)
    return _displacements(L).clone()


@functools.lru_cache(maxsize=64)
def _k_lists_cached(L: int, support_bytes: bytes) -> tuple[Tensor, Tensor]:
    support = torch.frombuffer(bytearray(support_bytes), dtype=torch.bool).reshape(L, L)
    d = _displacements(L)
    i = torch.arange(L)
    ii, jj = torch.meshgrid(i, i, indexing="ij")  # patch pixel (i, j)
    r = ii[None] + d[:, 0, None, None]            # projection pixel it meets
    c = jj[None] + d[:, 1, None, None]
    inside = (r >= 0) & (r < L) & (c >= 0) & (c < L)
    ok = inside & support[r.clamp(0, L - 1), c.clamp(0, L - 1)]
    k, pi, pj = torch.nonzero(ok, as_tuple=True)  # row-major: k ascending, then pixel
    klist = (pi * L + pj).to(torch.int32)
    counts = torch.bincount(k, minlength=d.shape[0])
    kstart = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)]).to(torch.int32)
    return klist, kstart


def k_lists(support: Tensor) -> tuple[Tensor, Tensor]:
    """The kernel's k-lists for a support mask ``(L, L)`` bool: ``klist`` int32 (patch pixels, flat)
    and ``kstart`` int32 ``(D + 1,)`` (``src/orbitcore/em.hpp``). CPU tensors, cached."""
    s, _ = to_tensor(support, "k_lists", "support")
    if s.dim() != 2 or s.shape[0] != s.shape[1]:
        fail("k_lists", f"support must be a square (L, L) mask, got {tuple(s.shape)}")
    s = s.detach().to("cpu", torch.bool).contiguous()
    return _k_lists_cached(int(s.shape[0]), bytes(s.numpy().tobytes()))


def shift_norms(projections, support=None):
    """``|C T_k Z g_w|^2`` for every rotation and displacement: ``(K, D)`` in the dtype of the
    projections ``(K, L, L)``. Box sums of ``g^2`` over the visible part of the projection (in
    float64 through 2-D cumulative sums); differentiable. ``support`` is accepted for symmetry with
    :func:`em_estep` and ignored (pixels outside it are zero)."""
    fn = "shift_norms"
    g, kind = to_tensor(projections, fn, "projections")
    V.check_floating(fn, "projections", g)
    if g.dim() != 3 or g.shape[-1] != g.shape[-2]:
        fail(fn, f"projections must have shape (K, L, L), got {tuple(g.shape)}")
    L = g.shape[-1]
    sq = g.to(torch.float64) ** 2
    cs = torch.nn.functional.pad(sq.cumsum(1).cumsum(2), (1, 0, 1, 0))  # cs[a, b] = sum_{<a, <b}
    d = _displacements(L).to(g.device)
    r0, r1 = d[:, 0].clamp(min=0), (L + d[:, 0]).clamp(max=L)
    c0, c1 = d[:, 1].clamp(min=0), (L + d[:, 1]).clamp(max=L)
    n = L + 1
    flat = cs.reshape(g.shape[0], n * n)
    box = (flat[:, r1 * n + c1] - flat[:, r0 * n + c1] - flat[:, r1 * n + c0] + flat[:, r0 * n + c0])
    return from_tensor(box.clamp(min=0).to(g.dtype), kind)


# ----------------------------------------------------------------------------------------------
# the ops
# ----------------------------------------------------------------------------------------------
def _run(patches, projections, norms, log_prior, patch_weights, support, inv2s2, posterior):
    patches, projections = _ext.dense(patches), _ext.dense(projections)
    norms, log_prior = _ext.dense(norms), _ext.dense(log_prior)
    cw = None if patch_weights is None else _ext.dense(patch_weights.to(patches.dtype))
    P, L = patches.shape[0], patches.shape[-1]
    K = projections.shape[0]
    D = (2 * L - 1) ** 2
    dev = patches.device
    f64 = dict(dtype=torch.float64, device=dev)
    klist, kstart = k_lists(support)
    klist, kstart = klist.to(dev), kstart.to(dev)
    le = torch.empty(P, **f64)
    ep = torch.empty(P, **f64)
    sw = torch.empty(K, D, **f64)
    bp = torch.empty(K, L, L, **f64)
    sp = torch.empty(P, D, **f64) if posterior else None
    ws = ws64 = None
    if dev.type == "cuda":
        per = D * K + D
        chunk = max(1, min(max(P, 1), _WORKSPACE_BYTES // (per * patches.element_size())))
        ws = torch.empty(chunk * per + L * L, dtype=patches.dtype, device=dev)
        ws64 = torch.empty(2 * chunk, **f64)
    _ext.C.em_estep(_ext.arg(patches), _ext.arg(projections), _ext.arg(norms), _ext.arg(log_prior), _ext.arg(cw),
                    _ext.arg(klist), _ext.arg(kstart), float(inv2s2), _ext.arg(le), _ext.arg(ep), _ext.arg(sw),
                    _ext.arg(bp), _ext.arg(sp), _ext.arg(ws), _ext.arg(ws64), _ext.threads(), _ext.simd(),
                    _ext.stream(patches))
    if sp is None:
        sp = torch.empty(0, D, **f64)
    return le, ep, sw, bp, sp


@torch.library.custom_op("orbitcore::em_estep", mutates_args=())
def _em_estep(patches: Tensor, projections: Tensor, norms: Tensor, log_prior: Tensor,
              patch_weights: Optional[Tensor], support: Tensor, inv_two_sigma2: float,
              posterior: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> (log_evidence (P,), empty_posterior (P,), shift_weights (K, D), backprojection (K, L, L),
    shift_posterior (P, D) or (0, D)), all float64."""
    return _run(patches, projections, norms, log_prior, patch_weights, support, inv_two_sigma2, posterior)


@_em_estep.register_fake
def _(patches, projections, norms, log_prior, patch_weights, support, inv_two_sigma2, posterior):
    P, L, K = patches.shape[0], patches.shape[-1], projections.shape[0]
    D = (2 * L - 1) ** 2
    kw = dict(dtype=torch.float64, device=patches.device)
    return (patches.new_empty(P, **kw), patches.new_empty(P, **kw), patches.new_empty(K, D, **kw),
            patches.new_empty(K, L, L, **kw), patches.new_empty(P if posterior else 0, D, **kw))


@torch.library.custom_op("orbitcore::em_estep_backward", mutates_args=())
def _em_estep_backward(grad: Tensor, patches: Tensor, projections: Tensor, norms: Tensor, log_prior: Tensor,
                       support: Tensor, empty_posterior: Tensor,
                       inv_two_sigma2: float) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of sum_p grad[p] log_evidence[p] with respect to (projections, norms, log_prior):
    one E-step with the incoming gradient as patch weights."""
    c = grad.to(patches.dtype)
    _, _, sw, bp, _ = _run(patches, projections, norms, log_prior, c, support, inv_two_sigma2, False)
    g_proj = (2.0 * inv_two_sigma2 * bp).to(projections.dtype)
    g_norms = (-inv_two_sigma2 * sw).to(norms.dtype)
    g_empty = (grad.to(torch.float64) * empty_posterior).sum()
    g_lp = torch.cat([sw.sum(0), g_empty[None]]).to(log_prior.dtype)
    return g_proj, g_norms, g_lp


@_em_estep_backward.register_fake
def _(grad, patches, projections, norms, log_prior, support, empty_posterior, inv_two_sigma2):
    return torch.empty_like(projections), torch.empty_like(norms), torch.empty_like(log_prior)


def _estep_setup(ctx, inputs, output):
    patches, projections, norms, log_prior, patch_weights, support, inv2s2, posterior = inputs
    ctx.save_for_backward(patches, projections, norms, log_prior, support, output[1])
    ctx.inv2s2 = inv2s2
    ctx.mark_non_differentiable(*output[1:])


def _estep_bwd(ctx, g_le, g_ep, g_sw, g_bp, g_sp):
    if ctx.needs_input_grad[0]:
        raise RuntimeError("em_estep: gradients with respect to the patches are not implemented")
    if ctx.needs_input_grad[4]:
        raise RuntimeError("em_estep: gradients with respect to patch_weights are not implemented "
                           "(the log-evidence does not depend on them)")
    patches, projections, norms, log_prior, support, empty_post = ctx.saved_tensors
    if g_le is None:
        return None, None, None, None, None, None, None, None
    g_proj, g_norms, g_lp = torch.ops.orbitcore.em_estep_backward(
        g_le, patches, projections, norms, log_prior, support, empty_post, ctx.inv2s2)
    return None, g_proj, g_norms, g_lp, None, None, None, None


def _estep_bwd_setup(ctx, inputs, output):
    pass


def _estep_bwd_bwd(ctx, *grads):
    raise RuntimeError("em_estep: double backward is not supported")


torch.library.register_autograd("orbitcore::em_estep", _estep_bwd, setup_context=_estep_setup)
torch.library.register_autograd("orbitcore::em_estep_backward", _estep_bwd_bwd, setup_context=_estep_bwd_setup)


# ----------------------------------------------------------------------------------------------
# public function
# ----------------------------------------------------------------------------------------------
class EStepResult(NamedTuple):
    """Output of :func:`em_estep` (all float64).

    log_evidence: ``(P,)`` ``log p(I_p; x, rho)`` (eq. 23's normaliser, Gaussian constants
        included); its sum is the log-likelihood of the patches.
    empty_posterior: ``(P,)`` posterior probability that patch ``p`` is empty.
    shift_weights: ``(K, D)`` ``sum_p c_p p(k, w | I_p)``: the total posterior weight of each
        (rotation, displacement) (for ``A`` of eq. 31/34 and rho of eq. 37).
    backprojection: ``(K, L, L)`` ``sum_p c_p sum_k p(k, w | I_p) (C T_k Z)^T I_p``: per rotation the
        posterior-weighted sum of the patches shifted back into the projection's frame (for ``y``
        of eq. 30/32); zero off the support.
    shift_posterior: ``(P, D)`` ``p(k | I_p) = sum_w p(k, w | I_p)`` when requested (Algorithm 2),
        else None.
    """

    log_evidence: Tensor
    empty_posterior: Tensor
    shift_weights: Tensor
    backprojection: Tensor
    shift_posterior: Optional[Tensor]


def em_estep(patches, projections, sigma: float, log_prior, *, norms=None, patch_weights=None, support=None,
             posterior: bool = False) -> EStepResult:
    """E-step of the approximate EM (seeds/002 eq. 22–25) for every (patch, shift, rotation).

    Args:
        patches: ``(P, L, L)`` float32/float64 (the observed patches, eq. 18).
        projections: ``(K, L, L)`` projections ``g_w = P R_w f`` of the current volume, same dtype
            and device; zero outside ``support``.
        sigma: noise standard deviation per pixel (same units as the patches).
        log_prior: ``(D + 1,)`` log-probabilities of the displacements (order of
            :func:`displacements`) and, last, of the empty state (``-inf`` allowed; not
            renormalised here). The rotation prior is uniform, ``1/K``.
        norms: ``(K, D)`` ``|C T_k Z g_w|^2`` (default: :func:`shift_norms` of the projections).
        patch_weights: ``(P,)`` factors ``c_p`` on each patch's contribution to the statistics
            (default 1).
        support: ``(L, L)`` bool, the pixels where projections may be nonzero (default: all); the
            correlations skip the rest (the disk of a PSWF basis saves a third of the work).
        posterior: also return ``p(k | I_p)`` (Algorithm 2).

    Returns:
        :class:`EStepResult` (float64 tensors on the device of the patches). Work: one pass
        of ``L^2 |support|`` multiply-adds per (patch, rotation) for the correlations and one for
        the back-projection; float32 inputs are computed in float32 with float64 accumulation.
    """
    fn = "em_estep"
    x, _ = to_tensor(patches, fn, "patches")
    g, _ = to_tensor(projections, fn, "projections")
    for name, t in (("patches", x), ("projections", g)):
        V.check_floating(fn, name, t)
        if t.dtype not in (torch.float32, torch.float64):
            fail(fn, f"{name} must be float32 or float64, got {t.dtype}", TypeError)
        V.check_kernel_device(fn, name, t)
    if x.dim() != 3 or x.shape[-1] != x.shape[-2]:
        fail(fn, f"patches must have shape (P, L, L), got {tuple(x.shape)}")
    L = int(x.shape[-1])
    if L < 2:
        fail(fn, f"patches must be at least 2 x 2, got {tuple(x.shape)}")
    D = (2 * L - 1) ** 2
    if g.dim() != 3 or tuple(g.shape[1:]) != (L, L) or g.shape[0] < 1:
        fail(fn, f"projections must have shape (K, L, L) = (K, {L}, {L}) with K >= 1, got {tuple(g.shape)}")
    if g.dtype != x.dtype:
        fail(fn, f"projections must have the dtype of the patches ({x.dtype}), got {g.dtype}", TypeError)
    V.check_same_device(fn, "patches", x, "projections", g)
    V.check_finite(fn, "patches", x)
    V.check_finite(fn, "projections", g)
    s = V.check_float(fn, "sigma", sigma, positive=True)
    if not math.isfinite(s):
        fail(fn, f"sigma must be finite, got {sigma}")
    lp, _ = to_tensor(log_prior, fn, "log_prior")
    V.check_floating(fn, "log_prior", lp)
    if tuple(lp.shape) != (D + 1,):
        fail(fn, f"log_prior must have shape (D + 1,) = ({D + 1},) for L = {L}, got {tuple(lp.shape)}")
    lpd = lp.detach()
    if torch.isnan(lpd).any() or (lpd == math.inf).any():
        fail(fn, "log_prior must not contain NaN or +inf (use -inf for impossible states)")
    if not torch.isfinite(lpd).any():
        fail(fn, "log_prior must give at least one state a positive probability (all entries are -inf)")
    lp = lp.to(device=x.device, dtype=x.dtype)
    if support is None:
        sup = torch.ones(L, L, dtype=torch.bool)
    else:
        sup, _ = to_tensor(support, fn, "support")
        if tuple(sup.shape) != (L, L) or sup.dtype != torch.bool:
            fail(fn, f"support must be a bool array of shape (L, L) = ({L}, {L}), got {sup.dtype} {tuple(sup.shape)}")
        outside = g.detach()[:, ~sup.to(g.device)]
        if outside.numel() and bool((outside != 0).any()):
            fail(fn, "projections must vanish outside support (a nonzero value was found there)")
    if norms is None:
        nr = shift_norms(g)
    else:
        nr, _ = to_tensor(norms, fn, "norms")
        if tuple(nr.shape) != (g.shape[0], D):
            fail(fn, f"norms must have shape (K, D) = ({g.shape[0]}, {D}), got {tuple(nr.shape)}")
        V.check_finite(fn, "norms", nr)
        nr = nr.to(device=x.device, dtype=x.dtype)
    cw = None
    if patch_weights is not None:
        cw, _ = to_tensor(patch_weights, fn, "patch_weights")
        if tuple(cw.shape) != (x.shape[0],):
            fail(fn, f"patch_weights must have shape (P,) = ({x.shape[0]},), got {tuple(cw.shape)}")
        V.check_finite(fn, "patch_weights", cw)
        cw = cw.to(device=x.device, dtype=x.dtype)
    inv2s2 = 1.0 / (2.0 * s * s)
    if not math.isfinite(inv2s2):
        fail(fn, f"sigma = {sigma} is too small (1 / (2 sigma^2) overflows)")
    le, ep, sw, bp, sp = torch.ops.orbitcore.em_estep(x, g, nr, lp, cw, sup.to(x.device), inv2s2, bool(posterior))
    return EStepResult(le, ep, sw, bp, sp if posterior else None)
