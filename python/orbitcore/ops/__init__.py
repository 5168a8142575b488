"""orbitcore ops: torch.library custom ops over the compiled kernels, one module per family."""
from .slice import fourier_insert, fourier_sample, fourier_slice  # noqa: F401
from .moments import (  # noqa: F401
    MomentAccumulator, MomentLayout, Moments, model_moments, moment_loss, moments_from_stack,
)
from .sine import sine_activation  # noqa: F401
