"""The shared argument checks in ``orbitcore._validate`` that the public functions build on."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from orbitcore import _validate as V


def test_check_torch_tensor_returns_the_tensor_and_names_function_argument_and_layout():
    x = torch.zeros(2, 3)
    assert V.check_torch_tensor("f", "x", x) is x
    assert V.check_torch_tensor("f", "x", None, allow_none=True) is None
    with pytest.raises(TypeError, match=r"^f: x must be a torch.Tensor \(B, n\), got ndarray$"):
        V.check_torch_tensor("f", "x", np.zeros(2), "(B, n)")
    with pytest.raises(TypeError, match=r"^f: x must be a torch.Tensor or None, got list$"):
        V.check_torch_tensor("f", "x", [1.0], allow_none=True)
    with pytest.raises(TypeError, match="got NoneType"):
        V.check_torch_tensor("f", "x", None)


@pytest.mark.parametrize("dtype", [torch.complex64, torch.bool])
def test_real_array_rejects_complex_and_bool(dtype):
    with pytest.raises(TypeError, match=rf"^g: v must be a real array, got {dtype}$"):
        V.real_array("g", "v", torch.zeros(3, dtype=dtype))


def test_real_array_accepts_array_kinds_and_integers_unless_floating():
    t = V.real_array("g", "v", np.arange(3))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.int64
    assert V.real_array("g", "v", [0.5, 1.0]).dtype == torch.float64
    with pytest.raises(TypeError, match=r"^g: v must be a real floating-point array, got torch.int64$"):
        V.real_array("g", "v", np.arange(3), floating=True)


def test_real_array_torch_only_refuses_numpy_and_keeps_autograd():
    with pytest.raises(TypeError, match=r"^g: v must be a torch.Tensor, got ndarray$"):
        V.real_array("g", "v", np.zeros(3), torch_only=True)
    with pytest.raises(TypeError, match=r"^g: v must be a real floating-point torch.Tensor, got torch.complex128$"):
        V.real_array("g", "v", torch.zeros(3, dtype=torch.complex128), floating=True, torch_only=True)
    x = torch.ones(3, requires_grad=True)
    assert V.real_array("g", "v", x, floating=True, torch_only=True) is x


def test_make_particle_table_checks_pixel_size_and_image_size():
    from orbitcore.io import make_particle_table

    names = ["1@a.mrcs", "2@a.mrcs"]
    t = make_particle_table(names, pixel_size=[1.5, 2.0], image_size=32)
    assert list(t.particles["rlnImagePixelSize"]) == [1.5, 2.0]
    with pytest.raises(ValueError, match=r"^make_particle_table: pixel_size must be finite and > 0"):
        make_particle_table(names, pixel_size=-1.0)
    with pytest.raises(ValueError, match=r"^make_particle_table: pixel_size must be a number or 2 real values"):
        make_particle_table(names, pixel_size=[1.0, 1.0, 1.0])
    with pytest.raises(TypeError, match=r"^make_particle_table: image_size must be an integer"):
        make_particle_table(names, pixel_size=1.0, image_size=32.5)


def test_moment_cnn_and_latent_fouriernet_name_themselves():
    from orbitcore.mom.cryoem_models import LatentFourierNet
    from orbitcore.mom.mra_encoder import MomentCNN

    with pytest.raises(TypeError, match=r"^MomentCNN: M1 must be a complex torch.Tensor"):
        MomentCNN(8)(torch.zeros(2, 8), torch.zeros(2, 8, 8))
    with pytest.raises(TypeError, match=r"^LatentFourierNet: k must be a torch.Tensor \(\.\.\., 3\)"):
        LatentFourierNet(8, 2, hidden=8)(np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"^LatentFourierNet: k must have shape \(\.\.\., 3\)"):
        LatentFourierNet(8, 2, hidden=8)(torch.zeros(4, 2))
