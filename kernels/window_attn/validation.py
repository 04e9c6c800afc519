"""Argument checks of the public window-attention functions: every error names the argument and
what was expected (STYLE.md: validate at the boundary, assume inside)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .geometry import WindowGeometry, window_geometry

CLAMPED_INDEX = ("effective", "legacy")


def as_triple(name: str, value, minimum: int) -> tuple[int, int, int]:
    """`value` as 3 ints >= minimum (t, h, w), or a ValueError naming `name`."""
    ok = isinstance(value, Sequence) and len(value) == 3
    ok = ok and all(isinstance(x, int) and not isinstance(x, bool) and x >= minimum for x in value)
    if not ok:
        bound = "positive" if minimum > 0 else "non-negative"
        raise ValueError(f"{name} must be 3 {bound} ints (t, h, w), got {value!r}")
    return tuple(value)  # type: ignore[return-value]


def validate_attn_bias(attn_bias, q: torch.Tensor, geom: WindowGeometry) -> None:
    """A dense bias: (heads or 1, N, N) over the effective window, fp32 or q's dtype, q's device."""
    heads, n = q.shape[-2], geom.tokens
    expected = f"(heads, N, N) = ({heads}, {n}, {n}) or (1, {n}, {n})"
    where = (
        f"N = {n} tokens of the window {geom.window} on the {'x'.join(map(str, geom.size))} map"
        + (f", clamped from {geom.window_cfg}" if geom.window != geom.window_cfg else "")
    )
    if not isinstance(attn_bias, torch.Tensor):
        raise ValueError(f"attn_bias must be a tensor of shape {expected}, got {attn_bias!r}")
    shape = tuple(attn_bias.shape)
    if attn_bias.dim() != 3 or shape[1:] != (n, n) or shape[0] not in (1, heads):
        raise ValueError(f"attn_bias must have shape {expected} ({where}), got {shape}")
    if attn_bias.device != q.device:
        raise ValueError(f"attn_bias is on {attn_bias.device} but q is on {q.device}")
    if attn_bias.dtype not in (torch.float32, q.dtype):
        raise ValueError(f"attn_bias must be float32 or q's dtype {q.dtype}, got {attn_bias.dtype}")


def validate_inputs(
    q, k, v, window_size, shift_size, rel_pos_bias, attn_bias, scale, pad_kv, mask_value, ci
) -> WindowGeometry:
    """Check every argument of `window_attention`; return the call's window geometry."""
    if not isinstance(q, torch.Tensor) or q.dim() != 6:
        got = tuple(q.shape) if isinstance(q, torch.Tensor) else type(q).__name__
        raise ValueError(f"q must have shape (B, T, H, W, heads, head_dim), got {got}")
    if not q.is_floating_point():
        raise ValueError(f"q must be a floating tensor, got {q.dtype}")
    if any(s == 0 for s in q.shape[1:]):
        raise ValueError(f"q has an empty dimension: shape {tuple(q.shape)}")
    for name, x in (("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor) or x.shape != q.shape:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{name} must have q's shape {tuple(q.shape)}, got {got}")
        if x.dtype != q.dtype:
            raise ValueError(f"{name} has dtype {x.dtype} but q has {q.dtype}")
        if x.device != q.device:
            raise ValueError(f"{name} is on {x.device} but q is on {q.device}")
    window = as_triple("window_size", window_size, 1)
    shift = as_triple("shift_size", shift_size, 0)
    for axis in range(3):
        if shift[axis] >= window[axis]:
            raise ValueError(
                f"shift_size[{axis}]={shift[axis]} must be < window_size[{axis}]={window[axis]}"
            )
    heads, head_dim = q.shape[-2:]
    geom = window_geometry(q.shape[1:4], window, shift, ci if ci in CLAMPED_INDEX else "effective")
    if rel_pos_bias is not None and attn_bias is not None:
        raise ValueError(
            "give rel_pos_bias (a relative-position table) or attn_bias (a dense bias), not both: "
            "add the table's bias into attn_bias instead"
        )
    if rel_pos_bias is not None:
        rows = geom.table_rows
        if not isinstance(rel_pos_bias, torch.Tensor) or tuple(rel_pos_bias.shape) != (rows, heads):
            got = (
                tuple(rel_pos_bias.shape)
                if isinstance(rel_pos_bias, torch.Tensor)
                else rel_pos_bias
            )
            raise ValueError(
                f"rel_pos_bias must have shape ((2Wt-1)(2Wh-1)(2Ww-1), heads) = ({rows}, {heads}) "
                f"for window_size {window}, got {got}"
            )
        if rel_pos_bias.device != q.device or not rel_pos_bias.is_floating_point():
            raise ValueError(f"rel_pos_bias must be a float tensor on {q.device}")
    if attn_bias is not None:
        validate_attn_bias(attn_bias, q, geom)
    if pad_kv is not None:
        if not isinstance(pad_kv, (tuple, list)) or len(pad_kv) != 2:
            raise ValueError("pad_kv must be a pair (k_pad, v_pad) of (heads, head_dim) tensors")
        for name, x in zip(("pad_kv[0]", "pad_kv[1]"), pad_kv):
            if not isinstance(x, torch.Tensor) or tuple(x.shape) != (heads, head_dim):
                got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise ValueError(
                    f"{name} must have shape (heads, head_dim) = ({heads}, {head_dim}), got {got}"
                )
            if x.device != q.device or not x.is_floating_point():
                raise ValueError(f"{name} must be a float tensor on {q.device}")
    for name, x in (("scale", scale), ("mask_value", mask_value)):
        if x is not None and not (isinstance(x, (int, float)) and math.isfinite(x)):
            raise ValueError(f"{name} must be a finite number, got {x!r}")
    if ci not in CLAMPED_INDEX:
        raise ValueError(f"clamped_index must be one of {CLAMPED_INDEX}, got {ci!r}")
    return geom
