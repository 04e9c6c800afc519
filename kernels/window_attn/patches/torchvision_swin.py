"""`patch_torchvision_swin` (swin_t/s/b, swin_v2_t/s/b, swin3d_t/s/b) and
`patch_torchvision_swin3d` (the video models only) on the fused kernel.

torchvision's attention modules take the map and return it (B, [T,] H, W, C): their forward
becomes one `window_attention` call. 2D (`shifted_window_attention`): x is padded to window
multiples before the qkv projection (padding keys and values are the qkv bias, the kernel's
`pad_kv`), then rolled; an axis whose padded size is one window is not shifted; the shift mask is
-100. A map shorter than its window is padded to the window, not shrunk to the map: the patch pads
it in Python. Swin-V2: cosine attention with the per-head logit scale clamped at log(100) folded
into q, the key third of the qkv bias zeroed (as torchvision does), the CPB MLP's table. 3D: the
Video-Swin path of `attention_block`; where a window is clamped to a small map torchvision slices
its index `[:N, :N]`, which the patch keeps (`clamped_index="legacy"`) so outputs do not change.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..module import attention_block
from . import common


def _keep_own(self, x: torch.Tensor) -> torch.Tensor | None:
    """The original forward's result when this call keeps it (logged), else None."""
    reason = common.dropout_reason(self.attention_dropout, self.training)
    if reason is None:
        return None
    common.keep_own(self, reason)
    return self.__dict__[common.ATTR].original.forward(self, x)


def _window_shift(self, size: tuple[int, int]):
    """torchvision's window and effective shift: no shift on an axis padded to one window."""
    window = tuple(self.window_size)
    padded = [math.ceil(s / w) * w for s, w in zip(size, window)]
    return window, tuple(0 if w >= p else s for w, p, s in zip(window, padded, self.shift_size))


def _forward_2d(self, x: torch.Tensor) -> torch.Tensor:
    """x (B, H, W, C) -> (B, H, W, C): `shifted_window_attention` on the fused kernel."""
    if (own := _keep_own(self, x)) is not None:
        return own
    state, heads = self.__dict__[common.ATTR], self.num_heads
    window, shift = _window_shift(self, tuple(x.shape[1:3]))
    v2 = hasattr(self, "logit_scale")
    bias, logit_scale = self.qkv.bias, None
    if v2:
        if bias is not None:  # torchvision zeroes the key bias in the forward, not the parameter
            bias = bias.clone()
            length = bias.numel() // 3
            bias[length : 2 * length].zero_()
        table = common.v2_table(self.cpb_mlp, self.relative_coords_table, heads)
        logit_scale = common.v2_logit_scale(self.logit_scale, heads)
    else:
        table = self.relative_position_bias_table
    table, dense = common.table_or_dense(
        table, self.relative_position_index, window, heads, state.use_table
    )
    o = common.swin_window_attention(
        x, self.qkv.weight, bias, heads, window, shift, state.backend, table=table,
        attn_bias=dense, scale=(x.shape[-1] // heads) ** -0.5, logit_scale=logit_scale,
    )  # fmt: skip
    o = F.linear(o, self.proj.weight, self.proj.bias)
    return F.dropout(o, p=self.dropout, training=self.training)


def _forward_3d(self, x: torch.Tensor) -> torch.Tensor:
    """x (B, T, H, W, C) -> (B, T, H, W, C): the video Swin attention on the fused kernel."""
    if (own := _keep_own(self, x)) is not None:
        return own
    backend = self.__dict__[common.ATTR].backend
    o = attention_block(
        x, self.qkv, self.num_heads, tuple(self.window_size), tuple(self.shift_size),
        self.relative_position_bias_table, (x.shape[-1] // self.num_heads) ** -0.5, backend,
        "legacy", 0.0,
    )  # fmt: skip
    return F.dropout(self.proj(o), p=self.dropout, training=self.training)


@functools.cache
def _classes_2d() -> dict[type, type]:
    from torchvision.models.swin_transformer import (
        ShiftedWindowAttention,
        ShiftedWindowAttentionV2,
    )

    return {
        cls: common.fused_class(cls, __name__, {"forward": _forward_2d})
        for cls in (ShiftedWindowAttention, ShiftedWindowAttentionV2)
    }


@functools.cache
def _classes_3d() -> dict[type, type]:
    from torchvision.models.video.swin_transformer import ShiftedWindowAttention3d

    return {ShiftedWindowAttention3d: common.fused_class(
        ShiftedWindowAttention3d, __name__, {"forward": _forward_3d}
    )}  # fmt: skip


def __getattr__(name: str):  # a pickled patched model finds its class here
    if name.startswith("Fused"):
        for cls in (*_classes_2d().values(), *_classes_3d().values()):
            if cls.__name__ == name:
                return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _reasons(module: nn.Module) -> list[str]:
    return common.head_dim_reasons(module.qkv.weight.shape[0] // (3 * module.num_heads))


def _uses_table(module: nn.Module) -> bool:
    if len(module.window_size) == 3:
        return True  # the 3D path gathers with its own (legacy) index
    return common.is_swin_index(module.relative_position_index, tuple(module.window_size))


def patch_torchvision_swin(model: nn.Module, backend: str = "auto") -> nn.Module:
    """Run torchvision's Swin attention (2D V1 and V2, and video 3D) on lfvila's kernel, in place.

    Args:
        model: `torchvision.models.swin_t/s/b`, `swin_v2_t/s/b`, `video.swin3d_t/s/b`, or any
            module holding their `ShiftedWindowAttention[V2|3d]` modules.
        backend: window-attention backend of the patched modules ("auto": Triton on a GPU).

    Returns:
        `model`: same parameters, buffers and state-dict keys, the same outputs. A module with a
        head_dim outside the kernel's, or attention dropout in training, keeps its own attention
        (logged once). `unpatch_swin(model)` restores it. Raises ValueError if there is none.
    """
    classes = {**_classes_2d(), **_classes_3d()}
    return common.patch_model(
        model, "torchvision", classes, backend, _reasons,
        "torchvision ShiftedWindowAttention, ShiftedWindowAttentionV2 or ShiftedWindowAttention3d",
        _uses_table,
    )  # fmt: skip


def patch_torchvision_swin3d(model: nn.Module, backend: str = "auto") -> nn.Module:
    """`patch_torchvision_swin` restricted to the video models' `ShiftedWindowAttention3d`."""
    return common.patch_model(
        model, "torchvision", _classes_3d(), backend, _reasons,
        "torchvision ShiftedWindowAttention3d", _uses_table,
    )  # fmt: skip
