"""Weights into and out of a job: the initialised model (init.swin / init.bert / init.weights),
weights of any layout into a model, the final export and the best evaluation's export."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch

from ..config import Config

logger = logging.getLogger("lfvila")


def build_initialised_model(cfg: Config, log: bool = True):
    """`build_model(cfg)` with init.swin / init.bert / init.weights loaded (SPEC §8.1 order)."""
    from ..model import build_model
    from ..model.convert import initialise
    from ..tasks.pretrain import init_paths

    paths = init_paths(cfg)
    model = build_model(cfg)
    if any(paths.values()):
        reports = initialise(model, paths["swin"], paths["bert"], paths["weights"], cfg.init.strict)
        for name, report in reports.items():
            key = "weights" if name == "lfvila" else name
            if log:
                logger.info("init.%s %s: %s", key, paths[key], report_line(report, name))
    return model


def report_line(report, part: str, shown: int = 6) -> str:
    """One line of a LoadReport (or TransferReport); for BERT only the text encoder's keys count
    as missing."""
    extra = ""
    if hasattr(report, "dropped"):
        if report.dropped:
            extra += f"; {len(report.dropped)} pre-training-only tensors left out"
        if report.new:
            extra += "; new heads: " + ", ".join(sorted({k.rsplit(".", 1)[0] for k in report.new}))
        report = report.report
    missing = report.missing
    if part == "bert":
        missing = [k for k in missing if k.startswith("text_encoder.bert.")]
    text = f"loaded {report.loaded} tensors"
    for label, keys in (
        ("missing", missing),
        ("unexpected", report.unexpected),
        ("shape mismatch", [k for k, _, _ in report.mismatched]),
    ):
        if keys:
            more = f", ... ({len(keys)} in all)" if len(keys) > shown else ""
            text += f"; {label}: " + ", ".join(keys[:shown]) + more
    return text + extra


def load_weights_any(model, path: str | Path, strict: bool = True, allow_new_heads: bool = False):
    """A run directory (model.safetensors), our .safetensors, or an original-layout LF-VILA
    checkpoint (.bin/.pth/.pt, `module.` prefix allowed) into `model`; returns the report. A
    task model takes pre-training weights less the heads it has no use for
    (`lfvila.model.convert.load_task_weights`); its own heads must be in the file unless
    `allow_new_heads`."""
    from ..model.convert import from_original, load_task_weights, load_weights, read_checkpoint

    path = Path(path)
    if path.is_dir():
        if not (path / "model.safetensors").is_file():
            raise FileNotFoundError(f"--weights: {path} holds no model.safetensors")
        path = path / "model.safetensors"
    state = from_original(read_checkpoint(path))
    if getattr(getattr(model, "cfg", None), "task", "pretrain") == "pretrain":
        return load_weights(model, state, strict=strict)
    return load_task_weights(model, state, strict=strict, allow_new_heads=allow_new_heads)


def export(cfg: Config, engine, weights: dict, run_dir: Path, dtype: str) -> None:
    """The bare model's weights to run_dir/model.safetensors beside config.yaml."""
    from ..model.pretrained import save_pretrained
    from ..training.engine import DTYPES

    module = engine.module
    if any(v.dtype != torch.float32 for v in module.state_dict().values() if v.is_floating_point()):
        from ..model import build_model

        module = build_model(cfg)  # DeepSpeed fp16/bf16: rebuild in fp32 from its fp32 weights
        module.load_state_dict({k: v.cpu() for k, v in weights.items()})
    save_pretrained(module, cfg, run_dir, dtype=DTYPES[dtype])


class BestExport:
    """`RunSettings.on_best`: each improving evaluation's weights to run_dir/best/
    {model.safetensors, config.yaml, metrics.json}, replaced as a whole (written into a
    temporary folder first, so that a crash leaves the previous best intact). Only the main
    process writes."""

    def __init__(self, cfg: Config, engine, run_dir: Path, dtype: str, headline, is_main: bool):
        self.cfg, self.engine, self.run_dir, self.dtype = cfg, engine, Path(run_dir), dtype
        self.headline, self.is_main = headline, is_main

    def __call__(self, weights: dict, step: int, results: dict) -> None:
        if not self.is_main:
            return
        run_dir = self.run_dir
        best, tmp, old = run_dir / "best", run_dir / ".best.tmp", run_dir / ".best.old"
        shutil.rmtree(tmp, ignore_errors=True)
        export(self.cfg, self.engine, weights, tmp, self.dtype)
        name, metric, _ = self.headline
        header = {"step": step, "metric": f"{name}/{metric}", "value": results[name][metric]}
        (tmp / "metrics.json").write_text(json.dumps({**header, **results}, indent=1) + "\n")
        shutil.rmtree(old, ignore_errors=True)
        if best.exists():
            os.replace(best, old)
        os.replace(tmp, best)
        shutil.rmtree(old, ignore_errors=True)
