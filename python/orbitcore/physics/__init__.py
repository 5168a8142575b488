"""Cryo-EM forward model: volumes, projection, and (later) CTF, shifts, noise, simulation."""
from .projection import backproject, gridding_correction, prepare_volume_ft, project  # noqa: F401
from .volumes import shepp_logan_3d  # noqa: F401
