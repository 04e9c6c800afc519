"""`lfvila` command line (also `python -m lfvila`).

Subcommands:
    demo    the attention demo: fused vs reference window attention at a real LF-VILA layer shape
"""

from __future__ import annotations

import argparse
import os
import sys


def _prepare_triton_for_cpu() -> None:
    """Without a GPU, Triton kernels run only in the interpreter, which must be on before they
    are defined (kernels are imported lazily, so setting it here is early enough)."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


def _demo(args: argparse.Namespace) -> int:
    _prepare_triton_for_cpu()
    from .attention_demo import format_result, run_attention_demo

    result = run_attention_demo(args.layer, args.batch, args.repeats, args.device)
    print(format_result(result))
    return 0 if result.ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lfvila", description=__doc__.splitlines()[0])
    # The deepspeed launcher appends --local_rank; accept and ignore it.
    parser.add_argument(
        "--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo", help="fused vs reference window attention at an LF-VILA layer shape"
    )
    demo.add_argument("--layer", default="L1", help="L0..L5, VS-8x7x7 or VS-2x7x7 (default L1)")
    demo.add_argument(
        "--batch", type=int, default=None, help="samples (default 16 on GPU, 1 on CPU)"
    )
    demo.add_argument("--repeats", type=int, default=5, help="timed runs per backend (default 5)")
    demo.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as exc:  # bad arguments or inputs: one clear line, not a traceback
        print(f"lfvila {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
