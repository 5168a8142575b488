"""The PSWF kernels (orbit fold/unfold, basis values at points, blocked product) against
independent references: a dense fold matrix built from the tables, SciPy's closed-form Jacobi
polynomials, and torch.matmul; autograd, opcheck, bad inputs, fuzz, CUDA."""
import math

import numpy as np
import pytest
import torch

from orbitcore import _ext
from orbitcore.basis import PSWF2D
from orbitcore.ops import _reference as ref
from orbitcore.ops import pswf as ops


@pytest.fixture(scope="module")
def b11():
    return PSWF2D(11)


@pytest.fixture(scope="module")
def b12():
    return PSWF2D(12)


def tables(b, dtype=torch.float64):
    return b._mats(dtype, torch.device("cpu"))["fold"]


# ------------------------------------------------------------------------------------------------
# fold / unfold
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("L", [11, 12, 16])
def test_fold_is_orthogonal_and_matches_dense(L, gen):
    b = PSWF2D(L)
    t = tables(b)
    U = ref.pswf_fold_matrix(t, L * L, b.F)
    # orthonormal rows, supported on the disk pixels minus the unpaired ones (even L)
    torch.testing.assert_close(U @ U.T, torch.eye(b.F, dtype=torch.float64), rtol=0, atol=1e-14)
    support = U.abs().sum(0) > 0
    expect = b.disk_mask.reshape(-1).clone()
    expect[b._extra] = False
    assert torch.equal(support, expect)
    x = torch.randn(5, L * L, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(ops.fold(x, t, b.F), x @ U.T, rtol=0, atol=1e-13)
    y = torch.randn(5, b.F, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(ops.unfold(y, t, L * L), y @ U, rtol=0, atol=1e-13)


def test_fold_unfold_adjoint_float32(b12, gen):
    t = tables(b12, torch.float32)
    x = torch.randn(7, 144, generator=gen)
    y = torch.randn(7, b12.F, generator=gen)
    lhs = (ops.fold(x, t, b12.F).double() * y.double()).sum()
    rhs = (x.double() * ops.unfold(y, t, 144).double()).sum()
    assert abs(float(lhs - rhs)) < 1e-4 * float(lhs.abs() + 1)


def test_fold_symmetry_classes_block_diagonalise(b11):
    # independent check of the block structure: fold the dense reference basis (SciPy Jacobi)
    pts = b11.pixel_points()
    A = ref.pswf_basis_values(b11, pts)  # (P, M)
    img = torch.zeros(b11.count, 121, dtype=torch.float64)
    iy, ix = torch.nonzero(b11.disk_mask, as_tuple=True)
    img[:, iy * 11 + ix] = A.T
    UA = ops.fold(img, tables(b11), b11.F).T
    for blk in range(6):
        sub = UA[b11._fo[blk]:b11._fo[blk + 1]]
        mine = torch.zeros(b11.count, dtype=torch.bool)
        mine[b11._blk_order[b11._mo[blk]:b11._mo[blk + 1]]] = True
        assert sub[:, ~mine].abs().max() < 1e-13
        assert sub[:, mine].abs().max() > 0.1


# ------------------------------------------------------------------------------------------------
# basis values at points
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("L", [11, 12, 32])
def test_eval_points_matches_scipy_jacobi(L, gen):
    b = PSWF2D(L)
    R = b.radius
    pts = (torch.rand(300, 2, generator=gen, dtype=torch.float64) * 2 - 1) * R * 1.1  # some outside
    pts = torch.cat([pts, torch.tensor([[0.0, 0.0], [R, 0.0], [0.0, -R], [R + 1e-9, 0.0]], dtype=torch.float64)])
    got = b.basis_at(pts)
    want = ref.pswf_basis_values(b, pts)
    scale = want.abs().max()
    assert (got - want).abs().max() < 1e-11 * scale
    outside = pts.norm(dim=-1) > R
    assert torch.all(got[outside] == 0)
    # float32 kernel (away from the rim, where rounding decides inside/outside)
    far = ((pts.norm(dim=-1) - R).abs() > 1e-4)
    got32 = b.basis_at(pts[far].float())
    assert (got32.double() - want[far]).abs().max() < 2e-6 * scale


def test_eval_points_custom_op_opcheck(b11, gen):
    t = b11._tables(torch.float64, torch.device("cpu"))
    pts = torch.rand(9, 2, generator=gen, dtype=torch.float64) - 0.5
    torch.library.opcheck(torch.ops.orbitcore.pswf_eval_points.default,
                          (pts, t["group_N"], t["group_K"], t["group_offsets"], t["item_group"], t["item_row"],
                           t["coefficients"], t["col_cos"], t["col_sin"], b11.count))


def test_eval_points_not_differentiable_in_points(b11):
    p = torch.zeros(3, 2, dtype=torch.float64, requires_grad=True)
    v = b11.basis_at(p)
    with pytest.raises(RuntimeError, match="not differentiable with respect to the evaluation points"):
        v.sum().backward()


# ------------------------------------------------------------------------------------------------
# autograd and opcheck of fold / unfold
# ------------------------------------------------------------------------------------------------
def test_fold_unfold_gradcheck_and_opcheck(b11, gen):
    t = tables(b11)
    x = torch.randn(1, 121, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randn(1, b11.F, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: ops.fold(x, t, b11.F), (x,))
    assert torch.autograd.gradcheck(lambda y: ops.unfold(y, t, 121), (y,))
    assert torch.autograd.gradgradcheck(lambda x: ops.fold(x, t, b11.F), (x,), fast_mode=True)
    torch.library.opcheck(torch.ops.orbitcore.pswf_fold.default, (x, t["pix"], t["Q"], t["size"], t["feat"], b11.F))
    torch.library.opcheck(torch.ops.orbitcore.pswf_unfold.default, (y, t["pix"], t["Q"], t["size"], t["feat"], 121))


def test_fold_strided_input(b11, gen):
    t = tables(b11)
    big = torch.randn(121, 6, generator=gen, dtype=torch.float64)
    x = big.T  # non-contiguous (6, 121)
    torch.testing.assert_close(ops.fold(x, t, b11.F), ops.fold(x.contiguous(), t, b11.F), rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------
# the blocked product
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 1, 1), (7, 3, 5), (130, 300, 70), (257, 600, 33), (5, 0, 4)])
def test_gemm_kernel_matches_matmul(dtype, shape, gen):
    m, k, n = shape
    A = torch.randn(m, k, generator=gen, dtype=torch.float64)
    B = torch.randn(k, n, generator=gen, dtype=torch.float64)
    got = ops.gemm(A.to(dtype), B.to(dtype)).double()
    want = A @ B
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    assert (got - want).abs().max() <= tol * max(1.0, float(want.abs().max())) * max(1, k) ** 0.5


def test_gemm_kernel_gradcheck(gen):
    A = torch.randn(4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    B = torch.randn(5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ops.gemm, (A, B))


# ------------------------------------------------------------------------------------------------
# bad inputs reach the binding's checks with clear messages
# ------------------------------------------------------------------------------------------------
def test_binding_rejects_bad_tables(b11):
    t = {k: v.clone() for k, v in tables(b11).items()}
    x = torch.zeros(2, 121, dtype=torch.float64)
    out = torch.empty(2, b11.F, dtype=torch.float64)
    A = _ext.arg

    def call(**kw):
        tt = {**t, **kw}
        _ext.C.pswf_fold(A(x), A(tt["pix"]), A(tt["Q"]), A(tt["size"]), A(tt["feat"]), A(out), 1, 0)

    bad_pix = t["pix"].clone()
    bad_pix[0, 0] = 121
    with pytest.raises(ValueError, match=r"pswf_fold: pix\[0, 0\] = 121 is outside the image \(121 pixels\)"):
        call(pix=bad_pix)
    bad_feat = t["feat"].clone()
    bad_feat[1, 0] = -1
    with pytest.raises(ValueError, match=r"pswf_fold: feat\[1, 0\] = -1 is outside the feature range"):
        call(feat=bad_feat)
    bad_size = t["size"].clone()
    bad_size[0] = 3
    with pytest.raises(ValueError, match="pswf_fold: size\\[0\\] must be an orbit size 1, 2, 4 or 8, got 3"):
        call(size=bad_size)
    with pytest.raises(ValueError, match="pswf_fold: Q must have dtype float64, got float32"):
        call(Q=t["Q"].float())
    with pytest.raises(ValueError, match=r"pswf_fold: pix must have shape \(O, 8\)"):
        call(pix=t["pix"][:, :4].contiguous())
    with pytest.raises(ValueError, match="pswf_gemm: B must have shape"):
        _ext.C.pswf_gemm(A(torch.zeros(2, 3)), A(torch.zeros(4, 5)), A(torch.zeros(2, 5)), 1)


def test_eval_points_binding_rejects_bad_tables(b11):
    t = {k: v.clone() for k, v in b11._tables(torch.float64, torch.device("cpu")).items()}
    pts = torch.zeros(2, 2, dtype=torch.float64)
    out = torch.empty(2, b11.count, dtype=torch.float64)
    A = _ext.arg

    def call(**kw):
        tt = {**t, **kw}
        _ext.C.pswf_eval_points(A(pts), A(tt["group_N"]), A(tt["group_K"]), A(tt["group_offsets"]),
                                A(tt["item_group"]), A(tt["item_row"]), A(tt["coefficients"]), A(tt["col_cos"]),
                                A(tt["col_sin"]), A(out), 1, 0)

    bad = t["col_cos"].clone()
    bad[0] = b11.count
    with pytest.raises(ValueError, match=r"pswf_eval_points: col_cos / col_sin\[0\] must be -1 or a column"):
        call(col_cos=bad)
    badK = t["group_K"].clone()
    badK[0] = t["coefficients"].shape[1] + 1
    with pytest.raises(ValueError, match=r"pswf_eval_points: group_K\[0\] must be in \[1, "):
        call(group_K=badK)
    badr = t["item_row"].clone()
    badr[0] = 10 ** 6
    with pytest.raises(ValueError, match=r"pswf_eval_points: item_row\[0\] is not a row of its group"):
        call(item_row=badr)
    with pytest.raises(ValueError, match=r"pswf_eval_points: points must have shape \(P, 2\)"):
        _ext.C.pswf_eval_points(A(torch.zeros(2, 3, dtype=torch.float64)), *(A(t[k]) for k in (
            "group_N", "group_K", "group_offsets", "item_group", "item_row", "coefficients", "col_cos", "col_sin")),
            A(out), 1, 0)


# ------------------------------------------------------------------------------------------------
# fuzz: random sizes against the dense reference
# ------------------------------------------------------------------------------------------------
def test_fuzz_sizes_against_dense(gen):
    rng = np.random.default_rng(7)
    for _ in range(6):
        L = int(rng.choice([3] + list(range(5, 22))))  # L = 4 is too small for the default truncation
        b = PSWF2D(L)
        A = ref.pswf_basis_values(b, b.pixel_points())
        m = b.disk_mask
        B = int(rng.integers(1, 5))
        x = torch.randn(B, L, L, generator=gen, dtype=torch.float64)
        want = torch.linalg.lstsq(A, x[:, m].T).solution.T
        torch.testing.assert_close(b.expand(x), want, rtol=0, atol=1e-10 * float(want.abs().max()))
        c = torch.randn(B, b.count, generator=gen, dtype=torch.float64)
        img = torch.zeros(B, L, L, dtype=torch.float64)
        img[:, m] = c @ A.T
        torch.testing.assert_close(b.evaluate(c), img, rtol=0, atol=1e-11)


@pytest.mark.cuda
def test_cuda_matches_cpu(gen):
    for L in (11, 12):
        b = PSWF2D(L)
        x = torch.randn(4, L, L, generator=gen, dtype=torch.float64)
        c = b.expand(x)
        torch.testing.assert_close(b.expand(x.cuda()).cpu(), c, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(b.evaluate(c.cuda()).cpu(), b.evaluate(c), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(b.evaluate_adjoint(x.cuda()).cpu(), b.evaluate_adjoint(x), rtol=1e-10, atol=1e-10)
        pts = torch.randn(50, 2, generator=gen, dtype=torch.float64) * L / 3
        torch.testing.assert_close(b.basis_at(pts.cuda()).cpu(), b.basis_at(pts), rtol=1e-12, atol=1e-12)
        x32 = x.float().cuda()
        torch.testing.assert_close(b.expand(x32).cpu().double(), c, rtol=1e-4, atol=1e-4)
    assert math.isfinite(float(c.abs().sum()))
