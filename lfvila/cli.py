"""`lfvila` command line (also `python -m lfvila`).

Subcommands:
    pretrain         pre-train LF-VILA (stage 1 or 2) from a config (torchrun / deepspeed: many
                     processes)
    finetune         fine-tune a downstream task: retrieval, QA or video classification
    evaluate         evaluate weights with the task's metrics (retrieval, accuracy, validation)
    demo             the main job: pre-train a small LF-VILA on generated videos on the CPU and
                     show the retrieval it learned
    attention-check  fused vs reference window attention at a real LF-VILA layer shape
    prepare          build pre-training data: `prepare longform` (annotations from HD-VILA-style
                     metadata), `prepare videos` (3 fps clips), `prepare check` (clips readable)
    encode           a trained model's features: `encode videos` (a collection -> an index file,
                     resumable, bad videos skipped and listed), `encode text` (paragraphs)
    search           top-k videos of an index for paragraphs (`--query`), or its retrieval
                     metrics against annotations (`--eval`)

Config overrides follow the options as `section.key=value` (e.g. `train.lr=1e-4`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _prepare_triton_for_cpu() -> None:
    """Without a GPU, Triton kernels run only in the interpreter, which must be on before they
    are defined (kernels are imported lazily, so setting it here is early enough)."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


def _attention_check(args: argparse.Namespace) -> int:
    _prepare_triton_for_cpu()
    from .attention_demo import format_result, run_attention_demo

    result = run_attention_demo(args.layer, args.batch, args.repeats, args.device)
    print(format_result(result))
    return 0 if result.ok else 1


def _pretrain(args: argparse.Namespace) -> int:
    from .config import load_config
    from .run import default_run_dir, pretrain

    cfg = load_config(args.config, args.overrides)
    run_dir = Path(args.output_dir) if args.output_dir else default_run_dir(args.config)
    result = pretrain(cfg, run_dir, args.resume, args.export_dtype, args.config, args.overrides)
    if result.stopped_by is not None:
        return 143 if result.stopped_by == "SIGTERM" else 130
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from .config import load_config
    from .run import default_run_dir, finetune

    cfg = load_config(args.config, args.overrides)
    run_dir = Path(args.output_dir) if args.output_dir else default_run_dir(args.config)
    result = finetune(
        cfg, run_dir, args.weights, args.resume, args.export_dtype, args.config, args.overrides
    )
    if result.stopped_by is not None:
        return 143 if result.stopped_by == "SIGTERM" else 130
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .config import load_config
    from .run import default_run_dir, evaluate_weights

    cfg = load_config(args.config, args.overrides)
    run_dir = (
        Path(args.output_dir) if args.output_dir else default_run_dir(args.config) / "evaluate"
    )
    evaluate_weights(cfg, args.weights, run_dir)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_dir = Path(args.output_dir) if args.output_dir else Path("runs") / "demo"
    return run_demo(run_dir, args.overrides, data_dir=args.data_dir)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lfvila",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    # The deepspeed launcher appends --local_rank; accept and ignore it (LOCAL_RANK is read).
    parser.add_argument(
        "--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def overrides(p):
        p.add_argument(
            "overrides",
            nargs="*",
            metavar="section.key=value",
            help="config overrides, e.g. train.lr=1e-4 data.root=/data",
        )
        p.add_argument(
            "--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS
        )

    p = sub.add_parser("pretrain", help="pre-train LF-VILA from a config")
    p.add_argument(
        "--config",
        required=True,
        action="append",
        help="YAML config (e.g. configs/pretrain_stage1.yaml); repeat to merge overlays in order",
    )
    p.add_argument("--output-dir", help="run directory (default runs/<config stem>)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    p.add_argument(
        "--export-dtype",
        choices=("fp32", "bf16", "fp16"),
        default="fp32",
        help="dtype of the exported model.safetensors (default fp32)",
    )
    overrides(p)
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
    p.add_argument(
        "--export-dtype",
        choices=("fp32", "bf16", "fp16"),
        default="fp32",
        help="dtype of the exported model.safetensors (default fp32)",
    )
    overrides(p)
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
    overrides(p)
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("demo", help="pre-train a small LF-VILA on generated videos (CPU is enough)")
    p.add_argument("--output-dir", help="run directory (default runs/demo)")
    p.add_argument("--data-dir", help="where the demo videos are generated (default: a cache)")
    overrides(p)
    p.set_defaults(func=_demo)

    p = sub.add_parser(
        "attention-check", help="fused vs reference window attention at an LF-VILA layer shape"
    )
    p.add_argument("--layer", default="L1", help="L0..L5, VS-8x7x7 or VS-2x7x7 (default L1)")
    p.add_argument("--batch", type=int, default=None, help="samples (default 16 on GPU, 1 on CPU)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per backend (default 5)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.set_defaults(func=_attention_check)

    from .prepare.cli import add_parser as add_prepare_parser

    add_prepare_parser(sub)
    from .encode_cli import add_parsers as add_encode_parsers

    add_encode_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # Overrides may also follow options (`--config X a.b=1 --output-dir D c.d=2`): argparse
    # leaves the later ones over; they join the overrides, anything else is an error.
    later = [x for x in extra if "=" in x and not x.startswith("-")]
    unknown = [x for x in extra if x not in later]
    if unknown or (later and not hasattr(args, "overrides")):
        parser.error("unrecognized arguments: " + " ".join(unknown or later))
    if later:
        args.overrides = [*args.overrides, *later]
    from lfvila.kernels import KernelMismatchError

    from .data.datasets import TooManyBadVideos
    from .training.loop import TrainingError

    try:
        return args.func(args)
    except KernelMismatchError as exc:  # the kernel self-check: its message says what to do
        print(f"lfvila {args.command}: error: {exc}", file=sys.stderr)
        return 3
    except TrainingError as exc:
        print(f"lfvila {args.command}: {exc}", file=sys.stderr)
        return 1
    except TooManyBadVideos as exc:  # from a DataLoader worker: its traceback is in the text
        line = str(exc).strip().splitlines()[-1]
        line = line.split("TooManyBadVideos: ", 1)[-1]
        print(f"lfvila {args.command}: error: {line}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as exc:  # bad config, data or arguments: one line, no traceback
        rank = os.environ.get("RANK")
        where = f" (rank {rank})" if rank not in (None, "0") else ""
        print(f"lfvila {args.command}{where}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
