"""The two-pass window-attention backward: windows larger than one tile (NP > BLOCK: L2-L5).

Pass 1 (`_bwd_dq_bias_kernel`) holds a query block against the whole window's keys, so dq and the
bias-gradient rows of that block are complete in registers (the biggest windows take their keys
in parts and sum those rows in the program's own slice of the bias partials instead), and writes
delta = rowsum(dO * O) for pass 2. Pass 2 (`_bwd_dkdv_kernel`, FlashAttention-2's dk/dv loop)
reads that delta. delta is always computed in-kernel, never by torch ops. Bias tiles are plain
(query block, key block) tiles of the dense (NP, NP) bias, loaded beside the keys. Every sum has
a fixed order and there are no atomics: gradients are bitwise reproducible.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_rows import bias_tile, load_q_side, load_rows, offset, rows_info, tile_grads, token

# Elements of one (query rows x window keys) fp32 tile of the dq/bias pass. ptxas (sm_90a) spills
# at (32 or 64) x 128 with 4 or 8 warps; 16 query rows against the whole window do not, up to
# NP = 512 at head_dim 32, with 4 warps to NP = 128 and 8 beyond (BENCHMARKS.md).
DQ_TILE_ELEMENTS = 2048
# The dq/bias pass scores windows of up to DQ_WHOLE_WINDOW_ROWS rows at once; bigger ones in
# parts of DQ_KEYS_PER_PART keys (`dq_key_split`, compile report in BENCHMARKS.md).
DQ_WHOLE_WINDOW_ROWS = 256
DQ_KEYS_PER_PART = 128


@triton.jit
def _dq_bias_keys(
    Kh, Vh, KPh, VPh, BiasH, q, do, lse, delta, win_q, ok_q, real_q, reg_q, n_q, key0, k0,
    total_windows, s_b, s_t, s_h, s_w, qk_scale, mask_log2, N: tl.constexpr, NP: tl.constexpr,
    T: tl.constexpr, H: tl.constexpr, W: tl.constexpr, NWT: tl.constexpr, NWH: tl.constexpr,
    NWW: tl.constexpr, WT: tl.constexpr, WH: tl.constexpr, WW: tl.constexpr, ST: tl.constexpr,
    SH: tl.constexpr, SW: tl.constexpr, HEAD_DIM: tl.constexpr, KN: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_PAD_KV: tl.constexpr, SHIFTED: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """One query block against KN consecutive key rows from row `key0` (window position `k0`):
    returns (dS @ K unscaled, dS), both fp32. P needs no row maximum here (lse is known), so key
    parts are independent."""
    d = tl.arange(0, HEAD_DIM)
    c = tl.arange(0, KN)
    win_k, ok_k, real_k, b_k, t_k, h_k, w_k, reg_k = rows_info(
        key0 + c, total_windows, N, NP, T, H, W, NWT, NWH, NWW, WT, WH, WW, ST, SH, SW
    )
    kv_off = offset(b_k, t_k, h_k, w_k, s_b, s_t, s_h, s_w)
    k = load_rows(Kh, kv_off, real_k, ok_k, KPh, d, HAS_PAD_KV)
    v = load_rows(Vh, kv_off, real_k, ok_k, VPh, d, HAS_PAD_KV)
    bias = tl.zeros([1, 1], tl.float32)
    if HAS_BIAS:
        bias = bias_tile(BiasH, n_q, k0 + c, NP)
    p, ds = tile_grads(
        q, k, v, do, lse, delta, bias, win_q, ok_q, real_q, reg_q, win_k, ok_k, real_k, reg_k,
        qk_scale, mask_log2, HAS_BIAS, HAS_PAD_KV, SHIFTED, DOT_PRECISION,
    )  # fmt: skip
    return tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION), ds


@triton.jit
def _bwd_dq_bias_kernel(
    Q, K, V, Bias, KPad, VPad, DO, OUT, LSE, DELTA, DQ, DB_PART, s_b, s_t, s_h, s_w, s_n, g_b,
    g_t, g_h, g_w, g_n, s_bh, s_pn, total_windows, heads, units_per_chunk, scale, qk_scale,
    mask_log2, N: tl.constexpr, NP: tl.constexpr, T: tl.constexpr, H: tl.constexpr,
    W: tl.constexpr, NWT: tl.constexpr, NWH: tl.constexpr, NWW: tl.constexpr, WT: tl.constexpr,
    WH: tl.constexpr, WW: tl.constexpr, ST: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_Q: tl.constexpr, KEY_SPLIT: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_PAD_KV: tl.constexpr, SHIFTED: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Pass 1: query block i of every window of a chunk, against all the window's NP keys, in
    KEY_SPLIT consecutive parts of KN = NP / KEY_SPLIT keys. dq and the block's bias-gradient
    rows are complete here; delta = rowsum(dO * O) is written for pass 2.

    The block's rows of the bias sum over the chunk's windows: KEY_SPLIT == 1 holds them in
    registers and stores them once. With more parts they do not fit beside one part's tiles
    (NP = 512 at head_dim 64 spills at every warp count, BENCHMARKS.md), so each part adds its
    dS into the program's own (BLOCK_Q, KN) slice of DB_PART: written by no other program, read
    back after a barrier, small enough to stay in L2. The sum order is fixed: no atomics.

    Program (head, i, chunk); windows w = chunk * units_per_chunk + step.
    DB_PART: (chunks, heads, NP, NP) fp32.
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
    n_q = i * BLOCK_Q + tl.arange(0, BLOCK_Q)  # query positions in the window
    Qh, Kh, Vh = Q + head * s_n, K + head * s_n, V + head * s_n
    KPh, VPh, BiasH = KPad + head * s_pn, VPad + head * s_pn, Bias + head * s_bh
    part_rows = DB_PART + (chunk * heads + head).to(tl.int64) * NP * NP + n_q[:, None] * NP
    db_acc = tl.zeros([BLOCK_Q, KN], tl.float32)  # KEY_SPLIT == 1: the bias rows in registers
    for step in range(0, units_per_chunk):
        win0 = (chunk * units_per_chunk + step) * NP
        win_q, ok_q, real_q, b_q, t_q, h_q, w_q, reg_q = rows_info(
            win0 + n_q, total_windows, N, NP, T, H, W, NWT, NWH, NWW, WT, WH, WW, ST, SH, SW
        )
        q_off = offset(b_q, t_q, h_q, w_q, s_b, s_t, s_h, s_w)
        o_off = token(b_q, t_q, h_q, w_q, T, H, W) * heads + head
        q, do, lse, delta = load_q_side(Qh, DO, OUT, LSE, q_off, o_off, real_q, d, HEAD_DIM)
        tl.store(DELTA + o_off, delta, mask=real_q)
        dq = tl.zeros([BLOCK_Q, HEAD_DIM], tl.float32)
        for j in range(0, KEY_SPLIT):
            dq_part, ds = _dq_bias_keys(
                Kh, Vh, KPh, VPh, BiasH, q, do, lse, delta, win_q, ok_q, real_q, reg_q, n_q,
                win0 + j * KN, j * KN, total_windows, s_b, s_t, s_h, s_w, qk_scale, mask_log2,
                N, NP, T, H, W, NWT, NWH, NWW, WT, WH, WW, ST, SH, SW, HEAD_DIM, KN, HAS_BIAS,
                HAS_PAD_KV, SHIFTED, DOT_PRECISION,
            )  # fmt: skip
            dq += dq_part
            if HAS_BIAS:
                if KEY_SPLIT == 1:
                    db_acc += ds
                else:
                    # the first window's store initialises the slice: no zero-fill launch
                    seen = (c[None, :] < KN) & (step > 0)
                    prev = tl.load(part_rows + j * KN + c[None, :], mask=seen, other=0.0)
                    tl.store(part_rows + j * KN + c[None, :], prev + ds)
                    # this block's threads read these elements back next window: make the
                    # stores visible whatever layout the load and the store were given
                    tl.debug_barrier()
        g_off = offset(b_q, t_q, h_q, w_q, g_b, g_t, g_h, g_w)[:, None] + d[None, :]
        tl.store(
            DQ + head * g_n + g_off, (dq * scale).to(DQ.dtype.element_ty), mask=real_q[:, None]
        )
    if HAS_BIAS:
        if KEY_SPLIT == 1:
            tl.store(part_rows + c[None, :], db_acc)


@triton.jit
def _bwd_dkdv_kernel(
    Q, K, V, Bias, KPad, VPad, DO, LSE, DELTA, DK, DV, DPAD_PART, s_b, s_t, s_h, s_w, s_n, g_b,
    g_t, g_h, g_w, g_n, s_bh, s_pn, total_windows, heads, scale, qk_scale, mask_log2,
    N: tl.constexpr, NP: tl.constexpr, T: tl.constexpr, H: tl.constexpr, W: tl.constexpr,
    NWT: tl.constexpr, NWH: tl.constexpr, NWW: tl.constexpr, WT: tl.constexpr, WH: tl.constexpr,
    WW: tl.constexpr, ST: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr, NJ: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_PAD_KV: tl.constexpr, SHIFTED: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Pass 2: one key block of one window; loops over the window's query blocks (dk, dv exact).

    Program (head, key block); reads the delta pass 1 wrote. DPAD_PART: (key blocks, 2, heads, D).
    """
    tl.static_assert(BLOCK >= 16)
    tl.static_assert(HEAD_DIM >= 16)
    head = tl.program_id(0)
    pid = tl.program_id(1)
    d = tl.arange(0, HEAD_DIM)
    r = tl.arange(0, BLOCK)
    Qh, Kh, Vh = Q + head * s_n, K + head * s_n, V + head * s_n
    KPh, VPh, BiasH = KPad + head * s_pn, VPad + head * s_pn, Bias + head * s_bh
    row0 = (pid // NJ) * NP
    n_k = (pid % NJ) * BLOCK + r  # key positions in the window
    win_k, ok_k, real_k, b_k, t_k, h_k, w_k, reg_k = rows_info(
        row0 + n_k, total_windows, N, NP, T, H, W, NWT, NWH, NWW, WT, WH, WW, ST, SH, SW
    )
    kv_off = offset(b_k, t_k, h_k, w_k, s_b, s_t, s_h, s_w)
    k = load_rows(Kh, kv_off, real_k, ok_k, KPh, d, HAS_PAD_KV)
    v = load_rows(Vh, kv_off, real_k, ok_k, VPh, d, HAS_PAD_KV)
    dk = tl.zeros([BLOCK, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK, HEAD_DIM], tl.float32)
    for i in range(NJ):
        win_q, ok_q, real_q, b_q, t_q, h_q, w_q, reg_q = rows_info(
            row0 + i * BLOCK + r, total_windows, N, NP, T, H, W, NWT, NWH, NWW, WT, WH, WW, ST,
            SH, SW,
        )  # fmt: skip
        q_off = offset(b_q, t_q, h_q, w_q, s_b, s_t, s_h, s_w)
        o_off = token(b_q, t_q, h_q, w_q, T, H, W) * heads + head
        q = tl.load(Qh + q_off[:, None] + d[None, :], mask=real_q[:, None], other=0.0)
        do = tl.load(DO + o_off[:, None] * HEAD_DIM + d[None, :], mask=real_q[:, None], other=0.0)
        lse = tl.load(LSE + o_off, mask=real_q, other=0.0)
        delta = tl.load(DELTA + o_off, mask=real_q, other=0.0)
        bias = tl.zeros([1, 1], tl.float32)
        if HAS_BIAS:
            bias = bias_tile(BiasH, i * BLOCK + r, n_k, NP)
        p, ds = tile_grads(
            q, k, v, do, lse, delta, bias, win_q, ok_q, real_q, reg_q, win_k, ok_k, real_k,
            reg_k, qk_scale, mask_log2, HAS_BIAS, HAS_PAD_KV, SHIFTED, DOT_PRECISION,
        )  # fmt: skip
        dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=DOT_PRECISION)
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=DOT_PRECISION)
    dk = dk * scale
    g_off = head * g_n + offset(b_k, t_k, h_k, w_k, g_b, g_t, g_h, g_w)[:, None] + d[None, :]
    tl.store(DK + g_off, dk.to(DK.dtype.element_ty), mask=real_k[:, None])
    tl.store(DV + g_off, dv.to(DV.dtype.element_ty), mask=real_k[:, None])
    if HAS_PAD_KV:
        is_pad = (ok_k & (real_k == 0))[:, None]
        pad_part = DPAD_PART + (pid * 2 * heads + head).to(tl.int64) * HEAD_DIM
        tl.store(pad_part + d, tl.sum(tl.where(is_pad, dk, 0.0), 0))
        tl.store(pad_part + heads * HEAD_DIM + d, tl.sum(tl.where(is_pad, dv, 0.0), 0))
