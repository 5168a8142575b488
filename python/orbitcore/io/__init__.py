"""Files: MRC/MRCS (mrcfile), RELION STAR (starfile), particle stacks."""
from .mrc import atomic_path, read_mrc, write_mrc  # noqa: F401
