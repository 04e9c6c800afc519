"""Cached probes of what this process can run: Triton, the interpreter, lfvila._C, env switches.

Nothing here imports Triton or the compiled extension at module import; every probe returns a
reason string instead of raising, so `import lfvila.kernels` works with none of them installed.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os

import torch

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "triton", "cuda", "sdpa", "reference")


@functools.cache
def _probe_triton() -> str | None:
    try:
        importlib.import_module("triton")
    except Exception as exc:  # ImportError, or a broken install raising anything else
        return f"triton not importable ({type(exc).__name__}: {exc})"
    return None


# Probes are constants to torch.compile: dynamo calls them eagerly instead of tracing imports.
@torch.compiler.assume_constant_result
def triton_missing_reason() -> str | None:
    """None when `import triton` works, else why it does not."""
    return _probe_triton()


def has_triton() -> bool:
    return triton_missing_reason() is None


@torch.compiler.assume_constant_result
def interpreter_enabled() -> bool:
    """True when TRITON_INTERPRET=1: Triton kernels then run on CPU tensors (slowly, for tests)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.cache
def load_ext():
    """Return (module, None) for the compiled extension lfvila._C, or (None, reason)."""
    if os.environ.get("LFVILA_SKIP_CUDA_BUILD"):
        return None, "lfvila._C not built (LFVILA_SKIP_CUDA_BUILD=1)"
    try:
        return importlib.import_module("lfvila._C"), None
    except Exception as exc:
        return None, f"lfvila._C not built ({type(exc).__name__}: {exc})"


@torch.compiler.assume_constant_result
def ext_missing_reason() -> str | None:
    """None when lfvila._C loads, else why not."""
    return load_ext()[1]


def torch_ops_enabled() -> bool:
    """Route kernels through registered torch.library ops (for torch.compile) unless disabled."""
    return os.environ.get("LFVILA_DISABLE_TORCH_OPS", "0") in ("", "0")


@torch.compiler.assume_constant_result
def backend_override() -> str | None:
    """The backend forced by LFVILA_KERNEL_BACKEND, validated; None when unset or 'auto'."""
    value = os.environ.get("LFVILA_KERNEL_BACKEND", "").strip().lower()
    if not value or value == "auto":
        return None
    if value not in BACKENDS:
        raise ValueError(f"LFVILA_KERNEL_BACKEND={value!r} is not one of {BACKENDS}")
    return value


def device_of(t: torch.Tensor) -> str:
    return t.device.type
