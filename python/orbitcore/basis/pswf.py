"""The 2-D prolate spheroidal wave functions (PSWFs) on a disk of pixels: a steerable basis for
images that are concentrated in space (the disk) and in frequency (the band limit).

Definitions (seeds/002 eq. 10–12, our normalisation):

* On the unit disk, with band limit ``c``, the PSWFs are the eigenfunctions of the truncated
  Fourier transform, ``alpha_{N,n} psi_{N,n}(k) = int_{|r|<=1} psi_{N,n}(r) e^{i c <r, k>} dr``
  (eq. 10), ``psi_{N,n}(r, phi) = Phi_{N,n}(r) e^{i N phi} / sqrt(2 pi)`` (eq. 12 up to
  normalisation), ``N`` in Z the angular index, ``n = 0, 1, ...`` the radial index (ordered by
  decreasing ``|alpha|``). The real radial parts satisfy ``int_0^1 Phi^2 r dr = 1`` so the
  ``psi_{N,n}`` are orthonormal on the unit disk; ``Phi_{-N,n} = Phi_{N,n}``; ``Phi_{N,n}(r) > 0``
  for small ``r``. They are computed as eigenvectors of the commuting Sturm–Liouville operator in
  the generalised Zernike basis (a symmetric tridiagonal eigenproblem, float64, once per plan);
  ``alpha_{N,n} = 2 pi i^{|N|} mu_{N,n}`` with ``mu`` the (real) eigenvalue of the Hankel operator
  ``int_0^1 J_N(c k r) Phi(r) r dr``, evaluated through the Zernike–Bessel identity.
* Concentration: ``lambda_{N,n} = (c / 2 pi)^2 |alpha_{N,n}|^2`` in (0, 1) is the fraction of the
  energy of the band-limited extension of ``psi_{N,n}`` that lies inside the disk.
* Pixels: an image of side ``L`` has its origin at index ``L // 2`` (ARCHITECTURE.md); the disk
  has radius ``R = L // 2`` pixels and the default band limit is ``c = pi R`` (Nyquist: the
  functions are band limited to 1/2 cycle per pixel). The disk pixels are all pixels with
  ``|p| <= R`` (ASPIRE's choice too, same counts). For even ``L`` two of them, ``(-R, 0)`` and
  ``(0, -R)`` (first row/column), have no mirror partner on the grid; they enter the least
  squares through an exact rank-2 correction (below). Without them the odd-``N`` blocks would be
  ill-conditioned (condition ~200 instead of ~4).
* Basis functions on pixels are ``psi_{N,n}(p / R) / R`` (``p`` in pixels): orthonormal for the
  pixel-area measure, so their Gram matrix on the grid is close to the identity and white noise
  of variance ``s^2`` per pixel gives coefficients of variance about ``s^2``.

Truncation rule (the kept ``(N, n)`` pairs): ``(N, n)`` is kept when ``lambda_{N,n} > truncation``
(default 1/2). Since ``lambda`` decreases in ``n`` and in ``|N|``, this keeps ``n = 0 ..
n_max[N] - 1`` for ``|N| <= N_max`` (:attr:`PSWF2D.n_max` is a count; the inclusive upper index
``n_max(N)`` of seeds/002 eq. 16 is ``n_max[N] - 1``). seeds/002 takes the range of ``(N, n)``
from Landa & Shkolnisky (its ref. [52], eq. 8), which ASPIRE's ``PSWFBasis2D`` implements as
``gamma_{N,n} = sqrt(lambda / (1 - lambda)) > gamma_trunc``, i.e. ``truncation =
gamma_trunc^2 / (1 + gamma_trunc^2)``: ASPIRE's default ``gamma_trunc = 1`` is our default 1/2,
and the kept sets agree (tests/basis/test_pswf.py checks ASPIRE's counts for L = 32 and 64). The
number of kept functions is close to the 2-D Shannon number ``c^2 / 4``.

Coefficients. The kept pairs are listed in :attr:`PSWF2D.indices` (``N`` ascending from
``-N_max`` to ``N_max``, then ``n``), one coefficient per pair, ``M = count`` in all:

* complex convention (complex dtype): ``image = sum_{N,n} c_{N,n} psi_{N,n}``; a real image has
  ``c_{-N,n} = conj(c_{N,n})``;
* real convention (real dtype): the same list, where ``N = 0`` multiplies
  ``Phi_{0,n}(r) / sqrt(2 pi)``, ``N > 0`` multiplies ``Phi_{N,n}(r) cos(N phi) / sqrt(pi)`` and
  ``-N < 0`` multiplies ``Phi_{N,n}(r) sin(N phi) / sqrt(pi)`` (all orthonormal). The two are
  related by the unitary map ``c_{+-N} = (a_N -+ i a_{-N}) / sqrt(2)`` (:meth:`PSWF2D.to_complex`,
  :meth:`PSWF2D.to_real`).

Fast transforms. The disk pixels fall into orbits of the dihedral group of the square; in
symmetry-adapted pixel coordinates (an orthogonal change of basis applied orbit by orbit, the
"fold" kernel) the real evaluation matrix is block diagonal with 6 blocks (cos/sin x
``N mod 4`` classes: ``N = 0 mod 4``, ``2 mod 4``, odd). ``expand`` (least squares through a
precomputed pseudo-inverse per block), ``evaluate`` and ``evaluate_adjoint`` are then one fold
or unfold plus 6 dense products, about 5x fewer flops than the dense ``pixels x coefficients``
product. For even ``L`` the two unpaired pixels ``E`` add ``c = c_s + (x_E - E c_s) W^T`` to the
block solution ``c_s`` (``W = G_s^{-1} E^T (I + E G_s^{-1} E^T)^{-1}``, ``G_s`` the block-diagonal
normal matrix), which is the exact least-squares solution over all disk pixels (Woodbury); in
float32 it costs about one extra digit (relative error ~1e-5 instead of ~1e-7).
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal
from scipy.special import jv

from .. import _validate as V
from .._validate import fail, from_tensor, to_tensor
from ..ops import pswf as _ops
from ._special import prolate_operator, single_thread

__all__ = ["PSWF2D"]

_KCHUNK = 16  # src/orbitcore/pswf.hpp kChunk
_FN = "PSWF2D"


# ----------------------------------------------------------------------------------------------
# kernel helpers (plan time, float64)
# ----------------------------------------------------------------------------------------------
def _eval_tables(Ns, Ks, rows, col_cos, col_sin, device=None, dtype=torch.float64) -> dict:
    """Kernel tables for function rows grouped by angular index (rows of a group contiguous)."""
    Ns = np.asarray(Ns, dtype=np.int64)
    # groups: maximal runs of equal N
    starts = [0] + [i for i in range(1, len(Ns)) if Ns[i] != Ns[i - 1]]
    goff = starts + [len(Ns)]
    gN = [int(Ns[s]) for s in starts]
    gK = [int(max(Ks[s:e])) for s, e in zip(goff[:-1], goff[1:])]
    item_group, item_row = [], []
    for g, (s, e) in enumerate(zip(goff[:-1], goff[1:])):
        for r0 in range(s, e, _KCHUNK):
            item_group.append(g)
            item_row.append(r0)
    i32 = dict(dtype=torch.int32, device=device)
    return {
        "group_N": torch.tensor(gN, **i32), "group_K": torch.tensor(gK, **i32),
        "group_offsets": torch.tensor(goff, **i32), "item_group": torch.tensor(item_group, **i32),
        "item_row": torch.tensor(item_row, **i32),
        "coefficients": torch.as_tensor(np.ascontiguousarray(rows), dtype=dtype, device=device),
        "col_cos": torch.tensor(np.asarray(col_cos), **i32), "col_sin": torch.tensor(np.asarray(col_sin), **i32),
    }


def _radial_values(N: int, rows: np.ndarray, r: np.ndarray) -> np.ndarray:
    """``sum_j rows[i, j] T_{N,j}(r)`` for every row (kernel evaluation at the points (r, 0))."""
    n = rows.shape[0]
    t = _eval_tables([N] * n, [rows.shape[1]] * n, rows, np.arange(n), np.full(n, -1))
    pts = torch.as_tensor(np.stack([r, np.zeros_like(r)], -1), dtype=torch.float64)
    return _ops.eval_points(pts, t, n).numpy()


def _hankel_basis(N: int, c: float, K: int, k: np.ndarray) -> np.ndarray:
    """``(len(k), K)``: ``int_0^1 J_N(c k r) T_{N,j}(r) r dr = sqrt(2(2j+N+1)) J_{N+2j+1}(c k)/(c k)``
    (the Zernike–Bessel identity), so ``(H_N Phi)(k) = sum_j d_j [this]_{k, j}``."""
    j = np.arange(K)
    ck = c * np.asarray(k, dtype=np.float64)
    return np.sqrt(2.0 * (2 * j + N + 1))[None, :] * jv(N + 2 * j[None, :] + 1, ck[:, None]) / ck[:, None]


def _radial_functions(N: int, c: float, truncation: float, n_guess: int):
    """Kept radial functions of angular index N >= 0: (coefficient rows (n_kept, K_N), mu (n_kept,)).

    Eigenvectors of the tridiagonal operator (ascending eigenvalue = descending concentration),
    signs fixed so that Phi > 0 where it first becomes significant near r = 0, eigenvalues of the
    Hankel operator from the Zernike–Bessel identity at the maximum of |Phi|."""
    K = int(math.ceil(c)) + N // 2 + 40
    r_grid = np.linspace(1e-3, 1.0, 400)
    n_try = max(4, n_guess)
    for _attempt in range(12):
        n_try = min(n_try, K - 10)
        diag, off = prolate_operator(N, c, K)
        _, vec = eigh_tridiagonal(diag, off, select="i", select_range=(0, n_try - 1))
        rows = np.ascontiguousarray(vec.T)  # (n_try, K), increasing chi = decreasing |mu|
        sig = np.nonzero(np.abs(rows).max(0) > 1e-18)[0]
        Kt = int(sig[-1]) + 1
        rows_t = np.ascontiguousarray(rows[:, :Kt])
        phi = _radial_values(N, rows_t, r_grid)  # (r, n)
        amp = np.abs(phi).max(0)
        first = np.argmax(np.abs(phi) > 1e-6 * amp[None, :], axis=0)
        sign = np.sign(phi[first, np.arange(n_try)])
        rows_t *= sign[:, None]
        phi *= sign[None, :]
        imax = np.argmax(np.abs(phi), axis=0)
        h = np.einsum("ik,ik->i", rows_t, _hankel_basis(N, c, Kt, r_grid[imax]))
        mu = h / phi[imax, np.arange(n_try)]
        lam = (c * mu) ** 2
        keep = int(np.sum(lam > truncation))
        if keep and not np.all(lam[:keep] > truncation):
            raise RuntimeError(f"{_FN}: concentrations are not ordered for N = {N} (internal error)")
        tail = np.abs(rows[:max(keep, 1), -8:]).max()
        if tail > 1e-15:
            K = int(K * 1.5) + 10
            continue
        if keep >= n_try - 1 and n_try < K - 10:
            n_try = 2 * n_try
            continue
        break
    else:  # pragma: no cover - the expansion length above is generous
        raise RuntimeError(f"{_FN}: Zernike expansion of the radial functions did not converge for N = {N}")
    rows = rows_t[:keep]
    if keep:
        sig = np.nonzero(np.abs(rows).max(0) > 1e-18)[0]
        rows = rows[:, :int(sig[-1]) + 1]
    return np.ascontiguousarray(rows), mu[:keep]


_GROUP = [  # the 8 symmetries of the square acting on integer pixel offsets (x, y)
    lambda x, y: (x, y), lambda x, y: (-y, x), lambda x, y: (-x, -y), lambda x, y: (y, -x),  # rho^k
    lambda x, y: (x, -y), lambda x, y: (-y, -x), lambda x, y: (-x, y), lambda x, y: (y, x),  # sigma rho^k
]
# (kind, chi_rho, chi_sigma): blocks 0-3 are the 1-dimensional characters (N even), 4-5 the
# odd-N sector split by the mirror parity.
_BLOCKS = [("even", 1, 1), ("even", 1, -1), ("even", -1, 1), ("even", -1, -1), ("odd", 0, 1), ("odd", 0, -1)]


def _block_of(N: int) -> int:
    """Block of the real-convention column (N, n): cos for N >= 0, sin of |N| for N < 0."""
    a, sin = abs(N), N < 0
    if a % 2:
        return 5 if sin else 4
    return (1 if sin else 0) if a % 4 == 0 else (3 if sin else 2)


def _orbits(L: int):
    """Disk pixels grouped in orbits; per orbit the symmetry-adapted orthonormal pixel functions
    sorted into the 6 blocks. Returns (orbit pixel lists, per-orbit list of (block, vector))."""
    R, c0, lim = L // 2, L // 2, (L - 1) // 2
    seen = set()
    orbits, feats = [], []
    pts = sorted(((x, y) for y in range(-lim, lim + 1) for x in range(-lim, lim + 1) if x * x + y * y <= R * R),
                 key=lambda p: (p[0] ** 2 + p[1] ** 2, math.atan2(p[1], p[0])))
    for p in pts:
        if p in seen:
            continue
        orb = []
        for g in _GROUP:
            q = g(*p)
            if q not in orb:
                orb.append(q)
        seen.update(orb)
        s = len(orb)
        idx = {q: i for i, q in enumerate(orb)}
        T = np.zeros((8, s, s))  # (T_g f)_i = f(g p_i)
        for k, g in enumerate(_GROUP):
            for i, q in enumerate(orb):
                T[k, i, idx[g(*q)]] = 1.0
        vecs = []
        for b, (kind, cr, cs) in enumerate(_BLOCKS):
            if kind == "even":
                chi = [cr ** k for k in range(4)] + [cs * cr ** k for k in range(4)]
                P = sum(chi[k] * T[k] for k in range(8)) / 8.0
            else:
                P = (np.eye(s) - T[2]) @ (np.eye(s) + cs * T[4]) / 4.0
            basis = []
            for j in range(s):  # Gram-Schmidt on the projected pixel indicators (deterministic)
                v = P[:, j].copy()
                for u in basis:
                    v -= (u @ v) * u
                nv = np.linalg.norm(v)
                if nv > 1e-8:
                    basis.append(v / nv)
            vecs.extend((b, u) for u in basis)
        if len(vecs) != s:
            raise RuntimeError(f"{_FN}: orbit decomposition failed (internal error)")
        orbits.append([(x + c0, y + c0) for x, y in orb])  # (ix, iy)
        feats.append(vecs)
    return orbits, feats


@functools.lru_cache(maxsize=16)
def _make_plan(L: int, c: float, truncation: float) -> dict:
    """Everything PSWF2D precomputes (float64, CPU), cached per (L, c, truncation)."""
    with single_thread():
        return _make_plan_impl(L, c, truncation)


def _make_plan_impl(L: int, c: float, truncation: float) -> dict:
    R = L // 2
    radial, mus, n_max = [], [], []
    n_guess = int(math.ceil(c / math.pi)) + 6
    N = 0
    while True:
        rows, mu = _radial_functions(N, c, truncation, n_guess)
        if rows.shape[0] == 0:
            break
        radial.append(rows)
        mus.append(mu)
        n_max.append(rows.shape[0])
        n_guess = rows.shape[0] + 3
        N += 1
    if not n_max:
        fail(_FN, f"no PSWF has concentration > {truncation} for L = {L}, bandlimit = {c:g}")
    Nmax = len(n_max) - 1
    pairs = [(Nv, n) for Nv in range(-Nmax, Nmax + 1) for n in range(n_max[abs(Nv)])]
    M = len(pairs)
    pos = {p: i for i, p in enumerate(pairs)}
    mu_all = np.array([mus[abs(Nv)][n] for Nv, n in pairs])
    Nl = [p[0] for p in pairs]
    plan = {
        "n_max": n_max, "radial_coefficients": radial, "count": M,
        "indices": {"N": torch.tensor(Nl), "n": torch.tensor([p[1] for p in pairs])},
        "alpha": torch.tensor(2 * np.pi * (1j ** np.abs(Nl)) * mu_all),
        "concentration": torch.tensor((c * mu_all) ** 2),
        "_partner": torch.tensor([pos[(-a, b)] for a, b in pairs]),
    }

    # kernel tables: one row per (N >= 0, n); cos column (N, n), sin column (-N, n)
    Kmax = max(r.shape[1] for r in radial)
    rows, Ns, Ks, cc, cs = [], [], [], [], []
    for Nv, rr in enumerate(radial):
        scale = 1.0 / math.sqrt(2 * math.pi) if Nv == 0 else 1.0 / math.sqrt(math.pi)
        for n in range(rr.shape[0]):
            row = np.zeros(Kmax)
            row[:rr.shape[1]] = rr[n] * scale
            rows.append(row)
            Ns.append(Nv)
            Ks.append(rr.shape[1])
            cc.append(pos[(Nv, n)])
            cs.append(pos[(-Nv, n)] if Nv > 0 else -1)
    tables = _eval_tables(Ns, Ks, np.array(rows), cc, cs)
    plan["_eval_tables64"] = tables

    # orbits and the fold tables
    orbits, feats = _orbits(L)
    nb = len(_BLOCKS)
    block_count = [0] * nb
    for vecs in feats:
        for b, _ in vecs:
            block_count[b] += 1
    fo = np.concatenate([[0], np.cumsum(block_count)]).astype(np.int64)
    O = len(orbits)
    pix = np.zeros((O, 8), np.int32)
    feat = np.zeros((O, 8), np.int32)
    Q = np.zeros((O, 8, 8))
    size = np.zeros(O, np.int32)
    nxt = fo[:-1].copy()
    sym = np.zeros((L, L), bool)
    for o, (orb, vecs) in enumerate(zip(orbits, feats)):
        s = len(orb)
        size[o] = s
        for j, (ix, iy) in enumerate(orb):
            pix[o, j] = iy * L + ix
            sym[iy, ix] = True
        for i, (b, u) in enumerate(vecs):
            Q[o, i, :s] = u
            feat[o, i] = nxt[b]
            nxt[b] += 1
    F = int(fo[-1])
    fold64 = {"pix": torch.from_numpy(pix), "feat": torch.from_numpy(feat), "Q": torch.from_numpy(Q),
              "size": torch.from_numpy(size)}
    # the disk: all grid pixels within R; for even L two of them ((-R, 0), (0, -R)) have no
    # mirror on the grid and are handled as "extra" pixels by a rank-2 correction
    yy, xx = np.meshgrid(np.arange(L) - L // 2, np.arange(L) - L // 2, indexing="ij")
    disk = xx * xx + yy * yy <= R * R
    ey, ex = np.nonzero(disk & ~sym)
    extra = torch.from_numpy((ey * L + ex).astype(np.int64))

    def basis(ix, iy):
        pts = torch.tensor(np.stack([(ix - L // 2) / R, (iy - L // 2) / R], -1), dtype=torch.float64).reshape(-1, 2)
        return _ops.eval_points(pts, tables, M) / R

    # evaluation matrix at the symmetric pixels, folded: (F, M), block diagonal up to rounding
    iy, ix = np.nonzero(sym)
    imgs = torch.zeros(M, L * L, dtype=torch.float64)
    imgs[:, torch.from_numpy(iy * L + ix)] = basis(ix, iy).T
    UA = _ops.fold(imgs, fold64, F).T  # (F, M)
    col_block = np.array([_block_of(Nv) for Nv, _ in pairs])
    cols = [np.nonzero(col_block == b)[0] for b in range(nb)]
    order = np.concatenate(cols)
    mo = [0] + [int(v) for v in np.cumsum([len(cb) for cb in cols])]
    scale = float(UA.abs().max())
    leak = 0.0
    A_blocks, P_blocks, conds = [], [], []
    for b in range(nb):
        Ab = UA[fo[b]:fo[b + 1]][:, torch.from_numpy(cols[b])]
        others = torch.from_numpy(np.setdiff1d(np.arange(M), cols[b]))
        if len(others) and fo[b + 1] > fo[b]:
            leak = max(leak, float(UA[fo[b]:fo[b + 1]][:, others].abs().max()) / scale)
        if Ab.shape[1] > Ab.shape[0]:
            fail(_FN, f"L = {L} has fewer disk pixels than PSWFs in symmetry block {b} "
                      f"({Ab.shape[0]} < {Ab.shape[1]}); raise the truncation or lower the band limit")
        if Ab.shape[1]:
            U, S, Vh = torch.linalg.svd(Ab, full_matrices=False)
            conds.append(float(S[0] / S[-1]))
            Pinv = Vh.T @ (U.T / S[:, None])  # (M_b, F_b)
        else:
            conds.append(1.0)
            Pinv = Ab.T.clone()
        A_blocks.append(Ab.contiguous())
        P_blocks.append(Pinv.T.contiguous())  # (F_b, M_b): coefficients = features @ this
    if leak > 1e-10:
        raise RuntimeError(f"{_FN}: symmetry blocks leak ({leak:.2e}); internal error")
    plan.update({
        "disk_mask": torch.from_numpy(disk), "F": F, "_fold64": fold64, "_fo": [int(v) for v in fo], "_mo": mo,
        "_blk_order": torch.from_numpy(order), "_blk_inverse": torch.from_numpy(np.argsort(order)),
        "_A64": A_blocks, "_P64": P_blocks, "_extra": extra,
    })
    # extra pixels: least squares over all disk pixels = block solution c_s plus the correction
    # c = c_s + (x_e - E c_s) W^T with E the basis at the extra pixels and
    # W = G_s^{-1} E^T (I + E G_s^{-1} E^T)^{-1}, G_s = A_s^T A_s (block diagonal).
    if len(extra):
        E = basis(ex, ey)  # (ne, M)
        GiEt = torch.zeros(M, len(extra), dtype=torch.float64)
        for b in range(nb):
            cb = torch.from_numpy(cols[b])
            Pb = P_blocks[b].T  # (M_b, F_b) = pinv(A_b)
            GiEt[cb] = Pb @ (Pb.T @ E[:, cb].T)
        S2 = torch.eye(len(extra), dtype=torch.float64) + E @ GiEt
        W = torch.linalg.solve(S2, GiEt.T).T  # (M, ne)
        plan["_E64"], plan["_W64"] = E.contiguous(), W.contiguous()
    else:
        plan["_E64"] = plan["_W64"] = None
    plan["condition_numbers"] = conds
    return plan


class PSWF2D:
    """2-D PSWF basis of ``L x L`` images (see the module docstring for definitions and conventions).

    Args:
        L: image side (>= 3). The disk radius is ``R = L // 2`` pixels.
        bandlimit: ``c`` of eq. (10) for the unit disk (default ``pi * (L // 2)``, Nyquist).
        truncation: keep ``(N, n)`` with concentration ``lambda_{N,n} > truncation`` (in (0, 1);
            default 0.5, ASPIRE's ``gamma_trunc = 1``).
        gemm: ``"blas"`` (default: ``torch.matmul``, i.e. MKL/OpenBLAS on the CPU, cuBLAS on CUDA)
            or ``"kernel"`` (orbitcore's blocked CPU product; CPU only; slower, kept for the
            benchmark).

    Planning (float64, CPU) happens once in the constructor; the transforms then run on any
    dtype (float32/float64, complex64/complex128) and device; the matrices are converted once per
    (dtype, device) and cached.

    Attributes:
        L, radius (R), bandlimit (c), truncation, count (M);
        indices: ``{"N": (M,), "n": (M,)}`` int64, the coefficient order;
        n_max: list, ``n_max[N]`` kept radial indices for ``N = 0 .. N_max``;
        alpha: complex128 ``(M,)`` eigenvalues ``alpha_{N,n}`` of eq. (10);
        concentration: float64 ``(M,)`` ``lambda_{N,n}``;
        radial_coefficients: per ``N >= 0`` a float64 array ``(n_max[N], K_N)``: ``Phi_{N,n} =
            sum_j d_j T_{N,j}`` with the orthonormal generalised Zernike ``T_{N,j}`` (pswf.hpp);
        disk_mask: bool ``(L, L)`` pixels in the disk; condition_numbers: of the 6 blocks.
    """

    def __init__(self, L: int, bandlimit: float | None = None, truncation: float = 0.5, *, gemm: str = "blas"):
        L = V.check_int(_FN, "L", L)
        if L < 3:
            fail(_FN, f"L must be >= 3 (the disk radius L // 2 must be at least 1 pixel), got {L}")
        R = L // 2
        c = math.pi * R if bandlimit is None else V.check_float(_FN, "bandlimit", bandlimit, positive=True)
        truncation = V.check_float(_FN, "truncation", truncation)
        if not 0.0 < truncation < 1.0:
            fail(_FN, f"truncation must be in (0, 1) (a concentration threshold), got {truncation}")
        if gemm not in ("blas", "kernel"):
            fail(_FN, f"gemm must be 'blas' or 'kernel', got {gemm!r}")
        self.L, self.radius, self.bandlimit, self.truncation, self.gemm = L, R, float(c), truncation, gemm
        self._plan()

    # ------------------------------------------------------------------------------------------
    # planning
    # ------------------------------------------------------------------------------------------
    def _plan(self):
        plan = _make_plan(self.L, self.bandlimit, self.truncation)
        for k, v in plan.items():
            setattr(self, k, v)
        self._mat_cache = {}
        self._eval_cache = {}

    # ------------------------------------------------------------------------------------------
    # cached per (dtype, device) tensors
    # ------------------------------------------------------------------------------------------
    def _mats(self, dtype: torch.dtype, device: torch.device):
        key = (dtype, device)
        if key not in self._mat_cache:
            fold = {k: v.to(device) for k, v in self._fold64.items()}
            fold["Q"] = self._fold64["Q"].to(device=device, dtype=dtype)
            cast = dict(device=device, dtype=dtype)
            # Entries that are negligible relative to the matrix (e.g. r^N of high-N functions
            # near the centre) would become subnormal floats, which slow BLAS down ~5x: flush them.
            rel = 1e-20 if dtype == torch.float32 else 1e-150

            def flush(a):
                return torch.where(a.abs() < rel * a.abs().max(), torch.zeros_like(a), a) if a.numel() else a

            self._mat_cache[key] = {
                "fold": fold,
                "A": [flush(a).to(**cast) for a in self._A64],
                "At": [flush(a).T.contiguous().to(**cast) for a in self._A64],
                "P": [flush(p).to(**cast) for p in self._P64],
                "order": self._blk_order.to(device), "inverse": self._blk_inverse.to(device),
                "extra": self._extra.to(device),
                "E": None if self._E64 is None else flush(self._E64).to(**cast),
                "W": None if self._W64 is None else flush(self._W64).to(**cast),
            }
        return self._mat_cache[key]

    def _tables(self, dtype: torch.dtype, device: torch.device) -> dict:
        key = (dtype, device)
        if key not in self._eval_cache:
            t = {k: v.to(device) for k, v in self._eval_tables64.items()}
            t["coefficients"] = t["coefficients"].to(dtype)
            self._eval_cache[key] = t
        return self._eval_cache[key]

    def _mm(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.gemm == "kernel" and a.device.type == "cpu":
            return _ops.gemm(a.contiguous(), b.contiguous())
        return a @ b

    # ------------------------------------------------------------------------------------------
    # real-convention transforms on (B, L*L) / (B, M) real tensors
    # ------------------------------------------------------------------------------------------
    def _blocks_in(self, y: torch.Tensor, W: list, inverse: torch.Tensor) -> torch.Tensor:
        """features (B, F) -> coefficients (B, M) in the public order: the 6 block products side by
        side (block order), then one column gather (two passes over the output in all)."""
        fo = self._fo
        outs = [self._mm(y[:, fo[b]:fo[b + 1]], W[b]) for b in range(len(W))]
        return torch.cat(outs, 1).index_select(1, inverse)

    def _expand_real(self, x: torch.Tensor) -> torch.Tensor:
        m = self._mats(x.dtype, x.device)
        y = _ops.fold(x, m["fold"], self.F)
        c = self._blocks_in(y, m["P"], m["inverse"])
        if m["E"] is not None:  # least-squares correction for the extra (unpaired) pixels
            resid = x.index_select(1, m["extra"]) - c @ m["E"].T
            c = c.addmm_(resid, m["W"].T) if not (c.requires_grad or resid.requires_grad) else \
                torch.addmm(c, resid, m["W"].T)
        return c

    def _adjoint_real(self, x: torch.Tensor) -> torch.Tensor:
        m = self._mats(x.dtype, x.device)
        y = _ops.fold(x, m["fold"], self.F)
        c = self._blocks_in(y, m["A"], m["inverse"])
        if m["E"] is not None:
            xe = x.index_select(1, m["extra"])
            c = c.addmm_(xe, m["E"]) if not (c.requires_grad or xe.requires_grad) else torch.addmm(c, xe, m["E"])
        return c

    def _evaluate_real(self, a: torch.Tensor) -> torch.Tensor:
        m = self._mats(a.dtype, a.device)
        fo, mo = self._fo, self._mo
        ab = a.index_select(1, m["order"])  # block order: one column gather
        y = a.new_empty((a.shape[0], self.F))
        direct = self.gemm == "blas" and not (torch.is_grad_enabled() and a.requires_grad)
        for b in range(len(fo) - 1):
            if fo[b + 1] == fo[b]:
                continue
            if direct:  # the product lands in its feature columns without a temporary
                torch.matmul(ab[:, mo[b]:mo[b + 1]], m["At"][b], out=y[:, fo[b]:fo[b + 1]])
            else:
                y[:, fo[b]:fo[b + 1]] = self._mm(ab[:, mo[b]:mo[b + 1]], m["At"][b])
        img = _ops.unfold(y, m["fold"], self.L * self.L)
        if m["E"] is not None:
            img = img.index_copy(1, m["extra"], a @ m["E"].T)
        return img

    # ------------------------------------------------------------------------------------------
    # argument handling
    # ------------------------------------------------------------------------------------------
    def _images_arg(self, fn: str, images, complex_out: bool | None):
        x, kind = to_tensor(images, fn, "images")
        if x.dim() < 2 or x.shape[-1] != x.shape[-2]:
            fail(fn, f"images must be square (..., L, L) with L = {self.L}, got {tuple(x.shape)}")
        if x.shape[-1] != self.L:
            fail(fn, f"images must have side L = {self.L} (this basis), got {tuple(x.shape)}")
        if not (x.is_floating_point() or x.is_complex()) or x.dtype in (torch.float16, torch.bfloat16):
            fail(fn, f"images must be float32/float64 (or complex64/complex128), got {x.dtype}", TypeError)
        V.check_kernel_device(fn, "images", x)
        if x.is_complex() and complex_out is False:
            fail(fn, "complex images need complex coefficients: pass complex=True")
        return x, kind

    def _coef_arg(self, fn: str, coefficients):
        a, kind = to_tensor(coefficients, fn, "coefficients")
        if a.dim() < 1 or a.shape[-1] != self.count:
            fail(fn, f"coefficients must have shape (..., M) with M = {self.count} (this basis), "
                     f"got {tuple(a.shape)}")
        if not (a.is_floating_point() or a.is_complex()) or a.dtype in (torch.float16, torch.bfloat16):
            fail(fn, f"coefficients must be float32/float64 (real convention) or complex64/complex128 "
                     f"(complex convention), got {a.dtype}", TypeError)
        V.check_kernel_device(fn, "coefficients", a)
        return a, kind

    @staticmethod
    def _split(x: torch.Tensor) -> torch.Tensor:
        """complex (B, ...) -> real (2B, ...) [real parts; imaginary parts]."""
        return torch.cat([x.real, x.imag], 0)

    @staticmethod
    def _merge(y: torch.Tensor) -> torch.Tensor:
        B = y.shape[0] // 2
        return torch.complex(y[:B], y[B:])

    def _apply_images(self, x: torch.Tensor, op) -> torch.Tensor:
        lead = x.shape[:-2]
        flat = x.reshape(-1, self.L * self.L)
        if flat.is_complex():
            out = self._merge(op(self._split(flat)))
        else:
            out = op(flat)
        return out.reshape(lead + (self.count,))

    # ------------------------------------------------------------------------------------------
    # public transforms
    # ------------------------------------------------------------------------------------------
    def expand(self, images, *, complex: bool = False):
        """Least-squares coefficients of images: ``argmin_a sum_{p in disk} |image(p) - sum_j a_j f_j(p)|^2``.

        Pixels outside the disk (:attr:`disk_mask`) are ignored. Solved through the precomputed
        pseudo-inverse of each symmetry block (one fold and 6 dense products; no iterative solve).

        Args:
            images: ``(..., L, L)`` real (or complex with ``complex=True``), indexed ``[y, x]``.
            complex: return complex-convention coefficients (default: real convention).

        Returns:
            ``(..., M)`` coefficients, real (float dtype of the images) or complex; same array kind.
            Differentiable (a linear map).
        """
        fn = "PSWF2D.expand"
        x, kind = self._images_arg(fn, images, complex)
        a = self._apply_images(x, self._expand_real)
        if complex:
            a = self.to_complex(a)
        return from_tensor(a, kind)

    def evaluate_adjoint(self, images, *, complex: bool = False):
        """The exact adjoint of :meth:`evaluate`: ``a_j = sum_{p in disk} f_j(p) image(p)`` (real
        convention) or ``c_{N,n} = sum_p conj(psi_{N,n}(p/R)/R) image(p)`` (``complex=True``), so that
        ``<evaluate(a), x> = <a, evaluate_adjoint(x)>`` (real) and likewise with the complex inner
        product. Shapes and kinds as in :meth:`expand`."""
        fn = "PSWF2D.evaluate_adjoint"
        x, kind = self._images_arg(fn, images, complex)
        a = self._apply_images(x, self._adjoint_real)
        if complex:
            a = self.to_complex(a)
        return from_tensor(a, kind)

    def evaluate(self, coefficients):
        """Images ``sum_j a_j f_j`` on the ``L x L`` grid (0 outside the disk).

        Args:
            coefficients: ``(..., M)``; a real dtype means the real convention (real images), a
                complex dtype the complex convention (complex images; real up to rounding when
                ``c_{-N,n} = conj(c_{N,n})`` — take ``.real``, or convert with :meth:`to_real`).

        Returns:
            ``(..., L, L)`` images in the array kind of the input. Differentiable.
        """
        fn = "PSWF2D.evaluate"
        a, kind = self._coef_arg(fn, coefficients)
        lead = a.shape[:-1]
        flat = a.reshape(-1, self.count)
        if flat.is_complex():
            out = self._merge(self._evaluate_real(self._split(self.to_real(flat))))
        else:
            out = self._evaluate_real(flat)
        return from_tensor(out.reshape(lead + (self.L, self.L)), kind)

    # ------------------------------------------------------------------------------------------
    # conventions, steering, points
    # ------------------------------------------------------------------------------------------
    def _pair_index(self, device):
        key = ("pairs", device)
        if key not in self._mat_cache:
            self._mat_cache[key] = (self.indices["N"].to(device), self._partner.to(device))
        return self._mat_cache[key]

    def to_complex(self, a):
        """Real-convention coefficients ``(..., M)`` -> complex convention (unitary):
        ``c_0 = a_0``, ``c_N = (a_N - i a_{-N}) / sqrt 2``, ``c_{-N} = (a_N + i a_{-N}) / sqrt 2`` (N > 0).
        Complex input (the real-convention coefficients of a complex image) is accepted."""
        t, kind = self._coef_arg("PSWF2D.to_complex", a)
        N, partner = self._pair_index(t.device)
        t = t.to(torch.complex128 if t.dtype in (torch.float64, torch.complex128) else torch.complex64)
        other = t.index_select(-1, partner)
        s = 1.0 / math.sqrt(2.0)
        pos = (t - 1j * other) * s   # for N > 0: t = a_N, other = a_{-N}
        neg = (other + 1j * t) * s   # for N < 0: t = a_{-|N|} (sin), other = a_{|N|}
        out = torch.where(N > 0, pos, torch.where(N < 0, neg, t))
        return from_tensor(out, kind)

    def to_real(self, c):
        """Inverse of :meth:`to_complex`: ``a_N = (c_N + c_{-N}) / sqrt 2``,
        ``a_{-N} = i (c_N - c_{-N}) / sqrt 2`` (N > 0), ``a_0 = c_0``. The result keeps a complex
        dtype; for coefficients of a real image (``c_{-N} = conj(c_N)``) its imaginary part is 0
        to rounding, so take ``.real``."""
        t, kind = self._coef_arg("PSWF2D.to_real", c)
        N, partner = self._pair_index(t.device)
        if not t.is_complex():
            t = t.to(torch.complex128 if t.dtype == torch.float64 else torch.complex64)
        other = t.index_select(-1, partner)
        s = 1.0 / math.sqrt(2.0)
        pos = (t + other) * s           # N > 0: (c_N + c_{-N}) / sqrt 2
        neg = 1j * (other - t) * s      # N < 0: i (c_{|N|} - c_{-|N|}) / sqrt 2
        out = torch.where(N > 0, pos, torch.where(N < 0, neg, t))
        return from_tensor(out, kind)

    def rotate(self, coefficients, angle):
        """Coefficients of the image rotated in-plane by ``angle`` radians (counter-clockwise in
        the ``(x, y)`` plane: ``rotated(p) = image(Rot(-angle) p)``): steerability,
        ``c_{N,n} -> c_{N,n} e^{-i N angle}`` (complex convention; the real convention is
        rotated through it). ``angle`` is a number or a tensor broadcasting against the leading
        dimensions."""
        fn = "PSWF2D.rotate"
        t, kind = self._coef_arg(fn, coefficients)
        ang, _ = to_tensor(angle, fn, "angle")
        real = not t.is_complex()
        c = self.to_complex(t) if real else t
        N = self.indices["N"].to(c.device, torch.float64)
        ang = ang.to(device=c.device, dtype=torch.float64)
        phase = torch.polar(torch.ones((), dtype=torch.float64, device=c.device), -ang[..., None] * N)
        out = c * phase.to(c.dtype)
        if real:
            out = self.to_real(out).real.to(t.dtype)
        return from_tensor(out, kind)

    def basis_at(self, points, *, complex: bool = False):
        """Basis values at arbitrary points ``(..., 2)`` given as pixel offsets ``(x, y)`` from the
        image origin (index ``L // 2``); 0 outside the disk of radius ``R``. Returns ``(..., M)``
        (real convention, or ``psi_{N,n}(p/R)/R`` with ``complex=True``). Evaluated by the kernel
        (``orbitcore._C.pswf_eval_points``) in the dtype of ``points`` (float32/float64)."""
        fn = "PSWF2D.basis_at"
        p, kind = to_tensor(points, fn, "points")
        V.check_floating(fn, "points", p)
        if p.dim() < 1 or p.shape[-1] != 2:
            fail(fn, f"points must have shape (..., 2) as (x, y) in pixels, got {tuple(p.shape)}")
        V.check_kernel_device(fn, "points", p)
        V.check_finite(fn, "points", p)
        lead = p.shape[:-1]
        flat = (p.reshape(-1, 2) / self.radius).contiguous()
        vals = _ops.eval_points(flat, self._tables(flat.dtype, flat.device), self.count) / self.radius
        vals = vals.reshape(lead + (self.count,))
        if complex:
            # psi_N = (u_N + i u_{-N}) / sqrt 2 for N > 0 and (u_|N| - i u_-|N|) / sqrt 2 for N < 0
            N, partner = self._pair_index(vals.device)
            other = vals.index_select(-1, partner)
            s = 1.0 / math.sqrt(2.0)
            vals = torch.where(N > 0, torch.complex(vals, other) * s,
                               torch.where(N < 0, torch.complex(other, -vals) * s,
                                           torch.complex(vals, torch.zeros_like(vals))))
        return from_tensor(vals, kind)

    def evaluate_at(self, coefficients, points):
        """``sum_j a_j f_j(p)`` at arbitrary points ``(P, 2)`` (pixel offsets, as in
        :meth:`basis_at`) for coefficients ``(..., M)`` (real or complex convention). Returns
        ``(..., P)``. Differentiable with respect to the coefficients."""
        fn = "PSWF2D.evaluate_at"
        a, kind = self._coef_arg(fn, coefficients)
        p, _ = to_tensor(points, fn, "points")
        V.check_floating(fn, "points", p)
        if p.dim() != 2 or p.shape[-1] != 2:
            fail(fn, f"points must have shape (P, 2), got {tuple(p.shape)}")
        real_dtype = a.real.dtype if a.is_complex() else a.dtype
        B = self.basis_at(p.to(device=a.device, dtype=real_dtype), complex=a.is_complex())
        return from_tensor(a @ B.T, kind)

    def radial(self, r) -> torch.Tensor:
        """``Phi_{N,n}(r)`` for unit-disk radii ``r`` (1-D, in [0, 1]): float64 ``(len(r), M)``, column
        ``(N, n)`` holding ``Phi_{|N|,n}`` (so ``psi_{N,n} = Phi e^{i N phi} / sqrt(2 pi)``)."""
        r = torch.as_tensor(r, dtype=torch.float64).reshape(-1)
        pts = torch.stack([r, torch.zeros_like(r)], -1)
        vals = _ops.eval_points(pts, self._tables(torch.float64, torch.device("cpu")), self.count)
        N = self.indices["N"]
        _, partner = self._pair_index(torch.device("cpu"))
        cos_vals = torch.where(N >= 0, vals, vals.index_select(1, partner))  # sin columns are 0 at phi=0
        norm = torch.full(N.shape, math.sqrt(math.pi), dtype=torch.float64)
        norm[N == 0] = math.sqrt(2 * math.pi)
        return cos_vals * norm

    @property
    def condition_number(self) -> float:
        """Condition number of the evaluation matrix on the disk pixels (computed on first use)."""
        if "_cond" not in self._mat_cache:
            B = self.basis_at(self.pixel_points())
            sv = torch.linalg.svdvals(B)
            self._mat_cache["_cond"] = float(sv[0] / sv[-1])
        return self._mat_cache["_cond"]

    def pixel_points(self) -> torch.Tensor:
        """float64 ``(P, 2)`` pixel offsets ``(x, y)`` of the disk pixels, in the row-major order of
        ``images[..., disk_mask]``."""
        iy, ix = torch.nonzero(self.disk_mask, as_tuple=True)
        c0 = self.L // 2
        return torch.stack([ix - c0, iy - c0], -1).to(torch.float64)

    def __repr__(self) -> str:
        return (f"PSWF2D(L={self.L}, R={self.radius}, bandlimit={self.bandlimit:.6g}, truncation={self.truncation:g}, "
                f"count={self.count}, N_max={len(self.n_max) - 1})")
