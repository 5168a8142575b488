"""Yardsticks: FSC, alignment, orbit-invariant errors, pose errors."""
from .fsc import FSCResult, fsc  # noqa: F401
