"""Cryo-EM forward model: CTF, shifts, noise, projection, simulation and built-in volumes
(conventions: ARCHITECTURE.md)."""
from .ctf import CTFParams, ctf, electron_wavelength, frequency_grid  # noqa: F401
from .noise import add_noise, db_to_snr, measured_snr, noise_sigma, snr_to_db  # noqa: F401
from .projection import Projector, backproject, gridding_correction, prepare_volume_ft, project  # noqa: F401
from .simulate import SimulatedParticles, sample_ctf_params, simulate_particles  # noqa: F401
from .transforms import phase_shift, rotate180, shift_images, shift_phases  # noqa: F401
from .volumes import (  # noqa: F401
    four_gaussians,
    gaussian_mixture_volume,
    pseudo_molecule,
    pseudo_molecule_atoms,
    random_gaussian_mixture,
    shepp_logan_3d,
)
