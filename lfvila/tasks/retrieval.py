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


def direction_metrics(sim: torch.Tensor, prefix: str) -> dict[str, float]:
    better, tied = ranks(sim)
    better, tied = better.double(), tied.double()
    out = {}
    for k in RECALLS:
        hit = ((k - better) / (tied + 1)).clamp(0.0, 1.0)
        out[f"{prefix}R@{k}"] = 100.0 * float(hit.mean())
    rank = better + tied / 2 + 1  # 1-based expected rank
    out[f"{prefix}MdR"] = float(rank.quantile(0.5))  # np.median: the mean of the middle two
    out[f"{prefix}MnR"] = float(rank.mean())
    return out


def retrieval_metrics(sim_text_video: torch.Tensor) -> dict[str, float]:
    """Text->video (rows = paragraphs, the headline, keys 't2v_*') and video->text ('v2t_*')
    metrics of a (N, N) similarity matrix, item i's paragraph and video matching."""
    if sim_text_video.dim() != 2 or sim_text_video.shape[0] != sim_text_video.shape[1]:
        raise ValueError(f"expected a square (N, N) matrix, got {tuple(sim_text_video.shape)}")
    return {
        **direction_metrics(sim_text_video, "t2v_"),
        **direction_metrics(sim_text_video.t(), "v2t_"),
    }


class ZeroShotRetrieval:
    """Paragraph-to-video retrieval with the model's stage-1 features (`video_features`,
    `text_features`), over a retrieval dataset in dataset order."""

    def __init__(self, loader, name: str = "retrieval"):
        self.loader, self.name = loader, name

    def step(self, model, batch: dict, ctx: StepContext) -> EvalOutput:
        video = model.video_features(batch["video"])
        text = model.text_features(batch["text_ids"], batch["text_mask"])
        return EvalOutput(rows={"video": video.float(), "text": text.float()})

    def metrics(self, rows: dict, sums: dict) -> dict[str, float]:
        text = F.normalize(rows["text"].double(), dim=-1)
        video = F.normalize(rows["video"].double(), dim=-1)
        out = retrieval_metrics(text @ video.t())
        out["items"] = float(text.shape[0])
        return out
