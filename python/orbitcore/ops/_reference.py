"""Pure-torch reference implementations of the kernels (independent of the compiled code).

Written for clarity, not speed: explicit corner loops, gathers and index_add. Differentiable by
torch autograd, so the tests also take reference gradients from here. Use float64.
"""
from __future__ import annotations

import math

import torch


def trilinear_sample(volume: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """volume (D, D, D) complex indexed [z, y, x]; coords (..., 3) as (x, y, z) relative to DC.

    Corners outside the grid contribute 0.
    """
    D = volume.shape[-1]
    c = D // 2
    g = coords + c  # grid positions
    f = torch.floor(g.detach())
    t = g - f
    f = f.long()
    flat = volume.reshape(-1)
    out = torch.zeros(coords.shape[:-1], dtype=volume.dtype, device=volume.device)
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                ix, iy, iz = f[..., 0] + dx, f[..., 1] + dy, f[..., 2] + dz
                inside = (ix >= 0) & (ix < D) & (iy >= 0) & (iy < D) & (iz >= 0) & (iz < D)
                w = ((t[..., 0] if dx else 1 - t[..., 0]) * (t[..., 1] if dy else 1 - t[..., 1])
                     * (t[..., 2] if dz else 1 - t[..., 2]))
                idx = (iz.clamp(0, D - 1) * D + iy.clamp(0, D - 1)) * D + ix.clamp(0, D - 1)
                vals = flat[idx.reshape(-1)].reshape(idx.shape)
                out = out + torch.where(inside, w.to(volume.dtype) * vals, torch.zeros_like(vals))
    return out


def plane_coords(rotations: torch.Tensor, n: int) -> torch.Tensor:
    """(B, n, n, 3) points R @ (kx, ky, 0) at index [b, iy, ix]."""
    k = torch.arange(n, dtype=rotations.dtype, device=rotations.device) - n // 2
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    q = torch.stack((kx, ky, torch.zeros_like(kx)), dim=-1)  # (n, n, 3)
    return torch.einsum("bij,yxj->byxi", rotations, q)


def disk_mask(n: int, radius: float | None, device=None) -> torch.Tensor:
    k = torch.arange(n, device=device) - n // 2
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    if radius is None:
        return torch.ones(n, n, dtype=torch.bool, device=device)
    return (kx * kx + ky * ky) <= radius * radius


def hermitian_fill(S: torch.Tensor) -> torch.Tensor:
    """Replace every point of the negative half whose mirror is in the plane by conj(mirror)."""
    n = S.shape[-1]
    k = torch.arange(n, device=S.device) - n // 2
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    lo, hi = -(n // 2), (n - 1) // 2
    mirror_in = (-kx >= lo) & (-kx <= hi) & (-ky >= lo) & (-ky <= hi)
    negative = (ky < 0) | ((ky == 0) & (kx < 0))
    skip = mirror_in & negative
    iy = (-ky + n // 2).clamp(0, n - 1)
    ix = (-kx + n // 2).clamp(0, n - 1)
    mirrored = S[..., iy, ix].conj()
    return torch.where(skip, mirrored, S)


def fourier_slice(volume: torch.Tensor, rotations: torch.Tensor, n: int | None = None,
                  radius: float | None = None, hermitian: bool = False) -> torch.Tensor:
    """volume (D, D, D) or (B, D, D, D); rotations (B, 3, 3) -> (B, n, n)."""
    n = volume.shape[-1] if n is None else n
    P = plane_coords(rotations, n)
    if volume.dim() == 3:
        S = trilinear_sample(volume, P)
    else:
        S = torch.stack([trilinear_sample(volume[b], P[b]) for b in range(P.shape[0])])
    if hermitian:
        S = hermitian_fill(S)
    return S * disk_mask(n, radius, S.device)


def fourier_insert(slices: torch.Tensor, rotations: torch.Tensor, D: int,
                   weights: torch.Tensor | None = None, radius: float | None = None):
    """Explicit scatter: the adjoint of fourier_slice (non-Hermitian). Returns volume or (volume, W)."""
    B, n, _ = slices.shape
    P = plane_coords(rotations, n).reshape(-1, 3)
    m = disk_mask(n, radius, slices.device).expand(B, n, n).reshape(-1)
    s = slices.reshape(-1) * m
    wts = None if weights is None else weights.reshape(-1) * m
    c = D // 2
    g = P + c
    f = torch.floor(g).long()
    t = g - f
    vol = torch.zeros(D * D * D, dtype=slices.dtype, device=slices.device)
    wvol = torch.zeros(D * D * D, dtype=rotations.dtype, device=slices.device)
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                ix, iy, iz = f[:, 0] + dx, f[:, 1] + dy, f[:, 2] + dz
                inside = (ix >= 0) & (ix < D) & (iy >= 0) & (iy < D) & (iz >= 0) & (iz < D)
                w = ((t[:, 0] if dx else 1 - t[:, 0]) * (t[:, 1] if dy else 1 - t[:, 1])
                     * (t[:, 2] if dz else 1 - t[:, 2]))
                w = torch.where(inside, w, torch.zeros_like(w))
                idx = (iz.clamp(0, D - 1) * D + iy.clamp(0, D - 1)) * D + ix.clamp(0, D - 1)
                vol = vol.index_add(0, idx, w.to(slices.dtype) * s)
                if wts is not None:
                    wvol = wvol.index_add(0, idx, w * wts)
    vol = vol.reshape(D, D, D)
    if weights is None:
        return vol
    return vol, wvol.reshape(D, D, D)


def project_real_space(volume: torch.Tensor, R: torch.Tensor, n: int | None = None,
                       oversample: int = 4) -> torch.Tensor:
    """image(x, y) = sum_z v(R @ (x, y, z)) by direct real-space line integration.

    volume (D, D, D) real indexed [z, y, x], origin at D // 2; trilinear interpolation of the
    volume on a z-grid refined ``oversample`` times (the line integral of the interpolant).
    """
    D = volume.shape[-1]
    n = D if n is None else n
    k = torch.arange(n, dtype=volume.dtype, device=volume.device) - n // 2
    zs = (torch.arange(D * oversample, dtype=volume.dtype, device=volume.device) - (D * oversample) // 2) / oversample
    yy, xx = torch.meshgrid(k, k, indexing="ij")
    pts = torch.stack(torch.broadcast_tensors(xx[None], yy[None], zs[:, None, None]), dim=-1)  # (Z, n, n, 3)
    p = pts @ R.T
    vals = trilinear_sample(volume.to(torch.complex128), p).real
    return vals.sum(0) / oversample


# ------------------------------------------------------------------------------------------------
# Moments (direct float64 formulas, the definitions of seeds/000 eqs. 6, 14, 24, 25, 26, 30)
# ------------------------------------------------------------------------------------------------
def data_moments(x: torch.Tensor, ndim: int, radius: float | None = None, sigma2: float = 0.0):
    """M1 (m,), M2 (m, m) of real observations x (N, n[, n]) by FFT-ing each one (centred,
    unnormalised) and forming the outer products explicitly; frequencies |k| <= radius in
    row-major order of the centred grid. Noise: n^ndim * sigma2 removed from the diagonal."""
    x = x.to(torch.float64)
    n = x.shape[-1]
    dims = tuple(range(-ndim, 0))
    F = torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(x, dim=dims), dim=dims), dim=dims)
    k = torch.arange(n) - n // 2
    if ndim == 1:
        r2 = k * k
    else:
        ky, kx = torch.meshgrid(k, k, indexing="ij")
        r2 = kx * kx + ky * ky
    sel = torch.ones_like(r2, dtype=torch.bool) if radius is None else r2 <= radius * radius
    Z = F[..., sel]  # (N, m)
    N = Z.shape[0]
    M1 = Z.sum(0) / N
    M2 = torch.zeros(Z.shape[1], Z.shape[1], dtype=Z.dtype)
    for j in range(N):  # one outer product per observation, as in the definition
        M2 += torch.outer(Z[j], Z[j].conj())
    M2 = M2 / N - float(n**ndim) * sigma2 * torch.eye(Z.shape[1], dtype=Z.dtype)
    return M1, M2


def model_moments(S: torch.Tensor, w: torch.Tensor):
    """M1 = sum_j w_j S_j, M2 = sum_j w_j S_j S_j^* by explicit outer products."""
    M1 = (w.to(S.dtype)[:, None] * S).sum(0)
    M2 = sum(w[j].to(S.dtype) * torch.outer(S[j], S[j].conj()) for j in range(S.shape[0]))
    return M1, M2


def moment_loss(M1_hat, M2_hat, S, w, lam=1.0, conjugate=None, squared=False):
    """||M1_hat - M1|| + lam ||M2_hat - M2|| (Frobenius), the model moments formed densely; with
    `conjugate`, of the Hermitian part (S + conj(S[:, conjugate])) / 2 of the slices."""
    if conjugate is not None:
        S = 0.5 * (S + S[:, conjugate].conj())
    M1, M2 = model_moments(S, w)
    e1 = (M1_hat - M1).abs().square().sum()
    e2 = (M2_hat - M2).abs().square().sum()
    if squared:
        return e1 + lam * e2
    return e1.sqrt() + lam * e2.sqrt()
# PSWF family
# ------------------------------------------------------------------------------------------------
def pswf_basis_values(basis, points: torch.Tensor) -> torch.Tensor:
    """Real-convention PSWF basis values ``(P, M)`` at pixel offsets ``points (P, 2)``, float64.

    Independent of the kernel: the generalised Zernike polynomials are evaluated with SciPy's
    closed-form Jacobi polynomials, ``T_{N,j}(r) = sqrt(2(2j+N+1)) r^N P_j^{(N,0)}(1 - 2r^2)``, and
    combined with ``basis.radial_coefficients`` and the angular normalisations of the module
    docstring (pixel-normalised: ``psi(p / R) / R``).
    """
    import math

    import numpy as np
    from scipy.special import eval_jacobi

    p = points.detach().to(torch.float64).cpu().numpy() / basis.radius
    r = np.hypot(p[:, 0], p[:, 1])
    phi = np.arctan2(p[:, 1], p[:, 0])
    inside = r <= 1.0
    Nl = basis.indices["N"].tolist()
    nl = basis.indices["n"].tolist()
    out = np.zeros((p.shape[0], len(Nl)))
    for col, (N, n) in enumerate(zip(Nl, nl)):
        a = abs(N)
        d = basis.radial_coefficients[a][n]
        j = np.arange(len(d))
        T = np.sqrt(2.0 * (2 * j + a + 1))[None, :] * (r[:, None] ** a) * eval_jacobi(j[None, :], a, 0,
                                                                                         1 - 2 * r[:, None] ** 2)
        Phi = T @ d
        if N == 0:
            ang = np.full_like(phi, 1.0 / math.sqrt(2 * math.pi))
        elif N > 0:
            ang = np.cos(a * phi) / math.sqrt(math.pi)
        else:
            ang = np.sin(a * phi) / math.sqrt(math.pi)
        out[:, col] = np.where(inside, Phi * ang, 0.0) / basis.radius
    return torch.from_numpy(out)


def pswf_fold_matrix(tables: dict, npix: int, F: int) -> torch.Tensor:
    """Dense ``(F, npix)`` matrix ``U`` of the orbit fold described by ``tables`` (pix, Q, size,
    feat): ``fold(x) = x @ U.T``, ``unfold(y) = y @ U``."""
    pix, Q, size, feat = (tables[k].cpu() for k in ("pix", "Q", "size", "feat"))
    U = torch.zeros(F, npix, dtype=torch.float64)
    for o in range(pix.shape[0]):
        s = int(size[o])
        for i in range(s):
            for j in range(s):
                U[int(feat[o, i]), int(pix[o, j])] += float(Q[o, i, j])
    return U


# ----------------------------------------------------------------------------------------------
# EM patch likelihoods (seeds/002 eq. 18-25), by explicit zero-padding, circular shifting and
# cropping over the paper's full shift set {0..2L-1}^2
# ----------------------------------------------------------------------------------------------
def em_patch_model(g: torch.Tensor, l0: int, l1: int) -> torch.Tensor:
    """C T_l Z g of eq. 18-19 for one shift: g (..., L, L) -> (..., L, L)."""
    L = g.shape[-1]
    z = torch.zeros(g.shape[:-2] + (2 * L, 2 * L), dtype=g.dtype, device=g.device)
    z[..., :L, :L] = g
    # (T_l Z g)[i, j] = (Z g)[(i + l0) mod 2L, (j + l1) mod 2L]
    t = torch.roll(z, shifts=(-l0, -l1), dims=(-2, -1))
    return t[..., :L, :L]


def em_patch_model_adjoint(img: torch.Tensor, l0: int, l1: int) -> torch.Tensor:
    """(C T_l Z)^T: an L x L patch back into the L x L frame of the projection."""
    L = img.shape[-1]
    z = torch.zeros(img.shape[:-2] + (2 * L, 2 * L), dtype=img.dtype, device=img.device)
    z[..., :L, :L] = img
    t = torch.roll(z, shifts=(l0, l1), dims=(-2, -1))
    return t[..., :L, :L]


def em_estep_reference(patches: torch.Tensor, projections: torch.Tensor, sigma: float, rho: torch.Tensor):
    """Brute-force E-step over the paper's shift set: patches (P, L, L), projections (K, L, L),
    rho (2L, 2L) the shift prior over {0..2L-1}^2, rotations uniform.

    Returns dict: log_evidence (P,), posterior (P, 2L, 2L, K) = p(l, w | I_p), shift_weights
    (2L, 2L, K) = sum_p posterior, backprojection (K, L, L) = sum_p sum_l posterior (C T_l Z)^T I_p.
    """
    P, L = patches.shape[0], patches.shape[-1]
    K = projections.shape[0]
    ll = torch.empty(P, 2 * L, 2 * L, K, dtype=torch.float64)
    for l0 in range(2 * L):
        for l1 in range(2 * L):
            model = em_patch_model(projections, l0, l1)  # (K, L, L)
            r = ((patches[:, None] - model[None]) ** 2).sum((-2, -1))  # (P, K)
            ll[:, l0, l1, :] = (-r / (2 * sigma**2) - 0.5 * L * L * math.log(2 * math.pi * sigma**2)
                                + torch.log(rho[l0, l1]) - math.log(K))
    flat = ll.reshape(P, -1)
    lse = torch.logsumexp(flat, 1)
    post = torch.exp(flat - lse[:, None]).reshape(P, 2 * L, 2 * L, K)
    H = torch.zeros(K, L, L, dtype=torch.float64)
    for l0 in range(2 * L):
        for l1 in range(2 * L):
            back = em_patch_model_adjoint(patches, l0, l1)  # (P, L, L)
            H += torch.einsum("pk,pij->kij", post[:, l0, l1, :], back)
    return {"log_evidence": lse, "posterior": post, "shift_weights": post.sum(0), "backprojection": H}


def batch_norm_relu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float):
    """Training-mode batch normalisation then ReLU, from the definition in float64.

    ``x (N, C, ...)``; statistics over every axis but 1. Returns ``(y, mean, biased var)``.
    """
    x = x.to(torch.float64)
    dims = [d for d in range(x.dim()) if d != 1]
    shape = [1, -1] + [1] * (x.dim() - 2)
    mean = x.mean(dims)
    var = (x - mean.view(shape)).square().mean(dims)
    xhat = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + eps)
    y = torch.relu(weight.to(torch.float64).view(shape) * xhat + bias.to(torch.float64).view(shape))
    return y, mean, var


def batch_norm_relu_max_pool2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float):
    """:func:`batch_norm_relu` then 2×2 max pooling (``max_pool2d(·, 2)``, which routes the
    gradient to each window's first maximum), float64. Returns ``(y, mean, biased var)``."""
    y, mean, var = batch_norm_relu(x, weight, bias, eps)
    return torch.nn.functional.max_pool2d(y, 2), mean, var
