"""Bases for images and volumes (seeds/002 §II): the 2-D prolate spheroidal wave functions
(:class:`PSWF2D`), the spherical-Bessel x spherical-harmonic volume basis (:class:`VolumeBasis`),
Wigner-D matrices (:func:`wigner_d`) and the projection operator between them
(:class:`Projector`, :func:`project_coefficients`).

Conventions: ARCHITECTURE.md (image origin at ``L // 2``, centred unnormalised FFTs, rotations on
column vectors with ``image(x, y) = sum_z v(R (x, y, z))``); each module states its
normalisations and coefficient orderings.
"""
from .projection import Projector, project, project_coefficients  # noqa: F401
from .pswf import PSWF2D  # noqa: F401
from .volume import VolumeBasis, max_ell, nyquist_radial_counts  # noqa: F401
from .wigner import euler_zyz, wigner_d  # noqa: F401

__all__ = ["PSWF2D", "VolumeBasis", "Projector", "project", "project_coefficients", "wigner_d", "euler_zyz",
           "max_ell", "nyquist_radial_counts"]
