"""`patch_timm_swin`: timm's Swin (`swin_*`) and Swin-V2 (`swinv2_*`) blocks on the fused kernel.

Each `SwinTransformerBlock` / `SwinTransformerV2Block` keeps its forward; only `_attn` (shift,
pad, partition, attention, projection, reverse) becomes one `window_attention` call. timm rolls
the map before padding it, where the other libraries pad first: a shifted axis that needs padding
is padded in Python (`common.swin_window_attention(roll_first=True)`), as is a map shorter than
its window (timm pads it; the kernel would shrink the window). The shift mask is timm's -100
between pre-shift regions; a block whose static `attn_mask` is not that mask, or was built for
another map size, keeps its own attention.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from . import common


def _shift_mask(padded: tuple[int, int], window, shift) -> torch.Tensor:
    """(nW, N, N) float64: timm's (and Swin's) mask, 0 within a pre-shift region, -100 across."""
    regions = []
    for p, w, s in zip(padded, window, shift):
        r = torch.arange(p)
        regions.append((r >= p - w).long() + (r >= p - s).long() if s else torch.zeros_like(r))
    img = regions[0][:, None] * 3 + regions[1][None, :]  # (Hp, Wp)
    (hp, wp), (wh, ww) = padded, window
    win = img.view(hp // wh, wh, wp // ww, ww).permute(0, 2, 1, 3).reshape(-1, wh * ww)
    return (win[:, :, None] != win[:, None, :]).double() * -100.0


def _padded(size, window) -> tuple[int, int]:
    return tuple(math.ceil(s / w) * w for s, w in zip(size, window))  # type: ignore[return-value]


def _static_mask_reason(block: nn.Module, size: tuple[int, int] | None) -> str | None:
    """Why the block's static mask is not the kernel's for a map of `size` (None: the map it
    was built for), or None when it is (or the block has no static mask to use)."""
    window, shift = tuple(block.window_size), tuple(block.shift_size)
    if not any(shift) or getattr(block, "dynamic_mask", False):
        return None
    mask = block.attn_mask
    if mask is None:
        return "a shifted block without an attn_mask"
    built = _padded(block.input_resolution, window)
    if size is not None and _padded(size, window) != built:
        return f"its static attn_mask is for a {built[0]}x{built[1]} map, the input is {size}"
    if size is None and mask.is_meta:
        return None  # built from the window and shift when the model is materialised
    if size is None and not torch.equal(
        mask.detach().cpu().double(), _shift_mask(built, window, shift)
    ):
        return "its attn_mask is not Swin's -100 shift mask"
    return None


def _runtime_reason(block: nn.Module, x: torch.Tensor) -> str | None:
    size = tuple(x.shape[1:3])
    window, shift = tuple(block.window_size), tuple(block.shift_size)
    return (
        common.dropout_reason(block.attn.attn_drop.p, block.training)
        or common.map_reason(size, window, shift)
        or _static_mask_reason(block, size)
    )


def _attn_v1(self, x: torch.Tensor) -> torch.Tensor:
    """x (B, H, W, C) -> (B, H, W, C): timm's `_attn` on the fused kernel."""
    state = self.__dict__[common.ATTR]
    if (reason := _runtime_reason(self, x)) is not None:
        common.keep_own(self, reason)
        return state.original._attn(self, x)
    attn = self.attn
    table = attn.relative_position_bias_table if state.use_table else None
    dense = None if state.use_table else attn._get_rel_pos_bias()[0]
    o = common.swin_window_attention(
        x, attn.qkv.weight, attn.qkv.bias, attn.num_heads, tuple(self.window_size),
        tuple(self.shift_size), state.backend, table=table, attn_bias=dense, scale=attn.scale,
        roll_first=True,
    )  # fmt: skip
    return attn.proj_drop(attn.proj(o))


def _attn_v2(self, x: torch.Tensor) -> torch.Tensor:
    """x (B, H, W, C) -> (B, H, W, C): timm's Swin-V2 `_attn` on the fused kernel."""
    state = self.__dict__[common.ATTR]
    if (reason := _runtime_reason(self, x)) is not None:
        common.keep_own(self, reason)
        return state.original._attn(self, x)
    attn, heads = self.attn, self.attn.num_heads
    window = tuple(self.window_size)
    bias = None if attn.q_bias is None else torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))
    table = common.v2_table(attn.cpb_mlp, attn.relative_coords_table, heads)
    table, dense = common.table_or_dense(
        table, attn.relative_position_index, window, heads, state.use_table
    )
    logit_scale = common.v2_logit_scale(attn.logit_scale, heads)
    o = common.swin_window_attention(
        x, attn.qkv.weight, bias, heads, window, tuple(self.shift_size), state.backend,
        table=table, attn_bias=dense, logit_scale=logit_scale, roll_first=True,
    )  # fmt: skip
    return attn.proj_drop(attn.proj(o))


@functools.cache
def _classes() -> dict[type, type]:
    from timm.models.swin_transformer import SwinTransformerBlock
    from timm.models.swin_transformer_v2 import SwinTransformerV2Block

    return {
        SwinTransformerBlock: common.fused_class(
            SwinTransformerBlock, __name__, {"_attn": _attn_v1}
        ),
        SwinTransformerV2Block: common.fused_class(
            SwinTransformerV2Block, __name__, {"_attn": _attn_v2}
        ),
    }


def __getattr__(name: str):  # a pickled patched model finds its class here
    if name.startswith("Fused"):
        for cls in _classes().values():
            if cls.__name__ == name:
                return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _reasons(block: nn.Module) -> list[str]:
    attn = block.attn
    reasons = common.head_dim_reasons(attn.qkv.weight.shape[0] // (3 * attn.num_heads))
    if (why := _static_mask_reason(block, None)) is not None:
        reasons.append(why)
    return reasons


def _uses_table(block: nn.Module) -> bool:
    return common.is_swin_index(block.attn.relative_position_index, tuple(block.window_size))


def patch_timm_swin(model: nn.Module, backend: str = "auto") -> nn.Module:
    """Run every timm Swin / Swin-V2 block's window attention on lfvila's kernel, in place.

    Args:
        model: a timm `SwinTransformer` or `SwinTransformerV2` (`timm.create_model("swin_*")`,
            `"swinv2_*"`), or any module holding their blocks.
        backend: window-attention backend of the patched blocks ("auto": Triton on a GPU).

    Returns:
        `model`: same parameters, buffers and state-dict keys, the same outputs. A block we
        cannot serve (head_dim outside the kernel's, a mask that is not Swin's, attention dropout
        in training, a shifted map within one window) keeps its own attention, logged once.
        `unpatch_swin(model)` restores it. Raises ValueError if `model` has no such block.
    """
    return common.patch_model(
        model, "timm", _classes(), backend, _reasons,
        "timm SwinTransformerBlock or SwinTransformerV2Block", _uses_table,
    )  # fmt: skip
