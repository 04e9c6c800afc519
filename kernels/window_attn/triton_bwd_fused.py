"""The fused window-attention backward: whole windows fit one tile (NP <= BLOCK: L0, L1).

Query rows == key rows of a unit, so one recomputation of P per unit gives dq, dk and dv exactly
(one exp per score) and the bias gradient's tile. The bias tile is the same for every unit and is
loaded once per program, before the loop. The bias gradient is a reduction over batch and
windows: each program sums its dS tiles in registers over a fixed run of units and stores one
(BLOCK, BLOCK) partial; `triton_bias.reduce_bias_partials` sums the partials in a fixed order.
No float atomics: gradients are bitwise reproducible.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_rows import bias_tile, load_q_side, load_rows, offset, rows_info, tile_grads, token


@triton.jit
def _bwd_fused_kernel(
    Q, K, V, Bias, KPad, VPad, DO, OUT, LSE, DQ, DK, DV, DB_PART, DPAD_PART, s_b, s_t, s_h, s_w,
    s_n, g_b, g_t, g_h, g_w, g_n, s_bh, s_pn, total_windows, heads, units_per_chunk, scale,
    qk_scale, mask_log2, N: tl.constexpr, NP: tl.constexpr, T: tl.constexpr, H: tl.constexpr,
    W: tl.constexpr, NWT: tl.constexpr, NWH: tl.constexpr, NWW: tl.constexpr, WT: tl.constexpr,
    WH: tl.constexpr, WW: tl.constexpr, ST: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_PAD_KV: tl.constexpr, SHIFTED: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Program (head, chunk) walks `units_per_chunk` consecutive units of BLOCK rows.

    DB_PART: (chunks, heads, BLOCK, BLOCK) fp32, the chunk's sum of dS (written when HAS_BIAS).
    DPAD_PART: (chunks, 2, heads, D) fp32, the chunk's pad-vector gradients (HAS_PAD_KV).
    """
    tl.static_assert(BLOCK >= 16)
    tl.static_assert(HEAD_DIM >= 16)
    head = tl.program_id(0)
    chunk = tl.program_id(1)
    d = tl.arange(0, HEAD_DIM)
    r = tl.arange(0, BLOCK)
    Qh, Kh, Vh = Q + head * s_n, K + head * s_n, V + head * s_n
    DQh, DKh, DVh = DQ + head * g_n, DK + head * g_n, DV + head * g_n
    KPh, VPh = KPad + head * s_pn, VPad + head * s_pn
    bias = tl.zeros([BLOCK, BLOCK], tl.float32)
    if HAS_BIAS:
        # Units start at window boundaries: every unit's tile is the same, loaded once.
        bias = bias_tile(Bias + head * s_bh, r % NP, r % NP, NP)
    db_acc = tl.zeros([BLOCK, BLOCK], tl.float32)  # sum of dS over this chunk's windows
    dkp_acc = tl.zeros([HEAD_DIM], tl.float32)
    dvp_acc = tl.zeros([HEAD_DIM], tl.float32)
    for step in range(0, units_per_chunk):
        unit = chunk * units_per_chunk + step
        rows = unit * BLOCK + r
        win, ok, real, b, t, h, w, reg = rows_info(
            rows, total_windows, N, NP, T, H, W, NWT, NWH, NWW, WT, WH, WW, ST, SH, SW
        )
        x_off = offset(b, t, h, w, s_b, s_t, s_h, s_w)
        o_off = token(b, t, h, w, T, H, W) * heads + head
        q, do, lse, delta = load_q_side(Qh, DO, OUT, LSE, x_off, o_off, real, d, HEAD_DIM)
        k = load_rows(Kh, x_off, real, ok, KPh, d, HAS_PAD_KV)
        v = load_rows(Vh, x_off, real, ok, VPh, d, HAS_PAD_KV)
        p, ds = tile_grads(
            q, k, v, do, lse, delta, bias, win, ok, real, reg, win, ok, real, reg, qk_scale,
            mask_log2, HAS_BIAS, HAS_PAD_KV, SHIFTED, DOT_PRECISION,
        )  # fmt: skip
        dv = tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=DOT_PRECISION)
        dq = tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION) * scale
        dk = tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=DOT_PRECISION) * scale
        g_off = offset(b, t, h, w, g_b, g_t, g_h, g_w)[:, None] + d[None, :]
        tl.store(DQh + g_off, dq.to(DQ.dtype.element_ty), mask=real[:, None])
        tl.store(DKh + g_off, dk.to(DK.dtype.element_ty), mask=real[:, None])
        tl.store(DVh + g_off, dv.to(DV.dtype.element_ty), mask=real[:, None])
        if HAS_PAD_KV:
            is_pad = (ok & (real == 0))[:, None]
            dkp_acc += tl.sum(tl.where(is_pad, dk, 0.0), 0)
            dvp_acc += tl.sum(tl.where(is_pad, dv, 0.0), 0)
        if HAS_BIAS:
            db_acc += ds
    if HAS_BIAS:
        part = DB_PART + (chunk * heads + head).to(tl.int64) * BLOCK * BLOCK
        tl.store(part + r[:, None] * BLOCK + r[None, :], db_acc)
    if HAS_PAD_KV:
        pad_part = DPAD_PART + (chunk * 2 * heads + head) * HEAD_DIM
        tl.store(pad_part + d, dkp_acc)
        tl.store(pad_part + heads * HEAD_DIM + d, dvp_acc)
