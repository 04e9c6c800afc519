"""Triton helpers shared by the kernel files: an interpreter-aware autotune and launch settings.

Imports triton at module top: only triton_impl.py files import this module.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
import triton

from ._backend import interpreter_enabled


def autotune(configs: Sequence[triton.Config], key: list[str], prune: Callable | None = None):
    """`triton.autotune` that keeps only the first legal config under TRITON_INTERPRET=1.

    Several configs fail in the interpreter without a custom `do_bench`, and CPU timings mean
    nothing there. `prune(configs, named_args, **launch_kwargs) -> configs` drops configs illegal
    for a shape (launch_kwargs: the constexprs passed by keyword).
    """
    configs = list(configs)
    if interpreter_enabled():
        configs = configs[:1]

    def early_prune(cfgs, named_args, **kwargs):
        kept = prune(cfgs, named_args, **kwargs) if prune is not None else cfgs
        return kept[:1] if interpreter_enabled() else (kept or cfgs[:1])

    return triton.autotune(
        configs=configs, key=key, prune_configs_by={"early_config_prune": early_prune}
    )


@functools.cache
def num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def parallel_target(device: torch.device) -> int:
    """Programs to aim for so that every SM has work: 4 per SM on a GPU, a handful otherwise."""
    if device.type == "cuda":
        return 4 * num_sms(
            device.index if device.index is not None else torch.cuda.current_device()
        )
    return 8


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs need IEEE dots: TF32 would miss the error-ratio bound against the fp64 truth."""
    return "ieee" if dtype == torch.float32 else "tf32"
