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


PROGRAMS_PER_SM = 4
PROGRAMS_OFF_GPU = 8  # CPU tensors: the interpreter, where programs run one after another


def device_sms(device: torch.device) -> int | None:
    """Multiprocessors of a CUDA device; None for any other device.

    The one place launch sizes learn about the hardware: the compile report
    (tests/kernels/compile_for_gpu.py) replaces it to size launches as on an H100/H200 without one.
    """
    if device.type != "cuda":
        return None
    return num_sms(device.index if device.index is not None else torch.cuda.current_device())


def parallel_target(device: torch.device, per_sm: int = PROGRAMS_PER_SM) -> int:
    """Programs to aim for so that every SM has work: `per_sm` per SM on a GPU (4 by default),
    a handful otherwise."""
    sms = device_sms(device)
    return PROGRAMS_OFF_GPU if sms is None else per_sm * sms


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs need IEEE dots: TF32 would miss the error-ratio bound against the fp64 truth."""
    return "ieee" if dtype == torch.float32 else "tf32"
