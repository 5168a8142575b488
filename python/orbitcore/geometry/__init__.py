"""Rotations, their representations and SO(3) grids (conventions: ARCHITECTURE.md)."""
from .rotations import (  # noqa: F401
    axis_angle_to_matrix,
    matrix_to_quaternion,
    matrix_to_relion_euler,
    matrix_to_s2s2,
    quaternion_to_matrix,
    random_rotations,
    relion_euler_to_matrix,
    s2s2_to_matrix,
    viewing_direction,
)
from .so3 import (  # noqa: F401
    DesignNotFoundError,
    design_residual,
    plot_directions,
    quadrature_exact_degree,
    shipped_designs,
    so3_quadrature,
    spherical_design,
)
from .distributions import (  # noqa: F401
    VonMisesFisherMixture,
    fibonacci_sphere,
    rotations_from_directions,
    sample_vmf,
    vmf_density,
)
