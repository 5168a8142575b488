"""Networks shared by the algorithms: SIREN, FourierNet, pose encoders."""
from .encoders import BatchWhitening, DoubleConv, GaussianFilterBank, PoseEncoder, RotationLayer  # noqa: F401
from .fouriernet import FourierNet, canonical_half  # noqa: F401
from .siren import SIREN, SineLayer, plain_sine  # noqa: F401
