"""The window-attention forward kernel: persistent, online softmax, one launch.

A "unit" is BLOCK rows of the virtual row space (triton_rows). When NP <= BLOCK a unit holds
BLOCK // NP whole windows that attend block-diagonally (a 30-token window alone would leave a
64-row tile half empty, and tl.dot needs tiles >= 16); the bias tile is then the same for every
unit and is loaded once per program, before the loop. When NP > BLOCK a window spans NJ = NP //
BLOCK units and each unit runs an online softmax over the window's NJ key blocks, loading the
(query block, key block) tile of the bias beside the keys.

Grids put the head on axis 0, so programs launched together read the heads of the same tokens
(one contiguous (heads, D) row of q, k, v per token) instead of striding across them. The forward
is persistent: each program walks a run of consecutive units, so the loads of the next unit
overlap the math of this one even when a window is one key block (L0-L2).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._triton_utils import autotune
from .triton_rows import NEG, bias_tile, load_rows, offset, rows_info, scores, token

FWD_BLOCK = 64


@triton.jit
def _fwd_kernel(
    Q, K, V, Bias, KPad, VPad, Out, LSE, s_b, s_t, s_h, s_w, s_n, s_bh, s_pn, total_windows,
    units, units_per_program, heads, qk_scale, mask_log2, N: tl.constexpr, NP: tl.constexpr,
    T: tl.constexpr, H: tl.constexpr, W: tl.constexpr, NWT: tl.constexpr, NWH: tl.constexpr,
    NWW: tl.constexpr, WT: tl.constexpr, WH: tl.constexpr, WW: tl.constexpr, ST: tl.constexpr,
    SH: tl.constexpr, SW: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr,
    NJ: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_PAD_KV: tl.constexpr, SHIFTED: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Persistent: program (head, p) computes units [p * units_per_program, ...) of one head.

    Q, K, V: (B, T, H, W, heads, D) with the shared strides s_b..s_n. Bias: (heads or 1, NP, NP),
    head stride s_bh (0: broadcast). Out: contiguous (B, T, H, W, heads, D); LSE: (B, T, H, W,
    heads) log2-sum-exp2 of each query's scores.
    """
    tl.static_assert(BLOCK >= 16)  # tl.dot tiles must be >= 16 on a GPU
    tl.static_assert(HEAD_DIM >= 16)
    head = tl.program_id(0)
    first = tl.program_id(1) * units_per_program
    d = tl.arange(0, HEAD_DIM)
    r = tl.arange(0, BLOCK)
    Qh, Kh, Vh = Q + head * s_n, K + head * s_n, V + head * s_n
    KPh, VPh, BiasH = KPad + head * s_pn, VPad + head * s_pn, Bias + head * s_bh
    bias = tl.zeros([BLOCK, BLOCK], tl.float32)
    if NJ == 1:
        if HAS_BIAS:
            # Whole windows per unit: every unit's tile is the same, loaded once.
            bias = bias_tile(BiasH, r % NP, r % NP, NP)
    for unit in range(first, tl.minimum(first + units_per_program, units)):
        q_rows = unit * BLOCK + r
        win_q, ok_q, real_q, b_q, t_q, h_q, w_q, reg_q = rows_info(
            q_rows, total_windows, N, NP, T, H, W, NWT, NWH, NWW, WT, WH, WW, ST, SH, SW
        )
        q_off = offset(b_q, t_q, h_q, w_q, s_b, s_t, s_h, s_w)
        q = tl.load(Qh + q_off[:, None] + d[None, :], mask=real_q[:, None], other=0.0)
        m_i = tl.full([BLOCK], NEG, tl.float32)
        l_i = tl.zeros([BLOCK], tl.float32)
        acc = tl.zeros([BLOCK, HEAD_DIM], tl.float32)  # fp32 accumulator
        kv_row0 = (unit // NJ) * NJ * BLOCK  # first row of this window (NJ == 1: this block)
        n_q = (unit % NJ) * BLOCK + r  # query positions in the window (NJ > 1)
        for j in range(NJ):
            kv_rows = kv_row0 + j * BLOCK + r
            win_k, ok_k, real_k, b_k, t_k, h_k, w_k, reg_k = rows_info(
                kv_rows, total_windows, N, NP, T, H, W, NWT, NWH, NWW, WT, WH, WW, ST, SH, SW
            )
            kv_off = offset(b_k, t_k, h_k, w_k, s_b, s_t, s_h, s_w)
            k = load_rows(Kh, kv_off, real_k, ok_k, KPh, d, HAS_PAD_KV)
            v = load_rows(Vh, kv_off, real_k, ok_k, VPh, d, HAS_PAD_KV)
            tile = bias  # NJ == 1: the program's tile; else this key block's, loaded here
            if NJ > 1:
                if HAS_BIAS:
                    tile = bias_tile(BiasH, n_q, j * BLOCK + r, NP)
            s, valid = scores(
                q, k, tile, win_q, ok_q, reg_q, win_k, ok_k, real_k, reg_k, qk_scale, mask_log2,
                HAS_BIAS, HAS_PAD_KV, SHIFTED, DOT_PRECISION,
            )  # fmt: skip
            # Online softmax in base 2 (exp2 is the native instruction).
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
            m_i = m_new
        o = acc / l_i[:, None]
        o_off = token(b_q, t_q, h_q, w_q, T, H, W) * heads + head  # contiguous (..., heads) row
        tl.store(
            Out + o_off[:, None] * HEAD_DIM + d[None, :],
            o.to(Out.dtype.element_ty),
            mask=real_q[:, None],
        )
        tl.store(LSE + o_off, m_i + tl.log2(l_i), mask=real_q)  # log2-sum-exp2, for backward


# Opt-in (LFVILA_AUTOTUNE=1): the same kernel behind an autotuner over these launch settings.
# 2 warps spilled at every shape but NP 32/64 in the compile report and was dropped.
FWD_CONFIGS = [
    triton.Config({}, num_warps=4, num_stages=2),
    triton.Config({}, num_warps=4, num_stages=3),
    triton.Config({}, num_warps=8, num_stages=2),
]
# Shared memory of the key/value pipeline stages an autotuned forward may take: a stage holds a
# (BLOCK, D) key and value tile. fp32 at head_dim 128 needs 290 KiB with three stages.
FWD_STAGE_BUDGET = 128 * 1024


def prune_fwd_configs(configs, named_args, **kwargs):
    q = named_args["Q"]
    stage = 2 * kwargs.get("BLOCK", FWD_BLOCK) * q.shape[-1] * q.element_size()
    return [c for c in configs if c.num_stages * stage <= FWD_STAGE_BUDGET]


_fwd_kernel_autotuned = autotune(
    FWD_CONFIGS,
    key=["N", "HEAD_DIM", "BLOCK", "T", "H", "W", "HAS_BIAS", "SHIFTED"],
    prune=prune_fwd_configs,
)(_fwd_kernel)


def fwd_launch(np_rows: int, block: int, head_dim: int, dtype: torch.dtype) -> dict:
    """Pinned forward launch settings for a shape (the table that replaces autotuning).

    A 64-row block at head_dim <= 64 keeps the (64, 64) fp32 score tile, the bias tile, q, the
    accumulator and the key-side row vectors in registers at 4 warps; 128-wide heads (and fp32,
    whose IEEE dots need more registers) take 8. Two stages overlap the next key block's (or,
    persistent, the next unit's) loads with this one's math.
    """
    wide = head_dim > 64 or dtype == torch.float32 or block > 64
    return dict(num_warps=8 if wide else 4, num_stages=2)
