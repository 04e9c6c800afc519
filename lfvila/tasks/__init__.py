"""Tasks: what the one training loop trains (a loss of a batch) and how it evaluates. Each task
module builds its loaders and evaluations from the config; `build_task` picks by
`model.task`: pre-training (`pretrain`) or a downstream task (`downstream`).

May import `lfvila.config`, `lfvila.data`, `lfvila.training` (the loop's task contract, the
process group) and `lfvila.model`; never jobs, retrieval or the command line.
"""

from __future__ import annotations

from ..config import Config
from ..training.dist import World
from .downstream import (
    HEADLINE,
    TASKS,
    AccuracyEvaluation,
    build_finetune_data,
    data_format,
    label_ranks,
    topk_accuracy,
)
from .pretrain import PretrainTask, PretrainValidation, build_pretrain_data
from .retrieval import ZeroShotRetrieval, retrieval_metrics

LOWER_IS_BETTER = ("MdR", "MnR", "loss", "vpc", "mtc", "mlm", "vtm")
"""Metric names (suffixes) where smaller is better."""


def build_task(cfg: Config, world: World, train: bool = True):
    """(task, training loader or None, evaluations) for `cfg.model.task`."""
    if cfg.model.task == "pretrain":
        if cfg.data.format not in ("auto", "pretrain"):
            raise ValueError(
                f"data.format: pre-training reads 'pretrain' annotations, not {cfg.data.format!r}"
            )
        loader, evaluations = build_pretrain_data(cfg, world, train=train)
        return PretrainTask(cfg), loader, evaluations
    loader, evaluations = build_finetune_data(cfg, world, train=train)
    return TASKS[cfg.model.task](), loader, evaluations


def headline_metric(cfg: Config, evaluations: list) -> tuple[str, str, bool] | None:
    """(evaluation, metric, higher is better) that picks the best checkpoint, from eval.metric
    ('auto': the task's, none for pre-training; 'none': no best export)."""
    spec = cfg.eval.metric
    if spec == "none" or (spec == "auto" and cfg.model.task == "pretrain"):
        return None
    names = [ev.name for ev in evaluations]
    if spec == "auto":
        name, metric = HEADLINE[cfg.model.task]
    elif "/" in spec:
        name, metric = spec.split("/", 1)
    else:
        name, metric = (names[0] if names else ""), spec
    if name not in names:
        raise ValueError(
            f"eval.metric: {spec!r} names evaluation {name!r}, but this run evaluates "
            f"{', '.join(names) or 'nothing'} (set data.val, or eval.metric=none)"
        )
    return name, metric, not metric.endswith(LOWER_IS_BETTER)


__all__ = [
    "HEADLINE",
    "AccuracyEvaluation",
    "PretrainTask",
    "PretrainValidation",
    "ZeroShotRetrieval",
    "build_task",
    "data_format",
    "headline_metric",
    "label_ranks",
    "retrieval_metrics",
    "topk_accuracy",
]
