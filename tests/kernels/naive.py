"""An independent, deliberately literal window attention: Python loops over windows.

It exists only to check `window_attention_ref`. It shares no code with the library: it pads and
rolls the map with torch.pad/torch.roll, builds the shift mask by Video-Swin's slice assignment
on an image of region ids, builds the relative position index with meshgrid, and loops over
windows one at a time. Use fp64 and tiny shapes.
"""

from __future__ import annotations

import torch


def _clamp(size, window, shift):
    window = [min(s, w) for s, w in zip(size, window)]
    shift = [0 if s <= w else sh for s, w, sh in zip(size, window, shift)]
    return window, shift


def _index(window, table_window):
    """Relative position index (N, N) of the tokens of `window` into the table of `table_window`.

    With window == table_window this is Video-Swin's relative_position_index buffer; with a
    clamped window it is Decision 4e: the effective window's offsets, the configured strides.
    """
    coords = torch.stack(torch.meshgrid(*[torch.arange(w) for w in window], indexing="ij"))
    flat = coords.flatten(1)
    rel = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0).clone()
    for axis in range(3):
        rel[:, :, axis] += table_window[axis] - 1
    rel[:, :, 0] *= (2 * table_window[1] - 1) * (2 * table_window[2] - 1)
    rel[:, :, 1] *= 2 * table_window[2] - 1
    return rel.sum(-1)


def _region_image(padded, window, shift):
    img = torch.zeros(padded, dtype=torch.long)
    count = 0
    slices = [
        (slice(-window[i]), slice(-window[i], -shift[i]), slice(-shift[i], None)) for i in range(3)
    ]
    for d in slices[0]:
        for h in slices[1]:
            for w in slices[2]:
                img[d, h, w] = count
                count += 1
    return img


def naive_window_attention(
    q,
    k,
    v,
    window_size,
    shift_size=(0, 0, 0),
    rel_pos_bias=None,
    scale=None,
    pad_kv=None,
    mask_value=-100.0,
    clamped_index="effective",
):
    """Same contract as `lfvila.kernels.window_attention` (q, k, v: (B, T, H, W, heads, D))."""
    B, T, H, W, heads, D = q.shape
    window, shift = _clamp((T, H, W), window_size, shift_size)
    scale = D**-0.5 if scale is None else scale
    pads = [(w - s % w) % w for s, w in zip((T, H, W), window)]
    padded = [s + p for s, p in zip((T, H, W), pads)]

    def pad(x, fill):
        out = x.new_zeros(B, *padded, heads, D)
        if fill is not None:
            out = out + fill.to(x.dtype)  # every padding token gets the fill vector
        out = out.clone()
        out[:, :T, :H, :W] = x
        return out

    is_pad = torch.ones(padded, dtype=torch.bool)
    is_pad[:T, :H, :W] = False
    k_fill, v_fill = pad_kv if pad_kv is not None else (None, None)
    qp, kp, vp = pad(q, None), pad(k, k_fill), pad(v, v_fill)
    rolled = shift != [0, 0, 0]
    if rolled:
        dims = (1, 2, 3)
        neg = [-s for s in shift]
        qp, kp, vp = (torch.roll(x, neg, dims) for x in (qp, kp, vp))
        is_pad = torch.roll(is_pad, neg, (0, 1, 2))
        region = _region_image(padded, window, shift)
    if clamped_index == "legacy":
        index = _index(list(window_size), list(window_size))
        n_eff = window[0] * window[1] * window[2]
        index = index[:n_eff, :n_eff]
    else:
        index = _index(window, list(window_size))

    out = torch.zeros_like(qp)
    for b in range(B):
        for t0 in range(0, padded[0], window[0]):
            for h0 in range(0, padded[1], window[1]):
                for w0 in range(0, padded[2], window[2]):
                    sl = (
                        slice(t0, t0 + window[0]),
                        slice(h0, h0 + window[1]),
                        slice(w0, w0 + window[2]),
                    )
                    qw = qp[b][sl].reshape(-1, heads, D).transpose(0, 1)  # (heads, N, D)
                    kw = kp[b][sl].reshape(-1, heads, D).transpose(0, 1)
                    vw = vp[b][sl].reshape(-1, heads, D).transpose(0, 1)
                    attn = (qw * scale) @ kw.transpose(1, 2)  # (heads, N, N)
                    if rel_pos_bias is not None:
                        attn = attn + rel_pos_bias[index].permute(2, 0, 1).to(attn.dtype)
                    if rolled:
                        reg = region[sl].reshape(-1)
                        attn = attn + (reg[:, None] != reg[None, :]).to(attn.dtype) * mask_value
                    if pad_kv is None:
                        key_pad = is_pad[sl].reshape(-1)
                        attn = attn.masked_fill(key_pad[None, None, :], float("-inf"))
                    o = torch.softmax(attn, dim=-1) @ vw  # (heads, N, D)
                    out[b][sl] = o.transpose(0, 1).reshape(*window, heads, D)
    if rolled:
        out = torch.roll(out, shift, (1, 2, 3))
    return out[:, :T, :H, :W]
