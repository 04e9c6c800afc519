"""`lfvila pretrain`, `lfvila finetune` and `lfvila evaluate`: the jobs of `lfvila.jobs` from a
config and its overrides."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_overrides, stopped_status

EXPORT_DTYPES = ("fp32", "bf16", "fp16")


def _pretrain(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..jobs.pretrain import pretrain
    from ..jobs.runs import default_run_dir

    cfg = load_config(args.config, args.overrides)
    run_dir = Path(args.output_dir) if args.output_dir else default_run_dir(args.config)
    result = pretrain(cfg, run_dir, args.resume, args.export_dtype, args.config, args.overrides)
    return stopped_status(result.stopped_by)


def _finetune(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..jobs.finetune import finetune
    from ..jobs.runs import default_run_dir

    cfg = load_config(args.config, args.overrides)
    run_dir = Path(args.output_dir) if args.output_dir else default_run_dir(args.config)
    result = finetune(
        cfg, run_dir, args.weights, args.resume, args.export_dtype, args.config, args.overrides
    )
    return stopped_status(result.stopped_by)


def _evaluate(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..jobs.evaluate import evaluate_weights
    from ..jobs.runs import default_run_dir

    cfg = load_config(args.config, args.overrides)
    run_dir = (
        Path(args.output_dir) if args.output_dir else default_run_dir(args.config) / "evaluate"
    )
    evaluate_weights(cfg, args.weights, run_dir)
    return 0


def _export_dtype(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--export-dtype",
        choices=EXPORT_DTYPES,
        default="fp32",
        help="dtype of the exported model.safetensors (default fp32)",
    )


def add_parsers(sub) -> None:
    """`pretrain`, `finetune` and `evaluate` on the top-level subparsers `sub`."""
    p = sub.add_parser("pretrain", help="pre-train LF-VILA from a config")
    p.add_argument(
        "--config",
        required=True,
        action="append",
        help="YAML config (e.g. configs/pretrain_stage1.yaml); repeat to merge overlays in order",
    )
    p.add_argument("--output-dir", help="run directory (default runs/<config stem>)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    _export_dtype(p)
    add_overrides(p)
    p.set_defaults(func=_pretrain)

    p = sub.add_parser(
        "finetune", help="fine-tune a downstream task (retrieval, QA, classification)"
    )
    p.add_argument(
        "--config",
        required=True,
        action="append",
        help="task YAML (e.g. configs/actnet_ret.yaml); repeat to merge overlays in order",
    )
    p.add_argument(
        "--weights",
        help="pre-trained weights: a run directory, model.safetensors or an original LF-VILA "
        "checkpoint (default: init.weights of the config)",
    )
    p.add_argument("--output-dir", help="run directory (default runs/<config stem>)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    _export_dtype(p)
    add_overrides(p)
    p.set_defaults(func=_finetune)

    p = sub.add_parser(
        "evaluate", help="evaluate weights (retrieval, QA or classification metrics of the task)"
    )
    p.add_argument(
        "--config",
        required=True,
        action="append",
        help="YAML config of the model and its data; repeat to merge overlays in order",
    )
    p.add_argument(
        "--weights",
        required=True,
        help="run directory, model.safetensors or an original LF-VILA checkpoint",
    )
    p.add_argument("--output-dir", help="where metrics.json goes (default runs/<stem>/evaluate)")
    add_overrides(p)
    p.set_defaults(func=_evaluate)
