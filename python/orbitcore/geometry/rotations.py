"""Rotation representations and conversions (ARCHITECTURE.md conventions).

Rotations are ``(..., 3, 3)`` matrices acting on column vectors ``(x, y, z)``; the image of a
volume ``v`` under ``R`` is ``image(x, y) = sum_z v(R @ (x, y, z))`` and its viewing direction
is ``R @ e_z``. RELION's Euler angles map to ours by ``R = A^T`` with ``A`` RELION's
``Euler_angles2matrix(rot, tilt, psi)``; :func:`relion_euler_to_matrix` is the only place that
mapping is written.

All functions accept torch tensors or NumPy arrays and return the same kind.
"""
from __future__ import annotations


import torch

from .._validate import check_int, fail, from_tensor, to_tensor

__all__ = [
    "s2s2_to_matrix", "matrix_to_s2s2", "quaternion_to_matrix", "matrix_to_quaternion",
    "relion_euler_to_matrix", "matrix_to_relion_euler", "random_rotations", "axis_angle_to_matrix",
    "viewing_direction",
]


def _float(fn: str, name: str, x) -> tuple[torch.Tensor, str]:
    t, kind = to_tensor(x, fn, name)
    if not t.is_floating_point():
        t = t.to(torch.float64)
    return t, kind


def s2s2_to_matrix(s2s2):
    """6-D representation ``(..., 6)`` = two 3-vectors ``(a1, a2)`` → rotation ``(..., 3, 3)``.

    Gram–Schmidt: ``b1 = a1/|a1|``, ``b2 = normalise(a2 - (b1·a2) b1)``, ``b3 = b1 × b2``; the
    matrix has rows ``b1, b2, b3`` (as pytorch3d's ``rotation_6d_to_matrix``). Differentiable.
    Also accepts ``(..., 2, 3)``.
    """
    fn = "s2s2_to_matrix"
    t, kind = _float(fn, "s2s2", s2s2)
    if t.dim() >= 2 and tuple(t.shape[-2:]) == (2, 3):
        t = t.reshape(*t.shape[:-2], 6)
    if t.dim() < 1 or t.shape[-1] != 6:
        fail(fn, f"s2s2 must have shape (..., 6) or (..., 2, 3), got {tuple(t.shape)}")
    a1, a2 = t[..., :3], t[..., 3:]
    b1 = torch.nn.functional.normalize(a1, dim=-1)
    b2 = torch.nn.functional.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return from_tensor(torch.stack((b1, b2, b3), dim=-2), kind)


def matrix_to_s2s2(R):
    """Inverse of :func:`s2s2_to_matrix` on rotations: the first two rows, ``(..., 6)``."""
    t, kind = _float("matrix_to_s2s2", "R", R)
    if t.dim() < 2 or tuple(t.shape[-2:]) != (3, 3):
        fail("matrix_to_s2s2", f"R must have shape (..., 3, 3), got {tuple(t.shape)}")
    return from_tensor(t[..., :2, :].reshape(*t.shape[:-2], 6), kind)


def quaternion_to_matrix(q):
    """Unit quaternions ``(..., 4)`` as ``(w, x, y, z)`` (normalised here) → ``(..., 3, 3)``.

    ``q`` and ``-q`` give the same rotation; the rotation by angle θ about unit axis u is
    ``(cos θ/2, sin θ/2 · u)``. Differentiable.
    """
    fn = "quaternion_to_matrix"
    t, kind = _float(fn, "q", q)
    if t.dim() < 1 or t.shape[-1] != 4:
        fail(fn, f"q must have shape (..., 4) as (w, x, y, z), got {tuple(t.shape)}")
    t = torch.nn.functional.normalize(t, dim=-1)
    w, x, y, z = t.unbind(-1)
    R = torch.stack((
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ), dim=-1).reshape(*t.shape[:-1], 3, 3)
    return from_tensor(R, kind)


def matrix_to_quaternion(R):
    """Rotation matrices ``(..., 3, 3)`` → unit quaternions ``(..., 4)`` ``(w, x, y, z)``, w ≥ 0."""
    fn = "matrix_to_quaternion"
    t, kind = _float(fn, "R", R)
    if t.dim() < 2 or tuple(t.shape[-2:]) != (3, 3):
        fail(fn, f"R must have shape (..., 3, 3), got {tuple(t.shape)}")
    m = t
    tr = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    # Four candidate formulas; take the best-conditioned one per matrix (Shepperd's method).
    cand = torch.stack((
        torch.stack((1 + tr, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]), -1),
        torch.stack((m[..., 2, 1] - m[..., 1, 2], 1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2], m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0]), -1),
        torch.stack((m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0], 1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2], m[..., 1, 2] + m[..., 2, 1]), -1),
        torch.stack((m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1], 1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2]), -1),
    ), dim=-2)
    diag = torch.stack((tr, m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]), -1)
    best = diag.argmax(-1, keepdim=True)
    q = torch.gather(cand, -2, best[..., None].expand(*best.shape[:-1], 1, 4)).squeeze(-2)
    q = torch.nn.functional.normalize(q, dim=-1)
    q = torch.where(q[..., :1] < 0, -q, q)
    return from_tensor(q, kind)


def relion_euler_to_matrix(rot, tilt, psi):
    """RELION ZYZ Euler angles (degrees: ``rlnAngleRot, rlnAngleTilt, rlnAnglePsi``) → our
    rotation matrices ``(..., 3, 3)``.

    With ``A = Rz(psi) · Ry(tilt) · Rz(rot)`` (RELION's ``Euler_angles2matrix``, with
    ``Rz(a) = [[cos a, sin a, 0], [-sin a, cos a, 0], [0, 0, 1]]`` and
    ``Ry(b) = [[cos b, 0, -sin b], [0, 1, 0], [sin b, 0, cos b]]``) our rotation is ``R = A^T``
    (checked against projections made by RELION). Angles broadcast against each other.
    """
    fn = "relion_euler_to_matrix"
    a, kind = _float(fn, "rot", rot)
    b, _ = _float(fn, "tilt", tilt)
    g, _ = _float(fn, "psi", psi)
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), g.dtype)
    a, b, g = torch.broadcast_tensors(a.to(dtype), b.to(dtype).to(a.device), g.to(dtype).to(a.device))
    a, b, g = torch.deg2rad(a), torch.deg2rad(b), torch.deg2rad(g)
    ca, sa, cb, sb, cg, sg = a.cos(), a.sin(), b.cos(), b.sin(), g.cos(), g.sin()
    A = torch.stack((
        cg * cb * ca - sg * sa, cg * cb * sa + sg * ca, -cg * sb,
        -sg * cb * ca - cg * sa, -sg * cb * sa + cg * ca, sg * sb,
        sb * ca, sb * sa, cb,
    ), dim=-1).reshape(*a.shape, 3, 3)
    return from_tensor(A.transpose(-1, -2).contiguous(), kind)


def matrix_to_relion_euler(R):
    """Inverse of :func:`relion_euler_to_matrix`: ``(rot, tilt, psi)`` in degrees, tilt in
    [0, 180], rot and psi in (-180, 180]. At tilt 0 or 180 (gimbal lock) rot is set to 0."""
    fn = "matrix_to_relion_euler"
    t, kind = _float(fn, "R", R)
    if t.dim() < 2 or tuple(t.shape[-2:]) != (3, 3):
        fail(fn, f"R must have shape (..., 3, 3), got {tuple(t.shape)}")
    A = t.transpose(-1, -2)
    sb = torch.sqrt(A[..., 0, 2] ** 2 + A[..., 1, 2] ** 2)
    tilt = torch.atan2(sb, A[..., 2, 2])
    eps = 16 * torch.finfo(t.dtype).eps ** 0.5
    regular = sb > eps
    rot = torch.where(regular, torch.atan2(A[..., 2, 1], A[..., 2, 0]), torch.zeros_like(sb))
    psi_reg = torch.atan2(A[..., 1, 2], -A[..., 0, 2])
    # Gimbal lock: only rot + psi (tilt = 0) or psi - rot (tilt = 180) is defined; put it in psi.
    psi_up = torch.atan2(A[..., 0, 1], A[..., 0, 0])
    psi_down = torch.atan2(A[..., 0, 1], -A[..., 0, 0])
    psi = torch.where(regular, psi_reg, torch.where(A[..., 2, 2] > 0, psi_up, psi_down))
    out = tuple(from_tensor(torch.rad2deg(v), kind) for v in (rot, tilt, psi))
    return out


def random_rotations(n: int, *, generator: torch.Generator | None = None, dtype=torch.float32,
                     device=None) -> torch.Tensor:
    """``n`` rotations drawn uniformly (Haar measure) on SO(3): normalised Gaussian quaternions."""
    n = check_int("random_rotations", "n", n, minimum=0)
    gen_device = generator.device if generator is not None else device
    q = torch.randn(n, 4, generator=generator, dtype=torch.float64, device=gen_device)
    R = quaternion_to_matrix(q)
    return R.to(dtype=dtype, device=device)


def axis_angle_to_matrix(axis, angle):
    """Rotation by ``angle`` (radians, right-handed) about ``axis`` ``(..., 3)`` (normalised here)."""
    fn = "axis_angle_to_matrix"
    u, kind = _float(fn, "axis", axis)
    th, _ = _float(fn, "angle", angle)
    if u.dim() < 1 or u.shape[-1] != 3:
        fail(fn, f"axis must have shape (..., 3), got {tuple(u.shape)}")
    u = torch.nn.functional.normalize(u, dim=-1)
    th = th.to(u.dtype)
    half = th / 2
    q = torch.cat((torch.cos(half)[..., None], torch.sin(half)[..., None] * u), dim=-1)
    return from_tensor(quaternion_to_matrix(q), kind)


def viewing_direction(R):
    """Viewing direction ``R @ e_z`` (the third column), ``(..., 3)``."""
    t, kind = _float("viewing_direction", "R", R)
    if t.dim() < 2 or tuple(t.shape[-2:]) != (3, 3):
        fail("viewing_direction", f"R must have shape (..., 3, 3), got {tuple(t.shape)}")
    return from_tensor(t[..., :, 2], kind)


