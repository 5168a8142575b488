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
