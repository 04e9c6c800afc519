"""Backend choice shared by every op: explicit requests, `auto`, the env override, logging.

`auto` takes the first backend of the op's candidate order whose check returns no reasons: the
op's priority tuple, or, where the op gives an `auto` hook (window attention: its measured
table), the hook's backend first and then the priority tuple. CPU tensors always get the
reference (the Triton interpreter runs only when a test asks for it by name).
`LFVILA_KERNEL_BACKEND` overrides `auto` for every op that has the backend it names (the others
choose as `auto`: the losses have no "sdpa"). An explicit backend that cannot run raises
ValueError with every reason: it never falls back silently. The choice and the skipped
backends' reasons are logged at DEBUG once per (op, device, dtype, choice); `explain_backend`
returns them for a caller to show (`lfvila attention-check`, the run header).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from ._backend import BACKENDS, backend_override

logger = logging.getLogger("lfvila.kernels")
_logged: set[tuple] = set()


def _resolve(op, backend, x, checks, priority, auto) -> tuple[str, str, dict[str, list[str]]]:
    """(chosen, how: "explicit" / "env" / "cpu" / "auto", skipped backends' reasons)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    how = "explicit"
    if backend == "auto":
        override = backend_override()
        backend, how = (override, "env") if override in checks else ("auto", "auto")
    if backend != "auto":
        reasons = checks[backend]() if backend in checks else [f"{op} has no {backend} backend"]
        if reasons:
            raise ValueError(f"{op} backend {backend!r} cannot run: " + "; ".join(reasons))
        return backend, how, {}
    if x.device.type == "cpu":
        reason = "CPU tensors use the reference unless a backend is asked for by name"
        return "reference", "cpu", {"triton": [reason]}
    order = priority
    if auto is not None:
        first = auto()
        order = (first, *(name for name in priority if name != first))
    skipped: dict[str, list[str]] = {}
    for name in order:
        reasons = checks[name]() if name in checks else [f"{op} has no {name} backend"]
        if not reasons:
            return name, "auto", skipped
        skipped[name] = reasons
    return "reference", "auto", skipped


def choose_backend(
    op: str,
    backend: str,
    x: torch.Tensor,
    checks: dict[str, Callable[[], list[str]]],
    priority: tuple[str, ...] = ("triton", "cuda", "reference"),
    auto: Callable[[], str] | None = None,
    auto_reason: Callable[[], str] | None = None,
) -> str:
    """Return the backend to run; `checks[name]()` gives the reasons `name` cannot run.

    `auto()` (optional) names `auto`'s first candidate on a non-CPU device, before `priority`;
    `auto_reason()` says why (logged)."""
    chosen, how, skipped = _resolve(op, backend, x, checks, priority, auto)
    if how in ("auto", "cpu"):
        key = (op, x.device.type, x.dtype, chosen)
        if key not in _logged:
            _logged.add(key)
            why = auto_reason() if how == "auto" and auto_reason is not None else how
            logger.debug(
                "%s: auto chose %r for %s %s (%s); skipped: %s",
                op, chosen, x.device, x.dtype, why, skipped,
            )  # fmt: skip
    return chosen


def explain_backend(
    op: str,
    backend: str,
    x: torch.Tensor,
    checks: dict[str, Callable[[], list[str]]],
    priority: tuple[str, ...] = ("triton", "cuda", "reference"),
    auto: Callable[[], str] | None = None,
    auto_reason: Callable[[], str] | None = None,
) -> tuple[str, str]:
    """(backend, why): what `choose_backend` picks for these arguments, in words."""
    chosen, how, skipped = _resolve(op, backend, x, checks, priority, auto)
    if how == "explicit":
        return chosen, f"backend={backend!r} asked for"
    if how == "env":
        return chosen, f"LFVILA_KERNEL_BACKEND={chosen}"
    if how == "cpu":
        return chosen, skipped["triton"][0]
    why = auto_reason() if auto_reason is not None else f"priority {priority}"
    if skipped:
        why += "; skipped " + "; ".join(f"{n}: {', '.join(r)}" for n, r in skipped.items())
    return chosen, f"auto: {why}"


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
