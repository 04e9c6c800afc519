"""Paragraph-to-video retrieval metrics and the zero-shot retrieval evaluation (SPEC.md §9.1).

`retrieval_metrics(sim)` ranks, for every query row, the candidate on its diagonal among all
columns: R@1/5/10/50 (percent), median and mean rank (1 = first; the original's MdR/MnR are
median/mean of the 0-based rank + 1). Ties are broken uniformly at random, in expectation: a
ground truth with g strictly better candidates and t others tied with it has rank g..g+t with
equal probability, so R@K counts P(rank < K) = clamp((K - g)/(t + 1), 0, 1) and its rank is
g + t/2. Without ties this is the original's `compute_rt_metrics`; with them, a model whose
similarities are all equal scores chance, never 100%. (The original appends every tied
position to its rank list, which pools them in a similar way but changes the denominator.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..training.loop import EvalOutput, StepContext
from .eval_data import COUNTED_AS, SkippedItems

RECALLS = (1, 5, 10, 50)


def ranks(sim: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(better, tied) per row of a (Q, C) similarity matrix whose row i's answer is column i:
    how many columns score strictly higher, and how many others score exactly the same."""
    sim = sim.double()
    q = sim.shape[0]
    if sim.shape[1] < q:
        raise ValueError(f"similarity matrix {tuple(sim.shape)}: fewer columns than queries")
    truth = sim[torch.arange(q), torch.arange(q)][:, None]
    better = (sim > truth).sum(1)
    tied = (sim == truth).sum(1) - 1
    return better, tied


def direction_metrics(
    sim: torch.Tensor, prefix: str, miss: torch.Tensor | None = None, missing: int = 0
) -> dict[str, float]:
    """R@K, MdR and MnR of one direction. Items in `miss` (bool per row) and `missing` more
    items left out of `sim` count as misses at the worst rank, N = rows + missing: never a hit,
    and rank N in the median and mean (so skipped items never inflate a metric)."""
    better, tied = ranks(sim)
    better, tied = better.double(), tied.double()
    total = sim.shape[0] + missing
    miss = torch.zeros(sim.shape[0], dtype=torch.bool) if miss is None else miss.bool()
    out = {}
    for k in RECALLS:
        hit = ((k - better) / (tied + 1)).clamp(0.0, 1.0).masked_fill(miss, 0.0)
        out[f"{prefix}R@{k}"] = 100.0 * float(hit.sum()) / max(total, 1)
    rank = (better + tied / 2 + 1).masked_fill(miss, float(total))  # 1-based expected rank
    rank = torch.cat([rank, torch.full((missing,), float(total), dtype=rank.dtype)])
    out[f"{prefix}MdR"] = float(rank.quantile(0.5))  # np.median: the mean of the middle two
    out[f"{prefix}MnR"] = float(rank.mean())
    return out


def retrieval_metrics(
    sim_text_video: torch.Tensor, miss: torch.Tensor | None = None, missing: int = 0
) -> dict[str, float]:
    """Text->video (rows = paragraphs, the headline, keys 't2v_*') and video->text ('v2t_*')
    metrics of a (N, N) similarity matrix, item i's paragraph and video matching. `miss` (N,)
    bool: items whose video could not be read (served as zeros): misses at the worst rank as
    queries, and never a candidate above another query's answer; `missing`: items left out of
    the matrix altogether, also misses at the worst rank (see `direction_metrics`)."""
    if sim_text_video.dim() != 2 or sim_text_video.shape[0] != sim_text_video.shape[1]:
        raise ValueError(f"expected a square (N, N) matrix, got {tuple(sim_text_video.shape)}")
    sim = sim_text_video
    if miss is not None and miss.any():
        miss = miss.bool()
        sim = sim.clone()
        sim[:, miss] = -torch.inf  # a zero video is no candidate (as t2v columns)
        sim[miss, :] = -torch.inf  # nor its paragraph (as v2t columns)
    return {
        **direction_metrics(sim, "t2v_", miss, missing),
        **direction_metrics(sim.t(), "v2t_", miss, missing),
    }


class ZeroShotRetrieval(SkippedItems):
    """Paragraph-to-video retrieval with the model's stage-1 features (`video_features`,
    `text_features`), over a retrieval dataset in dataset order."""

    counted_as = COUNTED_AS["retrieval"]

    def __init__(self, loader, name: str = "retrieval"):
        self.loader, self.name = loader, name

    def step(self, model, batch: dict, ctx: StepContext) -> EvalOutput:
        video = model.video_features(batch["video"])
        text = model.text_features(batch["text_ids"], batch["text_mask"])
        return EvalOutput(rows={"video": video.float(), "text": text.float()})

    def metrics(self, rows: dict, sums: dict) -> dict[str, float]:
        text = F.normalize(rows["text"].double(), dim=-1)
        video = F.normalize(rows["video"].double(), dim=-1)
        flags = rows.get("skipped")
        self.note_late(flags)
        miss = flags.bool() if flags is not None else None
        missing = len(self.skipped)
        out = retrieval_metrics(text @ video.t(), miss, missing)
        out["items"] = float(text.shape[0] + missing)
        if missing or self.late:
            out["skipped"] = float(missing + len(self.late))
        return out
