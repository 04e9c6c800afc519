"""Tasks: what the one training loop trains (a loss of a batch) and how it evaluates. Each task
module builds its loaders and evaluations from the config; `build_task` picks by
`model.task`."""

from __future__ import annotations

from ..config import Config
from ..training.dist import World
from .pretrain import PretrainTask, PretrainValidation, build_pretrain_data
from .retrieval import ZeroShotRetrieval, retrieval_metrics


def build_task(cfg: Config, world: World, train: bool = True):
    """(task, training loader or None, evaluations) for `cfg.model.task`."""
    if cfg.model.task != "pretrain":
        raise ValueError(
            f"model.task '{cfg.model.task}': fine-tuning is not available yet; "
            "`lfvila pretrain` trains model.task 'pretrain'"
        )
    loader, evaluations = build_pretrain_data(cfg, world, train=train)
    return PretrainTask(cfg), loader, evaluations


__all__ = [
    "PretrainTask",
    "PretrainValidation",
    "ZeroShotRetrieval",
    "build_task",
    "retrieval_metrics",
]
