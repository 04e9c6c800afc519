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

from . import demo, prepare, retrieval, train


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
    # the order of `lfvila --help`
    train.add_parsers(sub)
    demo.add_parsers(sub)
    prepare.add_parser(sub)
    retrieval.add_parsers(sub)
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

    from ..data.datasets import TooManyBadVideos
    from ..training.loop import TrainingError

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
