"""The downstream tasks as small objects for the one training loop (SPEC.md §9): each is a
batch -> loss function, and each task's evaluation computes its metric over every evaluation
item exactly once, in dataset order.

| model.task           | data.format          | loss                                 | metrics    |
|----------------------|----------------------|--------------------------------------|------------|
| retrieval            | retrieval            | global contrastive, gathered (§7.3)  | R@K, MdR,  |
|                      |                      |                                      | MnR (both) |
| multichoice_qa       | how2qa               | CE over candidates + span loss (§9.2) | acc       |
| qa_classification    | violin, actnet_qa    | CE over the classes (§9.3-9.4)       | acc        |
| video_classification | video_classification | CE over the classes (§9.5)           | top1, top5 |
"""

from __future__ import annotations

import torch

from ..config import Config
from ..data.datasets import build_dataset
from ..training.dist import World
from ..training.loop import EvalOutput, LossOutput, StepContext
from . import eval_data
from .common import data_options, loader, resolve
from .retrieval import ZeroShotRetrieval

FORMATS = {
    "retrieval": ("retrieval",),
    "multichoice_qa": ("how2qa",),
    "qa_classification": ("violin", "actnet_qa"),
    "video_classification": ("video_classification",),
}
"""The annotation formats each fine-tuning task reads (SPEC §10.3)."""

HEADLINE = {
    "retrieval": ("retrieval", "t2v_R@1"),
    "multichoice_qa": ("qa", "acc"),
    "qa_classification": ("qa", "acc"),
    "video_classification": ("classification", "top1"),
}
"""Each task's default headline metric (evaluation, metric): the best checkpoint's criterion."""


class RetrievalTask:
    """Paragraph-to-video retrieval (SPEC §9.1): the global contrastive loss over the gathered
    batch, back-propagated times the world size (each rank's gradient of a gathered loss is its
    slice of the global one, and DDP/DeepSpeed average over ranks)."""

    def loss(self, model, batch: dict, ctx: StepContext) -> LossOutput:
        out = model(
            batch["video"], batch["text_ids"], batch["text_mask"], process_group=ctx.process_group
        )
        scale = ctx.world.world_size if ctx.process_group is not None else 1
        return LossOutput(out.loss, {"vpc": out.loss.detach()}, out.loss * scale)


class MultipleChoiceQATask:
    """How2QA (SPEC §9.2): cross-entropy over the K candidates plus the temporal span loss."""

    def loss(self, model, batch: dict, ctx: StepContext) -> LossOutput:
        out = model(
            batch["video"],
            batch["text_ids"],
            batch["text_mask"],
            answer=batch["answer"],
            span_labels=batch["span_labels"],
        )
        return LossOutput(out.loss, out.terms, out.loss)  # logged: loss, ce and span


class QAClassificationTask:
    """VIOLIN and ActivityNet-QA as classification (SPEC §9.3-9.4)."""

    def loss(self, model, batch: dict, ctx: StepContext) -> LossOutput:
        out = model(batch["video"], batch["text_ids"], batch["text_mask"], labels=batch["labels"])
        return LossOutput(out.loss, {}, out.loss)


class VideoClassificationTask:
    """COIN and LVU (SPEC §9.5): cross-entropy of the video-only classifier."""

    def loss(self, model, batch: dict, ctx: StepContext) -> LossOutput:
        out = model(batch["video"], labels=batch["labels"])
        return LossOutput(out.loss, {}, out.loss)


def label_ranks(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(better, tied) per row of (N, C) logits with the true class `labels` (N,): how many
    classes score strictly higher than the true one, and how many others exactly the same."""
    logits = logits.double()
    truth = logits.gather(1, labels.long()[:, None])
    return (logits > truth).sum(1), (logits == truth).sum(1) - 1


def topk_accuracy(
    better: torch.Tensor, tied: torch.Tensor, k: int, miss: torch.Tensor | None = None,
    missing: int = 0,
) -> float:  # fmt: skip
    """Top-k accuracy in percent from `label_ranks`, ties broken uniformly at random in
    expectation (the true class is among the top k with probability clamp((k - better) /
    (tied + 1), 0, 1)), so constant logits score chance, never 100%. Items in `miss` (bool per
    row) and `missing` items left out count as wrong."""
    total = better.numel() + missing
    if total == 0:
        return float("nan")
    hit = ((k - better.double()) / (tied.double() + 1)).clamp(0.0, 1.0)
    if miss is not None:
        hit = hit.masked_fill(miss.bool(), 0.0)
    return 100.0 * float(hit.sum()) / total


def _logits(model, batch: dict, task: str) -> torch.Tensor:
    if task == "video_classification":
        return model(batch["video"]).logits
    return model(batch["video"], batch["text_ids"], batch["text_mask"]).logits


class AccuracyEvaluation(eval_data.SkippedItems):
    """Top-k accuracy of a QA or classification model over its evaluation set: each item's
    rank of the true answer is gathered (every item once, in dataset order), then averaged.
    Metric keys: 'acc' for QA (top-1), 'top1' and 'top5' for video classification."""

    counted_as = eval_data.COUNTED_AS["accuracy"]

    def __init__(self, loader, task: str, name: str):
        self.loader, self.task, self.name = loader, task, name
        self.label_key = "answer" if task == "multichoice_qa" else "labels"
        self.metric_ks = {"acc": 1} if "qa" in task else {"top1": 1, "top5": 5}

    def step(self, model, batch: dict, ctx: StepContext) -> EvalOutput:
        logits = _logits(model, batch, self.task)
        better, tied = label_ranks(logits.float(), batch[self.label_key])
        return EvalOutput(rows={"ranks": torch.stack([better, tied], 1).float()})

    def metrics(self, rows: dict, sums: dict) -> dict[str, float]:
        ranks = rows["ranks"]
        better, tied = ranks[:, 0], ranks[:, 1]
        flags = rows.get("skipped")
        self.note_late(flags)
        missing = len(self.skipped)
        out = {key: topk_accuracy(better, tied, k, flags, missing)
               for key, k in self.metric_ks.items()}  # fmt: skip
        out["items"] = float(ranks.shape[0] + missing)
        if missing or self.late:
            out["skipped"] = float(missing + len(self.late))
        return out


TASKS = {
    "retrieval": RetrievalTask,
    "multichoice_qa": MultipleChoiceQATask,
    "qa_classification": QAClassificationTask,
    "video_classification": VideoClassificationTask,
}


def data_format(cfg: Config) -> str:
    """The annotation format of `cfg`'s task (data.format, or the task's only one)."""
    task, fmt = cfg.model.task, cfg.data.format
    allowed = FORMATS[task]
    if fmt == "auto":
        if len(allowed) > 1:
            raise ValueError(
                f"data.format: model.task {task} reads {' or '.join(allowed)} annotations; "
                "set data.format to one of them"
            )
        return allowed[0]
    if fmt not in allowed:
        raise ValueError(
            f"data.format: {fmt!r} annotations cannot train model.task {task} "
            f"(it reads {', '.join(allowed)})"
        )
    return fmt


def build_finetune_data(cfg: Config, world: World, train: bool = True):
    """(training loader or None, [the task's evaluation]) for a fine-tuning task; every path and
    every annotation is checked before anything trains (labels against model.num_classes,
    candidates against model.num_candidates)."""
    task = cfg.model.task
    fmt = data_format(cfg)
    videos = resolve(cfg, "data.video_root", cfg.data.video_root, "dir")
    train_file = resolve(cfg, "data.train", cfg.data.train, "file") if train else None
    if cfg.data.val is None and not train:
        raise ValueError("data.val: evaluation needs the task's evaluation annotations")
    val_file = resolve(cfg, "data.val", cfg.data.val, "file") if cfg.data.val else None
    checks = {}
    if fmt in ("violin", "actnet_qa", "video_classification"):
        checks["num_classes"] = cfg.model.num_classes
    if fmt == "how2qa":
        checks["num_candidates"] = cfg.model.num_candidates
    options, seed = data_options(cfg), cfg.train.seed
    train_loader = None
    if train_file is not None:
        dataset = build_dataset(fmt, train_file, videos, True, options, seed, **checks)
        train_loader = loader(cfg, dataset, world, True)
    evaluations = []
    if val_file is not None:
        dataset = build_dataset(fmt, val_file, videos, False, options, seed, **checks)
        name = HEADLINE[task][0]
        skipped = eval_data.prepare(dataset, name, "data.val", cfg.eval.on_bad_video)
        eval_loader = loader(cfg, dataset, world, False)
        if task == "retrieval":
            evaluations.append(ZeroShotRetrieval(eval_loader, name).with_skipped(skipped))
        else:
            ev = AccuracyEvaluation(eval_loader, task, name)
            evaluations.append(ev.with_skipped(skipped))
    return train_loader, evaluations
