"""Amortized pose inference with a physics decoder: CryoAI (seeds/003) and CryoPoseNet (seeds/004).

An encoder predicts each particle's pose from its image; a differentiable image-formation model
(Fourier slice of the volume, CTF, shift) turns the pose back into an image; both are trained
end to end on the Fourier-space L2 or the symmetric loss. See :mod:`.model` for the equations,
:mod:`.train` for training, checkpoints and evaluation, :mod:`.search` for the maximum-likelihood
pose search and projection matching that can follow the encoder, ``orbitcore amortized --help``
for the command line.
"""
from .losses import fourier_l2, symmetric_loss  # noqa: F401
from .model import (  # noqa: F401
    AmortizedModel,
    FourierNetDecoder,
    ModelConfig,
    ModelOutput,
    VoxelDecoder,
    form_images,
)
from .search import RefinementResult, SearchResult, refine_poses, refine_shifts, search_poses  # noqa: F401
from .train import (  # noqa: F401
    EvaluationResult,
    TrainConfig,
    Trainer,
    evaluate,
    load_checkpoint,
    loss_radius,
    model_from_checkpoint,
    predict_poses,
    recalibrate_statistics,
)
