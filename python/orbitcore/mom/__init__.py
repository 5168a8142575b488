"""Method of moments with neural-network priors (seeds/000).

``orbitcore.mom.mra``: multireference alignment — data model, streamed moments, the encoders
ξ^v / ξ^ρ, the supervised and reconstruction phases, and the classical baseline.
"""
from . import mra  # noqa: F401
