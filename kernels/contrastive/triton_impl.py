"""Triton kernels for the global InfoNCE and the MTC loss. Launchers only; autograd lives in
function.py.

InfoNCE (N pairs, d features, s = exp(log_scale); logits in log2 units inside the kernels):
- forward, one pass over the N×N logit tiles on a 2-D grid (row blocks × column splits). Program
  (i, j) runs an online log-sum-exp over split j's columns for row block i and writes one row
  partial (the LSE of its rows over those columns); for every tile it also writes the tile's
  column partial (the LSE of the tile's columns over row block i). Splits are chosen from the
  SM count (`parallel_target`) so that a small N still fills the GPU; the choice is fixed per
  (N, device), so results are bitwise reproducible there. A merge kernel then reduces the
  (splits × N) row partials and (row blocks × N) column partials in a fixed order (no atomics)
  into both LSEs, and computes the positives a_i·b_i·s in fp32. Both directions in one pass;
  extra memory (row blocks + splits) × N floats, never N×N.
- backward, tile recomputation: for each chunk of C columns a kernel recomputes the logit tiles
  and writes (P + Q - 2·I) for that chunk (P row softmax, Q column softmax) in the inputs'
  dtype, then two GEMMs give dA += G·B_J and dB_J = Gᵀ·A. C keeps G within GRAD_BYTES; peak
  extra memory G plus an fp32 (N, d) accumulator for dA; deterministic (no atomics).
- tiles (`fwd_tiles`, `grad_tiles`): fp16/bf16 dots run on tensor cores with 128×128 tiles;
  fp32 dots are IEEE (`dot_precision`), which run on the FMA units and take 64×64 tiles: larger
  ones spill registers.
MTC: one launch covers both directions; candidates are gathered by index inside the kernel.
Its backward scatters candidate gradients with float atomics, so it is not bitwise deterministic.
Nothing here reads a device value on the host: the launchers can be captured in a CUDA graph.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .._triton_utils import dot_precision, parallel_target

LN2 = 0.6931471805599453
# Finite, not -inf: masked lanes must give exp2(NEG - m) = 0 without inf - inf = NaN.
NEG = tl.constexpr(-1.0e30)

GRAD_BYTES = 1 << 27  # G chunk held at once in backward: at most 128 MiB (N x C elements)
MERGE_BLOCK, MERGE_BLOCK_D = 64, 32


class Tiles(NamedTuple):
    block_m: int
    block_n: int
    block_k: int
    num_warps: int


def fwd_tiles(dtype: torch.dtype, d: int) -> Tiles:
    """Forward tile shape. ptxas for sm_90 at d = 1024 with the JIT's 16-divisibility
    specialisation (registers, spill bytes, shared memory with 3 pipeline stages):

    - fp16/bf16: 128×128 tensor-core tiles, BLOCK_K 32, 8 warps: 182 regs, 0 spills, 48 KiB.
      BLOCK_K 64 also fits (251 regs, 96 KiB) but leaves no register headroom for the online-LSE
      work on the fp32 tile; without the alignment specialisation (d not a multiple of 16)
      BLOCK_K 64 spills 112 bytes, BLOCK_K 32 none.
    - fp32 (IEEE dots on the FMA units): 64×64, BLOCK_K 32, 8 warps: 128 regs, 0 spills (168 at
      d = 72). The former 128×64, BLOCK_K 64 spilled 76 bytes at d = 72.
    """
    block_k = max(16, min(32, triton.next_power_of_2(d)))
    if dtype == torch.float32:
        return Tiles(64, 64, block_k, 8)
    return Tiles(128, 128, block_k, 8)


def grad_tiles(dtype: torch.dtype, d: int) -> Tiles:
    """Backward G-tile shape (same checks): fp16/bf16 128×128, BLOCK_K 32, 8 warps: 172 regs,
    0 spills, 48 KiB (BLOCK_K 64: 178 regs, 96 KiB, but 4 spill bytes when d is not a multiple
    of 16); fp32 64×64, BLOCK_K 32, 4 warps: 128 regs, 0 spills (214 at d = 72; the former
    BLOCK_K 64 spilled 4 bytes, 336 at d = 72)."""
    block_k = max(16, min(32, triton.next_power_of_2(d)))
    if dtype == torch.float32:
        return Tiles(64, 64, block_k, 4)
    return Tiles(128, 128, block_k, 8)


def fwd_grid(n: int, tiles: Tiles, device: torch.device, splits: int | None = None):
    """(row blocks, column splits, columns per split) of the forward launch.

    Splits: enough programs for `parallel_target(device)` (4 per SM on a GPU), never more than
    the column tiles and never an empty split. Fixed per (N, device), so reproducible there.
    """
    row_blocks, col_tiles = triton.cdiv(n, tiles.block_m), triton.cdiv(n, tiles.block_n)
    if splits is None:
        splits = triton.cdiv(parallel_target(device), row_blocks)
    splits = max(1, min(splits, col_tiles))
    tiles_per_split = triton.cdiv(col_tiles, splits)
    splits = triton.cdiv(col_tiles, tiles_per_split)
    return row_blocks, splits, tiles_per_split * tiles.block_n


def grad_chunk(n: int, dtype: torch.dtype, block_n: int, chunk: int | None = None) -> int:
    """Columns of G per backward step: G (N × C) within GRAD_BYTES, a multiple of block_n."""
    if chunk is None:
        chunk = max(block_n, GRAD_BYTES // (n * dtype.itemsize) // block_n * block_n)
    return min(chunk, n)


def _on_device(x: torch.Tensor):
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


@triton.jit
def _logits_tile(A, B, rows_left, cols_left, d, s_am, s_bm, scale_log2, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 DOT_PRECISION: tl.constexpr):  # fmt: skip
    """(BLOCK_M, BLOCK_N) logits of the tile whose first row / column A / B point at, times
    scale, in log2 units; fp32 accumulator. Rows / columns past rows_left / cols_left read 0."""
    r = tl.arange(0, BLOCK_M)
    c = tl.arange(0, BLOCK_N)
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, d, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(
            A + r[:, None] * s_am + k[None, :],
            mask=(r < rows_left)[:, None] & (k < d)[None, :],
            other=0.0,
        )
        b = tl.load(
            B + c[:, None] * s_bm + k[None, :],
            mask=(c < cols_left)[:, None] & (k < d)[None, :],
            other=0.0,
        )
        acc += tl.dot(a, tl.trans(b), input_precision=DOT_PRECISION)
    return acc * scale_log2


@triton.jit
def _infonce_fwd_kernel(
    A, B, LOG_SCALE, ROW_PART, COL_PART, n, d, cols_per_split, s_am, s_bm,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Program (i, j): row block i × column split j. ROW_PART[j, rows] = log2-sum-exp of the
    rows over the split's columns; COL_PART[i, cols] = log2-sum-exp of each column over row
    block i (one float per partial, not a (max, sum) pair: half the scratch)."""
    tl.static_assert(BLOCK_M >= 16 and BLOCK_N >= 16 and BLOCK_K >= 16)  # tl.dot tiles
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    row0 = pid_m * BLOCK_M
    r = tl.arange(0, BLOCK_M)
    c = tl.arange(0, BLOCK_N)
    row_ok = r < n - row0
    # int64 bases: N·d and (row blocks)·N may pass 2^31; offsets within a tile stay int32
    A_blk = A + row0.to(tl.int64) * s_am
    col_part = COL_PART + pid_m.to(tl.int64) * n
    scale_log2 = tl.exp(tl.load(LOG_SCALE).to(tl.float32)) * 1.4426950408889634
    m_i = tl.full([BLOCK_M], NEG, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    col_start = pid_s * cols_per_split
    col_end = tl.minimum(col_start + cols_per_split, n)
    B_tile = B + col_start.to(tl.int64) * s_bm
    for j0 in range(col_start, col_end, BLOCK_N):
        col_ok = c < n - j0
        s = _logits_tile(A_blk, B_tile, n - row0, n - j0, d, s_am, s_bm, scale_log2, BLOCK_M,
                         BLOCK_N, BLOCK_K, DOT_PRECISION)  # fmt: skip
        B_tile += BLOCK_N * s_bm
        # rows: online log-sum-exp over this tile's valid columns
        s_rows = tl.where(col_ok[None, :], s, NEG)
        m_new = tl.maximum(m_i, tl.max(s_rows, 1))
        l_i = l_i * tl.exp2(m_i - m_new) + tl.sum(tl.exp2(s_rows - m_new[:, None]), 1)
        m_i = m_new
        # columns: this row block's partial log-sum-exp, merged across row blocks in order
        s_cols = tl.where(row_ok[:, None], s, NEG)
        c_max = tl.max(s_cols, 0)
        c_lse = c_max + tl.log2(tl.sum(tl.exp2(s_cols - c_max[None, :]), 0))
        tl.store(col_part + j0 + c, c_lse, mask=col_ok)
    tl.store(ROW_PART + pid_s.to(tl.int64) * n + row0 + r, m_i + tl.log2(l_i), mask=row_ok)


@triton.jit
def _merge_parts(PART, parts, n, idx, ok):
    """log2-sum-exp over `parts` partials PART[p, idx], p = 0, 1, ... in that fixed order."""
    m = tl.full(idx.shape, NEG, tl.float32)
    total = tl.zeros(idx.shape, tl.float32)
    ptr = PART + idx
    for _ in range(0, parts):
        x = tl.load(ptr, mask=ok, other=NEG)
        m_new = tl.maximum(m, x)
        total = total * tl.exp2(m - m_new) + tl.exp2(x - m_new)
        m = m_new
        ptr += n  # pointer arithmetic is 64-bit: parts × N may pass 2^31
    return m + tl.log2(total)


@triton.jit
def _infonce_merge_kernel(
    A, B, LOG_SCALE, ROW_PART, row_parts, COL_PART, col_parts, LSE_ROW, LSE_COL, TERM, n, d,
    s_am, s_bm, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Item i: lse_row_i, lse_col_i (natural log) and TERM_i = lse_row_i + lse_col_i - 2·s_ii,
    the positive s_ii = s·a_i·b_i from fp32 products (as the reference computes it)."""
    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = idx < n
    lse_r = _merge_parts(ROW_PART, row_parts, n, idx, ok) * 0.6931471805599453
    lse_c = _merge_parts(COL_PART, col_parts, n, idx, ok) * 0.6931471805599453
    idx64 = idx.to(tl.int64)
    acc = tl.zeros([BLOCK], tl.float32)
    for k0 in range(0, d, BLOCK_D):
        k = k0 + tl.arange(0, BLOCK_D)
        mask = ok[:, None] & (k < d)[None, :]
        a = tl.load(A + idx64[:, None] * s_am + k[None, :], mask=mask, other=0.0)
        b = tl.load(B + idx64[:, None] * s_bm + k[None, :], mask=mask, other=0.0)
        acc += tl.sum(a.to(tl.float32) * b.to(tl.float32), 1)
    diag = acc * tl.exp(tl.load(LOG_SCALE).to(tl.float32))
    tl.store(LSE_ROW + idx, lse_r, mask=ok)
    tl.store(LSE_COL + idx, lse_c, mask=ok)
    tl.store(TERM + idx, lse_r + lse_c - 2.0 * diag, mask=ok)


@triton.jit
def _infonce_grad_kernel(
    A, B, LOG_SCALE, LSE_ROW, LSE_COL, G, DLS_PART, n, d, col0, chunk, s_am, s_bm, s_gm,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """G[:, col0:col0+chunk] = P + Q - 2·I (unscaled: the host applies grad / N) and this tile's
    share of sum(G · logits) for the logit-scale gradient."""
    tl.static_assert(BLOCK_M >= 16 and BLOCK_N >= 16 and BLOCK_K >= 16)
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    row0 = pid_m * BLOCK_M
    loc0 = pid_n * BLOCK_N  # first column of this tile within the chunk
    r = tl.arange(0, BLOCK_M)
    c = tl.arange(0, BLOCK_N)
    rows = row0 + r
    cols = col0 + loc0 + c
    cols_left = tl.minimum(n - col0, chunk) - loc0
    valid = (r < n - row0)[:, None] & (c < cols_left)[None, :]
    scale_log2 = tl.exp(tl.load(LOG_SCALE).to(tl.float32)) * 1.4426950408889634
    s = _logits_tile(A + row0.to(tl.int64) * s_am, B + (col0 + loc0).to(tl.int64) * s_bm,
                     n - row0, cols_left, d, s_am, s_bm, scale_log2, BLOCK_M, BLOCK_N, BLOCK_K,
                     DOT_PRECISION)  # fmt: skip
    lse_r = tl.load(LSE_ROW + rows, mask=rows < n, other=0.0) * 1.4426950408889634
    lse_c = tl.load(LSE_COL + cols, mask=c < cols_left, other=0.0) * 1.4426950408889634
    g = tl.exp2(s - lse_r[:, None]) + tl.exp2(s - lse_c[None, :])
    g = tl.where(rows[:, None] == cols[None, :], g - 2.0, g)  # both labels sit on the diagonal
    g = tl.where(valid, g, 0.0)
    G_blk = G + row0.to(tl.int64) * s_gm + loc0
    tl.store(G_blk + r[:, None] * s_gm + c[None, :], g.to(G.dtype.element_ty), mask=valid)
    part = tl.sum(tl.sum(g * (s * 0.6931471805599453), 1), 0)
    tl.store(DLS_PART + pid_m * tl.num_programs(1) + pid_n, part)


def infonce_fwd(a: torch.Tensor, b: torch.Tensor, log_scale: torch.Tensor,
                splits: int | None = None):  # fmt: skip
    """a, b: (N, d), unit stride in d; log_scale: 0-dim. Returns (loss fp32, lse_row, lse_col).

    `splits` overrides the number of column splits (tests); by default `fwd_grid` picks it.
    """
    n, d = a.shape
    tiles = fwd_tiles(a.dtype, d)
    row_blocks, splits, cols_per_split = fwd_grid(n, tiles, a.device, splits)
    f32 = dict(dtype=torch.float32, device=a.device)
    row_part = torch.empty((splits, n), **f32)
    col_part = torch.empty((row_blocks, n), **f32)
    lse_row, lse_col, term = (torch.empty(n, **f32) for _ in range(3))
    log_scale32 = log_scale.detach().float().reshape(1)
    with _on_device(a):
        _infonce_fwd_kernel[(row_blocks, splits)](
            a, b, log_scale32, row_part, col_part, n, d, cols_per_split, a.stride(0),
            b.stride(0), BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, BLOCK_K=tiles.block_k,
            DOT_PRECISION=dot_precision(a.dtype), num_warps=tiles.num_warps,
        )  # fmt: skip
        _infonce_merge_kernel[(triton.cdiv(n, MERGE_BLOCK),)](
            a, b, log_scale32, row_part, splits, col_part, row_blocks, lse_row, lse_col, term,
            n, d, a.stride(0), b.stride(0), BLOCK=MERGE_BLOCK,
            BLOCK_D=min(MERGE_BLOCK_D, triton.next_power_of_2(d)), num_warps=4,
        )  # fmt: skip
    del row_part, col_part  # freed before anything else is allocated
    loss = term.sum() / n  # mean(lse_row - diag) + mean(lse_col - diag), fixed-order sum
    return loss, lse_row, lse_col


def infonce_bwd(grad, a, b, log_scale, lse_row, lse_col, chunk: int | None = None):
    """Gradients (da, db, dlog_scale) of the loss of `infonce_fwd` for upstream `grad` (0-dim).

    Deterministic: G chunks are written, not accumulated, and every sum runs in a fixed order.
    `chunk` overrides the columns of G per step (tests); by default `grad_chunk` picks it.
    """
    n, d = a.shape
    tiles = grad_tiles(a.dtype, d)
    g_dtype = a.dtype if a.dtype in (torch.float16, torch.bfloat16) else torch.float32
    chunk = grad_chunk(n, g_dtype, tiles.block_n, chunk)
    log_scale32 = log_scale.detach().float().reshape(1)
    G = torch.empty((n, chunk), dtype=g_dtype, device=a.device)
    da = torch.zeros((n, d), dtype=torch.float32, device=a.device)  # sums over column chunks
    db = torch.empty((n, d), dtype=b.dtype, device=a.device)  # each chunk's rows are final
    factor = grad.float() / n  # G holds P + Q - 2I; dL/dlogits = G * grad / N
    coef = factor * log_scale32.exp()  # dlogits/da = scale * b
    grid_m = triton.cdiv(n, tiles.block_m)
    a_g = a.to(g_dtype)
    parts = []
    with _on_device(a):
        for col0 in range(0, n, chunk):
            width = min(chunk, n - col0)
            grid_n = triton.cdiv(width, tiles.block_n)
            dls_part = torch.empty(grid_m * grid_n, dtype=torch.float32, device=a.device)
            _infonce_grad_kernel[(grid_m, grid_n)](
                a, b, log_scale32, lse_row, lse_col, G, dls_part, n, d, col0, width,
                a.stride(0), b.stride(0), G.stride(0), BLOCK_M=tiles.block_m,
                BLOCK_N=tiles.block_n, BLOCK_K=tiles.block_k,
                DOT_PRECISION=dot_precision(a.dtype), num_warps=tiles.num_warps,
            )  # fmt: skip
            parts.append(dls_part)
            g_j = G[:, :width]
            cols = slice(col0, col0 + width)
            b_j = b[cols].to(g_dtype)
            if g_dtype == torch.float32:
                da.addmm_(g_j, b_j)  # in place: no (N, d) temporary
            else:  # the product in the inputs' dtype (one (N, d) temporary), summed in fp32
                da += g_j @ b_j
            db[cols] = ((g_j.t() @ a_g).float() * coef).to(b.dtype)
    da = da.mul_(coef).to(a.dtype)
    dlog_scale = (torch.cat(parts).sum() * factor).to(log_scale.dtype).reshape(log_scale.shape)
    return da, db, dlog_scale


# ----------------------------------------------------------------------------------------------
# MTC


@triton.jit
def _mtc_logits(FEATS, q_base, cand_base, cand_ok, rows_ok, d, inv_temp, BLOCK_R: tl.constexpr,
                BLOCK_D: tl.constexpr, NCP: tl.constexpr, NC: tl.constexpr):  # fmt: skip
    """(BLOCK_R, NCP) logits q·cand / τ; q_base (BLOCK_R,), cand_base (BLOCK_R, NCP) offsets."""
    logits = tl.zeros([BLOCK_R, NCP], tl.float32)
    c_idx = tl.arange(0, NCP)
    for d0 in range(0, d, BLOCK_D):
        dd = d0 + tl.arange(0, BLOCK_D)
        d_ok = dd < d
        q = tl.load(
            FEATS + q_base[:, None] + dd[None, :], mask=rows_ok[:, None] & d_ok[None, :], other=0.0
        )
        q = q.to(tl.float32)
        for c in tl.static_range(NC):
            base = tl.sum(tl.where(c_idx[None, :] == c, cand_base, 0), 1)  # (BLOCK_R,)
            ok = tl.sum(tl.where(c_idx[None, :] == c, cand_ok.to(tl.int32), 0), 1) > 0
            x = tl.load(
                FEATS + base[:, None] + dd[None, :], mask=ok[:, None] & d_ok[None, :], other=0.0
            )
            part = tl.sum(q * x.to(tl.float32), 1)
            logits += tl.where(c_idx[None, :] == c, part[:, None], 0.0)
    return logits * inv_temp


@triton.jit
def _mtc_rows(KEYS, LABELS, CAND_SAMPLE, CAND_POS, rows, n_rows_dir, batch, clips, d,
              NK: tl.constexpr, NC: tl.constexpr, NCP: tl.constexpr):  # fmt: skip
    """Per query row r = (direction, sample b, key slot i): the query's offset into the stacked
    (2, B, M, d) features, its candidates' offsets (BLOCK_R, NCP) in the other modality, their
    validity, the label and whether the row counts."""
    direction = rows // n_rows_dir
    within = rows % n_rows_dir
    b = within // NK
    i = within % NK
    in_range = rows < 2 * n_rows_dir
    key = tl.load(KEYS + b * NK + i, mask=in_range, other=-1)
    label = tl.load(LABELS + b * NK + i, mask=in_range, other=-100)
    active = in_range & (label >= 0)
    q_base = ((direction * batch + b) * clips + tl.maximum(key, 0)).to(tl.int64) * d
    c_idx = tl.arange(0, NCP)
    c_ok_lane = c_idx < NC
    sample = tl.load(
        CAND_SAMPLE + b[:, None] * NC + c_idx[None, :],
        mask=in_range[:, None] & c_ok_lane[None, :],
        other=0,
    )
    pos = tl.load(
        CAND_POS + b[:, None] * NC + c_idx[None, :],
        mask=in_range[:, None] & c_ok_lane[None, :],
        other=-1,
    )
    other_dir = 1 - direction
    cand_base = ((other_dir[:, None] * batch + sample) * clips + tl.maximum(pos, 0)).to(
        tl.int64
    ) * d
    cand_ok = (pos >= 0) & active[:, None]
    return q_base, cand_base, cand_ok, label, active


@triton.jit
def _mtc_fwd_kernel(
    FEATS, KEYS, LABELS, CAND_SAMPLE, CAND_POS, LOSS, LSE, n_rows_dir, batch, clips, d, inv_temp,
    NK: tl.constexpr, NC: tl.constexpr, NCP: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    q_base, cand_base, cand_ok, label, active = _mtc_rows(
        KEYS, LABELS, CAND_SAMPLE, CAND_POS, rows, n_rows_dir, batch, clips, d, NK, NC, NCP
    )
    logits = _mtc_logits(
        FEATS, q_base, cand_base, cand_ok, active, d, inv_temp, BLOCK_R, BLOCK_D, NCP, NC
    )
    logits = tl.where(cand_ok, logits, NEG)
    m = tl.max(logits, 1)
    lse = m + tl.log(tl.sum(tl.exp(logits - m[:, None]), 1))
    c_idx = tl.arange(0, NCP)
    picked = tl.sum(tl.where(c_idx[None, :] == label[:, None], logits, 0.0), 1)
    in_range = rows < 2 * n_rows_dir
    tl.store(LOSS + rows, tl.where(active, lse - picked, 0.0), mask=in_range)
    tl.store(LSE + rows, lse, mask=in_range)


@triton.jit
def _mtc_bwd_kernel(
    FEATS, KEYS, LABELS, CAND_SAMPLE, CAND_POS, LSE, ROW_GRAD, DFEATS, n_rows_dir, batch, clips,
    d, inv_temp, NK: tl.constexpr, NC: tl.constexpr, NCP: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    q_base, cand_base, cand_ok, label, active = _mtc_rows(
        KEYS, LABELS, CAND_SAMPLE, CAND_POS, rows, n_rows_dir, batch, clips, d, NK, NC, NCP
    )
    in_range = rows < 2 * n_rows_dir
    logits = _mtc_logits(
        FEATS, q_base, cand_base, cand_ok, active, d, inv_temp, BLOCK_R, BLOCK_D, NCP, NC
    )
    lse = tl.load(LSE + rows, mask=in_range, other=0.0)
    row_grad = tl.load(ROW_GRAD + rows // n_rows_dir, mask=in_range, other=0.0)  # grad / count
    c_idx = tl.arange(0, NCP)
    p = tl.exp(tl.where(cand_ok, logits - lse[:, None], NEG))  # masked lanes: exactly 0
    dlogits = (p - tl.where(c_idx[None, :] == label[:, None], 1.0, 0.0)) * row_grad[:, None]
    dlogits = tl.where(cand_ok, dlogits, 0.0) * inv_temp  # (BLOCK_R, NCP), zero for idle rows
    for d0 in range(0, d, BLOCK_D):
        dd = d0 + tl.arange(0, BLOCK_D)
        d_ok = dd < d
        q = tl.load(
            FEATS + q_base[:, None] + dd[None, :], mask=active[:, None] & d_ok[None, :], other=0.0
        )
        q = q.to(tl.float32)
        dq = tl.zeros([BLOCK_R, BLOCK_D], tl.float32)
        for c in tl.static_range(NC):
            sel = c_idx[None, :] == c
            base = tl.sum(tl.where(sel, cand_base, 0), 1)
            ok = tl.sum(tl.where(sel, cand_ok.to(tl.int32), 0), 1) > 0
            w = tl.sum(tl.where(sel, dlogits, 0.0), 1)  # (BLOCK_R,)
            x = tl.load(
                FEATS + base[:, None] + dd[None, :], mask=ok[:, None] & d_ok[None, :], other=0.0
            )
            dq += w[:, None] * x.to(tl.float32)
            # atomic add: a candidate vector is shared by several query rows
            tl.atomic_add(
                DFEATS + base[:, None] + dd[None, :],
                w[:, None] * q,
                mask=ok[:, None] & d_ok[None, :],
            )
        tl.atomic_add(
            DFEATS + q_base[:, None] + dd[None, :], dq, mask=active[:, None] & d_ok[None, :]
        )


# ptxas, sm_90, d = 1024, bf16 (registers / spill bytes, forward and backward): 16×128 at 4
# warps spilled in backward (93 / 0, 255 / 160; fp32 255 / 404: five candidate tiles and their
# atomics with 64-bit addresses each); 8×64 at 4 warps: 55 / 0 and 88 / 0 (fp32 96 / 0).
MTC_BLOCK_R, MTC_BLOCK_D, MTC_WARPS = 8, 64, 4


def _mtc_launch(feats, keys, values, other, num_other_neg):
    from .reference import mtc_candidates, mtc_labels

    _, batch, clips, d = feats.shape
    samples, positions = mtc_candidates(values, other, num_other_neg)
    labels = mtc_labels(keys, values)
    nc = samples.shape[1]
    consts = dict(NK=keys.shape[1], NC=nc, NCP=triton.next_power_of_2(nc), BLOCK_R=MTC_BLOCK_R,
                  BLOCK_D=min(MTC_BLOCK_D, triton.next_power_of_2(d)),
                  num_warps=MTC_WARPS)  # fmt: skip
    args = (keys.contiguous(), labels.contiguous(), samples.contiguous(), positions.contiguous())
    n_rows_dir = batch * keys.shape[1]
    count = (labels >= 0).sum().to(torch.float32)
    return args, consts, n_rows_dir, count


def mtc_fwd(feats, keys, values, other, temperature: float, num_other_neg: int):
    """feats: (2, B, M, d) contiguous (clips, then sentences); keys (B, K), values (B, V),
    other (B,) int64 in [0, M) or -1. Returns (loss 0-dim fp32, lse per query row (2*B*K,))."""
    _, batch, clips, d = feats.shape
    args, consts, n_rows_dir, count = _mtc_launch(feats, keys, values, other, num_other_neg)
    loss_rows = torch.empty(2 * n_rows_dir, dtype=torch.float32, device=feats.device)
    lse = torch.empty_like(loss_rows)
    with _on_device(feats):
        _mtc_fwd_kernel[(triton.cdiv(2 * n_rows_dir, MTC_BLOCK_R),)](
            feats, *args, loss_rows, lse, n_rows_dir, batch, clips, d, 1.0 / temperature, **consts
        )
    # mean over the counted rows of each direction; a direction with none contributes 0
    per_dir = loss_rows.view(2, n_rows_dir).sum(1)
    loss = torch.where(count > 0, per_dir / count.clamp(min=1), 0.0).sum()
    return loss, lse


def mtc_bwd(grad, feats, keys, values, other, lse, temperature: float, num_other_neg: int):
    """d(loss)/d(feats) for upstream `grad`, in feats' dtype. Float atomics: not bitwise
    deterministic (a candidate vector is shared by several query rows)."""
    _, batch, clips, d = feats.shape
    args, consts, n_rows_dir, count = _mtc_launch(feats, keys, values, other, num_other_neg)
    row_grad = (grad.float() / count.clamp(min=1)).reshape(1).expand(2).contiguous()
    dfeats = torch.zeros(feats.shape, dtype=torch.float32, device=feats.device)
    with _on_device(feats):
        _mtc_bwd_kernel[(triton.cdiv(2 * n_rows_dir, MTC_BLOCK_R),)](
            feats, *args, lse, row_grad, dfeats, n_rows_dir, batch, clips, d, 1.0 / temperature,
            **consts,
        )  # fmt: skip
    return dfeats.to(feats.dtype)
