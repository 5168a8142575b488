"""Yardsticks: FSC, 3-D alignment, orbit-invariant errors, pose errors."""
from .align import AlignmentResult, align_volumes, mirror_symmetry, rotation_angle, so3_grid, transform_volume  # noqa: F401
from .errors import moment_relative_error, mra_relative_error, volume_relative_error  # noqa: F401
from .fsc import FSCResult, fsc, spherical_mask  # noqa: F401
from .poses import PoseErrors, align_rotations, pose_errors  # noqa: F401
