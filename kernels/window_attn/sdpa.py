"""The `sdpa` backend: window attention as one `F.scaled_dot_product_attention` call.

The windows come from the reference's own gather (`reference._windows`: pad, cyclic shift and
partition as one `index_select` through a cached token index, no roll or pad copies), and the
output goes back through its inverse (`reference._unwindow`). PyTorch then picks its kernel
(memory-efficient, cuDNN or math on a GPU; its flash kernel takes no float mask; the CPU's fused
kernel or math on the CPU).

Layout: the (B, heads, nW, N, D) window rows are viewed as SDPA's (batch, heads, L, D) =
(B, heads * nW, N, D), so that the additive mask is one (1, heads * nW, N, N) tensor broadcast
over the batch (stride 0): the bias (a gathered table or `attn_bias`) plus the cached per-window
shift mask (`reference._additive_masks`, -100 between shift regions) plus, for `pad_kv=None`,
the padded-key mask. It is built once per call, 1/B of the scores' size, never per sample. (The
literal (B * nW, heads, N, D) layout would need the mask expanded over the batch: B times the
memory, as the "SDPA on windows" baseline in benchmarks/baselines.py has it.)

Gradients flow to q, k, v, the pad vectors and the bias by autograd: SDPA's backward gives the
mask's gradient, summed over the batch by the broadcast; a table receives it through
`bias.table_bias` (the fused path's fixed-order fold).

Determinism: the CPU kernels and SDPA's math kernel are deterministic. On a GPU (a float mask
rules out the flash kernel) the memory-efficient backward may split the keys over thread blocks
(`num_splits_key` > 1) and accumulate their partial gradients in an order that varies run to
run, and cuDNN's SDPA is not deterministic either. `torch.use_deterministic_algorithms(True)`
makes PyTorch skip cuDNN and run the memory-efficient backward with one key split
(deterministic, maybe slower); with `warn_only=True` it only warns ("Memory Efficient attention
defaults to a non-deterministic algorithm") and stays nondeterministic. The table's gradient is
the fused path's fixed-order fold (deterministic); without Triton on a GPU it is index_add_,
deterministic only under that same switch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .bias import table_bias
from .geometry import WindowGeometry
from .reference import _additive_masks, _gather_indices, _unwindow, _windows

# The memory-efficient kernel wants the mask's rows 16-byte aligned and pads a mask whose last
# dim is not a multiple of 8 elements (a copy per call): allocate it aligned instead.
_MASK_ALIGN = 8


def _dense_bias(table, attn_bias, geom: WindowGeometry, clamped_index: str):
    """(heads or 1, N, N) bias or None; a table goes through the fused path's gather (autograd:
    the fixed-order fold)."""
    if table is not None:
        n = geom.tokens
        return table_bias(table, geom, clamped_index)[:, :n, :n]
    return attn_bias


def attn_mask(geom, bias, heads, mask_value, mask_padded_keys, dtype, device):
    """SDPA's additive mask for the (B, heads * nW, N, D) layout: (1, heads * nW or 1, N, N) in
    `dtype` (differentiable in `bias`), or None when nothing is added."""
    shift_mask, key_mask = _additive_masks(geom, float(mask_value), mask_padded_keys, dtype, device)
    if bias is None and shift_mask is None and key_mask is None:
        return None
    n, nw = geom.tokens, geom.num_windows
    mask = bias.to(dtype).unsqueeze(1) if bias is not None else None  # (heads or 1, 1, N, N)
    if shift_mask is not None:
        mask = shift_mask if mask is None else mask + shift_mask  # (heads or 1, nW, N, N)
    if key_mask is not None:  # (nW, 1, N)
        mask = torch.zeros(1, n, n, dtype=dtype, device=device) if mask is None else mask
        # replace, not add (as the reference): a finite minimum, never -inf
        mask = mask.masked_fill(key_mask, torch.finfo(dtype).min)
    if mask.dim() == 3:  # no bias: (nW, N, N)
        mask = mask.unsqueeze(0)
    rows, windows = mask.shape[0], mask.shape[1]  # (heads or 1, nW or 1, N, N)
    if rows == 1 and windows == 1:
        flat = mask.reshape(1, 1, n, n)
    else:  # (1, heads * nW, N, N): the head-major order of the window rows
        flat = mask.expand(heads, nw, n, n).reshape(1, heads * nw, n, n)
    pad = -n % _MASK_ALIGN
    if pad and device.type == "cuda":
        flat = F.pad(flat, (0, pad))[..., :n]
    return flat


def window_attention_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    geom: WindowGeometry,
    rel_pos_bias: torch.Tensor | None,
    attn_bias: torch.Tensor | None,
    scale: float,
    pad_kv: tuple[torch.Tensor, torch.Tensor] | None,
    mask_value: float,
    clamped_index: str,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """(B, T, H, W, heads, D) q, k, v -> the same shape, as `window_attention_ref` computes it.
    Arguments are the validated ones of `window_attention` (geometry of the call, scale set)."""
    B, T, H, W, heads, D = q.shape
    to_windows, to_map = _gather_indices(geom, B, heads, q.device)
    k_pad, v_pad = pad_kv if pad_kv is not None else (None, None)
    n, nw = geom.tokens, geom.num_windows
    # (B, heads, nW, N, D) -> (B, heads * nW, N, D): a view of the gathered rows
    qw = _windows(q, None, geom, to_windows, to_map).view(B, heads * nw, n, D)
    kw = _windows(k, k_pad, geom, to_windows, to_map).view(B, heads * nw, n, D)
    vw = _windows(v, v_pad, geom, to_windows, to_map).view(B, heads * nw, n, D)
    bias = _dense_bias(rel_pos_bias, attn_bias, geom, clamped_index)
    mask = attn_mask(geom, bias, heads, mask_value, pad_kv is None, q.dtype, q.device)
    out = F.scaled_dot_product_attention(
        qw, kw, vw, attn_mask=mask, dropout_p=dropout_p, scale=scale
    )  # (B, heads * nW, N, D)
    return _unwindow(out, geom, to_windows, to_map, q.shape)
