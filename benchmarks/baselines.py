"""Outside providers, each the way users assemble it today.

- `video_swin_eager`: the unfused eager steps of Video-Swin and torchvision (pad, roll, partition,
  matmul, + bias, + mask, softmax, matmul, reverse, roll back, unpad).
- `sdpa_windows` (provider "sdpa-windows"): the same partition, then
  `scaled_dot_product_attention` with a dense float bias (RPB + shift mask expanded over windows
  and batch, as xFormers-style kernels need): the "SDPA on windows" of the 2026-12-04 H200 table.
  The library's own `backend="sdpa"` (kernels/window_attn/sdpa.py) differs: one gather instead
  of roll/pad/partition copies, and one mask per call broadcast over the batch.
- `flex_windows`: FlexAttention over the partitioned sequence: RPB and shift mask as a score_mod,
  windows as a block mask (compiled; GPU only, FlexAttention has no CPU backward).
- `naive_contrastive`: the symmetric InfoNCE with its full N×N logits.

They take the functional's arguments: q, k, v (B, T, H, W, heads, D) and return the same layout.
Geometry (clamping, regions, the bias index) comes from the library, so that every provider
computes the same function; the reference itself is never copied here.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from lfvila.kernels.window_attn.geometry import WindowGeometry, window_geometry
from lfvila.kernels.window_attn.reference import window_slots


def _pad(x: torch.Tensor, geom: WindowGeometry, fill: torch.Tensor | None) -> torch.Tensor:
    (T, H, W), (tp, hp, wp) = geom.size, geom.padded
    if not geom.has_padding:
        return x
    x = F.pad(x, (0, 0, 0, 0, 0, wp - W, 0, hp - H, 0, tp - T))
    if fill is not None:  # Video-Swin pads x before qkv: padding keys/values are the qkv bias
        fill = fill.to(x.dtype)
        x[:, T:], x[:, :, H:], x[:, :, :, W:] = fill, fill, fill
    return x


def _partition(x: torch.Tensor, geom: WindowGeometry) -> torch.Tensor:
    """(B, Tp, Hp, Wp, heads, D) -> rolled windows (B, nW, heads, N, D)."""
    if geom.shifted:
        x = torch.roll(x, [-s for s in geom.shift], dims=(1, 2, 3))
    B, _, _, _, heads, D = x.shape
    (nt, nh, nw), (wt, wh, ww) = geom.grid, geom.window
    x = x.view(B, nt, wt, nh, wh, nw, ww, heads, D).permute(0, 1, 3, 5, 7, 2, 4, 6, 8)
    return x.reshape(B, nt * nh * nw, heads, wt * wh * ww, D)


def _reverse(o: torch.Tensor, geom: WindowGeometry) -> torch.Tensor:
    """(B, nW, heads, N, D) -> (B, T, H, W, heads, D): un-partition, roll back, unpad."""
    B, _, heads, _, D = o.shape
    (nt, nh, nw), (wt, wh, ww) = geom.grid, geom.window
    o = o.view(B, nt, nh, nw, heads, wt, wh, ww, D).permute(0, 1, 5, 2, 6, 3, 7, 4, 8)
    o = o.reshape(B, *geom.padded, heads, D)
    if geom.shifted:
        o = torch.roll(o, list(geom.shift), dims=(1, 2, 3))
    T, H, W = geom.size
    return o[:, :T, :H, :W]


def _bias_and_mask(geom, table, mask_value, dtype, device):
    """RPB (heads, N, N) gathered from the table, and the shift mask (nW, N, N) or None."""
    slots = window_slots(geom)
    n = geom.tokens
    bias = None
    if table is not None:
        bias = table[slots["bias_index"].to(device)].view(n, n, -1).permute(2, 0, 1).to(dtype)
    mask = None
    if geom.shifted:
        region = slots["region"].to(device)
        mask = (region[:, :, None] != region[:, None, :]).to(dtype) * mask_value
    return bias, mask


def video_swin_eager(q, k, v, window_size, shift_size, table, scale, pad_kv, mask_value=-100.0):
    B, T, H, W, heads, D = q.shape
    geom = window_geometry((T, H, W), tuple(window_size), tuple(shift_size))
    k_pad, v_pad = pad_kv if pad_kv is not None else (None, None)
    qw = _partition(_pad(q, geom, None), geom)
    kw = _partition(_pad(k, geom, k_pad), geom)
    vw = _partition(_pad(v, geom, v_pad), geom)
    attn = (qw * scale) @ kw.transpose(-2, -1)  # (B, nW, heads, N, N)
    bias, mask = _bias_and_mask(geom, table, mask_value, attn.dtype, q.device)
    if bias is not None:
        attn = attn + bias
    if mask is not None:
        attn = attn + mask.unsqueeze(1)
    attn = torch.softmax(attn, dim=-1)
    return _reverse(attn @ vw, geom)


def sdpa_windows(q, k, v, window_size, shift_size, table, scale, pad_kv, mask_value=-100.0):
    B, T, H, W, heads, D = q.shape
    geom = window_geometry((T, H, W), tuple(window_size), tuple(shift_size))
    k_pad, v_pad = pad_kv if pad_kv is not None else (None, None)
    nw, n = geom.num_windows, geom.tokens
    qw = _partition(_pad(q, geom, None), geom).reshape(B * nw, heads, n, D)
    kw = _partition(_pad(k, geom, k_pad), geom).reshape(B * nw, heads, n, D)
    vw = _partition(_pad(v, geom, v_pad), geom).reshape(B * nw, heads, n, D)
    bias, mask = _bias_and_mask(geom, table, mask_value, q.dtype, q.device)
    dense = torch.zeros(nw, heads, n, n, dtype=q.dtype, device=q.device)
    if bias is not None:
        dense = dense + bias
    if mask is not None:
        dense = dense + mask.unsqueeze(1)
    # a dense (B*nW, heads, N, N) float bias: what SDPA / xFormers kernels take
    dense = dense.unsqueeze(0).expand(B, nw, heads, n, n).reshape(B * nw, heads, n, n)
    out = F.scaled_dot_product_attention(qw, kw, vw, attn_mask=dense, scale=scale)
    return _reverse(out.view(B, nw, heads, n, D), geom)


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


@functools.lru_cache(maxsize=16)
def _block_mask(n: int, length: int, device: str):
    from torch.nn.attention.flex_attention import create_block_mask

    def same_window(b, h, q_idx, kv_idx):
        return q_idx // n == kv_idx // n

    return create_block_mask(
        same_window, B=None, H=None, Q_LEN=length, KV_LEN=length, device=device
    )


def flex_windows(q, k, v, window_size, shift_size, table, scale, pad_kv, mask_value=-100.0):
    B, T, H, W, heads, D = q.shape
    geom = window_geometry((T, H, W), tuple(window_size), tuple(shift_size))
    k_pad, v_pad = pad_kv if pad_kv is not None else (None, None)
    nw, n = geom.num_windows, geom.tokens

    def seq(x, fill):  # (B, heads, nW*N, D)
        return _partition(_pad(x, geom, fill), geom).transpose(1, 2).reshape(B, heads, nw * n, D)

    bias, mask = _bias_and_mask(geom, table, mask_value, torch.float32, q.device)
    if bias is None:
        bias = torch.zeros(heads, n, n, device=q.device)
    if mask is None:
        mask = torch.zeros(1, n, n, device=q.device)

    def score_mod(score, b, h, q_idx, kv_idx):
        qi, ki = q_idx % n, kv_idx % n
        return score + bias[h, qi, ki] + mask[(q_idx // n) % mask.shape[0], qi, ki]

    block_mask = _block_mask(n, nw * n, str(q.device))
    out = _compiled_flex()(
        seq(q, None), seq(k, k_pad), seq(v, v_pad), score_mod=score_mod, block_mask=block_mask,
        scale=scale,
    )  # fmt: skip
    return _reverse(out.view(B, heads, nw, n, D).transpose(1, 2), geom)


def naive_contrastive(a: torch.Tensor, b: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """The usual symmetric InfoNCE: full N x N logits, then cross-entropy both ways."""
    logits = log_scale.exp() * (a @ b.t()).float()
    target = torch.arange(a.shape[0], device=a.device)
    return F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)
