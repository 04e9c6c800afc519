"""`lfvila finetune`: a downstream task trained from pre-trained weights, on the pre-training
job's loop (`jobs.pretrain.pretrain` with `command="finetune"`)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from ..config import Config
from .pretrain import RunResult, pretrain

logger = logging.getLogger("lfvila")


def finetune(
    cfg: Config,
    run_dir: str | Path,
    weights: str | Path | None = None,
    resume: bool = False,
    export_dtype: str = "fp32",
    config_path: str | Path | None = None,
    overrides: tuple[str, ...] = (),
    on_eval=None,
) -> RunResult:
    """Fine-tune `cfg`'s downstream task from `weights` (a pre-training or task run directory,
    a model.safetensors, or an original LF-VILA checkpoint; None: init.weights, or random
    weights when that is null), with every pre-training feature of the loop; the best
    evaluation by eval.metric goes to run_dir/best."""
    if cfg.model.task == "pretrain":
        raise ValueError("model.task is 'pretrain': use `lfvila pretrain` for pre-training")
    if weights is not None:
        path = Path(weights).expanduser().resolve()
        if not path.exists():
            raise FileNotFoundError(f"--weights: {weights} not found")
        cfg = dataclasses.replace(cfg, init=dataclasses.replace(cfg.init, weights=str(path)))
        overrides = (*overrides, f"init.weights={path}")  # the resume command repeats it
    if cfg.init.weights is None and not resume:
        logger.warning("fine-tuning from random weights (no --weights, init.weights is null)")
    return pretrain(
        cfg, run_dir, resume, export_dtype, config_path, overrides, on_eval, command="finetune"
    )
