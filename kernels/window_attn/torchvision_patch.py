"""`patch_torchvision_swin3d`: run torchvision's video Swin attention on the fused path.

torchvision is imported only when the patch is applied. Every `ShiftedWindowAttention3d` keeps its
parameters, buffers and state-dict keys; only its forward changes. Where a window is clamped to a
small map, torchvision (like Video-Swin) slices its index buffer `[:N, :N]`, which mis-indexes the
table; the patch keeps that behaviour (`clamped_index="legacy"`) so that outputs do not change.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from .dispatch import attention_block


@functools.cache
def _fused_class():
    from torchvision.models.video.swin_transformer import ShiftedWindowAttention3d

    class FusedShiftedWindowAttention3d(ShiftedWindowAttention3d):
        """torchvision's ShiftedWindowAttention3d computed by `lfvila.kernels.window_attention`."""

        backend = "auto"

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            o = attention_block(
                x, self.qkv, self.num_heads, tuple(self.window_size), tuple(self.shift_size),
                self.relative_position_bias_table, (x.shape[-1] // self.num_heads) ** -0.5,
                self.backend, "legacy", self.attention_dropout if self.training else 0.0,
            )  # fmt: skip
            return nn.functional.dropout(self.proj(o), p=self.dropout, training=self.training)

    return ShiftedWindowAttention3d, FusedShiftedWindowAttention3d


def patch_torchvision_swin3d(model: nn.Module, backend: str = "auto") -> nn.Module:
    """Switch every torchvision `ShiftedWindowAttention3d` in `model` to the fused path, in place.

    Args:
        model: a torchvision video Swin (swin3d_t/s/b) or any module containing them.
        backend: window-attention backend for the patched modules.

    Returns:
        `model`, whose outputs equal the unpatched model's (weights and keys unchanged).
    """
    original, fused = _fused_class()
    count = 0
    for module in model.modules():
        if isinstance(module, original):
            module.__class__ = fused
            module.backend = backend
            count += 1
    if count == 0:
        raise ValueError("model contains no torchvision ShiftedWindowAttention3d to patch")
    return model
