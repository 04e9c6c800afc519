"""Row geometry and score tiles shared by every window-attention kernel (`@triton.jit` helpers).

Every window is N tokens padded to NP = next_power_of_2(N) (at least 16) "rows"; the rows of all
windows of all batches form one virtual row space of total_windows * NP rows. Everything a kernel
needs about a row comes from the row number alone (`rows_info`), computed once per row vector of a
tile and never per (query, key) element:

- its window (row // NP, a shift: NP is a power of two) and position n in the window (row % NP);
- its batch and window-grid cell (one division and one remainder by the constexpr window count);
- its rolled coordinates (window origin + n's offset, divisions by the constexpr window extents);
- its source token ((rolled + shift) mod padded extent, one remainder per axis) and whether that
  token is real or padding;
- its shift region (comparisons with the constexpr region bounds, no division).

Per (query, key) element the kernels do only comparisons of those per-row values (same window,
same shift region, key real) and a plain tile load of the dense bias at (n_q, n_k): no integer
division, no remainder and no data-dependent pointer gather remains in any inner loop. The bias
is one dense (heads or 1, NP, NP) operand, padded to NP so that every tile row starts 16-byte
aligned and loads as full-width vectors; its padding lanes are never used (masked to NEG).
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)
# Finite, not -inf: a row whose keys are all masked (a padding lane) must give 0, not NaN.
NEG = tl.constexpr(-1.0e30)


@triton.jit
def rows_info(
    rows, total_windows, N: tl.constexpr, NP: tl.constexpr, T: tl.constexpr, H: tl.constexpr,
    W: tl.constexpr, NWT: tl.constexpr, NWH: tl.constexpr, NWW: tl.constexpr, WT: tl.constexpr,
    WH: tl.constexpr, WW: tl.constexpr, ST: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
):  # fmt: skip
    """(window, ok, real, b, t, h, w, region) of each row: per-row integer work only."""
    win = rows // NP
    n = rows % NP
    ok = (n < N) & (win < total_windows)  # a real window row (not a pow-2 lane, not past the end)
    wi = win % (NWT * NWH * NWW)
    b = win // (NWT * NWH * NWW)
    # Rolled coordinates = window origin + offset inside the window.
    rt = (wi // (NWH * NWW)) * WT + n // (WH * WW)
    rh = (wi // NWW % NWH) * WH + n // WW % WH
    rw = (wi % NWW) * WW + n % WW
    # Source coordinates: reading at (r + S) mod P is the roll by -S, without a copy.
    t = (rt + ST) % (NWT * WT)
    h = (rh + SH) % (NWH * WH)
    w = (rw + SW) % (NWW * WW)
    real = ok & (t < T) & (h < H) & (w < W)  # not a padding token
    # Shift regions in rolled coordinates: [0, P-W), [P-W, P-S), [P-S, P) on each shifted axis.
    region = tl.zeros_like(rt)
    if ST > 0:
        region += (rt >= NWT * WT - WT).to(tl.int32) + (rt >= NWT * WT - ST).to(tl.int32)
    region = region * 3
    if SH > 0:
        region += (rh >= NWH * WH - WH).to(tl.int32) + (rh >= NWH * WH - SH).to(tl.int32)
    region = region * 3
    if SW > 0:
        region += (rw >= NWW * WW - WW).to(tl.int32) + (rw >= NWW * WW - SW).to(tl.int32)
    return win, ok, real, b, t, h, w, region


@triton.jit
def offset(b, t, h, w, s_b, s_t, s_h, s_w):
    """Element offset of token (b, t, h, w) in a strided (B, T, H, W, ...) tensor (int64)."""
    return b.to(tl.int64) * s_b + t * s_t + h * s_h + w * s_w


@triton.jit
def token(b, t, h, w, T: tl.constexpr, H: tl.constexpr, W: tl.constexpr):
    """Token index in a contiguous (B, T, H, W) layout (int64)."""
    return ((b.to(tl.int64) * T + t) * H + h) * W + w


@triton.jit
def load_rows(ptr, off, real, ok, pad_ptr, d, HAS_PAD_KV: tl.constexpr):
    """(rows, D) tile of one head; padding tokens take pad_ptr's vector when HAS_PAD_KV."""
    x = tl.load(ptr + off[:, None] + d[None, :], mask=real[:, None], other=0.0)
    if HAS_PAD_KV:
        # Padding tokens hold the projection bias (Video-Swin pads before qkv): substitute it.
        pad = tl.load(pad_ptr + d).to(x.dtype)
        x = tl.where((ok & (real == 0))[:, None], pad[None, :], x)
    return x


@triton.jit
def bias_tile(BiasH, n_q, n_k, NP: tl.constexpr):
    """Dense bias at window positions (n_q, n_k), in log2 units (fp32).

    BiasH: this head's (NP, NP) slice. n_q, n_k are plain aranges (plus a block offset, or % NP of
    one, for whole windows packed in a tile): contiguous, in bounds, no mask, full-width loads.
    """
    b = tl.load(BiasH + n_q[:, None] * NP + n_k[None, :])
    return b.to(tl.float32) * LOG2E


@triton.jit
def scores(
    q, k, bias, win_q, ok_q, reg_q, win_k, ok_k, real_k, reg_k, qk_scale, mask_log2,
    HAS_BIAS: tl.constexpr, HAS_PAD_KV: tl.constexpr, SHIFTED: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Scores in log2 units (fp32 accumulator), masked lanes at NEG, and the validity mask.

    bias: the (rows, keys) tile from `bias_tile` (ignored without HAS_BIAS).
    """
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
    if HAS_PAD_KV:
        key_ok = ok_k
    else:
        key_ok = ok_k & real_k
    # Block-diagonal: rows of different windows packed in one tile never attend to each other.
    valid = (win_q[:, None] == win_k[None, :]) & key_ok[None, :] & ok_q[:, None]
    if HAS_BIAS:
        s += bias
    if SHIFTED:
        # Additive -100 (not -inf), as Video-Swin: checkpoint parity.
        s += tl.where(reg_q[:, None] != reg_k[None, :], mask_log2, 0.0)
    s = tl.where(valid, s, NEG)
    return s, valid


@triton.jit
def tile_grads(
    q, k, v, do, lse, delta, bias, win_q, ok_q, real_q, reg_q, win_k, ok_k, real_k, reg_k,
    qk_scale, mask_log2, HAS_BIAS: tl.constexpr, HAS_PAD_KV: tl.constexpr, SHIFTED: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Recompute P of one (query rows, key rows) tile and return (P, dS) in fp32."""
    s, valid = scores(
        q, k, bias, win_q, ok_q, reg_q, win_k, ok_k, real_k, reg_k, qk_scale, mask_log2,
        HAS_BIAS, HAS_PAD_KV, SHIFTED, DOT_PRECISION,
    )  # fmt: skip
    # Padding queries are discarded outputs: no gradient may flow from them.
    p = tl.where(valid & real_q[:, None], tl.exp2(s - lse[:, None]), 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
    ds = p * (dp - delta[:, None])  # d loss / d score (natural units: also d bias)
    return p, ds


@triton.jit
def load_q_side(Qh, DO, OUT, LSE, q_off, o_off, real, d, HEAD_DIM: tl.constexpr):
    """q, dO, lse and delta = rowsum(dO * O) (fp32, computed here) of one head's query rows."""
    q = tl.load(Qh + q_off[:, None] + d[None, :], mask=real[:, None], other=0.0)
    out = o_off[:, None] * HEAD_DIM + d[None, :]
    do = tl.load(DO + out, mask=real[:, None], other=0.0)
    o = tl.load(OUT + out, mask=real[:, None], other=0.0)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
    lse = tl.load(LSE + o_off, mask=real, other=0.0)
    return q, do, lse, delta
