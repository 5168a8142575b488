"""Global pose search against a map: the maximum-likelihood rotation of every image.

What an amortized encoder approximates, computed by brute force: for a map ``v``, images ``I_i``
with CTFs ``C_i`` and shifts ``t_i`` (pixels, content moves by ``+t``) and white noise,

    R̂_i = argmax_R  ℓ_i(R),   ℓ_i(R) = 2 c_i(R) − q_i(R)                   (known scale)
                               ℓ_i(R) = max(c_i(R), 0)² / q_i(R)           (scale fitted)
    c_i(R) = Re⟨C_i S_{t_i}^* Î_i, P̂(R)⟩,   q_i(R) = ⟨C_i², |P̂(R)|²⟩,

the sums over the centred Fourier pixels with ``|k| <= radius`` (over half of them, weighted:
the images are Hermitian) and ``P̂(R)`` the Fourier slice of the map
(:class:`orbitcore.physics.Projector`, the simulator's forward model). ``ℓ`` is
``σ² × (log-likelihood + const)``; with the scale fitted it is invariant to the map's units, so a
reconstruction can be used as it comes out of a decoder.

First over :func:`orbitcore.metrics.so3_grid` (``step`` degrees: two matrix products over the
Fourier pixels for every batch of images), then ``refine`` rounds of local search: a stencil of 26
rotations by ``±step/2`` about 13 axes around each image's best, the step halved every round.
The final angular resolution is about ``step / 2^(refine+1)``.

Cost: the grid has about ``8π² / step³`` rotations (35 232 at 7.5°); their templates take
``M × 3K`` numbers of the map's dtype (``K ≈ π radius² / 2`` pixels: 150 MB at 7.5°, ``D = 32``,
float32). A use in this project: ``scripts/amortized_ml_bound.py`` (the oracle bound of issue 6
and the search with a decoder's map).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from .._validate import check_finite, check_float, check_int, fail, to_tensor
from ..fourier import fft2c, ifft2c, radial_frequency
from ..geometry import axis_angle_to_matrix
from ..physics import CTFParams, shift_phases
from ..physics.projection import Projector

# the shift grid of refine_poses(shift_search=): 1/4 pixel (refine_shifts' upsample)
_SHIFT_UPSAMPLE = 4

__all__ = ["RefinementResult", "SearchResult", "refine_poses", "refine_shifts", "search_poses"]


@dataclass
class SearchResult:
    """``rotations (N, 3, 3)`` float64, the best rotation of every image; ``scores (N,)`` their
    ``ℓ`` (module docstring); ``grid_size`` rotations in the global pass; ``seconds`` wall time."""
    rotations: torch.Tensor
    scores: torch.Tensor
    grid_size: int
    seconds: float


def _pairs(F: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(..., n, n)`` complex → ``(..., 2K)`` real over the masked pixels: dot products are ``Re⟨a, b⟩``."""
    z = F[..., mask]
    return torch.cat([z.real, z.imag], dim=-1)


def _real(fn: str, name: str, x, shape: tuple, dtype, what: str) -> torch.Tensor:
    """``x`` as a finite real tensor of ``shape`` in ``dtype``, or a clear error."""
    t, _ = to_tensor(x, fn, name)
    if t.is_complex() or tuple(t.shape) != shape:
        fail(fn, f"{name} must be {what} {shape}, got {t.dtype} {tuple(t.shape)}")
    check_finite(fn, name, t)
    return t.to(dtype)


def _loglik(c: torch.Tensor, q: torch.Tensor, fit_scale: bool) -> torch.Tensor:
    return c.clamp(min=0).pow(2) / q.clamp(min=torch.finfo(q.dtype).tiny) if fit_scale else 2 * c - q


def _score_each(a: torch.Tensor, c2: torch.Tensor, T: torch.Tensor, mask: torch.Tensor, fit_scale: bool):
    """``ℓ`` of each image against its own templates: ``a (b, 2K)``, ``c2 (b, K)`` (weighted),
    ``T (b, ..., n, n)`` → ``(b, ...)``."""
    extra = (None,) * (T.dim() - 3)
    A, Q = a[(slice(None),) + extra], c2[(slice(None),) + extra]
    return _loglik((A * _pairs(T, mask)).sum(-1), (Q * T[..., mask].abs().pow(2)).sum(-1), fit_scale)


def _stencil(step_deg: float, dtype) -> torch.Tensor:
    """Identity and rotations by ``±step`` about 13 axes (3 coordinate, 6 face, 4 body diagonals): ``(27, 3, 3)``."""
    axes = torch.tensor([(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, -1, 0), (1, 0, 1), (1, 0, -1), (0, 1, 1),
                         (0, 1, -1), (1, 1, 1), (1, 1, -1), (1, -1, 1), (-1, 1, 1)], dtype=torch.float64)
    ang = torch.full((13,), math.radians(step_deg), dtype=torch.float64)
    R = torch.cat([torch.eye(3, dtype=torch.float64)[None], axis_angle_to_matrix(axes, ang),
                   axis_angle_to_matrix(axes, -ang)])
    return R.to(dtype)


def _volume_images(fn: str, volume, images) -> tuple[torch.Tensor, torch.Tensor]:
    """The checked map ``(D, D, D)`` and images ``(N, D, D)`` (real, finite, as given)."""
    vol, _ = to_tensor(volume, fn, "volume")
    if vol.dim() != 3 or len(set(vol.shape)) != 1 or vol.is_complex() or not vol.is_floating_point():
        fail(fn, f"volume must be a real (D, D, D) tensor, got {vol.dtype} {tuple(vol.shape)}")
    check_finite(fn, "volume", vol)
    D = vol.shape[-1]
    img, _ = to_tensor(images, fn, "images")
    if img.dim() != 3 or tuple(img.shape[1:]) != (D, D) or img.is_complex() or not img.is_floating_point() \
            or img.shape[0] == 0:
        fail(fn, f"images must be real (N, {D}, {D}) with N >= 1 (the volume is {D}³), "
                 f"got {img.dtype} {tuple(img.shape)}")
    check_finite(fn, "images", img)
    return vol, img


def _inputs(fn: str, volume, images, ctf, shifts, radius):
    """The checked map, images, CTF values, shifts and radius shared by :func:`search_poses` and
    :func:`refine_shifts`: ``(vol (D, D, D), img (N, D, D), C (N, D, D) | None, t (N, 2) | None,
    radius)``, all in the map's dtype."""
    vol, img = _volume_images(fn, volume, images)
    D, N = vol.shape[-1], img.shape[0]
    radius = D / 2 - 1 if radius is None else check_float(fn, "radius", radius, positive=True)
    if radius > D / 2 - 1:
        fail(fn, f"radius must be at most D/2 - 1 = {D / 2 - 1:g} Fourier pixels (where the images are exactly "
                 f"Hermitian), got {radius:g}")
    dtype = vol.dtype
    if ctf is None:
        C = None
    elif isinstance(ctf, CTFParams):
        if len(ctf) != N:
            fail(fn, f"ctf must have {N} entries (one per image), got {len(ctf)}")
        C = ctf.evaluate(D, dtype=torch.float64).to(dtype)
    else:
        C = _real(fn, "ctf", ctf, (N, D, D), dtype, "a CTFParams or real values")
    t = None if shifts is None else _real(fn, "shifts", shifts, (N, 2), dtype, "real pixels")
    return vol, img, C, t, radius


@torch.no_grad()
def search_poses(volume, images, *, ctf=None, shifts=None, step: float = 7.5, refine: int = 3,
                 radius: float | None = None, fit_scale: bool = True, init_rotations=None, batch_size: int = 128,
                 verbose: bool = False) -> SearchResult:
    """The maximum-likelihood rotation of every image against ``volume`` (module docstring).

    Args:
        volume: real ``(D, D, D)`` map indexed ``[z, y, x]`` (ARCHITECTURE.md conventions).
        images: real ``(N, D, D)`` particle images.
        ctf: ``None``, a :class:`~orbitcore.physics.CTFParams` with ``N`` entries, or real CTF
            values ``(N, D, D)`` on the centred grid.
        shifts: ``None`` or ``(N, 2)`` in-plane shifts in pixels (content moved by ``+t``), taken
            as known (e.g. an encoder's translation head).
        step: spacing of the global SO(3) grid in degrees (``0 < step <= 90``).
        refine: rounds of local refinement (``>= 0``).
        radius: Fourier radius of the likelihood in pixels (``<= D/2 - 1``, the default).
        fit_scale: fit the template's scale per image (a map in arbitrary units); ``False``
            when the map is in the images' units (e.g. the simulator's volume).
        init_rotations: ``(N, 3, 3)``: local search only, no global grid — the ``refine``
            rounds start around these rotations with the stencil at ``±step/2``.
        batch_size: images per batch (memory ``batch_size × grid`` scores).
        verbose: progress bar.

    Returns:
        :class:`SearchResult`. The rotations are in the map's frame.
    """
    fn = "search_poses"
    vol, img, C, t, radius = _inputs(fn, volume, images, ctf, shifts, radius)
    N, D, dtype = img.shape[0], vol.shape[-1], vol.dtype
    ctype = torch.complex128 if dtype == torch.float64 else torch.complex64
    step = check_float(fn, "step", step, positive=True)
    if step > 90:
        fail(fn, f"step must be at most 90 degrees, got {step}")
    refine = check_int(fn, "refine", refine, minimum=0)
    batch_size = check_int(fn, "batch_size", batch_size, minimum=1)
    R0 = None if init_rotations is None else _real(fn, "init_rotations", init_rotations, (N, 3, 3), dtype, "real")
    if R0 is not None:
        R0 = R0.to(vol.device)

    t0 = time.perf_counter()
    from ..metrics import so3_grid  # noqa: PLC0415  (metrics imports physics, not amortized)

    proj = Projector(vol, pad=2, _fn=fn)
    # The images and templates are FTs of real images, Hermitian: the sums over the disk are the
    # sums over its half (ky > 0, or ky = 0 and kx >= 0) with weight 2 off the origin.
    k = torch.arange(D, dtype=torch.float64) - D // 2
    ky, kx = k[:, None], k[None, :]
    mask = ((radial_frequency(D, 2) <= radius) & ((ky > 0) | ((ky == 0) & (kx >= 0)))).to(vol.device)
    w = torch.full((int(mask.sum()),), 2.0, dtype=dtype, device=vol.device)
    w[0] = 1.0  # the origin: the first masked pixel in row-major order (ky = 0, kx = 0)
    grid = so3_grid(step).to(dtype=dtype, device=vol.device) if R0 is None else torch.empty(0, 3, 3, dtype=dtype)
    P = torch.empty(grid.shape[0], 2 * int(mask.sum()), dtype=dtype, device=vol.device)
    P2 = torch.empty(grid.shape[0], int(mask.sum()), dtype=dtype, device=vol.device)
    for s in range(0, grid.shape[0], 4096):
        T = proj.fourier(grid[s:s + 4096])
        P[s:s + 4096], P2[s:s + 4096] = _pairs(T, mask), T[..., mask].abs().pow(2)
    stencils = [_stencil(step / 2 ** (i + 1), dtype).to(vol.device) for i in range(refine)]
    best = torch.empty(N, 3, 3, dtype=torch.float64)
    score = torch.empty(N, dtype=torch.float64)
    from tqdm.auto import tqdm  # noqa: PLC0415

    with tqdm(total=N, unit="img", desc="pose search", disable=not verbose) as bar:
        for s in range(0, N, batch_size):
            e = min(N, s + batch_size)
            F = fft2c(img[s:e].to(device=vol.device, dtype=dtype))
            if t is not None:
                F = F * shift_phases(D, -t[s:e].to(vol.device), dtype=ctype, device=vol.device)
            if C is None:
                c2 = w.expand(e - s, -1)
            else:
                Cb = C[s:e].to(vol.device)
                F, c2 = F * Cb, (Cb * Cb)[:, mask] * w
            a = _pairs(F, mask) * torch.cat([w, w])
            if R0 is None:
                sc = _loglik(a @ P.T, c2 @ P2.T, fit_scale)                # (b, M)
                top = sc.max(1)
                Rb, sb = grid[top.indices], top.values
            else:
                Rb, sb = R0[s:e], None
            for stencil in stencils:
                cand = Rb[:, None] @ stencil[None]                                  # (b, 27, 3, 3)
                T = proj.fourier(cand.reshape(-1, 3, 3)).reshape(e - s, 27, D, D)
                top = _score_each(a, c2, T, mask, fit_scale).max(1)
                Rb, sb = cand[torch.arange(e - s, device=cand.device), top.indices], top.values
            if sb is None:  # local search with refine=0: score the initial rotations
                sb = _score_each(a, c2, proj.fourier(Rb), mask, fit_scale)
            best[s:e], score[s:e] = Rb.double().cpu(), sb.double().cpu()
            bar.update(e - s)
    return SearchResult(rotations=best, scores=score, grid_size=int(grid.shape[0]),
                        seconds=time.perf_counter() - t0)



@torch.no_grad()
def refine_shifts(volume, images, rotations, *, ctf=None, shifts=None, max_shift: float = 2.0, upsample: int = 4,
                  radius: float | None = None, batch_size: int = 128) -> torch.Tensor:
    """The maximum-likelihood in-plane shift of every image at given rotations.

    With the rotation fixed, only ``c_i`` of the module docstring depends on the shift
    (``|S_t| = 1``), so both forms of ``ℓ`` peak where ``c_i(t) = Re⟨C_i S_t^* Î_i, P̂(R_i)⟩`` does.
    That is a cross-correlation: ``c_i(t) ∝ Re F⁻¹[C_i Î_i conj(P̂(R_i))](t)`` over the disk,
    evaluated on a grid of ``1/upsample`` pixels by zero-padding the product before the inverse
    FFT; the maximum is taken within ``max_shift`` pixels of the prior ``shifts`` (of 0 without).

    Args:
        volume, images, ctf, radius, batch_size: as in :func:`search_poses`.
        rotations: ``(N, 3, 3)`` the images' rotations in the map's frame.
        shifts: ``None`` or ``(N, 2)`` prior shifts ``(tx, ty)`` in pixels (content moved by
            ``+t``): the centres of the search windows.
        max_shift: window radius in pixels (``> 0``).
        upsample: grid refinement (``>= 1``; the shifts come on a ``1/upsample``-pixel grid).

    Returns:
        ``(N, 2)`` float64 shifts in pixels, the same convention.
    """
    fn = "refine_shifts"
    vol, img, C, t, radius = _inputs(fn, volume, images, ctf, shifts, radius)
    N, D, dtype = img.shape[0], vol.shape[-1], vol.dtype
    R = _real(fn, "rotations", rotations, (N, 3, 3), dtype, "real").to(vol.device)
    max_shift = check_float(fn, "max_shift", max_shift, positive=True)
    upsample = check_int(fn, "upsample", upsample, minimum=1)
    if max_shift < 1 / upsample:
        fail(fn, f"max_shift must be at least the grid spacing 1/upsample = {1 / upsample:g} pixels (so that every "
                 f"window holds a grid point), got {max_shift:g}")
    batch_size = check_int(fn, "batch_size", batch_size, minimum=1)
    L = upsample * D
    lo = L // 2 - D // 2
    disk = (radial_frequency(D, 2) <= radius).to(vol.device)
    g = (torch.arange(L, dtype=dtype, device=vol.device) - L // 2) / upsample   # grid positions, pixels
    prior = torch.zeros(N, 2, dtype=dtype, device=vol.device) if t is None else t.to(vol.device)
    proj = Projector(vol, pad=2, _fn=fn)
    out = torch.empty(N, 2, dtype=torch.float64)
    for s in range(0, N, batch_size):
        e = min(N, s + batch_size)
        X = fft2c(img[s:e].to(device=vol.device, dtype=dtype)) * proj.fourier(R[s:e]).conj()
        if C is not None:
            X = X * C[s:e].to(vol.device)
        Xp = X.new_zeros(e - s, L, L)
        Xp[:, lo:lo + D, lo:lo + D] = X * disk
        corr = ifft2c(Xp).real                                   # (b, L, L): c(t) at t = (g[x], g[y])
        p = prior[s:e]
        d2 = (g[None, None, :] - p[:, 0, None, None]) ** 2 + (g[None, :, None] - p[:, 1, None, None]) ** 2
        corr = corr.masked_fill(d2 > max_shift ** 2, -torch.inf)
        best = corr.reshape(e - s, -1).argmax(1)
        out[s:e, 0], out[s:e, 1] = g[best % L].double().cpu(), g[best // L].double().cpu()
    return out

@dataclass
class RefinementResult:
    """Result of :func:`refine_poses`: the final ``rotations (N, 3, 3)`` and ``volume (D, D, D)``
    (the images' units, the input map's frame), and ``history``: one dict per round (``round``,
    ``search``: ``"global"`` or ``"local"``, ``mean_score``, ``mean_change_deg``: the mean rotation
    change from the previous round, ``mean_shift_change_px``: the mean shift change in the
    round (0 unless shifts are searched), ``seconds``), and the final ``shifts (N, 2)`` float64
    (the input shifts, or zeros, unless ``shift_search`` moved them)."""
    rotations: torch.Tensor
    volume: torch.Tensor
    history: list
    shifts: torch.Tensor | None = None
    resumed_rounds: int = 0


def check_refine_settings(rounds, step, local_step, regularization, global_rounds=1) -> tuple:
    """:func:`refine_poses`' scalar settings, checked (errors name ``refine_poses``) and
    normalised; the command line calls it before its slow evaluation."""
    fn = "refine_poses"
    return (check_int(fn, "rounds", rounds, minimum=1), check_float(fn, "step", step, positive=True),
            check_float(fn, "local_step", local_step, positive=True),
            check_float(fn, "regularization", regularization, minimum=0.0),
            check_int(fn, "global_rounds", global_rounds, minimum=1))


def check_shift_search(shift_search) -> float:
    """:func:`refine_poses`' ``shift_search``, checked (the command line calls it before its slow
    evaluation): 0, or at least the grid spacing of :func:`refine_shifts` (¼ pixel)."""
    v = check_float("refine_poses", "shift_search", shift_search, minimum=0.0)
    if 0 < v < 1 / _SHIFT_UPSAMPLE:
        fail("refine_poses", f"shift_search must be 0 (shifts fixed) or at least the {1 / _SHIFT_UPSAMPLE:g}-pixel "
                             f"grid spacing, got {v:g}")
    return v


def refine_poses(volume, images, *, ctf=None, shifts=None, rounds: int = 3, step: float = 7.5, refine: int = 3,
                 local_step: float = 4.0, regularization: float = 1.0, radius: float | None = None,
                 global_rounds: int = 1, shift_search: float = 0.0, callback=None, checkpoint=None,
                 verbose: bool = False, distributed: bool | None = None) -> RefinementResult:
    """Projection matching from a starting map, e.g. an amortized decoder's: alternate the
    maximum-likelihood rotations (:func:`search_poses`, scale fitted; global searches in the first
    ``global_rounds`` rounds, local searches from the previous rotations after) and the known-pose
    reconstruction (:func:`orbitcore.physics.backproject`, Wiener constant ``regularization``).

    Args:
        volume: real ``(D, D, D)`` starting map (any units and frame). The searches and the
            reconstructions run on its device (a GPU map: the images are copied there per batch
            for the search and whole for the reconstruction); rotations and shifts come back on
            the CPU, the map on that device.
        images, shifts: as in :func:`search_poses` (kept fixed unless ``shift_search > 0``).
        ctf: ``None`` or a :class:`~orbitcore.physics.CTFParams` with ``N`` entries (the
            reconstruction needs the parameters, not only the values).
        rounds: search + reconstruction rounds (``>= 1``).
        step, refine: the global search of round 1 (:func:`search_poses`).
        local_step: the stencil of the later rounds starts at ``±local_step/2`` degrees and is
            halved ``refine`` times.
        global_rounds: how many of the first rounds search globally (``1 <= global_rounds``; more
            than one for a start far from the answer).
        shift_search: ``> 0``: after every rotation search, each image's shift is re-estimated
            at its new rotation (:func:`refine_shifts`, ¼-pixel grid) within ``shift_search``
            pixels of its input shift (of 0 without); ``0`` keeps the input shifts.
        regularization: ``λ`` of :func:`~orbitcore.physics.backproject` (relative to the mean
            weight; 1.0 was the best of a sweep at 0 and −10 dB in
            docs/evidence/amortized/README.md).
        callback: called as ``callback(round, rotations, volume)`` after every round; a dict it
            returns is added to that round's ``history`` entry (and so kept in the checkpoint).
        checkpoint: ``None``, or a file (``.pt``) that the state is written to after every round,
            atomically (the rotations, shifts and map of the last finished round, and the
            history). If the file exists, the refinement continues from it: finished rounds are not
            run again, and the result is the one an uninterrupted run gives (bit for bit with the
            same threads). ``rounds`` may be raised to extend a finished refinement; the other
            settings, the images, the start map and the shifts must be those it was started with
            (checked; a clear error otherwise). Data-parallel, rank 0 writes it.
        distributed: split every search over a ``torch.distributed`` process group (``None``: when
            one with more than one process is initialised, e.g. under ``torchrun``): each process
            searches every ``world``-th image (and re-estimates its shift), the rotations, scores
            and shifts are gathered, and every process reconstructs from all of them. Every process
            passes the same inputs and gets the same result, that of one process.

    Returns:
        :class:`RefinementResult`.
    """
    fn = "refine_poses"
    from .. import _distributed  # noqa: PLC0415

    world, rank = _distributed.world(fn, distributed)
    rounds, step, local_step, regularization, global_rounds = check_refine_settings(
        rounds, step, local_step, regularization, global_rounds)
    shift_search = check_shift_search(shift_search)
    if callback is not None and not callable(callback):
        fail(fn, f"callback must be callable, got {type(callback).__name__}", TypeError)
    if ctf is not None and not isinstance(ctf, CTFParams):
        fail(fn, f"ctf must be None or a CTFParams (the reconstruction needs the parameters), "
                 f"got {type(ctf).__name__}", TypeError)
    from ..metrics import rotation_angle  # noqa: PLC0415
    from ..physics import backproject  # noqa: PLC0415

    vol, img = _volume_images(fn, volume, images)
    img = img.to(vol.dtype)
    t = None if shifts is None else _real(fn, "shifts", shifts, (img.shape[0], 2), vol.dtype, "real pixels")
    prior = t  # the centres of the shift windows stay the input shifts
    R, history, done = None, [], 0
    if checkpoint is not None:
        settings = {"step": step, "refine": int(refine), "local_step": local_step, "regularization": regularization,
                    "radius": None if radius is None else float(radius), "global_rounds": global_rounds,
                    "shift_search": shift_search, "dtype": str(vol.dtype)}
        fingerprint = _refine_fingerprint(img, vol, t, ctf)
        state = _load_refine_state(checkpoint, settings, fingerprint, rounds)
        if state is not None:  # continue where it stopped: its prior, shifts, rotations and map
            done, history = int(state["round"]), list(state["history"])
            to = lambda x: None if x is None else x.to(vol.device)  # noqa: E731 - saved on the CPU
            R, t, prior, vol = to(state["rotations"]), to(state["shifts"]), to(state["prior"]), to(state["volume"])
    # data-parallel: every process searches every world-th image; the answers are gathered, and
    # every process reconstructs from all of them (the same map everywhere)
    N = img.shape[0]
    mine = slice(rank, None, world) if world > 1 else slice(None)
    sub = lambda x: None if x is None else (x[mine] if world > 1 else x)  # noqa: E731

    def gather(part: torch.Tensor) -> torch.Tensor:
        if world == 1:
            return part
        from .._distributed import all_reduce_sum_  # noqa: PLC0415

        full = part.new_zeros((N,) + tuple(part.shape[1:]))
        full[mine] = part
        all_reduce_sum_([full])  # the other rows are zeros: the sum is exact
        return full

    for r in range(done + 1, rounds + 1):
        t0 = time.perf_counter()
        local = r > global_rounds
        # the search: this process's share of the images (all of them in one process)
        res = search_poses(vol, img[mine], ctf=sub(ctf), shifts=sub(t), step=local_step if local else step,
                           refine=refine, radius=radius, fit_scale=True, init_rotations=sub(R) if local else None,
                           verbose=verbose and rank == 0)
        R_new, scores = gather(res.rotations), gather(res.scores)
        change = float("nan") if R is None else float(rotation_angle(R, R_new).mean())
        R = R_new
        moved = 0.0
        if shift_search > 0:
            t_new = gather(refine_shifts(vol, img[mine], R[mine], ctf=sub(ctf), shifts=sub(prior),
                                         max_shift=shift_search, upsample=_SHIFT_UPSAMPLE,
                                         radius=radius)).to(vol.dtype)
            moved = float((t_new - (0 if t is None else t)).norm(dim=1).mean())
            t = t_new
        dev = vol.device  # the reconstruction runs where the map is (the images are copied there)
        vol = backproject(img.to(dev), R.to(dev, vol.dtype), None if t is None else t.to(dev),
                          None if ctf is None else ctf.to(dev), regularization=regularization)
        history.append({"round": r, "search": "local" if local else "global", "mean_score": float(scores.mean()),
                        "mean_change_deg": change, "mean_shift_change_px": moved,
                        "seconds": time.perf_counter() - t0})
        if callback is not None:
            extra = callback(r, R, vol)
            if isinstance(extra, dict):
                history[-1].update(_plain_data(extra))
        if checkpoint is not None and rank == 0:  # (every process holds the same state)
            cpu = lambda x: None if x is None else x.detach().cpu()  # noqa: E731
            _save_refine_state(checkpoint, {"format": _REFINE_STATE_FORMAT, "round": r, "settings": settings,
                                            "fingerprint": fingerprint, "rotations": cpu(R), "volume": cpu(vol),
                                            "shifts": cpu(t), "prior": cpu(prior), "history": history})
    final = torch.zeros(img.shape[0], 2, dtype=torch.float64) if t is None else t.double().cpu()
    return RefinementResult(rotations=R, volume=vol, history=history, shifts=final, resumed_rounds=done)


_REFINE_STATE_FORMAT = "orbitcore-refine-state-1"


def _plain_data(d: dict) -> dict:
    """A callback's record as plain numbers, strings and lists (NumPy and 0-d tensor scalars
    converted), so that the checkpoint reloads with ``weights_only``."""
    import json  # noqa: PLC0415

    def plain(x):
        if hasattr(x, "tolist"):
            return x.tolist()
        raise TypeError(f"{type(x).__name__} is not plain data")

    try:
        return json.loads(json.dumps(d, default=plain))
    except (TypeError, ValueError) as exc:
        fail("refine_poses", f"the callback's dict must hold numbers, strings and lists ({exc})", TypeError)


def _refine_fingerprint(img, vol, shifts, ctf) -> dict:
    """Shapes and float64 sums of the inputs: enough to tell a different problem from the one a
    checkpoint was started on (not an exactness check: the sums are compared to 1e-4)."""
    def sums(x):
        x = x.detach().double()
        return [float(x.sum()), float(x.abs().sum()), float((x * x).sum())]

    return {"images": [list(img.shape), *sums(img)], "volume": [list(vol.shape), *sums(vol)],
            "shifts": None if shifts is None else [list(shifts.shape), *sums(shifts)],
            "ctf": None if ctf is None else [len(ctf), *sums(torch.as_tensor(ctf.defocus_u))]}


def _same_fingerprint(a, b) -> bool:
    if (a is None) != (b is None):
        return False
    if a is None:
        return True
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if (x is None) != (y is None):
            return False
        if x is None:
            continue
        if x[0] != y[0] or not all(math.isclose(u, v, rel_tol=1e-4, abs_tol=1e-9) for u, v in zip(x[1:], y[1:])):
            return False
    return True


def _load_refine_state(path, settings: dict, fingerprint: dict, rounds: int):
    """The checkpoint at ``path`` if it exists (checked against this call), else ``None``."""
    import pathlib  # noqa: PLC0415

    fn = "refine_poses"
    p = pathlib.Path(path)
    if not p.exists():
        return None
    if not p.is_file():
        fail(fn, f"checkpoint {p} exists but is not a file")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        fail(fn, f"checkpoint {p} is not a readable refinement checkpoint ({type(exc).__name__}: {exc}); "
                 "remove it to start afresh")
    if not isinstance(state, dict) or state.get("format") != _REFINE_STATE_FORMAT:
        fail(fn, f"checkpoint {p} is not a refinement checkpoint (format "
                 f"{state.get('format') if isinstance(state, dict) else type(state).__name__!r})")
    if state["settings"] != settings:
        diff = {k: (state["settings"].get(k), settings.get(k)) for k in settings
                if state["settings"].get(k) != settings.get(k)}
        fail(fn, f"checkpoint {p} was written with other settings (checkpoint, now): {diff}; use the same "
                 "settings to continue it, or another checkpoint file")
    if not _same_fingerprint(state["fingerprint"], fingerprint):
        fail(fn, f"checkpoint {p} was started on other images, start map, shifts or CTFs than these; "
                 "use another checkpoint file for a new refinement")
    if int(state["round"]) > rounds:
        fail(fn, f"checkpoint {p} already holds {state['round']} rounds, more than rounds={rounds}")
    return state


def _save_refine_state(path, state: dict) -> None:
    from ..io.mrc import atomic_path  # noqa: PLC0415

    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(state, tmp)

