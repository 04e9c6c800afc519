"""patch_torchvision_swin3d: the patched torchvision video Swin computes what the original does."""

from __future__ import annotations

import copy

import pytest
import torch
from torchvision.models.video import swin3d_t

from lfvila.kernels import patch_torchvision_swin3d
from lfvila.kernels.testing import assert_error_ratio

from ..helpers import assert_close_verbose


def _model(dtype):
    torch.manual_seed(0)
    model = swin3d_t(num_classes=10).to(dtype).eval()
    with torch.no_grad():  # make the (std 0.02) bias tables and qkv biases matter
        for name, p in model.named_parameters():
            if name.endswith("relative_position_bias_table") or name.endswith("qkv.bias"):
                p.normal_()
    return model


def test_patched_swin3d_t_equals_unpatched():
    """Clamped windows (legacy index), padding (8 -> 14 with window 7) and shifts, in fp64."""
    model = _model(torch.float64)
    patched = patch_torchvision_swin3d(copy.deepcopy(model), backend="reference")
    assert type(patched.features[0][1].attn).__name__ == "FusedShiftedWindowAttention3d"
    assert list(patched.state_dict()) == list(model.state_dict())

    x = torch.randn(2, 3, 4, 32, 32, dtype=torch.float64)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, expected = patched(x1), model(x2)
    assert_close_verbose(out, expected, atol=1e-10, rtol=1e-9, name="logits")
    g = torch.randn_like(out)
    (gx1,) = torch.autograd.grad(out, x1, g)
    (gx2,) = torch.autograd.grad(expected, x2, g)
    assert_close_verbose(gx1, gx2, atol=1e-10, rtol=1e-9, name="input grad")


def test_patched_swin3d_t_triton_backend():
    """The fused kernel inside the whole network (interpreter on CPU), by the error-ratio rule."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = _model(torch.float32).to(device)
    truth_model = copy.deepcopy(model).double()
    patched = patch_torchvision_swin3d(copy.deepcopy(model), backend="triton")
    x = torch.randn(1, 3, 2, 16, 16, device=device)
    with torch.no_grad():
        out, pt, truth = patched(x), model(x), truth_model(x.double())
    assert_error_ratio(out, truth, pt, "logits")


def test_patch_rejects_a_model_without_swin_attention():
    with pytest.raises(ValueError, match="no torchvision ShiftedWindowAttention3d"):
        patch_torchvision_swin3d(torch.nn.Linear(2, 2))
