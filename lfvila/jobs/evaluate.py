"""`lfvila evaluate`: the task's evaluations of given weights, written to run_dir/metrics.json."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ..config import Config
from ..training.checkpoint import write_text_atomic
from ..training.dist import World
from ..training.engine import InferenceEngine
from ..training.loop import StepContext, evaluate
from ..training.metrics import setup_logging
from .pretrain import with_skipped
from .weights import load_weights_any, report_line

logger = logging.getLogger("lfvila")


def evaluate_weights(cfg: Config, weights: str | Path, run_dir: str | Path) -> dict:
    """The task's evaluations of `weights`, written to run_dir/metrics.json."""
    from ..model import build_model
    from ..tasks import build_task

    run_dir = Path(run_dir)
    world = World.from_env(cfg.train.device)
    world.init()
    try:
        setup_logging(run_dir, world.is_main)
        _, _, evaluations = build_task(cfg, world, train=False)
        if not evaluations:
            raise ValueError("nothing to evaluate: set data.val_retrieval and/or data.val")
        model = build_model(cfg)
        report = load_weights_any(model, weights, strict=True)
        logger.info("weights %s: %s", weights, report_line(report, "weights"))

        from ..training.kernel_check import run_kernel_self_check, write_kernel_record

        engine = InferenceEngine(model, world)
        run_kernel_self_check(engine.module, cfg, engine, world, run_dir)  # before evaluating
        ctx = StepContext(world, None, torch.Generator().manual_seed(cfg.train.seed))
        results = evaluate(engine, evaluations, ctx)
        if cfg.kernels.self_check:  # with the first-call checks evaluation made
            write_kernel_record(run_dir, world, cfg.kernels.on_mismatch)
        if world.is_main:
            for name, metrics in results.items():
                logger.info("%s: %s", name, ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
            out = with_skipped(results, evaluations)
            write_text_atomic(run_dir / "metrics.json", json.dumps(out, indent=1) + "\n")
        return results
    finally:
        world.shutdown()
