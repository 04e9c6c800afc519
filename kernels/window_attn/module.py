"""`WindowAttention3D` (Video-Swin's module, its parameter names kept) and `attention_block`, the
module path every drop-in shares: qkv projection, pad vectors for padded maps, the packed qkv on a
GPU."""

from __future__ import annotations

import torch
from torch import nn

from .dispatch import window_attention, window_attention_qkv
from .geometry import window_geometry
from .reference import relative_position_index
from .validation import as_triple


class WindowAttention3D(nn.Module):
    """Video-Swin's `WindowAttention3D` on the fused path; same parameter and buffer names.

    Args:
        dim: channels C; window_size: configured (Wt, Wh, Ww); num_heads: C must divide by it.
        qkv_bias, qk_scale, attn_drop, proj_drop: as Video-Swin.
        backend: window-attention backend ("auto" by default).

    forward(x: (B, T, H, W, C), shift_size=(0, 0, 0)) -> (B, T, H, W, C). Padding tokens take
    part in attention with key/value = the qkv bias, exactly as Video-Swin's zero padding of x.
    """

    clamped_index = "effective"

    def __init__(self, dim, window_size, num_heads, qkv_bias=True, qk_scale=None,
                 attn_drop=0.0, proj_drop=0.0, backend="auto"):  # fmt: skip
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.dim, self.num_heads, self.backend = dim, num_heads, backend
        self.window_size = as_triple("window_size", tuple(window_size), 1)
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        rows = window_geometry(self.window_size, self.window_size).table_rows
        self.relative_position_bias_table = nn.Parameter(torch.zeros(rows, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        index = relative_position_index(self.window_size).clone()  # never share the cached tensor
        self.register_buffer("relative_position_index", index)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, shift_size=(0, 0, 0)) -> torch.Tensor:
        o = attention_block(
            x, self.qkv, self.num_heads, self.window_size, tuple(shift_size),
            self.relative_position_bias_table, self.scale, self.backend, self.clamped_index,
            self.attn_drop if self.training else 0.0,
        )  # fmt: skip
        return self.proj_drop(self.proj(o))


def attention_block(
    x: torch.Tensor,
    qkv: nn.Linear,
    num_heads: int,
    window_size: tuple[int, int, int],
    shift_size: tuple[int, int, int],
    table: torch.Tensor | None,
    scale: float,
    backend: str,
    clamped_index: str,
    dropout_p: float,
) -> torch.Tensor:
    """x (B, T, H, W, C) -> attention output (B, T, H, W, C), before the output projection.

    Padding tokens take part with key/value = the qkv bias (zero without one), exactly as
    Video-Swin's zero padding of x before its projection. On the CPU q, k and v come from three
    GEMMs (contiguous outputs: measured faster there than one GEMM and strided views); on a GPU
    from one GEMM as one packed tensor (`window_attention_qkv`): the kernels read it in place
    and write its gradient in place. pad_kv is passed only when the map has padding tokens.
    """
    B, T, H, W, C = x.shape
    head_dim = C // num_heads
    if x.device.type == "cpu":
        weights = list(qkv.weight.chunk(3))
        biases = list(qkv.bias.chunk(3)) if qkv.bias is not None else [None] * 3
        # fold the scale into the q projection: a (C, C) multiply instead of a pass over q
        weights[0] = weights[0] * scale
        biases[0] = biases[0] * scale if biases[0] is not None else None
        scale = 1.0
        q, k, v = (
            nn.functional.linear(x, w, b).view(B, T, H, W, num_heads, head_dim)
            for w, b in zip(weights, biases)
        )
    if window_geometry((T, H, W), window_size, shift_size).has_padding:
        if qkv.bias is not None:
            _, k_pad, v_pad = qkv.bias.view(3, num_heads, head_dim)
        else:  # zero-padded x through a bias-free projection: zero keys and values
            k_pad = v_pad = x.new_zeros(num_heads, head_dim)
        pad_kv = (k_pad, v_pad)
    else:
        pad_kv = None  # no padding token: the kernels skip the pad path and its reductions
    common = dict(backend=backend, clamped_index=clamped_index, dropout_p=dropout_p)
    if x.device.type == "cpu":
        o = window_attention(q, k, v, window_size, shift_size, table, scale, pad_kv, **common)
    else:
        packed = qkv(x).view(B, T, H, W, 3, num_heads, head_dim)
        o = window_attention_qkv(packed, window_size, shift_size, table, scale, pad_kv, **common)
    return o.reshape(B, T, H, W, C)
