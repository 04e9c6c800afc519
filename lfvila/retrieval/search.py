"""Searching an index (`lfvila search`): exact inner-product top-k over features streamed from
disk in chunks, and the retrieval metrics of an index against annotations.

Order of results: score descending, and among equal scores the lower row first. Each chunk's
top k is taken in that order (`topk_rows`) and merged with the running top k by a stable sort,
so the chunked search equals one matmul over the whole index followed by the same ordering, ties
included (a test pins it). Scores are fp32 inner products of L2-normalised features (cosine).

Backends: "torch" (a matmul per chunk, CPU or GPU), "faiss" (`faiss.knn` per chunk, exact
inner product; `pip install faiss-cpu`, the `faiss` extra) and "auto" (FAISS when importable,
else torch). FAISS picks its own members among rows tied at the k-th score; everything else is
the same.

`evaluate_index` ranks each annotated paragraph's video among all rows of the index with the
formula of `tasks.retrieval` (ties broken uniformly at random, in expectation). When the index
holds exactly the annotated videos, it is `retrieval_metrics` of the evaluation itself: the same
fp32 features re-normalised and compared in float64, so the numbers are the evaluation's.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from ..tasks.retrieval import RECALLS, retrieval_metrics
from .index import Index

logger = logging.getLogger(__name__)


def faiss_reason() -> str | None:
    """Why FAISS cannot be used (None: it can)."""
    try:
        import faiss  # noqa: F401
    except Exception as exc:  # not installed, or a broken build
        return f"faiss not importable ({type(exc).__name__}: {exc})"
    return None


def resolve_backend(backend: str) -> str:
    if backend not in ("auto", "torch", "faiss"):
        raise ValueError(f"--backend must be auto, torch or faiss, got {backend!r}")
    reason = faiss_reason() if backend != "torch" else None
    if backend == "faiss" and reason:
        raise ValueError(f"--backend faiss cannot run: {reason} (pip install faiss-cpu)")
    if backend == "auto":
        backend = "torch" if reason else "faiss"
        logger.debug("search backend %s%s", backend, f" ({reason})" if reason else "")
    return backend


def topk_rows(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, columns), each (Q, min(k, C)), of scores (Q, C): score descending, lower column
    first among equal scores."""
    k = min(k, scores.shape[1])
    values, cols = scores.topk(k, dim=1)
    kth = values[:, -1:] if k else values
    # topk picks any members among the scores tied at the k-th: when a row has more than k at
    # or above it, its exact set needs the stable sort of the whole row (rare: exact ties).
    if k and bool(((scores >= kth).sum(1) > k).any()):
        values, cols = scores.sort(dim=1, descending=True, stable=True)
        return values[:, :k], cols[:, :k]
    return _order(values, cols)


def _order(values: torch.Tensor, cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each row by value descending, then column ascending."""
    by_col = cols.argsort(dim=1, stable=True)
    values, cols = values.gather(1, by_col), cols.gather(1, by_col)
    by_value = values.argsort(dim=1, descending=True, stable=True)
    return values.gather(1, by_value), cols.gather(1, by_value)


def _chunk_topk(queries, block, k, backend):
    if backend == "faiss":
        import faiss
        import numpy as np

        d, i = faiss.knn(
            np.ascontiguousarray(queries.cpu().numpy(), dtype=np.float32),
            np.ascontiguousarray(block.cpu().numpy(), dtype=np.float32),
            min(k, block.shape[0]),
            metric=faiss.METRIC_INNER_PRODUCT,
        )
        return _order(torch.from_numpy(d), torch.from_numpy(i).long())
    return topk_rows(queries @ block.to(queries.device).t(), k)


def search(
    index: Index,
    queries: torch.Tensor,
    k: int = 10,
    chunk_rows: int = 65536,
    backend: str = "auto",
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k rows of `index` for each query.

    Args:
        queries: (Q, P) float32 (L2-normalised for cosine scores).
        chunk_rows: index rows read and scored at once (65536 x 1024 fp32 = 256 MB).
    Returns:
        (scores, rows), each (Q, min(k, N)): fp32 inner products and int64 index rows, in the
        module's order (score descending, lower row first on ties).
    """
    if k < 1:
        raise ValueError(f"-k must be >= 1, got {k}")
    if queries.dim() != 2 or queries.shape[1] != index.dim:
        raise ValueError(f"queries: expected (Q, {index.dim}), got {tuple(queries.shape)}")
    backend = resolve_backend(backend)
    queries = queries.float().to(device)
    best_v = torch.zeros(len(queries), 0, device=device)
    best_r = torch.zeros(len(queries), 0, dtype=torch.long, device=device)
    for start, block in index.chunks(chunk_rows):
        v, c = _chunk_topk(queries, block, k, backend)
        # running rows all precede this chunk's: the stable sort keeps them first on ties
        v = torch.cat([best_v, v.to(device)], 1)
        r = torch.cat([best_r, c.to(device) + start], 1)
        order = v.argsort(dim=1, descending=True, stable=True)[:, :k]
        best_v, best_r = v.gather(1, order), r.gather(1, order)
    return best_v.cpu(), best_r.cpu()


def _recall_metrics(better: torch.Tensor, tied: torch.Tensor, prefix: str) -> dict[str, float]:
    """`tasks.retrieval.direction_metrics` from counts of strictly better and tied candidates."""
    better, tied = better.double(), tied.double()
    out = {}
    for k in RECALLS:
        out[f"{prefix}R@{k}"] = 100.0 * float(((k - better) / (tied + 1)).clamp(0, 1).mean())
    rank = better + tied / 2 + 1
    out[f"{prefix}MdR"] = float(rank.quantile(0.5))
    out[f"{prefix}MnR"] = float(rank.mean())
    return out


def evaluate_index(
    index: Index, text: torch.Tensor, targets: list[int], chunk_rows: int = 65536
) -> dict[str, float]:
    """Retrieval metrics of paragraphs against an index.

    Args:
        text: (Q, P) paragraph features; targets: Q index rows, row i the video of paragraph i.
    Returns:
        t2v_R@1/5/10/50, t2v_MdR, t2v_MnR and `items` (Q), `candidates` (N); with v2t_* too when
        the targets are every row of the index once (then exactly `retrieval_metrics`).
    """
    if len(targets) != len(text):
        raise ValueError(f"{len(text)} paragraphs, {len(targets)} targets")
    q = F.normalize(text.double(), dim=-1)
    if sorted(targets) == list(range(index.count)):  # the evaluation's own square matrix
        video = F.normalize(index.rows(0, index.count).double(), dim=-1)[targets]
        out = retrieval_metrics(q @ video.t())
    else:
        # the ground truth's score from the very matmul that scores the others (a separately
        # computed dot product may differ in the last bit and miss its own tie)
        targets_t = torch.tensor(targets, dtype=torch.long)
        truth = torch.zeros(len(q), 1, dtype=torch.float64)
        sims = lambda block: q @ F.normalize(block.double(), dim=-1).t()  # noqa: E731
        for start, block in index.chunks(chunk_rows):
            inside = (targets_t >= start) & (targets_t < start + len(block))
            if inside.any():
                rows = inside.nonzero()[:, 0]
                truth[rows, 0] = sims(block)[rows, targets_t[rows] - start]
        better = torch.zeros(len(q), dtype=torch.long)
        tied = torch.zeros(len(q), dtype=torch.long)
        for _, block in index.chunks(chunk_rows):
            sim = sims(block)
            better += (sim > truth).sum(1)
            tied += (sim == truth).sum(1)
        out = _recall_metrics(better, tied - 1, "t2v_")
    out["items"] = float(len(q))
    out["candidates"] = float(index.count)
    return out


def index_id(clip_id: str, rows: dict) -> str:
    """An annotation's clip_id as the index names it ('v1.mp4' is the file v1.mp4: id 'v1')."""
    from .collection import VIDEO_EXTENSIONS

    path = Path(clip_id)
    if clip_id not in rows and path.suffix.lower() in VIDEO_EXTENSIONS:
        return path.with_suffix("").as_posix()
    return clip_id


def annotated_rows(index: Index, records: list[tuple[str, object]]) -> tuple[list, int]:
    """[(row, paragraph)] of the annotations (`collection.read_texts`: (clip_id or id,
    paragraph)) whose video is in `index`, in annotation order, and how many have none there."""
    rows = {vid: i for i, vid in enumerate(index.ids)}
    records = [(index_id(vid, rows), text) for vid, text in records]
    present = [(rows[vid], text) for vid, text in records if vid in rows]
    return present, len(records) - len(present)
