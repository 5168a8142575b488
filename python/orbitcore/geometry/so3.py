"""Quadrature on SO(3): spherical t-designs × equally spaced in-plane angles (seeds/000 §5.2).

Spherical designs
-----------------
A set of ``N`` unit vectors ``x_1..x_N`` is a spherical *t-design* when the equal-weight rule
``(1/N) Σ_i p(x_i)`` integrates every polynomial ``p`` of degree ≤ t exactly against the
normalised surface measure of S², i.e. when ``Σ_i Y_ℓm(x_i) = 0`` for every spherical harmonic
of degree ``1 ≤ ℓ ≤ t``. :func:`spherical_design` finds one by

1. minimising the design energy ``E(X) = Σ_{ℓ=1..t} Σ_m (mean_i Y_ℓm(x_i))²
   = (1/N²) Σ_{i,j} Σ_{ℓ=1..t} (2ℓ+1) P_ℓ(x_i·x_j)`` (harmonics of unit RMS on the sphere;
   the second form is the addition theorem) with L-BFGS on the sphere (analytic gradient),
   starting from a Fibonacci spiral, then
2. polishing with Levenberg–Marquardt / Gauss–Newton on the ``(t+1)² − 1`` moment equations
   ``mean_i Y_ℓm(x_i) = 0`` (analytic Jacobian in tangent coordinates) to machine precision,

and reports the *residual* ``max_{1≤ℓ≤t, m} |mean_i Y_ℓm(x_i)|`` (harmonics of unit RMS, so this
is the worst quadrature error on a harmonic of unit size). Designs it could not bring below
``tol`` raise :class:`DesignNotFoundError` with the residual. The harmonics are evaluated in
Cartesian form, ``P̄_ℓ^m(z) · Re/Im (x + iy)^m / (1 − z²)^{m/2}`` with a stable recurrence for the
polynomial part, so there is no singularity at the poles.

Shipped designs (``geometry/data/designs.npz``, computed by this module with ``seed=0``;
regenerate with ``scripts/make-spherical-designs``) are listed by :func:`shipped_designs`:

====== ====== ======================================================
 t      N      note
====== ====== ======================================================
 3      6      the octahedron (a tight design)
 5      12     the icosahedron (a tight design)
 7      34
 9      52
 11     74
 13     100    seeds/000 §5.2: the paper's 100-point 13-design
 15     130
 17     164
 19     202
 21     244
 25     340
 31     514
====== ====== ======================================================

For t ≥ 7 the sizes follow ``N = (t+1)²/2 + 2`` (which gives the paper's 100 for t = 13): the
generator finds designs of odd strength reliably from there, and usually fails a few points
below (the smallest known 13-design has 94 points; odd N is much harder for odd t).
:data:`SHIPPED` is the list the data file is made from.

SO(3) quadrature
----------------
:func:`so3_quadrature` returns the rotations ``R_jk = R(d_j, ψ_k)`` for design directions
``d_j = (sin θ_j cos φ_j, sin θ_j sin φ_j, cos θ_j)`` and in-plane angles
``ψ_k = offset + 2πk/q2``, with uniform weights ``1/(q1 q2)``::

    R(d, ψ) = Rz(φ) · Ry(θ) · Rz(ψ)         (active rotations acting on column vectors)
            = relion_euler_to_matrix(rot=φ, tilt=θ, psi=ψ)   (angles in degrees there)

so that ``R · e_z = d`` (the viewing direction, ARCHITECTURE.md) and ``R(d, ψ) = Rot_d(ψ) · R(d, 0)``:
the in-plane angle is a right-handed rotation by ψ about the viewing axis d (equivalently, about
e_z applied first). Row ``j·q2 + k`` of the output is ``R_jk`` (direction-major).

Exactness. Polynomials of degree ≤ T in the entries of R are the span of the Wigner-D entries
``D^ℓ_{m'm}(R) = e^{-i m' φ} d^ℓ_{m'm}(θ) e^{-i m ψ}`` with ℓ ≤ T; their Haar integral is the
ℓ = 0 coefficient. Summing over the q2 equally spaced ψ kills every term with ``m ≢ 0 (mod q2)``;
if ``q2 ≥ T + 1`` only ``m = 0`` survives, and ``D^ℓ_{m'0}(R) ∝ conj(Y_ℓ^{m'}(d))`` is a
spherical harmonic of degree ℓ in the viewing direction, whose design average vanishes for
``1 ≤ ℓ ≤ t``. Hence the rule is exact for degree ≤ ``min(t, q2 − 1)``: a t-design × (t+1)
angles is exact to degree t (``exact_degree=t``), while the paper's 100-point 13-design × 12
angles is exact only to degree 11 — at degree 12, ``f(R) = Re (R_20 + i R_21)^12
= sin^12 θ cos(12ψ)`` has Haar integral 0 but the rule gives
``cos(12·offset) · mean_j sin^12 θ_j``, and since ``sin^12 θ = (1 − z²)^6`` has degree 12 ≤ 13
that mean is exactly its sphere average ``1024/3003 ≈ 0.341``. Both claims are tested against
an independent product Gauss rule in ZYZ Euler angles (tests/geometry/test_so3.py).
"""
from __future__ import annotations

import functools
import math
import pathlib

import numpy as np
import torch

from .._validate import check_float, check_int, fail, to_tensor
from .rotations import relion_euler_to_matrix

__all__ = [
    "DesignNotFoundError", "SHIPPED", "design_residual", "plot_directions", "quadrature_exact_degree",
    "shipped_designs", "so3_quadrature", "spherical_design",
]

_DATA = pathlib.Path(__file__).resolve().parent / "data" / "designs.npz"

#: ``(n_points, strength)`` of the designs shipped in ``geometry/data/designs.npz``.
SHIPPED: tuple[tuple[int, int], ...] = (
    (6, 3), (12, 5), (34, 7), (52, 9), (74, 11), (100, 13), (130, 15), (164, 17), (202, 19), (244, 21),
    (340, 25), (514, 31),
)

#: The paper's rule (seeds/000 §5.2): a 100-point 13-design × 12 in-plane angles.
PAPER_RULE = (100, 13, 12)


class DesignNotFoundError(RuntimeError):
    """No spherical design with the requested size and strength was reached.

    Attributes: ``n_points``, ``strength``, ``residual`` (the best max-harmonic residual reached)
    and ``points`` (the best configuration, ``(n_points, 3)`` float64 NumPy array).
    """

    def __init__(self, msg: str, n_points: int, strength: int, residual: float, points: np.ndarray):
        super().__init__(msg)
        self.n_points, self.strength, self.residual, self.points = n_points, strength, residual, points


# ----------------------------------------------------------------------------------------------
# Real spherical harmonics in Cartesian form (unit RMS on the sphere).
# Y^c_ℓm = Q_ℓm(z) Re (x+iy)^m, Y^s_ℓm = Q_ℓm(z) Im (x+iy)^m, Q_ℓm = P̄_ℓm / (1-z²)^{m/2}, with
# P̄ the fully normalised associated Legendre functions (geodesy normalisation, no Condon–Shortley
# phase): mean over the sphere of (P̄_ℓm cos mφ)² is 1. Q obeys the same three-term recurrence in
# ℓ as P̄ with a constant start Q_mm = c_m, so it is a polynomial in z: no pole singularity.
# ----------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=64)
def _legendre_coeffs(t: int):
    a = np.zeros((t + 1, t + 1))
    b = np.zeros((t + 1, t + 1))
    c = np.zeros(t + 1)
    c[0] = 1.0
    if t >= 1:
        c[1] = math.sqrt(3.0)
    for m in range(2, t + 1):
        c[m] = c[m - 1] * math.sqrt((2 * m + 1) / (2 * m))
    for n in range(1, t + 1):
        for m in range(n):
            a[n, m] = math.sqrt((2 * n - 1) * (2 * n + 1) / ((n - m) * (n + m)))
            if n >= 2:
                b[n, m] = math.sqrt((2 * n + 1) * (n + m - 1) * (n - m - 1) / ((n - m) * (n + m) * (2 * n - 3)))
    L, M = np.meshgrid(np.arange(t + 1), np.arange(t + 1), indexing="ij")
    mask_c = (L >= 1) & (M <= L)          # cosine-type harmonics (m = 0 included), ℓ = 1..t
    mask_s = mask_c & (M >= 1)            # sine-type harmonics
    return a, b, c, mask_c, mask_s


def _tables(X: np.ndarray, t: int, deriv: bool):
    """Q (t+1, t+1, N) [ℓ, m, i], dQ/dz, and C, S = Re, Im (x+iy)^m, (t+1, N)."""
    a, b, c, _, _ = _legendre_coeffs(t)
    n = X.shape[0]
    x, y, z = X[:, 0], X[:, 1], X[:, 2]
    Q = np.zeros((t + 1, t + 1, n))
    D = np.zeros((t + 1, t + 1, n)) if deriv else None
    Q[0, 0] = 1.0
    for ell in range(1, t + 1):
        al, bl = a[ell, :ell, None], b[ell, :ell, None]
        Q[ell, :ell] = al * z * Q[ell - 1, :ell]
        if deriv:
            D[ell, :ell] = al * (Q[ell - 1, :ell] + z * D[ell - 1, :ell])
        if ell >= 2:
            Q[ell, :ell] -= bl * Q[ell - 2, :ell]
            if deriv:
                D[ell, :ell] -= bl * D[ell - 2, :ell]
        Q[ell, ell] = c[ell]
    C = np.zeros((t + 1, n))
    S = np.zeros((t + 1, n))
    C[0] = 1.0
    for m in range(1, t + 1):
        C[m] = x * C[m - 1] - y * S[m - 1]
        S[m] = x * S[m - 1] + y * C[m - 1]
    return Q, D, C, S


def _residual(X: np.ndarray, t: int) -> np.ndarray:
    """Moment residuals ``mean_i Y_k(x_i)`` over the (t+1)²−1 real harmonics of degree 1..t."""
    _, _, _, mask_c, mask_s = _legendre_coeffs(t)
    Q, _, C, S = _tables(X, t, False)
    n = X.shape[0]
    rc = np.einsum("lmi,mi->lm", Q, C) / n
    rs = np.einsum("lmi,mi->lm", Q, S) / n
    return np.concatenate((rc[mask_c], rs[mask_s]))


def _energy_grad(X: np.ndarray, t: int):
    """Design energy ``Σ_k r_k²`` and its Cartesian gradient w.r.t. the points ``(N, 3)``
    (of the extension above; only its tangential part is meaningful)."""
    _, _, _, mask_c, mask_s = _legendre_coeffs(t)
    Q, D, C, S = _tables(X, t, True)
    n = X.shape[0]
    rc = np.einsum("lmi,mi->lm", Q, C) / n * mask_c
    rs = np.einsum("lmi,mi->lm", Q, S) / n * mask_s
    f = float((rc * rc).sum() + (rs * rs).sum())
    # dE/dx_i = (2/N) Σ_ℓm [rc ∇(Q C_m) + rs ∇(Q S_m)];  ∂C_m/∂x = m C_{m-1}, ∂C_m/∂y = −m S_{m-1},
    # ∂S_m/∂x = m S_{m-1}, ∂S_m/∂y = m C_{m-1}, ∂/∂z acts on Q.
    Ac = np.einsum("lm,lmi->mi", rc, Q)
    As = np.einsum("lm,lmi->mi", rs, Q)
    Bc = np.einsum("lm,lmi->mi", rc, D)
    Bs = np.einsum("lm,lmi->mi", rs, D)
    m = np.arange(1, t + 1)[:, None]
    gx = (m * (Ac[1:] * C[:-1] + As[1:] * S[:-1])).sum(0)
    gy = (m * (-Ac[1:] * S[:-1] + As[1:] * C[:-1])).sum(0)
    gz = (Bc * C + Bs * S).sum(0)
    return f, (2.0 / n) * np.stack((gx, gy, gz), axis=-1)


def _jacobian(X: np.ndarray, t: int):
    """Residual r (K,), Jacobian (K, 2N) w.r.t. tangent coordinates, and the tangent bases u, v."""
    _, _, _, mask_c, mask_s = _legendre_coeffs(t)
    Q, D, C, S = _tables(X, t, True)
    n = X.shape[0]
    e = np.eye(3)[np.argmin(np.abs(X), axis=1)]
    u = np.cross(X, e)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    v = np.cross(X, u)
    m = np.arange(t + 1)[:, None]
    Cm1 = np.concatenate((np.zeros((1, n)), C[:-1]))
    Sm1 = np.concatenate((np.zeros((1, n)), S[:-1]))
    cols = []
    for w in (u, v):
        # directional derivative along w of Q_ℓm(z)·C_m(x, y) and Q_ℓm(z)·S_m(x, y)
        dCw = m * (Cm1 * w[:, 0] - Sm1 * w[:, 1])
        dSw = m * (Sm1 * w[:, 0] + Cm1 * w[:, 1])
        jc = Q * dCw[None] + D * (C * w[:, 2])[None]
        js = Q * dSw[None] + D * (S * w[:, 2])[None]
        cols.append(np.concatenate((jc[mask_c], js[mask_s])) / n)
    J = np.stack(cols, axis=-1).reshape(-1, 2 * n)   # column 2i: along u_i, 2i+1: along v_i
    r = np.concatenate(((np.einsum("lmi,mi->lm", Q, C) / n)[mask_c], (np.einsum("lmi,mi->lm", Q, S) / n)[mask_s]))
    return r, J, u, v


def _normalize(X: np.ndarray) -> np.ndarray:
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def _spiral(n: int) -> np.ndarray:
    """Fibonacci spiral: z_i = 1 − (2i+1)/N, azimuth i·(golden angle)."""
    i = np.arange(n)
    z = 1.0 - (2.0 * i + 1.0) / n
    phi = i * math.pi * (3.0 - math.sqrt(5.0))
    r = np.sqrt(np.clip(1.0 - z * z, 0.0, None))
    return np.stack((r * np.cos(phi), r * np.sin(phi), z), axis=-1)


def _tangent(X: np.ndarray, G: np.ndarray) -> np.ndarray:
    """Project ambient vectors G (..., N, 3) onto the tangent planes of the sphere at X (N, 3)."""
    return G - (G * X).sum(-1, keepdims=True) * X


def _lbfgs(X: np.ndarray, t: int, target: float, maxiter: int, memory: int = 20) -> np.ndarray:
    """Riemannian L-BFGS on the product of spheres for the design energy: two-loop recursion on
    tangent vectors (the stored pairs are carried to the new point by projection onto its tangent
    space), backtracking Armijo line search, retraction x ↦ x/|x|. Stops at energy ≤ target, after
    maxiter iterations, when no step decreases the energy, or when 50 iterations gained less
    than a 1e-6 fraction of it (a local minimum that is not a design)."""
    f, G = _energy_grad(X, t)
    g = _tangent(X, G)
    S = np.zeros((0,) + X.shape)
    Yk = np.zeros((0,) + X.shape)
    history = []
    for it in range(maxiter):
        if f <= target:
            break
        history.append(f)
        if it >= 50 and history[-51] - f <= 1e-6 * f:   # stalled at a non-zero local minimum
            break
        q = g.copy()
        k = S.shape[0]
        rho = 1.0 / np.einsum("kij,kij->k", S, Yk)
        alpha = np.zeros(k)
        for i in range(k - 1, -1, -1):
            alpha[i] = rho[i] * float((S[i] * q).sum())
            q -= alpha[i] * Yk[i]
        if k:
            q *= float((S[-1] * Yk[-1]).sum()) / float((Yk[-1] * Yk[-1]).sum())
        else:   # first step: at most 0.1 rad per point
            q *= min(1.0, 0.1 / max(float(np.abs(g).max()), 1e-300))
        for i in range(k):
            q += (alpha[i] - rho[i] * float((Yk[i] * q).sum())) * S[i]
        p = -_tangent(X, q)
        slope = float((p * g).sum())
        if slope >= 0:               # not a descent direction: restart from the gradient
            S, Yk = S[:0], Yk[:0]
            p = -g * min(1.0, 0.1 / max(float(np.abs(g).max()), 1e-300))
            slope = float((p * g).sum())
        step = 1.0
        for _ in range(40):
            Xn = _normalize(X + step * p)
            fn, Gn = _energy_grad(Xn, t)
            if fn <= f + 1e-4 * step * slope:
                break
            step *= 0.5
        else:
            break
        gn = _tangent(Xn, Gn)
        s_new = _tangent(Xn, Xn - X)
        y_new = gn - _tangent(Xn, g)
        S = _tangent(Xn[None], S)
        Yk = _tangent(Xn[None], Yk)
        sy = float((s_new * y_new).sum())
        if sy > 1e-12 * math.sqrt(float((s_new ** 2).sum() * (y_new ** 2).sum())):
            S = np.concatenate((S, s_new[None]))[-memory:]
            Yk = np.concatenate((Yk, y_new[None]))[-memory:]
        X, f, g = Xn, fn, gn
    return X


def _damped_step(J: np.ndarray, r: np.ndarray, mu: float) -> np.ndarray:
    """argmin_d |J d + r|² + λ²|d|² with λ² = mu · (mean squared column norm of J); for mu = 0 the
    minimum-norm least-squares step (Gauss–Newton). Through torch's LAPACK, which follows
    torch.get_num_threads() and stays fast for these small systems on a busy machine."""
    Jt = torch.from_numpy(J)
    rt = torch.from_numpy(r)[:, None]
    if mu == 0:
        return -torch.linalg.lstsq(Jt, rt, driver="gelsy").solution[:, 0].numpy()
    lam2 = mu * float((J * J).sum()) / J.shape[1]
    if J.shape[0] <= J.shape[1]:   # d = −Jᵀ (J Jᵀ + λ² I)⁻¹ r
        K = Jt @ Jt.T + lam2 * torch.eye(J.shape[0], dtype=Jt.dtype)
        return -(Jt.T @ torch.cholesky_solve(rt, torch.linalg.cholesky(K)))[:, 0].numpy()
    K = Jt.T @ Jt + lam2 * torch.eye(J.shape[1], dtype=Jt.dtype)   # d = −(JᵀJ + λ² I)⁻¹ Jᵀ r
    return -torch.cholesky_solve(Jt.T @ rt, torch.linalg.cholesky(K))[:, 0].numpy()


def _levenberg_marquardt(X: np.ndarray, t: int, max_iter: int = 200):
    """Damped Gauss–Newton on r(X) = 0 with the retraction x ↦ (x + a u + b v)/|·|; the damping
    goes to 0 (pure Gauss–Newton, minimum-norm steps) as it converges. Returns (X, max|r|)."""
    n = X.shape[0]
    r, J, u, v = _jacobian(X, t)
    f = float(r @ r)
    mu = 1e-3
    for _ in range(max_iter):
        if np.abs(r).max() <= 2.5e-16:   # about the rounding floor of a mean of N harmonics
            break
        d = _damped_step(J, r, mu).reshape(n, 2)
        Xn = _normalize(X + d[:, :1] * u + d[:, 1:] * v)
        rn, Jn, un, vn = _jacobian(Xn, t)
        fn = float(rn @ rn)
        if fn < f:
            X, r, J, u, v, f = Xn, rn, Jn, un, vn, fn
            mu = mu / 10 if mu > 1e-12 else 0.0
        else:
            if mu > 1e8 or np.abs(r).max() <= 1e-14:   # stalled, or at the rounding floor
                break
            mu = max(mu * 10, 1e-10)
    return X, float(np.abs(r).max())


def _dgs_bound(t: int) -> int:
    """Delsarte–Goethals–Seidel lower bound on the size of a t-design on S²."""
    e = t // 2
    return (e + 1) ** 2 if t % 2 == 0 else (e + 1) * (e + 2)


def _generate(n: int, t: int, seed: int, max_attempts: int, tol: float, lbfgs_target: float,
              lbfgs_maxiter: int, verbose: bool, fn: str) -> np.ndarray:
    from tqdm import tqdm  # noqa: PLC0415

    best_X, best_res = None, math.inf
    bar = tqdm(range(max_attempts), desc=f"{t}-design, {n} points", disable=not verbose, leave=False)
    for attempt in bar:
        X0 = _spiral(n)
        if seed != 0 or attempt > 0:   # restarts: the spiral with a seeded random perturbation
            rng = np.random.default_rng([seed, attempt])
            X0 = _normalize(X0 + rng.normal(scale=0.5 / math.sqrt(n), size=X0.shape))
        X = _lbfgs(X0, t, lbfgs_target, lbfgs_maxiter)
        X, res = _levenberg_marquardt(X, t)
        bar.set_postfix(residual=f"{res:.1e}")
        if res < best_res:
            best_X, best_res = X, res
        if res <= tol:
            return X
    hint = ("designs of strength t are usually found from about (t+1)²/2 + 2 points"
            f" (here {math.ceil((t + 1) ** 2 / 2) + 2})")
    if t % 2 == 1:
        hint += "; for odd t an even number of points is much easier"
    raise DesignNotFoundError(
        f"{fn}: could not reach a spherical {t}-design with {n} points: best residual {best_res:.3g} "
        f"(max |mean Y_lm| over degrees 1..{t}) after {max_attempts} attempt(s), tolerance {tol:g}. "
        f"Such a design may not exist, or the optimiser did not find it: use more points ({hint}), "
        "another seed or a larger max_attempts.", n, t, best_res, best_X)


@functools.lru_cache(maxsize=1)
def _shipped_arrays() -> dict:
    if not _DATA.is_file():
        return {}
    with np.load(_DATA) as z:
        return {k: np.array(z[k], dtype=np.float64) for k in z.files}


def _key(n: int, t: int) -> str:
    return f"n{n}_t{t}"


def shipped_designs() -> list[tuple[int, int]]:
    """``(n_points, strength)`` of the designs shipped with the package (``geometry/data``)."""
    out = []
    for k in _shipped_arrays():
        n, t = k[1:].split("_t")
        out.append((int(n), int(t)))
    return sorted(out, key=lambda p: (p[1], p[0]))


def design_residual(points, strength: int) -> float:
    """Worst quadrature error of the equal-weight rule on ``points`` over spherical harmonics of
    degree ``1..strength``: ``max_{ℓ,m} |mean_i Y_ℓm(x_i)|`` with real harmonics of unit RMS on the
    sphere (the integral of each is 0). A t-design has residual 0 (≈1e-16 in float64).

    ``points``: ``(N, 3)`` unit vectors (normalised here), torch or NumPy.
    """
    fn = "design_residual"
    t = check_int(fn, "strength", strength, minimum=1)
    p, _ = to_tensor(points, fn, "points")
    if p.dim() != 2 or p.shape[-1] != 3 or p.shape[0] < 1:
        fail(fn, f"points must have shape (N, 3) with N >= 1, got {tuple(p.shape)}")
    X = p.detach().cpu().to(torch.float64).numpy()
    nr = np.linalg.norm(X, axis=1, keepdims=True)
    if not np.all(np.isfinite(X)) or np.any(nr == 0):
        fail(fn, "points must be finite and non-zero")
    return float(np.abs(_residual(X / nr, t)).max())


@functools.lru_cache(maxsize=32)
def _design_cached(n: int, t: int, seed: int, precomputed: bool, tol: float, max_attempts: int,
                   lbfgs_target: float, lbfgs_maxiter: int, verbose: bool) -> np.ndarray:
    fn = "spherical_design"
    if precomputed and seed == 0:
        X = _shipped_arrays().get(_key(n, t))
        if X is not None and float(np.abs(_residual(X, t)).max()) <= tol:
            return X
    X = _generate(n, t, seed, max_attempts, tol, lbfgs_target, lbfgs_maxiter, verbose, fn)
    X.setflags(write=False)
    return X


def spherical_design(n_points: int, strength: int, *, seed: int = 0, precomputed: bool = True,
                     tol: float = 1e-13, max_attempts: int = 10, lbfgs_target: float = 1e-8,
                     lbfgs_maxiter: int = 2000, dtype=torch.float64, device=None,
                     verbose: bool = False) -> torch.Tensor:
    """A spherical ``strength``-design with ``n_points`` points: ``(n_points, 3)`` unit vectors.

    The equal-weight rule ``(1/N) Σ_i p(x_i)`` is exact for every polynomial of degree ≤ strength
    on S² (every spherical harmonic of degree 1..strength averages to 0 over the points, checked
    to ``tol``; see :func:`design_residual`). Designs are determined up to rotation only; the
    points returned are a fixed, reproducible configuration.

    Algorithm: L-BFGS on the design energy from a Fibonacci spiral until the energy is
    ≤ ``lbfgs_target`` (or ``lbfgs_maxiter`` iterations), then Levenberg–Marquardt / Gauss–Newton
    on the moment equations to machine precision (module docstring). If the residual stays
    above ``tol`` the search restarts from the spiral with a random perturbation seeded by
    ``(seed, attempt)``, up to ``max_attempts`` times, then raises :class:`DesignNotFoundError`
    (with the best residual). With ``seed=0`` the first attempt is the plain spiral.

    Args:
        n_points: N ≥ 1; must be at least the Delsarte–Goethals–Seidel bound ((t/2+1)² for even
            t, ((t+1)/2)((t+3)/2) for odd t), below which no design exists.
        strength: t ≥ 1.
        seed: seeds the restarts; results are deterministic for a given seed.
        precomputed: with ``seed=0``, return the shipped design for ``(n_points, strength)``
            when there is one (:func:`shipped_designs`; computed by this function with
            ``seed=0``); otherwise (or if the data file is absent) compute it. Results are cached
            for the session.
        tol: largest accepted residual (max |mean Y_ℓm|, harmonics of unit RMS).
        dtype, device: of the returned tensor (float64 by default: the design is exact in float64).
        verbose: progress bar over attempts.

    Returns:
        ``(n_points, 3)`` tensor of unit vectors.
    """
    fn = "spherical_design"
    n = check_int(fn, "n_points", n_points, minimum=1)
    t = check_int(fn, "strength", strength, minimum=1)
    seed = check_int(fn, "seed", seed, minimum=0)
    max_attempts = check_int(fn, "max_attempts", max_attempts, minimum=1)
    lbfgs_maxiter = check_int(fn, "lbfgs_maxiter", lbfgs_maxiter, minimum=0)
    tol = check_float(fn, "tol", tol, positive=True)
    lbfgs_target = check_float(fn, "lbfgs_target", lbfgs_target, minimum=0.0)
    bound = _dgs_bound(t)
    if n < bound:
        fail(fn, f"no spherical {t}-design with n_points={n} exists: a {t}-design on the sphere "
                 f"needs at least {bound} points (Delsarte–Goethals–Seidel bound), got {n}")
    X = _design_cached(n, t, seed, bool(precomputed), tol, max_attempts, lbfgs_target, lbfgs_maxiter,
                       bool(verbose))
    return torch.tensor(X, dtype=dtype, device=device)


def quadrature_exact_degree(strength: int, n_inplane: int) -> int:
    """Largest degree T such that a ``strength``-design × ``n_inplane`` equally spaced in-plane
    angles integrates every polynomial of degree ≤ T in the entries of R (every Wigner-D entry
    D^ℓ, ℓ ≤ T) exactly over SO(3): ``min(strength, n_inplane − 1)`` (module docstring)."""
    fn = "quadrature_exact_degree"
    t = check_int(fn, "strength", strength, minimum=0)
    q2 = check_int(fn, "n_inplane", n_inplane, minimum=1)
    return min(t, q2 - 1)


def so3_quadrature(n_directions: int | None = None, n_inplane: int | None = None, *,
                   strength: int | None = None, exact_degree: int | None = None,
                   inplane_offset: float = 0.0, seed: int = 0, dtype=torch.float32,
                   device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Quadrature on SO(3): spherical-design viewing directions × equally spaced in-plane angles.

    Rotations ``R_jk = Rz(φ_j) Ry(θ_j) Rz(ψ_k)`` (= ``relion_euler_to_matrix(φ_j, θ_j, ψ_k)`` in
    degrees), ``(θ_j, φ_j)`` the polar and azimuthal angles of design point ``d_j`` so that
    ``R_jk · e_z = d_j``, and ``ψ_k = inplane_offset + 2πk / n_inplane`` (radians) a right-handed
    rotation about the viewing axis; row ``j·n_inplane + k``. Weights are uniform, ``1/q``.

    The rule integrates every polynomial of degree ≤ ``min(strength, n_inplane − 1)`` in the
    entries of R exactly against the Haar measure (:func:`quadrature_exact_degree`).

    Which rule:
        * nothing given: the paper's rule (seeds/000 §5.2), the shipped 100-point 13-design ×
          12 angles = 1200 rotations, exact to degree 11 only.
        * ``exact_degree=T``: a rule exact to degree T: ``strength`` defaults to T,
          ``n_inplane`` to T + 1 and ``n_directions`` to the smallest shipped design of strength
          ≥ T (pass ``n_directions`` for another size; it is generated). Explicit values that
          would not reach degree T are an error.
        * otherwise ``n_directions`` (default 100) and ``n_inplane`` (default 12); ``strength``
          defaults to the strength of the shipped design with ``n_directions`` points (else pass it).

    Args:
        seed: passed to :func:`spherical_design` (0: shipped designs where available).
        dtype, device: of the outputs (computed in float64).

    Returns:
        ``(rotations (q, 3, 3), weights (q,))`` with ``q = n_directions · n_inplane``.
    """
    fn = "so3_quadrature"
    if n_directions is not None:
        n_directions = check_int(fn, "n_directions", n_directions, minimum=1)
    if n_inplane is not None:
        n_inplane = check_int(fn, "n_inplane", n_inplane, minimum=1)
    if strength is not None:
        strength = check_int(fn, "strength", strength, minimum=1)
    offset = check_float(fn, "inplane_offset", inplane_offset)
    seed = check_int(fn, "seed", seed, minimum=0)
    shipped = sorted(SHIPPED)   # the list, not the file: spherical_design regenerates missing ones
    if exact_degree is not None:
        T = check_int(fn, "exact_degree", exact_degree, minimum=0)
        if strength is None:
            strength = max(T, 1)
        elif strength < T:
            fail(fn, f"strength must be >= exact_degree={T} for a rule exact to degree {T}, got {strength}")
        if n_inplane is None:
            n_inplane = T + 1
        elif n_inplane < T + 1:
            fail(fn, f"n_inplane must be >= exact_degree + 1 = {T + 1} for a rule exact to degree {T} "
                     f"(equally spaced angles integrate e^(i m psi) exactly only for |m| < n_inplane), got {n_inplane}")
        if n_directions is None:
            fits = [(n, t) for n, t in shipped if t >= strength]
            if not fits:
                fail(fn, f"no shipped spherical design has strength >= {strength} (shipped: {shipped}); "
                         "pass n_directions to generate one")
            n_directions, strength = min(fits)
    else:
        if n_directions is None:
            n_directions = PAPER_RULE[0]
        if n_inplane is None:
            n_inplane = PAPER_RULE[2]
        if strength is None:
            fits = [t for n, t in shipped if n == n_directions]
            if not fits:
                fail(fn, f"strength is required: no shipped design has n_directions={n_directions} points "
                         f"(shipped (n, t): {shipped})")
            strength = max(fits)
    if n_directions < _dgs_bound(strength):
        fail(fn, f"no spherical {strength}-design with n_directions={n_directions} exists: it needs at "
                 f"least {_dgs_bound(strength)} points (Delsarte–Goethals–Seidel bound)")
    d = spherical_design(n_directions, strength, seed=seed).numpy()
    theta = np.degrees(np.arctan2(np.hypot(d[:, 0], d[:, 1]), d[:, 2]))
    phi = np.degrees(np.arctan2(d[:, 1], d[:, 0]))
    psi = np.degrees(offset + 2.0 * math.pi * np.arange(n_inplane) / n_inplane)
    rot = np.repeat(phi, n_inplane)
    tilt = np.repeat(theta, n_inplane)
    psis = np.tile(psi, n_directions)
    R = relion_euler_to_matrix(torch.from_numpy(rot), torch.from_numpy(tilt), torch.from_numpy(psis))
    q = n_directions * n_inplane
    w = torch.full((q,), 1.0 / q, dtype=torch.float64)
    return R.to(dtype=dtype, device=device), w.to(dtype=dtype, device=device)


def plot_directions(directions, path, *, values=None, title: str | None = None,
                    label: str | None = None):
    """PNG of viewing directions on the sphere: a 3-D view and an equal-area (Mollweide) map.

    Args:
        directions: ``(N, 3)`` vectors (normalised here), or rotations ``(N, 3, 3)`` whose viewing
            directions ``R · e_z`` are shown.
        path: output ``.png`` (written atomically).
        values: optional ``(N,)`` per-direction values (e.g. a density on the quadrature summed
            over in-plane angles) used as colours.
        title, label: figure title and colour-bar label.

    Returns:
        the path. Needs matplotlib (the ``plot`` extra).
    """
    fn = "plot_directions"
    t, _ = to_tensor(directions, fn, "directions")
    t = t.detach().cpu().to(torch.float64)
    if t.dim() == 3 and tuple(t.shape[-2:]) == (3, 3):
        t = t[..., :, 2]
    if t.dim() != 2 or t.shape[-1] != 3 or t.shape[0] < 1:
        fail(fn, f"directions must have shape (N, 3) or rotations (N, 3, 3), got {tuple(t.shape)}")
    X = t.numpy()
    nr = np.linalg.norm(X, axis=1, keepdims=True)
    if not np.all(np.isfinite(X)) or np.any(nr == 0):
        fail(fn, "directions must be finite and non-zero")
    X = X / nr
    c = None
    if values is not None:
        vt, _ = to_tensor(values, fn, "values")
        c = vt.detach().cpu().to(torch.float64).reshape(-1).numpy()
        if c.shape[0] != X.shape[0]:
            fail(fn, f"values must have shape ({X.shape[0]},) (one per direction), got {tuple(vt.shape)}")
    from ..io.mrc import atomic_path  # noqa: PLC0415
    from ..metrics.plots import _plt  # noqa: PLC0415

    plt = _plt()
    fig = plt.figure(figsize=(11, 4.6), layout="constrained")
    ax3 = fig.add_subplot(1, 2, 1, projection="3d")
    uu, vv = np.mgrid[0:2 * np.pi:40j, 0:np.pi:20j]
    ax3.plot_wireframe(np.cos(uu) * np.sin(vv), np.sin(uu) * np.sin(vv), np.cos(vv), color="0.85", lw=0.4)
    kw = dict(c=c, cmap="viridis") if c is not None else dict(color="tab:blue")
    sc = ax3.scatter(X[:, 0], X[:, 1], X[:, 2], s=14, depthshade=True, **kw)
    ax3.set_box_aspect((1, 1, 1))
    ax3.set_xlabel("x")
    ax3.set_ylabel("y")
    ax3.set_zlabel("z")
    ax3.tick_params(labelsize=7)
    axm = fig.add_subplot(1, 2, 2, projection="mollweide")
    lon = np.arctan2(X[:, 1], X[:, 0])
    lat = np.arcsin(np.clip(X[:, 2], -1.0, 1.0))
    axm.scatter(lon, lat, s=14, **kw)
    axm.grid(True, lw=0.4)
    axm.set_xticks(np.radians([-120, -60, 0, 60, 120]))
    axm.set_yticks(np.radians([-60, -30, 0, 30, 60]))
    axm.tick_params(labelsize=7)
    axm.set_title("Mollweide map of R·e_z (azimuth, elevation)", fontsize=9, pad=12)
    if c is not None:
        fig.colorbar(sc, ax=axm, shrink=0.6, label=label or "")
    fig.suptitle(title or f"{X.shape[0]} viewing directions")
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return pathlib.Path(path)
