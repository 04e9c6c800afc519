"""Triton kernels for 3D (shifted) window attention with relative position bias.

Launchers `fwd(...) -> (o, lse)` and `bwd(...) -> (dq, dk, dv, dtable, dk_pad, dv_pad)`; no
autograd here (function.py owns that).

How the work is laid out:
- Every window is N tokens padded to NP = next_power_of_2(N) "rows"; the rows of all windows of
  all batches form one virtual row space of total_windows * NP rows. A row's window, its position
  in the window, its source token, its shift region and its bias coordinates are computed from
  the row number alone (`_rows_info`): no roll, pad or partition copy, no mask tensor.
- A program owns a BLOCK of rows. When NP <= BLOCK it holds BLOCK // NP whole windows and
  attends block-diagonally (several small windows per program: a 30-token window alone would
  leave a 64-row tile half empty, and tl.dot needs tiles >= 16). When NP > BLOCK a window spans
  NP // BLOCK blocks and the forward runs an online softmax over its key blocks.
- Backward is deterministic. The bias-table gradient is a reduction over batch and windows: each
  program sums its dS tiles in registers over a fixed chunk of windows and stores the partial sum;
  torch reduces the partials and folds pairs into table rows in a fixed order. No float atomics.
  With NP <= BLOCK_BWD one fused kernel gives dq, dk, dv and the bias partials; bigger windows use
  separate dk/dv, dq and bias kernels (each recomputes its score tiles) so that no accumulator has
  to span a whole window.
"""

from __future__ import annotations

import contextlib
import functools
import math

import torch
import triton
import triton.language as tl

from .._triton_utils import autotune, dot_precision, parallel_target
from .geometry import WindowGeometry, next_power_of_2, window_geometry
from .reference import CPU, window_slots

LOG2E = 1.4426950408889634
# Finite, not -inf: a row whose keys are all masked (a padding lane) must give 0, not NaN.
NEG = tl.constexpr(-1.0e30)

FWD_BLOCK_MAX = 128
BWD_BLOCK = 64


@triton.jit
def _rows_info(
    rows, total_windows, N: tl.constexpr, NP: tl.constexpr, T: tl.constexpr, H: tl.constexpr,
    W: tl.constexpr, NWT: tl.constexpr, NWH: tl.constexpr, NWW: tl.constexpr, WT: tl.constexpr,
    WH: tl.constexpr, WW: tl.constexpr, ST: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    BH: tl.constexpr, BW: tl.constexpr, RT: tl.constexpr, RH: tl.constexpr,
):  # fmt: skip
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
    # Bias coordinate: the table row of a pair is g(query) - g(key) + G0.
    g = (n // (BH * BW)) * RT + (n // BW % BH) * RH + n % BW
    return win, ok, real, b, t, h, w, region, g


@triton.jit
def _strided_offset(b, t, h, w, head, s_b, s_t, s_h, s_w, s_n):
    return b.to(tl.int64) * s_b + t * s_t + h * s_h + w * s_w + head * s_n


@triton.jit
def _contiguous_offset(b, t, h, w, head, heads, T: tl.constexpr, H: tl.constexpr, W: tl.constexpr):
    """Token-head offset in a contiguous (B, T, H, W, heads) layout (multiply by D for data)."""
    return (((b.to(tl.int64) * T + t) * H + h) * W + w) * heads + head


@triton.jit
def _load_kv(ptr, offset, real, ok, pad_ptr, head, s_pn, d, HAS_PAD_KV: tl.constexpr):
    x = tl.load(ptr + offset[:, None] + d[None, :], mask=real[:, None], other=0.0)
    if HAS_PAD_KV:
        # Padding tokens hold the projection bias (Video-Swin pads before qkv): substitute it.
        pad = tl.load(pad_ptr + head * s_pn + d).to(x.dtype)
        x = tl.where((ok & (real == 0))[:, None], pad[None, :], x)
    return x


@triton.jit
def _scores(
    q, k, win_q, ok_q, g_q, reg_q, win_k, ok_k, real_k, g_k, reg_k, Table, s_tr, s_th, head,
    qk_scale, bias_scale, mask_log2, G0: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_PAD_KV: tl.constexpr, SHIFTED: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Scores in log2 units (fp32 accumulator), masked lanes at NEG, and the validity mask."""
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
    if HAS_PAD_KV:
        key_ok = ok_k
    else:
        key_ok = ok_k & real_k
    # Block-diagonal: rows of different windows packed in one tile never attend to each other.
    valid = (win_q[:, None] == win_k[None, :]) & key_ok[None, :] & ok_q[:, None]
    if HAS_BIAS:
        # Gathered from the small (R, heads) table, which stays in cache; no dense bias tensor.
        idx = g_q[:, None] - g_k[None, :] + G0
        bias = tl.load(Table + idx * s_tr + head * s_th, mask=valid, other=0.0)
        s += bias.to(tl.float32) * bias_scale
    if SHIFTED:
        # Additive -100 (not -inf), as Video-Swin: checkpoint parity.
        s += tl.where(reg_q[:, None] != reg_k[None, :], mask_log2, 0.0)
    s = tl.where(valid, s, NEG)
    return s, valid


_FWD_CONFIGS = [
    triton.Config({}, num_warps=4, num_stages=2),
    triton.Config({}, num_warps=8, num_stages=2),
    triton.Config({}, num_warps=4, num_stages=3),
    triton.Config({}, num_warps=2, num_stages=2),
]


@autotune(_FWD_CONFIGS, key=["N", "HEAD_DIM", "BLOCK", "T", "H", "W", "HAS_BIAS", "SHIFTED"])
@triton.jit
def _fwd_kernel(
    Q, K, V, Table, KPad, VPad, Out, LSE, s_qb, s_qt, s_qh, s_qw, s_qn, s_kb, s_kt, s_kh, s_kw,
    s_kn, s_vb, s_vt, s_vh, s_vw, s_vn, s_tr, s_th, s_pn, total_windows, heads, qk_scale,
    bias_scale, mask_log2, N: tl.constexpr, NP: tl.constexpr, T: tl.constexpr, H: tl.constexpr,
    W: tl.constexpr, NWT: tl.constexpr, NWH: tl.constexpr, NWW: tl.constexpr, WT: tl.constexpr,
    WH: tl.constexpr, WW: tl.constexpr, ST: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    BH: tl.constexpr, BW: tl.constexpr, RT: tl.constexpr, RH: tl.constexpr, G0: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr, NJ: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_PAD_KV: tl.constexpr, SHIFTED: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    tl.static_assert(BLOCK >= 16)  # tl.dot tiles must be >= 16 on a GPU
    tl.static_assert(HEAD_DIM >= 16)
    pid = tl.program_id(0)
    head = tl.program_id(1)
    d = tl.arange(0, HEAD_DIM)
    q_rows = pid * BLOCK + tl.arange(0, BLOCK)
    win_q, ok_q, real_q, b_q, t_q, h_q, w_q, reg_q, g_q = _rows_info(
        q_rows, total_windows, N, NP, T, H, W, NWT, NWH, NWW, WT, WH, WW, ST, SH, SW, BH, BW, RT, RH
    )
    q_off = _strided_offset(b_q, t_q, h_q, w_q, head, s_qb, s_qt, s_qh, s_qw, s_qn)
    q = tl.load(Q + q_off[:, None] + d[None, :], mask=real_q[:, None], other=0.0)

    m_i = tl.full([BLOCK], NEG, tl.float32)
    l_i = tl.zeros([BLOCK], tl.float32)
    acc = tl.zeros([BLOCK, HEAD_DIM], tl.float32)  # fp32 accumulator
    kv_row0 = (pid // NJ) * NJ * BLOCK  # first row of this window (NJ == 1: this block)
    for j in range(NJ):
        kv_rows = kv_row0 + j * BLOCK + tl.arange(0, BLOCK)
        win_k, ok_k, real_k, b_k, t_k, h_k, w_k, reg_k, g_k = _rows_info(
            kv_rows, total_windows, N, NP, T, H, W, NWT, NWH, NWW, WT, WH, WW, ST, SH, SW, BH, BW,
            RT, RH,
        )  # fmt: skip
        k_off = _strided_offset(b_k, t_k, h_k, w_k, head, s_kb, s_kt, s_kh, s_kw, s_kn)
        v_off = _strided_offset(b_k, t_k, h_k, w_k, head, s_vb, s_vt, s_vh, s_vw, s_vn)
        k = _load_kv(K, k_off, real_k, ok_k, KPad, head, s_pn, d, HAS_PAD_KV)
        v = _load_kv(V, v_off, real_k, ok_k, VPad, head, s_pn, d, HAS_PAD_KV)
        s, valid = _scores(
            q, k, win_q, ok_q, g_q, reg_q, win_k, ok_k, real_k, g_k, reg_k, Table, s_tr, s_th,
            head, qk_scale, bias_scale, mask_log2, G0, HAS_BIAS, HAS_PAD_KV, SHIFTED, DOT_PRECISION,
        )  # fmt: skip
        # Online softmax in base 2 (exp2 is the native instruction).
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    o = acc / l_i[:, None]
    o_off = _contiguous_offset(b_q, t_q, h_q, w_q, head, heads, T, H, W)
    tl.store(
        Out + o_off[:, None] * HEAD_DIM + d[None, :],
        o.to(Out.dtype.element_ty),
        mask=real_q[:, None],
    )
    tl.store(LSE + o_off, m_i + tl.log2(l_i), mask=real_q)  # log2-sum-exp2, for backward


@triton.jit
def _tile_grads(
    q, k, v, do, lse, delta, win_q, ok_q, real_q, g_q, reg_q, win_k, ok_k, real_k, g_k, reg_k,
    Table, s_tr, s_th, head, qk_scale, bias_scale, mask_log2, G0: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_PAD_KV: tl.constexpr, SHIFTED: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Recompute P of one (query block, key block) tile and return (P, dS) in fp32."""
    s, valid = _scores(
        q, k, win_q, ok_q, g_q, reg_q, win_k, ok_k, real_k, g_k, reg_k, Table, s_tr, s_th, head,
        qk_scale, bias_scale, mask_log2, G0, HAS_BIAS, HAS_PAD_KV, SHIFTED, DOT_PRECISION,
    )  # fmt: skip
    # Padding queries are discarded outputs: no gradient may flow from them.
    p = tl.where(valid & real_q[:, None], tl.exp2(s - lse[:, None]), 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
    ds = p * (dp - delta[:, None])  # d loss / d score (natural units: also d bias)
    return p, ds


@triton.jit
def _load_q_side(
    Q, DO, LSE, DELTA, q_off, o_off, real_q, d, HEAD_DIM: tl.constexpr
):  # fmt: skip
    q = tl.load(Q + q_off[:, None] + d[None, :], mask=real_q[:, None], other=0.0)
    do = tl.load(DO + o_off[:, None] * HEAD_DIM + d[None, :], mask=real_q[:, None], other=0.0)
    lse = tl.load(LSE + o_off, mask=real_q, other=0.0)
    delta = tl.load(DELTA + o_off, mask=real_q, other=0.0)
    return q, do, lse, delta


@triton.jit
def _bwd_fused_kernel(
    Q, K, V, Table, KPad, VPad, DO, LSE, DELTA, DQ, DK, DV, DB_PART, DPAD_PART, s_qb, s_qt, s_qh,
    s_qw, s_qn, s_kb, s_kt, s_kh, s_kw, s_kn, s_vb, s_vt, s_vh, s_vw, s_vn, s_tr, s_th, s_pn,
    total_windows, heads, units_per_chunk, scale, qk_scale, bias_scale, mask_log2, N: tl.constexpr,
    NP: tl.constexpr, T: tl.constexpr, H: tl.constexpr, W: tl.constexpr, NWT: tl.constexpr,
    NWH: tl.constexpr, NWW: tl.constexpr, WT: tl.constexpr, WH: tl.constexpr, WW: tl.constexpr,
    ST: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr,
    RT: tl.constexpr, RH: tl.constexpr, G0: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_PAD_KV: tl.constexpr, SHIFTED: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Whole windows fit one tile: query rows == key rows; dq, dk, dv exact, bias partials."""
    tl.static_assert(BLOCK >= 16)
    tl.static_assert(HEAD_DIM >= 16)
    chunk = tl.program_id(0)
    head = tl.program_id(1)
    d = tl.arange(0, HEAD_DIM)
    db_acc = tl.zeros([BLOCK, BLOCK], tl.float32)  # sum of dS over this chunk's windows
    dkp_acc = tl.zeros([HEAD_DIM], tl.float32)
    dvp_acc = tl.zeros([HEAD_DIM], tl.float32)
    for step in range(0, units_per_chunk):
        unit = chunk * units_per_chunk + step
        rows = unit * BLOCK + tl.arange(0, BLOCK)
        win, ok, real, b, t, h, w, reg, g = _rows_info(
            rows,
            total_windows,
            N,
            NP,
            T,
            H,
            W,
            NWT,
            NWH,
            NWW,
            WT,
            WH,
            WW,
            ST,
            SH,
            SW,
            BH,
            BW,
            RT,
            RH,
        )
        q_off = _strided_offset(b, t, h, w, head, s_qb, s_qt, s_qh, s_qw, s_qn)
        k_off = _strided_offset(b, t, h, w, head, s_kb, s_kt, s_kh, s_kw, s_kn)
        v_off = _strided_offset(b, t, h, w, head, s_vb, s_vt, s_vh, s_vw, s_vn)
        o_off = _contiguous_offset(b, t, h, w, head, heads, T, H, W)
        q, do, lse, delta = _load_q_side(Q, DO, LSE, DELTA, q_off, o_off, real, d, HEAD_DIM)
        k = _load_kv(K, k_off, real, ok, KPad, head, s_pn, d, HAS_PAD_KV)
        v = _load_kv(V, v_off, real, ok, VPad, head, s_pn, d, HAS_PAD_KV)
        p, ds = _tile_grads(
            q, k, v, do, lse, delta, win, ok, real, g, reg, win, ok, real, g, reg, Table, s_tr,
            s_th, head, qk_scale, bias_scale, mask_log2, G0, HAS_BIAS, HAS_PAD_KV, SHIFTED,
            DOT_PRECISION,
        )  # fmt: skip
        dv = tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=DOT_PRECISION)
        dq = tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION) * scale
        dk = tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=DOT_PRECISION) * scale
        out = o_off[:, None] * HEAD_DIM + d[None, :]
        tl.store(DQ + out, dq.to(DQ.dtype.element_ty), mask=real[:, None])
        tl.store(DK + out, dk.to(DK.dtype.element_ty), mask=real[:, None])
        tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=real[:, None])
        if HAS_PAD_KV:
            is_pad = (ok & (real == 0))[:, None]
            dkp_acc += tl.sum(tl.where(is_pad, dk, 0.0), 0)
            dvp_acc += tl.sum(tl.where(is_pad, dv, 0.0), 0)
        if HAS_BIAS:
            db_acc += ds
    r = tl.arange(0, BLOCK)
    if HAS_BIAS:
        part = DB_PART + (chunk * heads + head).to(tl.int64) * BLOCK * BLOCK
        tl.store(part + r[:, None] * BLOCK + r[None, :], db_acc)
    if HAS_PAD_KV:
        pad_part = DPAD_PART + (chunk * 2 * heads + head) * HEAD_DIM
        tl.store(pad_part + d, dkp_acc)
        tl.store(pad_part + heads * HEAD_DIM + d, dvp_acc)


@triton.jit
def _bwd_dkdv_kernel(
    Q, K, V, Table, KPad, VPad, DO, LSE, DELTA, DK, DV, DPAD_PART, s_qb, s_qt, s_qh, s_qw, s_qn,
    s_kb, s_kt, s_kh, s_kw, s_kn, s_vb, s_vt, s_vh, s_vw, s_vn, s_tr, s_th, s_pn, total_windows,
    heads, scale, qk_scale, bias_scale, mask_log2, N: tl.constexpr, NP: tl.constexpr,
    T: tl.constexpr, H: tl.constexpr, W: tl.constexpr, NWT: tl.constexpr, NWH: tl.constexpr,
    NWW: tl.constexpr, WT: tl.constexpr, WH: tl.constexpr, WW: tl.constexpr, ST: tl.constexpr,
    SH: tl.constexpr, SW: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr, RT: tl.constexpr,
    RH: tl.constexpr, G0: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr,
    NJ: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_PAD_KV: tl.constexpr, SHIFTED: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """One key block of one window; loops over the window's query blocks (dk, dv exact)."""
    tl.static_assert(BLOCK >= 16)
    tl.static_assert(HEAD_DIM >= 16)
    pid = tl.program_id(0)
    head = tl.program_id(1)
    d = tl.arange(0, HEAD_DIM)
    row0 = (pid // NJ) * NP
    kv_rows = pid * BLOCK + tl.arange(0, BLOCK)
    win_k, ok_k, real_k, b_k, t_k, h_k, w_k, reg_k, g_k = _rows_info(
        kv_rows,
        total_windows,
        N,
        NP,
        T,
        H,
        W,
        NWT,
        NWH,
        NWW,
        WT,
        WH,
        WW,
        ST,
        SH,
        SW,
        BH,
        BW,
        RT,
        RH,
    )
    k_off = _strided_offset(b_k, t_k, h_k, w_k, head, s_kb, s_kt, s_kh, s_kw, s_kn)
    v_off = _strided_offset(b_k, t_k, h_k, w_k, head, s_vb, s_vt, s_vh, s_vw, s_vn)
    k = _load_kv(K, k_off, real_k, ok_k, KPad, head, s_pn, d, HAS_PAD_KV)
    v = _load_kv(V, v_off, real_k, ok_k, VPad, head, s_pn, d, HAS_PAD_KV)
    dk = tl.zeros([BLOCK, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK, HEAD_DIM], tl.float32)
    for i in range(NJ):
        q_rows = row0 + i * BLOCK + tl.arange(0, BLOCK)
        win_q, ok_q, real_q, b_q, t_q, h_q, w_q, reg_q, g_q = _rows_info(
            q_rows, total_windows, N, NP, T, H, W, NWT, NWH, NWW, WT, WH, WW, ST, SH, SW, BH, BW,
            RT, RH,
        )  # fmt: skip
        q_off = _strided_offset(b_q, t_q, h_q, w_q, head, s_qb, s_qt, s_qh, s_qw, s_qn)
        o_off = _contiguous_offset(b_q, t_q, h_q, w_q, head, heads, T, H, W)
        q, do, lse, delta = _load_q_side(Q, DO, LSE, DELTA, q_off, o_off, real_q, d, HEAD_DIM)
        p, ds = _tile_grads(
            q, k, v, do, lse, delta, win_q, ok_q, real_q, g_q, reg_q, win_k, ok_k, real_k, g_k,
            reg_k, Table, s_tr, s_th, head, qk_scale, bias_scale, mask_log2, G0, HAS_BIAS,
            HAS_PAD_KV, SHIFTED, DOT_PRECISION,
        )  # fmt: skip
        dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=DOT_PRECISION)
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=DOT_PRECISION)
    dk = dk * scale
    out = (
        _contiguous_offset(b_k, t_k, h_k, w_k, head, heads, T, H, W)[:, None] * HEAD_DIM
        + d[None, :]
    )
    tl.store(DK + out, dk.to(DK.dtype.element_ty), mask=real_k[:, None])
    tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=real_k[:, None])
    if HAS_PAD_KV:
        is_pad = (ok_k & (real_k == 0))[:, None]
        pad_part = DPAD_PART + (pid * 2 * heads + head).to(tl.int64) * HEAD_DIM
        tl.store(pad_part + d, tl.sum(tl.where(is_pad, dk, 0.0), 0))
        tl.store(pad_part + heads * HEAD_DIM + d, tl.sum(tl.where(is_pad, dv, 0.0), 0))


@triton.jit
def _bwd_dq_kernel(
    Q, K, V, Table, KPad, VPad, DO, LSE, DELTA, DQ, s_qb, s_qt, s_qh, s_qw, s_qn, s_kb, s_kt, s_kh,
    s_kw, s_kn, s_vb, s_vt, s_vh, s_vw, s_vn, s_tr, s_th, s_pn, total_windows, heads, scale,
    qk_scale, bias_scale, mask_log2, N: tl.constexpr, NP: tl.constexpr, T: tl.constexpr,
    H: tl.constexpr, W: tl.constexpr, NWT: tl.constexpr, NWH: tl.constexpr, NWW: tl.constexpr,
    WT: tl.constexpr, WH: tl.constexpr, WW: tl.constexpr, ST: tl.constexpr, SH: tl.constexpr,
    SW: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr, RT: tl.constexpr, RH: tl.constexpr,
    G0: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr, NJ: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_PAD_KV: tl.constexpr, SHIFTED: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """One query block of one window; loops over the window's key blocks (dq exact)."""
    tl.static_assert(BLOCK >= 16)
    tl.static_assert(HEAD_DIM >= 16)
    pid = tl.program_id(0)
    head = tl.program_id(1)
    d = tl.arange(0, HEAD_DIM)
    row0 = (pid // NJ) * NP
    q_rows = pid * BLOCK + tl.arange(0, BLOCK)
    win_q, ok_q, real_q, b_q, t_q, h_q, w_q, reg_q, g_q = _rows_info(
        q_rows, total_windows, N, NP, T, H, W, NWT, NWH, NWW, WT, WH, WW, ST, SH, SW, BH, BW, RT, RH
    )
    q_off = _strided_offset(b_q, t_q, h_q, w_q, head, s_qb, s_qt, s_qh, s_qw, s_qn)
    o_off = _contiguous_offset(b_q, t_q, h_q, w_q, head, heads, T, H, W)
    q, do, lse, delta = _load_q_side(Q, DO, LSE, DELTA, q_off, o_off, real_q, d, HEAD_DIM)
    dq = tl.zeros([BLOCK, HEAD_DIM], tl.float32)
    for j in range(NJ):
        kv_rows = row0 + j * BLOCK + tl.arange(0, BLOCK)
        win_k, ok_k, real_k, b_k, t_k, h_k, w_k, reg_k, g_k = _rows_info(
            kv_rows, total_windows, N, NP, T, H, W, NWT, NWH, NWW, WT, WH, WW, ST, SH, SW, BH, BW,
            RT, RH,
        )  # fmt: skip
        k_off = _strided_offset(b_k, t_k, h_k, w_k, head, s_kb, s_kt, s_kh, s_kw, s_kn)
        v_off = _strided_offset(b_k, t_k, h_k, w_k, head, s_vb, s_vt, s_vh, s_vw, s_vn)
        k = _load_kv(K, k_off, real_k, ok_k, KPad, head, s_pn, d, HAS_PAD_KV)
        v = _load_kv(V, v_off, real_k, ok_k, VPad, head, s_pn, d, HAS_PAD_KV)
        p, ds = _tile_grads(
            q, k, v, do, lse, delta, win_q, ok_q, real_q, g_q, reg_q, win_k, ok_k, real_k, g_k,
            reg_k, Table, s_tr, s_th, head, qk_scale, bias_scale, mask_log2, G0, HAS_BIAS,
            HAS_PAD_KV, SHIFTED, DOT_PRECISION,
        )  # fmt: skip
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)
    dq = dq * scale
    tl.store(
        DQ + o_off[:, None] * HEAD_DIM + d[None, :],
        dq.to(DQ.dtype.element_ty),
        mask=real_q[:, None],
    )


@triton.jit
def _bwd_bias_kernel(
    Q, K, V, Table, KPad, VPad, DO, LSE, DELTA, DB_PART, s_qb, s_qt, s_qh, s_qw, s_qn, s_kb, s_kt,
    s_kh, s_kw, s_kn, s_vb, s_vt, s_vh, s_vw, s_vn, s_tr, s_th, s_pn, total_windows, heads,
    units_per_chunk, qk_scale, bias_scale, mask_log2, N: tl.constexpr, NP: tl.constexpr,
    T: tl.constexpr, H: tl.constexpr, W: tl.constexpr, NWT: tl.constexpr, NWH: tl.constexpr,
    NWW: tl.constexpr, WT: tl.constexpr, WH: tl.constexpr, WW: tl.constexpr, ST: tl.constexpr,
    SH: tl.constexpr, SW: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr, RT: tl.constexpr,
    RH: tl.constexpr, G0: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr,
    NJ: tl.constexpr, HAS_PAD_KV: tl.constexpr, SHIFTED: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Tile (i, j) of the bias gradient, summed in registers over a fixed chunk of windows."""
    tl.static_assert(BLOCK >= 16)
    tl.static_assert(HEAD_DIM >= 16)
    tile = tl.program_id(0)
    chunk = tl.program_id(1)
    head = tl.program_id(2)
    i = tile // NJ
    j = tile % NJ
    d = tl.arange(0, HEAD_DIM)
    acc = tl.zeros([BLOCK, BLOCK], tl.float32)
    for step in range(0, units_per_chunk):
        unit = chunk * units_per_chunk + step
        q_rows = unit * NP + i * BLOCK + tl.arange(0, BLOCK)
        kv_rows = unit * NP + j * BLOCK + tl.arange(0, BLOCK)
        win_q, ok_q, real_q, b_q, t_q, h_q, w_q, reg_q, g_q = _rows_info(
            q_rows, total_windows, N, NP, T, H, W, NWT, NWH, NWW, WT, WH, WW, ST, SH, SW, BH, BW,
            RT, RH,
        )  # fmt: skip
        win_k, ok_k, real_k, b_k, t_k, h_k, w_k, reg_k, g_k = _rows_info(
            kv_rows, total_windows, N, NP, T, H, W, NWT, NWH, NWW, WT, WH, WW, ST, SH, SW, BH, BW,
            RT, RH,
        )  # fmt: skip
        q_off = _strided_offset(b_q, t_q, h_q, w_q, head, s_qb, s_qt, s_qh, s_qw, s_qn)
        o_off = _contiguous_offset(b_q, t_q, h_q, w_q, head, heads, T, H, W)
        q, do, lse, delta = _load_q_side(Q, DO, LSE, DELTA, q_off, o_off, real_q, d, HEAD_DIM)
        k_off = _strided_offset(b_k, t_k, h_k, w_k, head, s_kb, s_kt, s_kh, s_kw, s_kn)
        v_off = _strided_offset(b_k, t_k, h_k, w_k, head, s_vb, s_vt, s_vh, s_vw, s_vn)
        k = _load_kv(K, k_off, real_k, ok_k, KPad, head, s_pn, d, HAS_PAD_KV)
        v = _load_kv(V, v_off, real_k, ok_k, VPad, head, s_pn, d, HAS_PAD_KV)
        p, ds = _tile_grads(
            q, k, v, do, lse, delta, win_q, ok_q, real_q, g_q, reg_q, win_k, ok_k, real_k, g_k,
            reg_k, Table, s_tr, s_th, head, qk_scale, bias_scale, mask_log2, G0, True, HAS_PAD_KV,
            SHIFTED, DOT_PRECISION,
        )  # fmt: skip
        acc += ds
    r = tl.arange(0, BLOCK)
    part = DB_PART + (chunk * heads + head).to(tl.int64) * NP * NP
    tl.store(part + (i * BLOCK + r)[:, None] * NP + (j * BLOCK + r)[None, :], acc)


# ----------------------------------------------------------------------------------------------
# Launchers


def _layout_constants(geom: WindowGeometry, head_dim: int, block: int) -> dict:
    n = geom.tokens
    stride_t, stride_h = geom.table_strides
    return dict(
        N=n,
        NP=max(16, next_power_of_2(n)),
        T=geom.size[0],
        H=geom.size[1],
        W=geom.size[2],
        NWT=geom.grid[0],
        NWH=geom.grid[1],
        NWW=geom.grid[2],
        WT=geom.window[0],
        WH=geom.window[1],
        WW=geom.window[2],
        ST=geom.shift[0],
        SH=geom.shift[1],
        SW=geom.shift[2],
        BH=geom.bias_window[1],
        BW=geom.bias_window[2],
        RT=stride_t,
        RH=stride_h,
        G0=geom.table_origin,
        HEAD_DIM=head_dim,
        BLOCK=block,
        SHIFTED=geom.shifted,
    )


def padded_window_rows(geom: WindowGeometry) -> int:
    """NP: rows a window occupies (next power of two, at least 16)."""
    return max(16, next_power_of_2(geom.tokens))


def forward_block(geom: WindowGeometry) -> int:
    """Rows per forward program: windows pack into 64 rows, big windows tile by 128."""
    return min(FWD_BLOCK_MAX, max(64, padded_window_rows(geom)))


def _strides(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(x.stride()[:5])


def _common_args(q, k, v, table, k_pad):
    dummy = q
    table_strides = (table.stride(0), table.stride(1)) if table is not None else (0, 0)
    pad_stride = k_pad.stride(0) if k_pad is not None else 0
    return (
        *_strides(q),
        *_strides(k),
        *_strides(v),
        *table_strides,
        pad_stride,
    ), dummy


def _scalars(scale: float, mask_value: float) -> tuple[float, float, float]:
    return scale * LOG2E, LOG2E, mask_value * LOG2E


def fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor | None,
    k_pad: torch.Tensor | None, v_pad: torch.Tensor | None, window_size: tuple[int, int, int],
    shift_size: tuple[int, int, int], scale: float, mask_value: float,
    clamped_index: str = "effective", block: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Forward. q, k, v: (B, T, H, W, heads, D) with unit stride in D.

    Returns o (B, T, H, W, heads, D) contiguous in q's dtype and lse (B, T, H, W, heads) fp32,
    the log2-sum-exp2 of each query's scaled scores (saved for backward).
    """
    B, T, H, W, heads, D = q.shape
    geom = window_geometry((T, H, W), window_size, shift_size, clamped_index)
    consts = _layout_constants(geom, D, block or forward_block(geom))
    np_rows, blk = consts["NP"], consts["BLOCK"]
    nj = max(1, np_rows // blk)
    total_windows = B * geom.num_windows
    o = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
    strides, dummy = _common_args(q, k, v, table, k_pad)
    grid = (triton.cdiv(total_windows * np_rows, blk), heads)
    with _on_device(q):
        _fwd_kernel[grid](
            q, k, v,
            table if table is not None else dummy,
            k_pad if k_pad is not None else dummy,
            v_pad if v_pad is not None else dummy,
            o, lse, *strides, total_windows, heads, *_scalars(scale, mask_value),
            NJ=nj, HAS_BIAS=table is not None, HAS_PAD_KV=k_pad is not None,
            DOT_PRECISION=dot_precision(q.dtype), **consts,
        )  # fmt: skip
    return o, lse


def _bwd_launch(block: int, head_dim: int, q: torch.Tensor) -> dict:
    """Fixed launch settings, no autotuning: the config must not change run to run (determinism).

    Wider heads carry four (BLOCK, D) operand tiles: 8 warps keep them in registers. Pipeline
    stages hold those four tiles each; cap them so the kernel fits Hopper's 227 KiB of shared
    memory (fp32 at head_dim 128 would need 384 KiB with three stages).
    """
    stage_bytes = 4 * block * head_dim * q.element_size()
    return dict(
        num_warps=4 if head_dim <= 32 else 8,
        num_stages=max(1, min(3, (128 * 1024) // stage_bytes)),
    )


def _chunks(units: int, programs_per_chunk: int, device: torch.device) -> int:
    return max(1, min(units, math.ceil(parallel_target(device) / programs_per_chunk)))


def bwd(
    do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
    lse: torch.Tensor, table: torch.Tensor | None, k_pad: torch.Tensor | None,
    v_pad: torch.Tensor | None, window_size: tuple[int, int, int],
    shift_size: tuple[int, int, int], scale: float, mask_value: float,
    clamped_index: str = "effective", block: int | None = None, chunks: int | None = None,
):  # fmt: skip
    """Backward: returns (dq, dk, dv, dtable, dk_pad, dv_pad); absent inputs give None.

    Deterministic: every gradient is either written once or reduced in a fixed order.
    `block` and `chunks` override the tiling (tests use them to force each code path).
    """
    B, T, H, W, heads, D = q.shape
    geom = window_geometry((T, H, W), window_size, shift_size, clamped_index)
    np_rows = padded_window_rows(geom)
    blk = block or BWD_BLOCK
    consts = _layout_constants(geom, D, blk)
    total_windows = B * geom.num_windows
    do = do.contiguous()
    delta = (do.float() * o.float()).sum(-1)  # (B, T, H, W, heads): rowsum(dO * O)
    dq, dk, dv = (torch.empty(q.shape, dtype=q.dtype, device=q.device) for _ in range(3))
    has_bias, has_pad = table is not None, k_pad is not None
    strides, dummy = _common_args(q, k, v, table, k_pad)
    tensors = (
        q, k, v,
        table if has_bias else dummy,
        k_pad if has_pad else dummy,
        v_pad if has_pad else dummy,
        do, lse, delta,
    )  # fmt: skip
    scalars = _scalars(scale, mask_value)
    flags = dict(HAS_PAD_KV=has_pad, DOT_PRECISION=dot_precision(q.dtype), **_bwd_launch(blk, D, q))
    f32 = dict(dtype=torch.float32, device=q.device)
    with _on_device(q):
        if np_rows <= blk:
            units = triton.cdiv(total_windows * np_rows, blk)
            n_chunks = chunks or _chunks(units, heads, q.device)
            per_chunk = triton.cdiv(units, n_chunks)
            db_part = torch.empty((n_chunks, heads, blk, blk), **f32) if has_bias else dummy
            pad_part = torch.empty((n_chunks, 2, heads, D), **f32) if has_pad else dummy
            _bwd_fused_kernel[(n_chunks, heads)](
                *tensors, dq, dk, dv, db_part, pad_part, *strides, total_windows, heads,
                per_chunk, scale, *scalars, HAS_BIAS=has_bias, **flags, **consts,
            )  # fmt: skip
        else:
            nj = np_rows // blk
            grid = (total_windows * nj, heads)
            pad_part = torch.empty((total_windows * nj, 2, heads, D), **f32) if has_pad else dummy
            common = (*strides, total_windows, heads)
            _bwd_dkdv_kernel[grid](
                *tensors, dk, dv, pad_part, *common, scale, *scalars, NJ=nj, HAS_BIAS=has_bias,
                **flags, **consts,
            )  # fmt: skip
            _bwd_dq_kernel[grid](
                *tensors, dq, *common, scale, *scalars, NJ=nj, HAS_BIAS=has_bias, **flags, **consts
            )
            if has_bias:
                n_chunks = chunks or _chunks(total_windows, heads * nj * nj, q.device)
                per_chunk = triton.cdiv(total_windows, n_chunks)
                db_part = torch.empty((n_chunks, heads, np_rows, np_rows), **f32)
                _bwd_bias_kernel[(nj * nj, n_chunks, heads)](
                    *tensors, db_part, *common, per_chunk, *scalars, NJ=nj, **flags, **consts
                )
    dtable = dk_pad = dv_pad = None
    if has_bias:
        dense = reduce_bias_partials(db_part, np_rows, geom.tokens)
        dtable = dense_to_table(dense, geom).to(table.dtype)
    if has_pad:
        # (programs, 2, heads, D) partial sums -> (heads, D) each, in a fixed order
        dk_pad = pad_part[:, 0].sum(0).to(k_pad.dtype)
        dv_pad = pad_part[:, 1].sum(0).to(v_pad.dtype)
    return dq, dk, dv, dtable, dk_pad, dv_pad


def _on_device(x: torch.Tensor):
    """Launch on x's GPU (Triton uses the current device), or nothing on CPU (interpreter)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def reduce_bias_partials(part: torch.Tensor, np_rows: int, n: int) -> torch.Tensor:
    """(chunks, heads, S, S) partial dS sums, S = k * NP with k windows packed block-diagonally,
    -> (heads, N, N): the sum over chunks and over the packed windows' diagonal blocks."""
    chunks, heads, s, _ = part.shape
    k = s // np_rows
    blocks = part.view(chunks, heads, k, np_rows, k, np_rows).diagonal(dim1=2, dim2=4)
    return blocks.sum(dim=(0, -1))[:, :n, :n]


@functools.lru_cache(maxsize=32)
def _bias_pairs(geom: WindowGeometry, device: torch.device):
    """Pairs grouped by table row: row_ptr (R+1,) and cols (N*N,) int32 (CSR), the most pairs in a
    row, and the flat (N*N,) index."""
    index = window_slots(geom)["bias_index"].reshape(-1)
    cols = torch.argsort(index, stable=True)
    counts = torch.bincount(index, minlength=geom.table_rows)
    row_ptr = torch.zeros(geom.table_rows + 1, dtype=torch.long, device=CPU)
    row_ptr[1:] = torch.cumsum(counts, 0)
    max_count = int(counts.max())
    return (
        row_ptr.to(device, torch.int32),
        cols.to(device, torch.int32),
        max_count,
        index.to(device),
    )


@triton.jit
def _fold_bias_kernel(
    DENSE, ROW_PTR, COLS, TABLE, n_pairs, rows, max_count, s_tr, s_th, BLOCK_R: tl.constexpr
):
    """table[r, head] = sum of dense[head, pairs of row r], summed in a fixed order (no atomics)."""
    pid = tl.program_id(0)
    head = tl.program_id(1)
    r = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    in_range = r < rows
    start = tl.load(ROW_PTR + r, mask=in_range, other=0)
    count = tl.load(ROW_PTR + r + 1, mask=in_range, other=0) - start
    acc = tl.zeros([BLOCK_R], tl.float32)
    for k in range(0, max_count):
        live = k < count
        col = tl.load(COLS + start + k, mask=live, other=0)
        acc += tl.load(DENSE + head * n_pairs + col, mask=live, other=0.0)
    tl.store(TABLE + r * s_tr + head * s_th, acc, mask=in_range)


def dense_to_table(dense: torch.Tensor, geom: WindowGeometry, use_kernel: bool | None = None):
    """Fold a (heads, N, N) fp32 gradient over token pairs into the (R, heads) bias table.

    Deterministic on every device: a fixed-order Triton reduction over each row's pairs on the
    GPU (index_add_ would use float atomics there), index_add_ on the CPU (sequential).
    `use_kernel` forces the choice (tests run the kernel under the interpreter).
    """
    heads = dense.shape[0]
    dense = dense.reshape(heads, -1).contiguous()  # (heads, N*N)
    row_ptr, cols, max_count, index = _bias_pairs(geom, dense.device)
    if not (dense.is_cuda if use_kernel is None else use_kernel):
        return dense.new_zeros(geom.table_rows, heads).index_add_(0, index, dense.t())
    table = dense.new_empty(geom.table_rows, heads)
    block_r = 128
    with _on_device(dense):
        _fold_bias_kernel[(triton.cdiv(geom.table_rows, block_r), heads)](
            dense, row_ptr, cols, table, dense.shape[1], geom.table_rows, max_count,
            table.stride(0), table.stride(1), BLOCK_R=block_r,
        )  # fmt: skip
    return table
