"""Triton kernels for the global InfoNCE and the MTC loss. Launchers only; autograd lives in
function.py.

InfoNCE (N pairs, d features, s = exp(log_scale)):
- forward, one pass over the N×N logit tiles: each program owns a block of rows, runs an online
  log-sum-exp along them, and for every tile also writes the tile's column max and column sum of
  exps. Those (row blocks × N) partials are reduced in a fixed order into the column LSE: both
  directions in one pass, O(N·N/BLOCK_M) extra memory, never N×N.
- backward, tile recomputation: for each chunk of C columns a kernel recomputes the logit tiles
  and writes (P + Q - 2·I) for that chunk (P row softmax, Q column softmax), then two GEMMs give
  dA += G·B_J and dB_J = Gᵀ·A. Peak extra memory N·C, deterministic (no atomics).
MTC: one launch covers both directions; candidates are gathered by index inside the kernel.
Its backward scatters candidate gradients with float atomics, so it is not bitwise deterministic.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from .._triton_utils import dot_precision

LN2 = 0.6931471805599453
# Finite, not -inf: masked lanes must give exp2(NEG - m) = 0 without inf - inf = NaN.
NEG = tl.constexpr(-1.0e30)

# Forward row blocks of 128 halve the column partials ((N / BLOCK_M) x N floats, twice).
FWD_BLOCK_M, BLOCK_M, BLOCK_N, BLOCK_K = 128, 64, 64, 64
GRAD_CHUNK = 2048  # columns of G held at once in backward: N x 2048 elements


def _on_device(x: torch.Tensor):
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


@triton.jit
def _logits_tile(A, B, rows, cols, n, d, s_am, s_bm, scale_log2, BLOCK_K: tl.constexpr,
                 DOT_PRECISION: tl.constexpr):  # fmt: skip
    """(BLOCK_M, BLOCK_N) logits a_rows · b_colsᵀ · scale in log2 units, fp32 accumulator."""
    acc = tl.zeros([rows.shape[0], cols.shape[0]], tl.float32)
    for k0 in range(0, d, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(
            A + rows[:, None] * s_am + k[None, :],
            mask=(rows < n)[:, None] & (k < d)[None, :],
            other=0.0,
        )
        b = tl.load(
            B + cols[:, None] * s_bm + k[None, :],
            mask=(cols < n)[:, None] & (k < d)[None, :],
            other=0.0,
        )
        acc += tl.dot(a, tl.trans(b), input_precision=DOT_PRECISION)
    return acc * scale_log2


@triton.jit
def _infonce_fwd_kernel(
    A, B, LOG_SCALE, LSE_ROW, COL_MAX, COL_SUM, n, d, s_am, s_bm,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    tl.static_assert(BLOCK_M >= 16 and BLOCK_N >= 16 and BLOCK_K >= 16)  # tl.dot tiles
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n
    scale_log2 = tl.exp(tl.load(LOG_SCALE).to(tl.float32)) * 1.4426950408889634
    m_i = tl.full([BLOCK_M], NEG, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    for j0 in range(0, n, BLOCK_N):
        cols = j0 + tl.arange(0, BLOCK_N)
        col_ok = cols < n
        s = _logits_tile(A, B, rows, cols, n, d, s_am, s_bm, scale_log2, BLOCK_K, DOT_PRECISION)
        # rows: online log-sum-exp over this tile's valid columns
        s_rows = tl.where(col_ok[None, :], s, NEG)
        m_new = tl.maximum(m_i, tl.max(s_rows, 1))
        l_i = l_i * tl.exp2(m_i - m_new) + tl.sum(tl.exp2(s_rows - m_new[:, None]), 1)
        m_i = m_new
        # columns: this row block's partial max and sum of exps, reduced on the host in order
        s_cols = tl.where(row_ok[:, None], s, NEG)
        c_max = tl.max(s_cols, 0)
        c_sum = tl.sum(tl.exp2(s_cols - c_max[None, :]), 0)
        tl.store(COL_MAX + pid * n + cols, c_max, mask=col_ok)
        tl.store(COL_SUM + pid * n + cols, c_sum, mask=col_ok)
    tl.store(LSE_ROW + rows, (m_i + tl.log2(l_i)) * 0.6931471805599453, mask=row_ok)


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
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    local = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = col0 + local
    valid = (rows < n)[:, None] & ((cols < n) & (local < chunk))[None, :]
    scale_log2 = tl.exp(tl.load(LOG_SCALE).to(tl.float32)) * 1.4426950408889634
    s = _logits_tile(A, B, rows, cols, n, d, s_am, s_bm, scale_log2, BLOCK_K, DOT_PRECISION)
    lse_r = tl.load(LSE_ROW + rows, mask=rows < n, other=0.0) * 1.4426950408889634
    lse_c = tl.load(LSE_COL + cols, mask=cols < n, other=0.0) * 1.4426950408889634
    g = tl.exp2(s - lse_r[:, None]) + tl.exp2(s - lse_c[None, :])
    g = tl.where(rows[:, None] == cols[None, :], g - 2.0, g)  # both labels sit on the diagonal
    g = tl.where(valid, g, 0.0)
    tl.store(G + rows[:, None] * s_gm + local[None, :], g.to(G.dtype.element_ty), mask=valid)
    part = tl.sum(tl.sum(g * (s * 0.6931471805599453), 1), 0)
    tl.store(DLS_PART + pid_m * tl.num_programs(1) + pid_n, part)


def infonce_fwd(a: torch.Tensor, b: torch.Tensor, log_scale: torch.Tensor):
    """a, b: (N, d), unit stride in d; log_scale: 0-dim. Returns (loss fp32, lse_row, lse_col)."""
    n, d = a.shape
    n_row_blocks = triton.cdiv(n, FWD_BLOCK_M)
    f32 = dict(dtype=torch.float32, device=a.device)
    lse_row = torch.empty(n, **f32)
    col_max = torch.empty((n_row_blocks, n), **f32)
    col_sum = torch.empty((n_row_blocks, n), **f32)
    log_scale32 = log_scale.detach().float().reshape(1)
    with _on_device(a):
        _infonce_fwd_kernel[(n_row_blocks,)](
            a, b, log_scale32, lse_row, col_max, col_sum, n, d, a.stride(0), b.stride(0),
            BLOCK_M=FWD_BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K,
            DOT_PRECISION=dot_precision(a.dtype), num_warps=8,
        )  # fmt: skip
    # column log-sum-exp from the per-row-block partials (log2 units), in a fixed order
    top = col_max.amax(dim=0)
    lse_col = (top + torch.log2((col_sum * torch.exp2(col_max - top)).sum(0))) * LN2
    diag = log_scale32.exp() * (a.float() * b.float()).sum(-1)
    loss = (lse_row - diag).mean() + (lse_col - diag).mean()
    return loss, lse_row, lse_col


def infonce_bwd(grad, a, b, log_scale, lse_row, lse_col, chunk: int | None = None):
    """Gradients (da, db, dlog_scale) of the loss of `infonce_fwd` for upstream `grad` (0-dim).

    Deterministic: G chunks are written, not accumulated, and every sum runs in a fixed order.
    """
    n, d = a.shape
    chunk = min(chunk or GRAD_CHUNK, n)
    log_scale32 = log_scale.detach().float().reshape(1)
    g_dtype = a.dtype if a.dtype in (torch.float16, torch.bfloat16) else torch.float32
    G = torch.empty((n, chunk), dtype=g_dtype, device=a.device)
    da = torch.zeros((n, d), dtype=torch.float32, device=a.device)  # sums over column chunks
    db = torch.empty((n, d), dtype=b.dtype, device=a.device)  # each chunk's rows are final
    factor = grad.float() / n  # G holds P + Q - 2I; dL/dlogits = G * grad / N
    coef = factor * log_scale32.exp()  # dlogits/da = scale * b
    grid_m, grid_n = triton.cdiv(n, BLOCK_M), triton.cdiv(chunk, BLOCK_N)
    parts = []
    with _on_device(a):
        for col0 in range(0, n, chunk):
            width = min(chunk, n - col0)
            dls_part = torch.empty(grid_m * grid_n, dtype=torch.float32, device=a.device)
            _infonce_grad_kernel[(grid_m, triton.cdiv(width, BLOCK_N))](
                a, b, log_scale32, lse_row, lse_col, G, dls_part, n, d, col0, width,
                a.stride(0), b.stride(0), G.stride(0), BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N,
                BLOCK_K=BLOCK_K, DOT_PRECISION=dot_precision(a.dtype), num_warps=4,
            )  # fmt: skip
            parts.append(dls_part[: grid_m * triton.cdiv(width, BLOCK_N)])
            g_j = G[:, :width]
            cols = slice(col0, col0 + width)
            da += (g_j @ b[cols].to(g_dtype)).float()
            db[cols] = ((g_j.t() @ a.to(g_dtype)).float() * coef).to(b.dtype)
    da = (da * coef).to(a.dtype)
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


MTC_BLOCK_R, MTC_BLOCK_D = 16, 128


def _mtc_launch(feats, keys, values, other, num_other_neg):
    from .reference import mtc_candidates, mtc_labels

    _, batch, clips, d = feats.shape
    samples, positions = mtc_candidates(values, other, num_other_neg)
    labels = mtc_labels(keys, values)
    nc = samples.shape[1]
    consts = dict(NK=keys.shape[1], NC=nc, NCP=triton.next_power_of_2(nc), BLOCK_R=MTC_BLOCK_R,
                  BLOCK_D=min(MTC_BLOCK_D, triton.next_power_of_2(d)))  # fmt: skip
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
