"""`window_attention_ref`: the pure-PyTorch specification of 3D (shifted) window attention.

It follows Video-Swin (SPEC.md §4.2-4.4) step by step: pad, cyclic shift, partition, q·kᵀ
scaled, + relative position bias, + the -100 shift mask, softmax, ·v, reverse, un-shift, unpad.
Pad, shift and partition are one `index_select` per tensor through a cached token index (and one
back for the output), which is both the clearest statement of where each window row comes from
and the fastest CPU formulation measured here (one copy instead of roll + pad + permute copies).
It computes in its inputs' dtype, is differentiable in every tensor input (table and pad vectors
included), and is the `reference` backend: tests and benchmarks import it, never a copy.
"""

from __future__ import annotations

import functools
import math

import torch

from .geometry import WindowGeometry, window_geometry

# Index tensors are built on the CPU explicitly (device=CPU), never on the ambient default device:
# a model built under `with torch.device("meta")` must not leave meta tensors in the caches.
CPU = torch.device("cpu")


# The caches below hold index tensors that autograd saves (index_select's backward). They are built
# under `torch.inference_mode(False)`: a first call inside inference mode (lfvila.Encoder) would
# otherwise cache inference tensors, and every later call with gradients would fail.


@functools.lru_cache(maxsize=64)
@torch.inference_mode(False)
def window_slots(geom: WindowGeometry) -> dict[str, torch.Tensor]:
    """CPU index tensors of one geometry.

    Returns:
        src: (nW, N) int64, flat source token t*H*W + h*W + w of each window row, or T*H*W for a
            padding token.
        region: (nW, N) int64 shift-region id of each window row (all 0 when unshifted).
        bias_index: (N, N) int64 table row of each (query, key) pair.
    """
    (T, H, W), (wt, wh, ww) = geom.size, geom.window
    padded, shift = geom.padded, geom.shift
    nwt, nwh, nww = geom.grid
    # Rolled coordinates of every window row, shape (nW, N) per axis.
    ar = lambda n: torch.arange(n, device=CPU)  # noqa: E731
    gt, gh, gw = torch.meshgrid(ar(nwt), ar(nwh), ar(nww), indexing="ij")
    it, ih, iw = torch.meshgrid(ar(wt), ar(wh), ar(ww), indexing="ij")
    rolled = [
        (g.reshape(-1, 1) * w + i.reshape(1, -1))
        for g, i, w in ((gt, it, wt), (gh, ih, wh), (gw, iw, ww))
    ]
    source = [(r + s) % p for r, s, p in zip(rolled, shift, padded)]
    real = (source[0] < T) & (source[1] < H) & (source[2] < W)
    src = torch.where(real, (source[0] * H + source[1]) * W + source[2], T * H * W)

    region = torch.zeros_like(src)
    for r, s, w, p in zip(rolled, shift, geom.window, padded):
        axis_region = (r >= p - w).long() + (r >= p - s).long() if s > 0 else torch.zeros_like(r)
        region = region * 3 + axis_region

    bt, bh, bw = geom.bias_window
    n = torch.arange(geom.tokens, device=CPU)
    stride_t, stride_h = geom.table_strides
    g = (n // (bh * bw)) * stride_t + (n // bw % bh) * stride_h + n % bw
    bias_index = g[:, None] - g[None, :] + geom.table_origin
    return {"src": src, "region": region, "bias_index": bias_index}


@functools.lru_cache(maxsize=32)
@torch.inference_mode(False)
def _gather_indices(geom: WindowGeometry, batch: int, heads: int, device: torch.device):
    """Row indices into (B*(THW+pad_row)*heads, D) and back, on `device`.

    Returns:
        to_windows: (B*heads*nW*N,) rows of the flattened (B, THW [+1 pad row], heads) input, in
            (B, heads, nW, N) order.
        to_map: (B*THW*heads,) rows of the flattened (B, heads, nW, N) output, in (B, THW, heads)
            order: the inverse permutation restricted to real tokens.
    """
    slots = window_slots(geom)
    src = slots["src"].reshape(-1)  # (nW*N,)
    thw = math.prod(geom.size)
    rows_per_batch = thw + int(geom.has_padding)
    b = torch.arange(batch, device=CPU).view(batch, 1, 1)
    h = torch.arange(heads, device=CPU).view(1, heads, 1)
    to_windows = (b * rows_per_batch + src.view(1, 1, -1)) * heads + h  # (B, heads, nW*N)

    slot_of_token = torch.empty(thw, dtype=torch.long, device=CPU)
    real = src < thw
    slot_of_token[src[real]] = torch.arange(src.numel(), device=CPU)[real]
    nwn = src.numel()
    to_map = (b * heads + h) * nwn + slot_of_token.view(1, 1, -1)  # (B, heads, THW)
    to_map = to_map.permute(0, 2, 1)  # (B, THW, heads)
    return to_windows.reshape(-1).to(device), to_map.reshape(-1).to(device)


@functools.lru_cache(maxsize=32)
@torch.inference_mode(False)
def _additive_masks(
    geom: WindowGeometry, mask_value: float, mask_padded_keys: bool, dtype: torch.dtype, device
):
    """(shift mask (nW, N, N) additive or None, padded-key mask (nW, 1, N) bool or None)."""
    slots = window_slots(geom)
    shift_mask = None
    if geom.shifted:
        region = slots["region"]
        differ = region[:, :, None] != region[:, None, :]
        shift_mask = (differ.to(torch.float64) * mask_value).to(dtype=dtype, device=device)
    key_mask = None
    if mask_padded_keys and geom.has_padding:
        key_mask = (slots["src"] >= math.prod(geom.size))[:, None, :].to(device)
    return shift_mask, key_mask


class _PermuteRows(torch.autograd.Function):
    """rows[index] where `index` is a permutation: the backward is the inverse gather.

    Without padding, window partition (with its cyclic shift) only reorders rows, so its gradient
    is a gather by the inverse permutation instead of index_select's zero-fill + index_add_.
    """

    @staticmethod
    def forward(ctx, rows, index, inverse):
        ctx.save_for_backward(inverse)
        return rows.index_select(0, index)

    @staticmethod
    def backward(ctx, grad):
        (inverse,) = ctx.saved_tensors
        return grad.index_select(0, inverse), None, None


class _SoftmaxFlushDenormals(torch.autograd.Function):
    """Softmax whose subnormal probabilities are flushed to zero (CPU only).

    exp(-100 + ...) of shift-masked pairs lands in fp32's subnormal range, and x86 CPUs run the
    following matmuls and the softmax backward up to 20x slower on subnormal operands. Zeroing
    values below the smallest normal number changes the result by less than that number.
    """

    @staticmethod
    def forward(ctx, scores):
        attn = torch.softmax(scores, dim=-1)
        torch.nn.functional.threshold_(attn, torch.finfo(attn.dtype).tiny, 0.0)
        ctx.save_for_backward(attn)
        return attn

    @staticmethod
    def backward(ctx, grad):
        (attn,) = ctx.saved_tensors
        return torch._softmax_backward_data(grad, attn, -1, attn.dtype)


def _softmax(scores: torch.Tensor, flush_subnormals: bool) -> torch.Tensor:
    """Softmax over the last dim; with the -100 shift mask on a CPU, subnormals flushed."""
    if flush_subnormals and scores.device.type == "cpu" and scores.dtype == torch.float32:
        return _SoftmaxFlushDenormals.apply(scores)
    return torch.softmax(scores, dim=-1)


def relative_position_index(window_size: tuple[int, int, int]) -> torch.Tensor:
    """Video-Swin's (N, N) `relative_position_index` buffer of a configured window (SPEC §4.4)."""
    return window_slots(window_geometry(tuple(window_size), tuple(window_size)))["bias_index"]


def _windows(x, pad_row, geom: WindowGeometry, to_windows, to_map) -> torch.Tensor:
    """(B, T, H, W, heads, D) -> (B, heads, nW, N, D) window rows (pad, shift, partition in one
    gather); padding tokens take `pad_row` (heads, D), or zeros when it is None."""
    B, T, H, W, heads, D = x.shape
    x = x.reshape(B, T * H * W, heads, D)
    if geom.has_padding:
        fill = x.new_zeros(heads, D) if pad_row is None else pad_row.to(x.dtype)
        x = torch.cat([x, fill.expand(B, 1, heads, D)], dim=1)
        rows = x.reshape(-1, D).index_select(0, to_windows)
    else:
        rows = _PermuteRows.apply(x.reshape(-1, D), to_windows, to_map)
    return rows.view(B, heads, geom.num_windows, geom.tokens, D)


def _unwindow(out, geom: WindowGeometry, to_windows, to_map, shape) -> torch.Tensor:
    """(B, heads, nW, N, D) window rows (or any view of them in that order) -> (B, T, H, W, heads,
    D) of `shape`: un-partition, un-shift and unpad in one gather (padding rows are dropped)."""
    out = out.reshape(-1, shape[-1])  # (B*heads*nW*N, D)
    if geom.has_padding:
        return out.index_select(0, to_map).view(shape)
    return _PermuteRows.apply(out, to_map, to_windows).view(shape)


def _window_scores(
    qw, kw, geom: WindowGeometry, rel_pos_bias, attn_bias, mask_value, mask_padded_keys
):
    """Scaled window scores (B, heads, nW, N, N) with the bias, the shift mask and (None pad_kv)
    the padded-key mask applied: the softmax input."""
    n = geom.tokens
    scores = torch.matmul(qw, kw.transpose(-1, -2))  # (B, heads, nW, N, N)
    # In-place additions: matmul's backward needs its inputs, not its output.
    if attn_bias is not None:
        # (heads or 1, N, N) -> (heads or 1, 1, N, N): the same bias for every batch and window
        scores.add_(attn_bias.to(scores.dtype).unsqueeze(1))
    if rel_pos_bias is not None:
        index = window_slots(geom)["bias_index"].to(qw.device).reshape(-1)
        # index_select, not table[index]: its backward is index_add_, 15x faster on CPU than the
        # accumulating index_put_ that advanced indexing uses (the table gradient of L5).
        bias = rel_pos_bias.index_select(0, index).view(n, n, -1).permute(2, 0, 1)
        # contiguous first: a broadcast add over a transposed operand is 2x slower on CPU
        scores.add_(bias.to(scores.dtype).contiguous().unsqueeze(1))
    shift_mask, key_mask = _additive_masks(
        geom, float(mask_value), mask_padded_keys, scores.dtype, qw.device
    )
    if shift_mask is not None:
        scores.add_(shift_mask)
    if key_mask is not None:
        # Replace, not add: a finite minimum keeps fully masked (discarded) padding rows NaN-free.
        scores = scores.masked_fill(key_mask, torch.finfo(scores.dtype).min)
    return scores, shift_mask is not None


def window_attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window_size: tuple[int, int, int],
    shift_size: tuple[int, int, int] = (0, 0, 0),
    rel_pos_bias: torch.Tensor | None = None,
    scale: float | None = None,
    pad_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    mask_value: float = -100.0,
    clamped_index: str = "effective",
    dropout_p: float = 0.0,
    attn_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Windowed multi-head attention over a (T, H, W) map, as Video-Swin computes it.

    Args:
        q, k, v: (B, T, H, W, heads, D), any float dtype, heads-last; any strides.
        window_size: configured (Wt, Wh, Ww); clamped per axis to the map (SPEC §4.3).
        shift_size: cyclic shift (St, Sh, Sw); 0 on clamped axes.
        rel_pos_bias: ((2Wt-1)(2Wh-1)(2Ww-1), heads) table of the configured window, or None.
        scale: multiplies q·kᵀ; defaults to D ** -0.5.
        pad_kv: (k_pad, v_pad), each (heads, D): the key/value of padding tokens (the qkv bias,
            as Video-Swin pads before its projection). None masks padding keys out.
        mask_value: added to pairs from different shift regions (-100 as in Video-Swin).
        clamped_index: "effective" (Decision 4e) or "legacy" (`index[:N, :N]`, torchvision).
        dropout_p: dropout on the attention probabilities (training only; callers pass 0 in eval).
        attn_bias: (heads, N, N) or (1, N, N) additive bias over the (effective) window's token
            pairs, the same for every window, or None; may be given with or instead of the table.

    Returns:
        (B, T, H, W, heads, D) in q's dtype.
    """
    B, T, H, W, heads, D = q.shape
    geom = window_geometry((T, H, W), tuple(window_size), tuple(shift_size), clamped_index)
    scale = D**-0.5 if scale is None else scale
    to_windows, to_map = _gather_indices(geom, B, heads, q.device)
    k_pad, v_pad = pad_kv if pad_kv is not None else (None, None)
    qw = _windows(q, None, geom, to_windows, to_map)
    if scale != 1.0:
        qw.mul_(scale)  # in place: the gather's backward does not need its output
    kw = _windows(k, k_pad, geom, to_windows, to_map)
    vw = _windows(v, v_pad, geom, to_windows, to_map)
    scores, shifted = _window_scores(
        qw, kw, geom, rel_pos_bias, attn_bias, mask_value, pad_kv is None
    )
    attn = _softmax(scores, flush_subnormals=shifted)
    if dropout_p > 0.0:
        attn = torch.nn.functional.dropout(attn, p=dropout_p)
    out = torch.matmul(attn, vw)  # (B, heads, nW, N, D)
    return _unwindow(out, geom, to_windows, to_map, q.shape)


def window_attention_lse_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    window_size: tuple[int, int, int],
    shift_size: tuple[int, int, int] = (0, 0, 0),
    rel_pos_bias: torch.Tensor | None = None,
    scale: float | None = None,
    pad_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    mask_value: float = -100.0,
    clamped_index: str = "effective",
    attn_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """The log-sum-exp (natural log) of each query's softmax input, (B, T, H, W, heads), in q's
    dtype: what the fused forward saves for its backward (it stores log2 units: this times
    log2(e)). Same arguments as `window_attention_ref`; a check of the forward's statistics
    apart from its output."""
    B, T, H, W, heads, D = q.shape
    geom = window_geometry((T, H, W), tuple(window_size), tuple(shift_size), clamped_index)
    scale = D**-0.5 if scale is None else scale
    to_windows, to_map = _gather_indices(geom, B, heads, q.device)
    k_pad = pad_kv[0] if pad_kv is not None else None
    qw = _windows(q, None, geom, to_windows, to_map) * scale
    kw = _windows(k, k_pad, geom, to_windows, to_map)
    scores, _ = _window_scores(qw, kw, geom, rel_pos_bias, attn_bias, mask_value, pad_kv is None)
    lse = torch.logsumexp(scores, dim=-1).reshape(-1)  # (B*heads*nW*N,)
    return lse.index_select(0, to_map).view(B, T, H, W, heads)
