"""orbitcore ops: torch.library custom ops over the compiled kernels, one module per family."""
from .slice import fourier_insert, fourier_sample, fourier_slice  # noqa: F401
