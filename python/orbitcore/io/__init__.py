"""Files: MRC/MRCS (mrcfile), RELION STAR (starfile), cryoSPARC .cs, particle stacks."""
from .mrc import (  # noqa: F401
    MRCInfo,
    MRCStack,
    MRCStackWriter,
    atomic_path,
    mrc_info,
    open_stack,
    read_mrc,
    write_mrc,
)
from .star import (  # noqa: F401
    ParticleTable,
    make_particle_table,
    parse_image_name,
    read_cryosparc,
    read_star,
    write_star,
)
from .dataset import ParticleStack  # noqa: F401,E402
