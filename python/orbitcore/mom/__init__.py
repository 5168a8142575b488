"""Method of moments with neural-network priors (seeds/000).

``orbitcore.mom.mra``: multireference alignment — data model, streamed moments, the encoders
ξ^v / ξ^ρ, the supervised and reconstruction phases, and the classical baseline.

``orbitcore.mom.cryoem``: cryo-EM — data moments of (cropped) particle images, FourierNet or voxel
volume, density encoder ξ^ρ on an SO(3) quadrature, fitting of eq. 28, evaluation, outputs.
"""
from . import cryoem, mra  # noqa: F401
