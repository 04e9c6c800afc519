"""`lfvila demo` (the main job: a small pre-training on generated videos) and
`lfvila attention-check` (the fused window attention against the reference)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_overrides, prepare_triton_for_cpu


def _demo(args: argparse.Namespace) -> int:
    from ..jobs.demo import run_demo

    run_dir = Path(args.output_dir) if args.output_dir else Path("runs") / "demo"
    return run_demo(run_dir, args.overrides, data_dir=args.data_dir)


def _attention_check(args: argparse.Namespace) -> int:
    prepare_triton_for_cpu()
    from ..jobs.attention_demo import format_result, run_attention_demo

    result = run_attention_demo(args.layer, args.batch, args.repeats, args.device)
    print(format_result(result))
    return 0 if result.ok else 1


def add_parsers(sub) -> None:
    """`demo` and `attention-check` on the top-level subparsers `sub`."""
    p = sub.add_parser("demo", help="pre-train a small LF-VILA on generated videos (CPU is enough)")
    p.add_argument("--output-dir", help="run directory (default runs/demo)")
    p.add_argument("--data-dir", help="where the demo videos are generated (default: a cache)")
    add_overrides(p)
    p.set_defaults(func=_demo)

    p = sub.add_parser(
        "attention-check", help="fused vs reference window attention at an LF-VILA layer shape"
    )
    p.add_argument("--layer", default="L1", help="L0..L5, VS-8x7x7 or VS-2x7x7 (default L1)")
    p.add_argument("--batch", type=int, default=None, help="samples (default 16 on GPU, 1 on CPU)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per backend (default 5)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.set_defaults(func=_attention_check)
