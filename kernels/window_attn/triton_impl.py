"""Triton kernels for 3D (shifted) window attention with relative position bias.

Launchers `fwd(...) -> (o, lse)` and `bwd(...) -> (dq, dk, dv, dtable, dk_pad, dv_pad)`; no
autograd here (function.py owns that).

How the work is laid out:
- Every window is N tokens padded to NP = next_power_of_2(N) "rows"; the rows of all windows of
  all batches form one virtual row space of total_windows * NP rows. A row's window, its position
  in the window, its source token, its shift region and its bias coordinates are computed from
  the row number alone (`_rows_info`): no roll, pad or partition copy, no mask tensor.
- A "unit" is BLOCK rows. When NP <= BLOCK a unit holds BLOCK // NP whole windows that attend
  block-diagonally (a 30-token window alone would leave a 64-row tile half empty, and tl.dot
  needs tiles >= 16). When NP > BLOCK a window spans NP // BLOCK units and the forward runs an
  online softmax over its key blocks.
- Grids put the head on axis 0, so programs launched together read the heads of the same
  tokens (one contiguous (heads, D) row of q, k, v per token) instead of striding across them.
- The forward is persistent: each program walks a run of consecutive units, so the loads of the
  next unit overlap the math of this one even when a window is one key block (L0-L2).
- q, k and v share one set of strides (the separate tensors of the public API, or the three
  views of the module's packed qkv); the gradients share another, so the backward can write
  dq, dk, dv straight into one packed (B, T, H, W, 3, heads, D) buffer.
- Backward is deterministic and makes at most two passes over the scores:
  NP <= BLOCK_BWD: one fused kernel gives dq, dk, dv and the bias partials (one exp per score).
  NP > BLOCK_BWD: pass 1 (`_bwd_dq_bias_kernel`) holds a query block against the whole window's
  keys, so dq and the bias-gradient rows of that block are complete in registers (the biggest
  windows take their keys in parts and sum those rows in the program's own slice of the bias
  partials instead), and writes delta = rowsum(dO * O) for pass 2; pass 2
  (`_bwd_dkdv_kernel`, FlashAttention-2's dk/dv loop) reads that delta. delta is always
  computed in-kernel, never by torch ops.
  The bias-table gradient is a reduction over batch and windows: programs sum their dS tiles in
  registers over a fixed chunk of windows and store partial sums; `_reduce_bias_kernel` sums the
  partials and `_fold_bias_kernel` folds token pairs into table rows, both in a fixed order.
  No float atomics anywhere.
- Launch settings are pinned per shape (`fwd_launch`, `bwd_launch`), so every process runs the
  same code and results are bitwise reproducible across processes. `LFVILA_AUTOTUNE=1` makes the
  forward autotune instead (opt-in; the choice can then differ between processes).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os

import torch
import triton
import triton.language as tl

from .._buffers import alloc
from .._triton_utils import PROGRAMS_PER_SM, autotune, dot_precision, parallel_target
from .geometry import WindowGeometry, next_power_of_2, window_geometry
from .reference import CPU, window_slots

LOG2E = 1.4426950408889634
# Finite, not -inf: a row whose keys are all masked (a padding lane) must give 0, not NaN.
NEG = tl.constexpr(-1.0e30)

FWD_BLOCK = 64
BWD_BLOCK = 64
# Elements of one (query rows x window keys) fp32 tile of the dq/bias pass. ptxas (sm_90a) spills
# at (32 or 64) x 128 with 4 or 8 warps; 16 query rows against the whole window do not, up to
# NP = 512 at head_dim 32, with 4 warps to NP = 128 and 8 beyond (BENCHMARKS.md).
DQ_TILE_ELEMENTS = 2048
# The dq/bias pass scores windows of up to DQ_WHOLE_WINDOW_ROWS rows at once; bigger ones in
# parts of DQ_KEYS_PER_PART keys (`dq_key_split`, compile report in BENCHMARKS.md).
DQ_WHOLE_WINDOW_ROWS = 256
DQ_KEYS_PER_PART = 128


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
def _offset(b, t, h, w, s_b, s_t, s_h, s_w):
    """Element offset of token (b, t, h, w) in a strided (B, T, H, W, ...) tensor (int64)."""
    return b.to(tl.int64) * s_b + t * s_t + h * s_h + w * s_w


@triton.jit
def _token(b, t, h, w, T: tl.constexpr, H: tl.constexpr, W: tl.constexpr):
    """Token index in a contiguous (B, T, H, W) layout (int64)."""
    return ((b.to(tl.int64) * T + t) * H + h) * W + w


@triton.jit
def _load_rows(ptr, off, real, ok, pad_ptr, d, HAS_PAD_KV: tl.constexpr):
    """(rows, D) tile of one head; padding tokens take pad_ptr's vector when HAS_PAD_KV."""
    x = tl.load(ptr + off[:, None] + d[None, :], mask=real[:, None], other=0.0)
    if HAS_PAD_KV:
        # Padding tokens hold the projection bias (Video-Swin pads before qkv): substitute it.
        pad = tl.load(pad_ptr + d).to(x.dtype)
        x = tl.where((ok & (real == 0))[:, None], pad[None, :], x)
    return x


@triton.jit
def _scores(
    q, k, win_q, ok_q, g_q, reg_q, win_k, ok_k, real_k, g_k, reg_k, TableH, s_tr, qk_scale,
    bias_scale, mask_log2, G0: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_PAD_KV: tl.constexpr,
    SHIFTED: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Scores in log2 units (fp32 accumulator), masked lanes at NEG, and the validity mask.

    TableH: the bias table already offset to this head's column.
    """
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
    if HAS_PAD_KV:
        key_ok = ok_k
    else:
        key_ok = ok_k & real_k
    # Block-diagonal: rows of different windows packed in one tile never attend to each other.
    valid = (win_q[:, None] == win_k[None, :]) & key_ok[None, :] & ok_q[:, None]
    if HAS_BIAS:
        # Gathered from the small (R, heads) table, which stays in cache; no dense bias tensor.
        # int32 row offsets: the pointer tile is formed only at the load.
        idx = (g_q[:, None] - g_k[None, :] + G0) * s_tr
        bias = tl.load(TableH + idx, mask=valid, other=0.0)
        s += bias.to(tl.float32) * bias_scale
    if SHIFTED:
        # Additive -100 (not -inf), as Video-Swin: checkpoint parity.
        s += tl.where(reg_q[:, None] != reg_k[None, :], mask_log2, 0.0)
    s = tl.where(valid, s, NEG)
    return s, valid


@triton.jit
def _fwd_kernel(
    Q, K, V, Table, KPad, VPad, Out, LSE, s_b, s_t, s_h, s_w, s_n, s_tr, s_th, s_pn,
    total_windows, units,
    units_per_program, heads, qk_scale, bias_scale, mask_log2, N: tl.constexpr, NP: tl.constexpr,
    T: tl.constexpr, H: tl.constexpr, W: tl.constexpr, NWT: tl.constexpr, NWH: tl.constexpr,
    NWW: tl.constexpr, WT: tl.constexpr, WH: tl.constexpr, WW: tl.constexpr, ST: tl.constexpr,
    SH: tl.constexpr, SW: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr, RT: tl.constexpr,
    RH: tl.constexpr, G0: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr,
    NJ: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_PAD_KV: tl.constexpr, SHIFTED: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Persistent: program (head, p) computes units [p * units_per_program, ...) of one head.

    Q, K, V: (B, T, H, W, heads, D) with the shared strides s_b..s_n. Out: contiguous
    (B, T, H, W, heads, D); LSE: (B, T, H, W, heads) log2-sum-exp2 of each query's scores.
    """
    tl.static_assert(BLOCK >= 16)  # tl.dot tiles must be >= 16 on a GPU
    tl.static_assert(HEAD_DIM >= 16)
    head = tl.program_id(0)
    first = tl.program_id(1) * units_per_program
    d = tl.arange(0, HEAD_DIM)
    Qh, Kh, Vh = Q + head * s_n, K + head * s_n, V + head * s_n
    KPh, VPh, TableH = KPad + head * s_pn, VPad + head * s_pn, Table + head * s_th
    for unit in range(first, tl.minimum(first + units_per_program, units)):
        q_rows = unit * BLOCK + tl.arange(0, BLOCK)
        win_q, ok_q, real_q, b_q, t_q, h_q, w_q, reg_q, g_q = _rows_info(
            q_rows, total_windows, N, NP, T, H, W, NWT, NWH, NWW, WT, WH, WW, ST, SH, SW, BH, BW,
            RT, RH,
        )  # fmt: skip
        q_off = _offset(b_q, t_q, h_q, w_q, s_b, s_t, s_h, s_w)
        q = tl.load(Qh + q_off[:, None] + d[None, :], mask=real_q[:, None], other=0.0)
        m_i = tl.full([BLOCK], NEG, tl.float32)
        l_i = tl.zeros([BLOCK], tl.float32)
        acc = tl.zeros([BLOCK, HEAD_DIM], tl.float32)  # fp32 accumulator
        kv_row0 = (unit // NJ) * NJ * BLOCK  # first row of this window (NJ == 1: this block)
        for j in range(NJ):
            kv_rows = kv_row0 + j * BLOCK + tl.arange(0, BLOCK)
            win_k, ok_k, real_k, b_k, t_k, h_k, w_k, reg_k, g_k = _rows_info(
                kv_rows, total_windows, N, NP, T, H, W, NWT, NWH, NWW, WT, WH, WW, ST, SH, SW, BH,
                BW, RT, RH,
            )  # fmt: skip
            kv_off = _offset(b_k, t_k, h_k, w_k, s_b, s_t, s_h, s_w)
            k = _load_rows(Kh, kv_off, real_k, ok_k, KPh, d, HAS_PAD_KV)
            v = _load_rows(Vh, kv_off, real_k, ok_k, VPh, d, HAS_PAD_KV)
            s, valid = _scores(
                q, k, win_q, ok_q, g_q, reg_q, win_k, ok_k, real_k, g_k, reg_k, TableH, s_tr,
                qk_scale, bias_scale, mask_log2, G0, HAS_BIAS, HAS_PAD_KV, SHIFTED, DOT_PRECISION,
            )  # fmt: skip
            # Online softmax in base 2 (exp2 is the native instruction).
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
            m_i = m_new
        o = acc / l_i[:, None]
        o_off = _token(b_q, t_q, h_q, w_q, T, H, W) * heads + head  # contiguous (..., heads) row
        tl.store(
            Out + o_off[:, None] * HEAD_DIM + d[None, :],
            o.to(Out.dtype.element_ty),
            mask=real_q[:, None],
        )
        tl.store(LSE + o_off, m_i + tl.log2(l_i), mask=real_q)  # log2-sum-exp2, for backward


# Opt-in (LFVILA_AUTOTUNE=1): the same kernel behind an autotuner over these launch settings.
# Every one compiles without spills at LF-VILA's and Video-Swin's shapes in fp16/bf16 (the
# compile report's --autotune run); 2 warps spilled at every shape but NP 32/64 and was dropped.
_FWD_CONFIGS = [
    triton.Config({}, num_warps=4, num_stages=2),
    triton.Config({}, num_warps=4, num_stages=3),
    triton.Config({}, num_warps=8, num_stages=2),
]
# Shared memory of the key/value pipeline stages an autotuned forward may take: a stage holds a
# (BLOCK, D) key and value tile. fp32 at head_dim 128 needs 290 KiB with three stages.
_FWD_STAGE_BUDGET = 128 * 1024


def _prune_fwd_configs(configs, named_args, **kwargs):
    q = named_args["Q"]
    stage = 2 * kwargs.get("BLOCK", FWD_BLOCK) * q.shape[-1] * q.element_size()
    return [c for c in configs if c.num_stages * stage <= _FWD_STAGE_BUDGET]


_fwd_kernel_autotuned = autotune(
    _FWD_CONFIGS,
    key=["N", "HEAD_DIM", "BLOCK", "T", "H", "W", "HAS_BIAS", "SHIFTED"],
    prune=_prune_fwd_configs,
)(_fwd_kernel)


@triton.jit
def _tile_grads(
    q, k, v, do, lse, delta, win_q, ok_q, real_q, g_q, reg_q, win_k, ok_k, real_k, g_k, reg_k,
    TableH, s_tr, qk_scale, bias_scale, mask_log2, G0: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_PAD_KV: tl.constexpr, SHIFTED: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Recompute P of one (query rows, key rows) tile and return (P, dS) in fp32."""
    s, valid = _scores(
        q, k, win_q, ok_q, g_q, reg_q, win_k, ok_k, real_k, g_k, reg_k, TableH, s_tr, qk_scale,
        bias_scale, mask_log2, G0, HAS_BIAS, HAS_PAD_KV, SHIFTED, DOT_PRECISION,
    )  # fmt: skip
    # Padding queries are discarded outputs: no gradient may flow from them.
    p = tl.where(valid & real_q[:, None], tl.exp2(s - lse[:, None]), 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
    ds = p * (dp - delta[:, None])  # d loss / d score (natural units: also d bias)
    return p, ds


@triton.jit
def _load_q_side(Qh, DO, OUT, LSE, q_off, o_off, real, d, HEAD_DIM: tl.constexpr):
    """q, dO, lse and delta = rowsum(dO * O) (fp32, computed here) of one head's query rows."""
    q = tl.load(Qh + q_off[:, None] + d[None, :], mask=real[:, None], other=0.0)
    out = o_off[:, None] * HEAD_DIM + d[None, :]
    do = tl.load(DO + out, mask=real[:, None], other=0.0)
    o = tl.load(OUT + out, mask=real[:, None], other=0.0)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
    lse = tl.load(LSE + o_off, mask=real, other=0.0)
    return q, do, lse, delta


@triton.jit
def _bwd_fused_kernel(
    Q, K, V, Table, KPad, VPad, DO, OUT, LSE, DQ, DK, DV, DB_PART, DPAD_PART, s_b, s_t, s_h, s_w,
    s_n, g_b, g_t, g_h, g_w, g_n, s_tr, s_th, s_pn, total_windows, heads, units_per_chunk, scale,
    qk_scale, bias_scale, mask_log2, N: tl.constexpr, NP: tl.constexpr, T: tl.constexpr,
    H: tl.constexpr, W: tl.constexpr, NWT: tl.constexpr, NWH: tl.constexpr, NWW: tl.constexpr,
    WT: tl.constexpr, WH: tl.constexpr, WW: tl.constexpr, ST: tl.constexpr, SH: tl.constexpr,
    SW: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr, RT: tl.constexpr, RH: tl.constexpr,
    G0: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_PAD_KV: tl.constexpr, SHIFTED: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Whole windows fit one tile: query rows == key rows; dq, dk, dv exact, bias partials.

    Program (head, chunk) walks `units_per_chunk` consecutive units. One exp per score.
    """
    tl.static_assert(BLOCK >= 16)
    tl.static_assert(HEAD_DIM >= 16)
    head = tl.program_id(0)
    chunk = tl.program_id(1)
    d = tl.arange(0, HEAD_DIM)
    Qh, Kh, Vh = Q + head * s_n, K + head * s_n, V + head * s_n
    DQh, DKh, DVh = DQ + head * g_n, DK + head * g_n, DV + head * g_n
    KPh, VPh, TableH = KPad + head * s_pn, VPad + head * s_pn, Table + head * s_th
    db_acc = tl.zeros([BLOCK, BLOCK], tl.float32)  # sum of dS over this chunk's windows
    dkp_acc = tl.zeros([HEAD_DIM], tl.float32)
    dvp_acc = tl.zeros([HEAD_DIM], tl.float32)
    for step in range(0, units_per_chunk):
        unit = chunk * units_per_chunk + step
        rows = unit * BLOCK + tl.arange(0, BLOCK)
        win, ok, real, b, t, h, w, reg, g = _rows_info(
            rows, total_windows, N, NP, T, H, W, NWT, NWH, NWW, WT, WH, WW, ST, SH, SW, BH, BW,
            RT, RH,
        )  # fmt: skip
        x_off = _offset(b, t, h, w, s_b, s_t, s_h, s_w)
        o_off = _token(b, t, h, w, T, H, W) * heads + head
        q, do, lse, delta = _load_q_side(Qh, DO, OUT, LSE, x_off, o_off, real, d, HEAD_DIM)
        k = _load_rows(Kh, x_off, real, ok, KPh, d, HAS_PAD_KV)
        v = _load_rows(Vh, x_off, real, ok, VPh, d, HAS_PAD_KV)
        p, ds = _tile_grads(
            q, k, v, do, lse, delta, win, ok, real, g, reg, win, ok, real, g, reg, TableH, s_tr,
            qk_scale, bias_scale, mask_log2, G0, HAS_BIAS, HAS_PAD_KV, SHIFTED, DOT_PRECISION,
        )  # fmt: skip
        dv = tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=DOT_PRECISION)
        dq = tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION) * scale
        dk = tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=DOT_PRECISION) * scale
        g_off = _offset(b, t, h, w, g_b, g_t, g_h, g_w)[:, None] + d[None, :]
        tl.store(DQh + g_off, dq.to(DQ.dtype.element_ty), mask=real[:, None])
        tl.store(DKh + g_off, dk.to(DK.dtype.element_ty), mask=real[:, None])
        tl.store(DVh + g_off, dv.to(DV.dtype.element_ty), mask=real[:, None])
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
def _dq_bias_keys(
    Kh, Vh, KPh, VPh, TableH, q, do, lse, delta, win_q, ok_q, real_q, g_q, reg_q, key0,
    total_windows, s_b, s_t, s_h, s_w, s_tr, qk_scale, bias_scale, mask_log2, N: tl.constexpr,
    NP: tl.constexpr, T: tl.constexpr, H: tl.constexpr, W: tl.constexpr, NWT: tl.constexpr,
    NWH: tl.constexpr, NWW: tl.constexpr, WT: tl.constexpr, WH: tl.constexpr, WW: tl.constexpr,
    ST: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr,
    RT: tl.constexpr, RH: tl.constexpr, G0: tl.constexpr, HEAD_DIM: tl.constexpr,
    KN: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_PAD_KV: tl.constexpr, SHIFTED: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """One query block against KN consecutive key rows from row `key0`: returns (dS @ K unscaled,
    dS), both fp32. P needs no row maximum here (lse is known), so key chunks are independent."""
    d = tl.arange(0, HEAD_DIM)
    kv_rows = key0 + tl.arange(0, KN)
    win_k, ok_k, real_k, b_k, t_k, h_k, w_k, reg_k, g_k = _rows_info(
        kv_rows, total_windows, N, NP, T, H, W, NWT, NWH, NWW, WT, WH, WW, ST, SH, SW, BH, BW,
        RT, RH,
    )  # fmt: skip
    kv_off = _offset(b_k, t_k, h_k, w_k, s_b, s_t, s_h, s_w)
    k = _load_rows(Kh, kv_off, real_k, ok_k, KPh, d, HAS_PAD_KV)
    v = _load_rows(Vh, kv_off, real_k, ok_k, VPh, d, HAS_PAD_KV)
    p, ds = _tile_grads(
        q, k, v, do, lse, delta, win_q, ok_q, real_q, g_q, reg_q, win_k, ok_k, real_k, g_k,
        reg_k, TableH, s_tr, qk_scale, bias_scale, mask_log2, G0, HAS_BIAS, HAS_PAD_KV,
        SHIFTED, DOT_PRECISION,
    )  # fmt: skip
    return tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION), ds


@triton.jit
def _bwd_dq_bias_kernel(
    Q, K, V, Table, KPad, VPad, DO, OUT, LSE, DELTA, DQ, DB_PART, s_b, s_t, s_h, s_w, s_n, g_b, g_t,
    g_h, g_w, g_n, s_tr, s_th, s_pn, total_windows, heads, units_per_chunk, scale, qk_scale,
    bias_scale, mask_log2, N: tl.constexpr, NP: tl.constexpr, T: tl.constexpr, H: tl.constexpr,
    W: tl.constexpr, NWT: tl.constexpr, NWH: tl.constexpr, NWW: tl.constexpr, WT: tl.constexpr,
    WH: tl.constexpr, WW: tl.constexpr, ST: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    BH: tl.constexpr, BW: tl.constexpr, RT: tl.constexpr, RH: tl.constexpr, G0: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_Q: tl.constexpr, KEY_SPLIT: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_PAD_KV: tl.constexpr, SHIFTED: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Pass 1 of the big-window backward: query block i of every window of a chunk, against all
    the window's NP keys, in KEY_SPLIT consecutive parts of KN = NP / KEY_SPLIT keys. dq and the
    block's bias-gradient rows are complete here (no second kernel re-deriving scores for the
    bias); delta = rowsum(dO * O) is written for pass 2.

    The block's rows of the bias sum over the chunk's windows: KEY_SPLIT == 1 holds them in
    registers and stores them once. With more parts they do not fit beside one part's tiles
    (NP = 512 at head_dim 64 spills at every warp count, BENCHMARKS.md), so each part adds its
    dS into the program's own (BLOCK_Q, KN) slice of DB_PART: written by no other program, read
    back after a barrier, small enough to stay in L2. The sum order is fixed: no atomics.

    Program (head, i, chunk); windows w = chunk * units_per_chunk + step.
    """
    tl.static_assert(BLOCK_Q >= 16)
    tl.static_assert(HEAD_DIM >= 16)
    KN: tl.constexpr = NP // KEY_SPLIT
    tl.static_assert(KN * KEY_SPLIT == NP)
    tl.static_assert(KN >= 16)
    head = tl.program_id(0)
    i = tl.program_id(1)
    chunk = tl.program_id(2)
    d = tl.arange(0, HEAD_DIM)
    c = tl.arange(0, KN)
    Qh, Kh, Vh = Q + head * s_n, K + head * s_n, V + head * s_n
    KPh, VPh, TableH = KPad + head * s_pn, VPad + head * s_pn, Table + head * s_th
    part_rows = (
        DB_PART + (chunk * heads + head).to(tl.int64) * NP * NP
        + (i * BLOCK_Q + tl.arange(0, BLOCK_Q))[:, None] * NP + c[None, :]
    )  # fmt: skip
    db_acc = tl.zeros([BLOCK_Q, KN], tl.float32)  # KEY_SPLIT == 1: the bias rows in registers
    for step in range(0, units_per_chunk):
        win0 = (chunk * units_per_chunk + step) * NP
        q_rows = win0 + i * BLOCK_Q + tl.arange(0, BLOCK_Q)
        win_q, ok_q, real_q, b_q, t_q, h_q, w_q, reg_q, g_q = _rows_info(
            q_rows, total_windows, N, NP, T, H, W, NWT, NWH, NWW, WT, WH, WW, ST, SH, SW, BH, BW,
            RT, RH,
        )  # fmt: skip
        q_off = _offset(b_q, t_q, h_q, w_q, s_b, s_t, s_h, s_w)
        o_off = _token(b_q, t_q, h_q, w_q, T, H, W) * heads + head
        q, do, lse, delta = _load_q_side(Qh, DO, OUT, LSE, q_off, o_off, real_q, d, HEAD_DIM)
        tl.store(DELTA + o_off, delta, mask=real_q)
        dq = tl.zeros([BLOCK_Q, HEAD_DIM], tl.float32)
        for j in range(0, KEY_SPLIT):
            dq_part, ds = _dq_bias_keys(
                Kh, Vh, KPh, VPh, TableH, q, do, lse, delta, win_q, ok_q, real_q, g_q, reg_q,
                win0 + j * KN, total_windows, s_b, s_t, s_h, s_w, s_tr, qk_scale, bias_scale,
                mask_log2, N, NP, T, H, W, NWT, NWH, NWW, WT, WH, WW, ST, SH, SW, BH, BW, RT, RH,
                G0, HEAD_DIM, KN, HAS_BIAS, HAS_PAD_KV, SHIFTED, DOT_PRECISION,
            )  # fmt: skip
            dq += dq_part
            if HAS_BIAS:
                if KEY_SPLIT == 1:
                    db_acc += ds
                else:
                    # the first window's store initialises the slice: no zero-fill launch
                    seen = (c[None, :] < KN) & (step > 0)
                    prev = tl.load(part_rows + j * KN, mask=seen, other=0.0)
                    tl.store(part_rows + j * KN, prev + ds)
                    # this block's threads read these elements back next window: make the
                    # stores visible whatever layout the load and the store were given
                    tl.debug_barrier()
        g_off = _offset(b_q, t_q, h_q, w_q, g_b, g_t, g_h, g_w)[:, None] + d[None, :]
        tl.store(
            DQ + head * g_n + g_off, (dq * scale).to(DQ.dtype.element_ty), mask=real_q[:, None]
        )
    if HAS_BIAS and KEY_SPLIT == 1:
        tl.store(part_rows, db_acc)


@triton.jit
def _bwd_dkdv_kernel(
    Q, K, V, Table, KPad, VPad, DO, LSE, DELTA, DK, DV, DPAD_PART, s_b, s_t, s_h, s_w, s_n, g_b,
    g_t, g_h, g_w, g_n, s_tr, s_th, s_pn, total_windows, heads, scale, qk_scale, bias_scale,
    mask_log2, N: tl.constexpr, NP: tl.constexpr, T: tl.constexpr, H: tl.constexpr,
    W: tl.constexpr, NWT: tl.constexpr, NWH: tl.constexpr, NWW: tl.constexpr, WT: tl.constexpr,
    WH: tl.constexpr, WW: tl.constexpr, ST: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    BH: tl.constexpr, BW: tl.constexpr, RT: tl.constexpr, RH: tl.constexpr, G0: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr, NJ: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_PAD_KV: tl.constexpr, SHIFTED: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Pass 2: one key block of one window; loops over the window's query blocks (dk, dv exact).

    Program (head, key block); reads the delta pass 1 wrote.
    """
    tl.static_assert(BLOCK >= 16)
    tl.static_assert(HEAD_DIM >= 16)
    head = tl.program_id(0)
    pid = tl.program_id(1)
    d = tl.arange(0, HEAD_DIM)
    Qh, Kh, Vh = Q + head * s_n, K + head * s_n, V + head * s_n
    KPh, VPh, TableH = KPad + head * s_pn, VPad + head * s_pn, Table + head * s_th
    row0 = (pid // NJ) * NP
    kv_rows = pid * BLOCK + tl.arange(0, BLOCK)
    win_k, ok_k, real_k, b_k, t_k, h_k, w_k, reg_k, g_k = _rows_info(
        kv_rows, total_windows, N, NP, T, H, W, NWT, NWH, NWW, WT, WH, WW, ST, SH, SW, BH, BW, RT,
        RH,
    )  # fmt: skip
    kv_off = _offset(b_k, t_k, h_k, w_k, s_b, s_t, s_h, s_w)
    k = _load_rows(Kh, kv_off, real_k, ok_k, KPh, d, HAS_PAD_KV)
    v = _load_rows(Vh, kv_off, real_k, ok_k, VPh, d, HAS_PAD_KV)
    dk = tl.zeros([BLOCK, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK, HEAD_DIM], tl.float32)
    for i in range(NJ):
        q_rows = row0 + i * BLOCK + tl.arange(0, BLOCK)
        win_q, ok_q, real_q, b_q, t_q, h_q, w_q, reg_q, g_q = _rows_info(
            q_rows, total_windows, N, NP, T, H, W, NWT, NWH, NWW, WT, WH, WW, ST, SH, SW, BH, BW,
            RT, RH,
        )  # fmt: skip
        q_off = _offset(b_q, t_q, h_q, w_q, s_b, s_t, s_h, s_w)
        o_off = _token(b_q, t_q, h_q, w_q, T, H, W) * heads + head
        q = tl.load(Qh + q_off[:, None] + d[None, :], mask=real_q[:, None], other=0.0)
        do = tl.load(DO + o_off[:, None] * HEAD_DIM + d[None, :], mask=real_q[:, None], other=0.0)
        lse = tl.load(LSE + o_off, mask=real_q, other=0.0)
        delta = tl.load(DELTA + o_off, mask=real_q, other=0.0)
        p, ds = _tile_grads(
            q, k, v, do, lse, delta, win_q, ok_q, real_q, g_q, reg_q, win_k, ok_k, real_k, g_k,
            reg_k, TableH, s_tr, qk_scale, bias_scale, mask_log2, G0, HAS_BIAS, HAS_PAD_KV,
            SHIFTED, DOT_PRECISION,
        )  # fmt: skip
        dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=DOT_PRECISION)
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=DOT_PRECISION)
    dk = dk * scale
    g_off = head * g_n + _offset(b_k, t_k, h_k, w_k, g_b, g_t, g_h, g_w)[:, None] + d[None, :]
    tl.store(DK + g_off, dk.to(DK.dtype.element_ty), mask=real_k[:, None])
    tl.store(DV + g_off, dv.to(DV.dtype.element_ty), mask=real_k[:, None])
    if HAS_PAD_KV:
        is_pad = (ok_k & (real_k == 0))[:, None]
        pad_part = DPAD_PART + (pid * 2 * heads + head).to(tl.int64) * HEAD_DIM
        tl.store(pad_part + d, tl.sum(tl.where(is_pad, dk, 0.0), 0))
        tl.store(pad_part + heads * HEAD_DIM + d, tl.sum(tl.where(is_pad, dv, 0.0), 0))


@triton.jit
def _reduce_bias_kernel(
    PART, DENSE, chunks, n_pairs, N: tl.constexpr, NP: tl.constexpr, PACKED: tl.constexpr,
    BLOCK_E: tl.constexpr,
):  # fmt: skip
    """dense[head, a, b] = sum over chunks c, then packed windows p, of
    part[c, head, p * NP + a, p * NP + b]: (chunks, heads, S, S), S = PACKED * NP. Fixed order."""
    e = tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E)
    head = tl.program_id(1)
    heads = tl.num_programs(1)
    live = e < n_pairs
    a = e // N
    b = e % N
    S: tl.constexpr = PACKED * NP
    acc = tl.zeros([BLOCK_E], tl.float32)
    for c in range(0, chunks):
        base = PART + (c * heads + head).to(tl.int64) * S * S
        for p in tl.static_range(PACKED):
            acc += tl.load(base + (p * NP + a) * S + p * NP + b, mask=live, other=0.0)
    tl.store(DENSE + head * n_pairs + e, acc, mask=live)


# ----------------------------------------------------------------------------------------------
# Launchers


def padded_window_rows(geom: WindowGeometry) -> int:
    """NP: rows a window occupies (next power of two, at least 16)."""
    return max(16, next_power_of_2(geom.tokens))


@functools.lru_cache(maxsize=256)
def _layout_constants(geom: WindowGeometry, head_dim: int, block: int) -> dict:
    """The kernels' constexpr arguments for one geometry (cached: built once per shape)."""
    stride_t, stride_h = geom.table_strides
    return dict(
        N=geom.tokens,
        NP=padded_window_rows(geom),
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
        SHIFTED=geom.shifted,
    )


def fwd_launch(np_rows: int, block: int, head_dim: int, dtype: torch.dtype) -> dict:
    """Pinned forward launch settings for a shape (the table that replaces autotuning).

    A 64-row block at head_dim <= 64 keeps the (64, 64) fp32 score tile, q, the accumulator and
    the key-side index vectors in registers at 4 warps; 128-wide heads (and fp32, whose IEEE dots
    need more registers) take 8. Two stages overlap the next key block's (or, persistent, the next
    unit's) loads with this one's math.
    """
    wide = head_dim > 64 or dtype == torch.float32 or block > 64
    return dict(num_warps=8 if wide else 4, num_stages=2)


def bwd_launch(block: int, head_dim: int, dtype: torch.dtype) -> dict:
    """Pinned backward launch settings, no autotuning: the config must not change run to run.

    Wider heads carry four (BLOCK, D) operand tiles: 8 warps keep them in registers. Pipeline
    stages hold those four tiles each; cap them so the kernel fits Hopper's 227 KiB of shared
    memory (fp32 at head_dim 128 would need 384 KiB with three stages).
    """
    stage_bytes = 4 * block * head_dim * torch.tensor([], dtype=dtype).element_size()
    return dict(
        num_warps=4 if head_dim <= 32 and dtype != torch.float32 else 8,
        num_stages=max(1, min(2, (128 * 1024) // stage_bytes)),
    )


def dq_block(np_rows: int, block: int) -> int:
    """Query rows per program of the dq/bias pass: (rows x NP) fp32 tiles of DQ_TILE_ELEMENTS."""
    return max(16, min(block, DQ_TILE_ELEMENTS // np_rows))


def dq_key_split(np_rows: int, head_dim: int, shifted: bool) -> int:
    """Key parts the dq/bias pass takes one after the other (then its bias rows live in memory).

    A pinned choice from the sm_90a compile report (BENCHMARKS.md). Whole windows keep the bias
    rows in registers: every window up to DQ_WHOLE_WINDOW_ROWS rows (L0-L4, Video-Swin's 2x7x7)
    and LF-VILA's L5 (NP 512, head_dim 32, never shifted: 200 registers). At NP 512 with head_dim
    64 the whole window spills at every warp count, and shifted at head_dim 32 (Video-Swin's
    8x7x7) it sits at exactly 255 registers, so those take parts of DQ_KEYS_PER_PART keys
    (126-162 registers). Parts cost L2 traffic: each adds its dS rows into memory, as many bytes
    per window as the part's K and V at head_dim 32.
    """
    if np_rows <= DQ_WHOLE_WINDOW_ROWS or (np_rows * head_dim <= 512 * 32 and not shifted):
        return 1
    return np_rows // DQ_KEYS_PER_PART


# Programs of the fused backward that fit one SM at once: ptxas gives it about 240 registers at
# 4 warps (BENCHMARKS.md, compile report), so 65536 / (240 * 128) = 2. Its chunk count aims at
# one full wave of resident programs rather than the generic 4 per SM: every extra chunk is
# another (BLOCK, BLOCK) partial to store and reduce, and a second wave leaves a tail.
FUSED_BWD_RESIDENT_PER_SM = 2


def _programs(
    units: int, per_unit_programs: int, device: torch.device, per_sm: int | None = None
) -> int:
    """How many programs to spread `units` over (each also spans `per_unit_programs` others):
    enough for `per_sm` resident programs per SM (default PROGRAMS_PER_SM, 4), a fixed number
    per (shape, device), so the reduction order and hence the bits never change."""
    target = parallel_target(device, per_sm or PROGRAMS_PER_SM)
    return max(1, min(units, math.ceil(target / per_unit_programs)))


def _autotune_requested() -> bool:
    return os.environ.get("LFVILA_AUTOTUNE", "0") not in ("", "0")


def _shared_strides(q, k, v):
    """q, k, v with one common stride set (copies only when they differ: rare)."""
    if q.stride() == k.stride() == v.stride():
        return q, k, v
    return q.contiguous(), k.contiguous(), v.contiguous()


def _strides5(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(x.stride()[:5])


def _scalars(scale: float, mask_value: float) -> tuple[float, float, float]:
    return scale * LOG2E, LOG2E, mask_value * LOG2E


def fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor | None,
    k_pad: torch.Tensor | None, v_pad: torch.Tensor | None, window_size: tuple[int, int, int],
    shift_size: tuple[int, int, int], scale: float, mask_value: float,
    clamped_index: str = "effective", block: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Forward. q, k, v: (B, T, H, W, heads, D) with unit stride in D (views of one packed
    (B, T, H, W, 3, heads, D) tensor are read in place).

    Returns o (B, T, H, W, heads, D) contiguous in q's dtype and lse (B, T, H, W, heads) fp32,
    the log2-sum-exp2 of each query's scaled scores (saved for backward). One launch.
    """
    B, T, H, W, heads, D = q.shape
    q, k, v = _shared_strides(q, k, v)
    geom = window_geometry((T, H, W), window_size, shift_size, clamped_index)
    blk = block or FWD_BLOCK
    consts = _layout_constants(geom, D, blk)
    np_rows = consts["NP"]
    nj = max(1, np_rows // blk)
    total_windows = B * geom.num_windows
    units = triton.cdiv(total_windows * np_rows, blk)
    o = alloc(q.shape, q.dtype, q.device)
    lse = alloc(q.shape[:-1], torch.float32, q.device)
    programs = _programs(units, heads, q.device)
    per_program = triton.cdiv(units, programs)
    programs = triton.cdiv(units, per_program)
    tensors = (
        table if table is not None else q,
        k_pad if k_pad is not None else q,
        v_pad if v_pad is not None else q,
    )
    small = (
        table.stride(0) if table is not None else 0,
        table.stride(1) if table is not None else 0,
        k_pad.stride(0) if k_pad is not None else 0,
    )
    kernel = _fwd_kernel_autotuned if _autotune_requested() else _fwd_kernel
    launch = {} if _autotune_requested() else fwd_launch(np_rows, blk, D, q.dtype)
    with _on_device(q):
        kernel[(heads, programs)](
            q, k, v, *tensors, o, lse, *_strides5(q), *small, total_windows, units, per_program,
            heads, *_scalars(scale, mask_value), BLOCK=blk, NJ=nj, HAS_BIAS=table is not None,
            HAS_PAD_KV=k_pad is not None, DOT_PRECISION=dot_precision(q.dtype), **consts,
            **launch,
        )  # fmt: skip
    return o, lse


def bwd(
    do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
    lse: torch.Tensor, table: torch.Tensor | None, k_pad: torch.Tensor | None,
    v_pad: torch.Tensor | None, window_size: tuple[int, int, int],
    shift_size: tuple[int, int, int], scale: float, mask_value: float,
    clamped_index: str = "effective", block: int | None = None, chunks: int | None = None,
    grads_out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    key_split: int | None = None,
):  # fmt: skip
    """Backward: returns (dq, dk, dv, dtable, dk_pad, dv_pad); absent inputs give None.

    Deterministic: every gradient is either written once or reduced in a fixed order.
    `grads_out`: (dq, dk, dv) tensors of q's shape sharing one stride set (e.g. the three views of
    a packed (B, T, H, W, 3, heads, D) gradient) to write into instead of allocating.
    `block`, `chunks` and `key_split` (1 or 2 key halves in the dq/bias pass) override the
    tiling (tests use them to force each code path).
    Launches: 1 (fused) or 2 (two-pass) kernels, plus 2 for the bias table when there is one.
    """
    B, T, H, W, heads, D = q.shape
    q, k, v = _shared_strides(q, k, v)
    geom = window_geometry((T, H, W), window_size, shift_size, clamped_index)
    blk = block or BWD_BLOCK
    consts = _layout_constants(geom, D, blk)
    np_rows = consts["NP"]
    total_windows = B * geom.num_windows
    do = do.contiguous()
    if grads_out is None:
        dq, dk, dv = (alloc(q.shape, q.dtype, q.device) for _ in range(3))
    else:
        dq, dk, dv = grads_out
        if not dq.stride() == dk.stride() == dv.stride():
            raise ValueError("grads_out: dq, dk and dv must share one stride set")
    has_bias, has_pad = table is not None, k_pad is not None
    dummy = q
    small = (
        table.stride(0) if has_bias else 0,
        table.stride(1) if has_bias else 0,
        k_pad.stride(0) if has_pad else 0,
    )
    strides = (*_strides5(q), *_strides5(dq), *small)
    side = (table if has_bias else dummy, k_pad if has_pad else dummy, v_pad if has_pad else dummy)
    scalars = _scalars(scale, mask_value)
    flags = dict(
        HAS_PAD_KV=has_pad, HAS_BIAS=has_bias, DOT_PRECISION=dot_precision(q.dtype), **consts
    )
    f32 = dict(dtype=torch.float32, device=q.device)
    with _on_device(q):
        if np_rows <= blk:
            units = triton.cdiv(total_windows * np_rows, blk)
            n_chunks = chunks or _programs(units, heads, q.device, FUSED_BWD_RESIDENT_PER_SM)
            per_chunk = triton.cdiv(units, n_chunks)
            n_chunks = triton.cdiv(units, per_chunk)
            db_part = alloc((n_chunks, heads, blk, blk), **f32) if has_bias else dummy
            pad_part = alloc((n_chunks, 2, heads, D), **f32) if has_pad else dummy
            _bwd_fused_kernel[(heads, n_chunks)](
                q, k, v, *side, do, o, lse, dq, dk, dv, db_part, pad_part, *strides,
                total_windows, heads, per_chunk, scale, *scalars, BLOCK=blk, **flags,
                **bwd_launch(blk, D, q.dtype),
            )  # fmt: skip
            packed = blk // np_rows
        else:
            nj = np_rows // blk
            bq = dq_block(np_rows, blk)
            nqb = np_rows // bq
            n_chunks = chunks or _programs(total_windows, heads * nqb, q.device)
            per_chunk = triton.cdiv(total_windows, n_chunks)
            n_chunks = triton.cdiv(total_windows, per_chunk)
            parts = key_split or dq_key_split(np_rows, D, geom.shifted)
            delta = alloc(lse.shape, **f32)
            db_part = alloc((n_chunks, heads, np_rows, np_rows), **f32) if has_bias else dummy
            _bwd_dq_bias_kernel[(heads, nqb, n_chunks)](
                q, k, v, *side, do, o, lse, delta, dq, db_part, *strides, total_windows, heads,
                per_chunk, scale, *scalars, BLOCK_Q=bq, KEY_SPLIT=parts, **flags,
                **dq_bias_launch(bq, np_rows, D, parts),
            )  # fmt: skip
            pad_part = alloc((total_windows * nj, 2, heads, D), **f32) if has_pad else dummy
            _bwd_dkdv_kernel[(heads, total_windows * nj)](
                q, k, v, *side, do, lse, delta, dk, dv, pad_part, *strides, total_windows, heads,
                scale, *scalars, BLOCK=blk, NJ=nj, **flags, **bwd_launch(blk, D, q.dtype),
            )  # fmt: skip
            packed = 1
    dtable = dk_pad = dv_pad = None
    if has_bias:
        dense = reduce_bias_partials(db_part, np_rows, geom.tokens, packed)
        dtable = dense_to_table(dense, geom).to(table.dtype)
    if has_pad:
        # (programs, 2, heads, D) partial sums -> (heads, D) each, in a fixed order
        dk_pad = pad_part[:, 0].sum(0).to(k_pad.dtype)
        dv_pad = pad_part[:, 1].sum(0).to(v_pad.dtype)
    return dq, dk, dv, dtable, dk_pad, dv_pad


def dq_bias_launch(block_q: int, np_rows: int, head_dim: int, parts: int) -> dict:
    """The dq/bias pass holds (BLOCK_Q, keys) fp32 tiles (scores, dP, dS, the bias sum) and the
    keys and values of a window (or of a part of one); past NP = 128 it needs 8 warps to stay out
    of spills. With key parts, an explicit register ceiling: left to itself ptxas squeezes that
    variant into 128 registers (two blocks per SM) and spills 8-16 B; with 192 it takes 140-162
    and spills nothing."""
    return dict(
        num_warps=4 if np_rows <= 128 else 8, num_stages=1, maxnreg=192 if parts > 1 else None
    )


def _on_device(x: torch.Tensor):
    """Launch on x's GPU (Triton uses the current device), or nothing on CPU (interpreter)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def reduce_bias_partials(
    part: torch.Tensor, np_rows: int, n: int, packed: int | None = None,
    use_kernel: bool | None = None,
) -> torch.Tensor:  # fmt: skip
    """(chunks, heads, S, S) partial dS sums, S = packed * NP with `packed` windows
    block-diagonally, -> (heads, N, N) contiguous fp32: the sum over chunks and over the packed
    windows' diagonal blocks, in a fixed order. One Triton launch on the GPU (`use_kernel` forces
    the choice; tests run the kernel under the interpreter), torch ops on the CPU."""
    chunks, heads, s, _ = part.shape
    packed = packed or s // np_rows
    if not (part.is_cuda if use_kernel is None else use_kernel):
        blocks = part.view(chunks, heads, packed, np_rows, packed, np_rows)
        return blocks.diagonal(dim1=2, dim2=4).sum(dim=(0, -1))[:, :n, :n].contiguous()
    dense = alloc((heads, n, n), part.dtype, part.device)
    block_e = 256
    with _on_device(part):
        _reduce_bias_kernel[(triton.cdiv(n * n, block_e), heads)](
            part, dense, chunks, n * n, N=n, NP=np_rows, PACKED=packed, BLOCK_E=block_e,
        )  # fmt: skip
    return dense


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
    table = alloc((geom.table_rows, heads), dense.dtype, dense.device)
    block_r = 128
    with _on_device(dense):
        _fold_bias_kernel[(triton.cdiv(geom.table_rows, block_r), heads)](
            dense, row_ptr, cols, table, dense.shape[1], geom.table_rows, max_count,
            table.stride(0), table.stride(1), BLOCK_R=block_r,
        )  # fmt: skip
    return table
