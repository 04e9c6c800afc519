"""What several command families share: the config overrides argument, the Triton interpreter
switch for machines without a GPU, and the exit status of a run a signal stopped."""

from __future__ import annotations

import argparse
import os


def prepare_triton_for_cpu() -> None:
    """Without a GPU, Triton kernels run only in the interpreter, which must be on before they
    are defined (kernels are imported lazily, so setting it here is early enough)."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


def add_overrides(p: argparse.ArgumentParser) -> None:
    """The trailing `section.key=value` config overrides (and the deepspeed launcher's
    --local_rank, accepted and ignored: LOCAL_RANK is read)."""
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="section.key=value",
        help="config overrides, e.g. train.lr=1e-4 data.root=/data",
    )
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


def stopped_status(stopped_by: str | None) -> int:
    """0 for a finished run; 143 after SIGTERM, 130 after SIGINT (the run checkpointed)."""
    if stopped_by is not None:
        return 143 if stopped_by == "SIGTERM" else 130
    return 0
