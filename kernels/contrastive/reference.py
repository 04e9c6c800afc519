"""Pure-PyTorch specifications of LF-VILA's two contrastive losses (SPEC.md §7.3-7.4).

- `contrastive_loss_ref`: the symmetric InfoNCE between two (N, d) feature sets,
  CE(a·bᵀ·s, diag) + CE(b·aᵀ·s, diag), each a mean over rows, s = 1/τ or exp(logit_scale).
  Chunked: it never holds the N×N logits, only (chunk × N) of them, in forward and backward
  (a custom autograd Function recomputes them), so its memory stays O(N·d) at any N.
- `mtc_loss_ref`: the Multimodal Temporal Contrastive loss with LF-VILA's exact sampling
  (keys, values, "other" negatives by batch roll, temporal-proximity labels, ties ignored),
  written with explicit gathers: the readable statement of §7.4. It reads no device value on
  the host (the row count stays a tensor), so it can be captured in a CUDA graph too.
- `sample_mtc_indices` / `mtc_labels`: the sampling and labelling both backends share.

Matrix products run in the inputs' dtype (as PyTorch would compute them in bf16 or fp16);
reductions (log-sum-exp, means) in fp32 (fp64 for fp64 inputs); gradients come back in the
inputs' dtypes.
"""

from __future__ import annotations

import math

import torch

IGNORE = -100  # label of a tied (or absent) MTC row, as torch's cross_entropy ignore_index


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def default_chunk(n: int, d: int) -> int:
    """Rows per chunk: chunk × N logits stay within max(N·d, 2^20) elements (O(N·d) memory)."""
    return max(1, min(n, max(64, d, (1 << 20) // max(n, 1))))


class _ChunkedInfoNCE(torch.autograd.Function):
    """L = mean_i(lse_row_i - s_ii) + mean_j(lse_col_j - s_jj), logits s = scale · a bᵀ,
    computed chunk by chunk of rows with an online column log-sum-exp; backward recomputes."""

    @staticmethod
    def forward(ctx, a, b, log_scale, chunk: int):
        ct = _compute_dtype(a)
        scale = log_scale.to(ct).exp()
        n = a.shape[0]
        lse_row = torch.empty(n, dtype=ct, device=a.device)
        col_max = torch.full((n,), -math.inf, dtype=ct, device=a.device)
        col_sum = torch.zeros(n, dtype=ct, device=a.device)
        for i0 in range(0, n, chunk):
            logits = scale * (a[i0 : i0 + chunk] @ b.t()).to(ct)  # (chunk, N)
            lse_row[i0 : i0 + chunk] = torch.logsumexp(logits, dim=1)
            new_max = torch.maximum(col_max, logits.amax(dim=0))
            col_sum = col_sum * torch.exp(col_max - new_max) + torch.exp(logits - new_max).sum(0)
            col_max = new_max
        lse_col = col_max + torch.log(col_sum)
        diag = scale * (a.to(ct) * b.to(ct)).sum(-1)
        loss = (lse_row - diag).mean() + (lse_col - diag).mean()
        ctx.save_for_backward(a, b, log_scale, lse_row, lse_col)
        ctx.chunk = chunk
        return loss

    @staticmethod
    def backward(ctx, grad):
        a, b, log_scale, lse_row, lse_col = ctx.saved_tensors
        ct = lse_row.dtype
        scale = log_scale.to(ct).exp()
        n = a.shape[0]
        g = grad.to(ct) / n
        da = torch.zeros(a.shape, dtype=ct, device=a.device)
        db = torch.zeros(b.shape, dtype=ct, device=b.device)
        dlog_scale = torch.zeros((), dtype=ct, device=a.device)
        for i0 in range(0, n, ctx.chunk):
            rows = slice(i0, i0 + ctx.chunk)
            logits = scale * (a[rows] @ b.t()).to(ct)  # (chunk, N)
            # dL/dlogits: row softmax + column softmax, minus 2 on the diagonal (both labels)
            dlogits = torch.exp(logits - lse_row[rows, None]) + torch.exp(logits - lse_col[None, :])
            idx = torch.arange(i0, i0 + dlogits.shape[0], device=a.device)
            dlogits[idx - i0, idx] -= 2.0
            dlogits *= g
            if ctx.needs_input_grad[2]:
                dlog_scale += (dlogits * logits).sum()
            dlogits *= scale  # d loss / d(a_i · b_j)
            if a.dtype == ct:  # in-place products: no (N, d) temporaries per chunk
                torch.mm(dlogits, b, out=da[rows])
                db.addmm_(dlogits.t(), a[rows])
            else:  # low precision: products in the inputs' dtype, accumulated in fp32
                dlogits = dlogits.to(a.dtype)
                da[rows] = (dlogits @ b).to(ct)
                db += (dlogits.t() @ a[rows]).to(ct)
        dls = dlog_scale.to(log_scale.dtype) if ctx.needs_input_grad[2] else None
        return da.to(a.dtype), db.to(b.dtype), dls, None


def contrastive_loss_ref(
    a: torch.Tensor,
    b: torch.Tensor,
    temperature: float = 0.05,
    logit_scale: torch.Tensor | None = None,
    chunk: int | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE of LF-VILA's global video-paragraph loss (SPEC §7.3).

    Args:
        a, b: (N, d) features, row i of a paired with row i of b; L2-normalised by the caller.
        temperature: logits are a·bᵀ / temperature, unless `logit_scale` is given.
        logit_scale: scalar tensor; logits are a·bᵀ · exp(logit_scale), and it gets a gradient.
        chunk: rows of logits held at once (default: `default_chunk`).

    Returns:
        0-dim fp32 (fp64 for fp64 inputs) loss: CE(a·bᵀ, diag) + CE(b·aᵀ, diag), row means.
    """
    if logit_scale is None:
        logit_scale = torch.tensor(-math.log(temperature), dtype=torch.float64, device=a.device)
    return _ChunkedInfoNCE.apply(a, b, logit_scale, chunk or default_chunk(*a.shape))


def sample_mtc_indices(
    batch: int,
    clips: int,
    num_key: int = 2,
    num_value: int = 2,
    valid: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, torch.Tensor]:
    """LF-VILA's MTC sampling (SPEC §7.4), independently per sample.

    keys = the first `num_key` entries of a random permutation of the sample's positions,
    values = the first `num_value` of a second, independent one, other = the first entry of a
    third. With `valid` (B, M) bool, permutations run over valid positions only; a sample with too
    few valid positions gets -1 ("absent") where it has none left: it contributes no rows, and an
    absent `other` is never a negative. Randomness comes from `generator` (CPU) only: sampling
    runs on the host (a CUDA `valid` is copied to it, a sync), and results for a CUDA `device`
    are copied from pinned memory without waiting for the stream. A CUDA graph cannot capture
    the sampling: sample outside it and copy into the graph's static index tensors.

    Returns:
        dict(keys=(B, num_key), values=(B, num_value), other=(B,)) int64 on `device`.
    """
    ok = (
        torch.ones(batch, clips, dtype=torch.bool) if valid is None else valid.detach().cpu().bool()
    )

    def permutation(take: int) -> torch.Tensor:
        noise = torch.rand(batch, clips, generator=generator)
        noise = noise.masked_fill(~ok, 2.0)  # invalid positions sort last
        order = noise.argsort(dim=1)[:, :take]
        present = ok.gather(1, order)
        return torch.where(present, order, torch.full_like(order, -1))

    keys, values, other = permutation(num_key), permutation(num_value), permutation(1)[:, 0]
    out = dict(keys=keys, values=values, other=other)
    if torch.device(device).type == "cuda":  # pinned: the copies do not wait for the stream
        return {k: v.pin_memory().to(device, non_blocking=True) for k, v in out.items()}
    return {k: v.to(device) for k, v in out.items()}


def mtc_labels(keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """(B, num_key) label per query: the index j of the value nearest in time to the key;
    IGNORE (-100) on a tie or when the key or a value is absent (-1)."""
    dist = (values[:, None, :] - keys[:, :, None]).abs()  # (B, num_key, num_value)
    best = dist.min(dim=2, keepdim=True).values
    ties = (dist == best).sum(dim=2) > 1
    label = dist.argmin(dim=2)
    absent = (keys < 0) | (values < 0).any(dim=1, keepdim=True)
    return torch.where(ties | absent, torch.full_like(label, IGNORE), label)


def mtc_candidates(values: torch.Tensor, other: torch.Tensor, num_other_neg: int):
    """Candidate (sample, position) of every query row of sample b: its values, then the `other`
    position of samples b, b-1, ..., b-(num_other_neg-1) (mod B). Returns two (B, C) int64
    tensors; position -1 marks an absent candidate."""
    batch = values.shape[0]
    b = torch.arange(batch, device=values.device)
    rolled = (b[:, None] - torch.arange(num_other_neg, device=values.device)[None, :]) % batch
    samples = torch.cat([b[:, None].expand(-1, values.shape[1]), rolled], dim=1)
    positions = torch.cat([values, other[rolled]], dim=1)
    return samples, positions


def mtc_loss_ref(
    clip_feats: torch.Tensor,
    sent_feats: torch.Tensor,
    temperature: float = 0.05,
    indices: dict[str, torch.Tensor] | None = None,
    num_other_neg: int = 3,
) -> torch.Tensor:
    """MTC loss (SPEC §7.4) on given sampling indices.

    Args:
        clip_feats, sent_feats: (B, M, d); clip m is aligned in time with sentence m.
        indices: dict(keys (B, K), values (B, V), other (B,)), int64 in [0, M) or -1 (absent).
        num_other_neg: negatives taken from batch rolls 0, 1, ..., num_other_neg-1.

    Returns:
        0-dim loss: mean CE over non-ignored clip→sentence rows + the same for sentence→clip.
        A direction whose rows are all ignored contributes 0 (PyTorch's mean would be NaN).
    """
    keys, values, other = indices["keys"], indices["values"], indices["other"]
    labels = mtc_labels(keys, values)  # (B, K)
    samples, positions = mtc_candidates(values, other, num_other_neg)  # (B, C)
    b = torch.arange(keys.shape[0], device=keys.device)
    rows = labels >= 0
    count = rows.sum().clamp(min=1)  # stays on the device: no host sync
    total = clip_feats.new_zeros((), dtype=_compute_dtype(clip_feats))
    for queries, pool in ((clip_feats, sent_feats), (sent_feats, clip_feats)):
        q = queries[b[:, None], keys.clamp(min=0)]  # (B, K, d)
        cand = pool[samples, positions.clamp(min=0)]  # (B, C, d)
        logits = torch.einsum("bkd,bcd->bkc", q, cand).to(total.dtype) / temperature
        logits = logits.masked_fill((positions < 0)[:, None, :], -math.inf)
        # ignored rows: zeros (finite, so no NaN reaches the gradient), skipped by ignore_index
        logits = torch.where(rows[:, :, None], logits, 0.0)  # (B, K, C)
        ce = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="sum"
        )
        total = total + ce / count  # mean over counted rows; 0 when there are none
    return total
