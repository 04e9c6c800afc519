"""Backend choice shared by every op: explicit requests, `auto`, the env override, logging.

`auto` takes the first backend of the op's priority tuple whose check returns no reasons; CPU
tensors always get the reference (the Triton interpreter runs only when a test asks for it by
name). `LFVILA_KERNEL_BACKEND` overrides `auto`. An explicit backend that cannot run raises
ValueError with every reason: it never falls back silently. The choice and the skipped backends'
reasons are logged at DEBUG once per (op, device, dtype, choice).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from ._backend import BACKENDS, backend_override

logger = logging.getLogger("lfvila.kernels")
_logged: set[tuple] = set()


def choose_backend(
    op: str,
    backend: str,
    x: torch.Tensor,
    checks: dict[str, Callable[[], list[str]]],
    priority: tuple[str, ...] = ("triton", "cuda", "reference"),
) -> str:
    """Return the backend to run; `checks[name]()` gives the reasons `name` cannot run."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = backend_override() or "auto"
    if backend != "auto":
        reasons = checks[backend]() if backend in checks else [f"{op} has no {backend} backend"]
        if reasons:
            raise ValueError(f"{op} backend {backend!r} cannot run: " + "; ".join(reasons))
        return backend
    skipped: dict[str, list[str]] = {}
    chosen = "reference"
    if x.device.type == "cpu":
        skipped["triton"] = ["CPU tensors use the reference unless backend='triton' is asked for"]
    else:
        for name in priority:
            reasons = checks[name]() if name in checks else [f"{op} has no {name} backend"]
            if not reasons:
                chosen = name
                break
            skipped[name] = reasons
    key = (op, x.device.type, x.dtype, chosen)
    if key not in _logged:
        _logged.add(key)
        logger.debug(
            "%s: auto chose %r for %s %s; skipped: %s", op, chosen, x.device, x.dtype, skipped
        )
    return chosen


def triton_device_reasons(x: torch.Tensor, dtypes: tuple[torch.dtype, ...]) -> list[str]:
    """Reasons common to every Triton kernel: importable, a usable device, a supported dtype."""
    from ._backend import interpreter_enabled, triton_missing_reason

    reasons = []
    if (missing := triton_missing_reason()) is not None:
        reasons.append(missing)
    if x.device.type == "cpu":
        if not interpreter_enabled():
            reasons.append("CPU tensors need TRITON_INTERPRET=1 (set before lfvila is imported)")
        elif x.dtype == torch.bfloat16:
            reasons.append("bf16 tl.dot is wrong under the Triton interpreter (test bf16 on a GPU)")
    elif x.device.type != "cuda":
        reasons.append(f"device {x.device.type} is not cuda")
    if x.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        reasons.append(f"dtype {str(x.dtype).replace('torch.', '')} not in ({names})")
    return reasons
