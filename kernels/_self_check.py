"""Kernel self-check: each fused kernel against its reference, on the shapes a model runs, where
it runs, before its result is trusted.

A kernel that passes every test on one machine can still be wrong on another GPU, driver or
Triton version (issue 18: shifted windows with a bias table were wrong on an H200 and right
everywhere else). So the fused ops check themselves on the user's machine:

- The first-call check, **on by default on CUDA**: the first time a call signature is made, its
  fused forward and backward run on random inputs of that signature against the reference by the
  error-ratio rule (STYLE.md §5: truth = the reference in fp32, fp64 for fp32 inputs; the kernel
  may err at most 2x (outputs) or 3x (gradients) what the reference errs in the input dtype).
  The signature is everything that selects a compiled kernel: the full shape **with the batch**
  (loop trip counts and Triton's specialisation of integers equal to 1 follow it), the strides,
  the dtypes, the op's settings (window attention: window, shift, bias kind and dtype, pad
  vectors, packed qkv). On a mismatch ("fallback", the default) one warning names the signature
  and the error and that signature runs on its fallback route for the rest of the process: the
  fastest correct one the op registered (window attention: its sdpa backend where SDPA can run
  the signature, else the reference; the losses: the reference); "error" raises
  `KernelMismatchError` instead. `LFVILA_KERNEL_SELF_CHECK=off` turns it off (benchmarks),
  `=fallback|error` turns it on on every device (the CPU's interpreter too),
  `set_first_call_check(...)` does the same from Python.
- Under torch.compile (while dynamo traces) and during CUDA-graph capture a check cannot run.
  Capture: a signature already checked keeps its verdict (a fallback is captured as its
  fallback route); one never checked runs the fused kernel unchecked, with one warning naming it.
  torch.compile decides on the call's settings (op, dtype, window, shift, bias kind...), since
  its sizes may be symbolic in a trace: if any signature of those settings fell back, the graph
  runs the fallback route at every size; settings never checked run fused, with that warning.
  Check first: one eager call, `self_check(model, ...)`, or `lfvila pretrain` / `finetune`,
  which check every call of the model before the first step (lfvila/training/kernel_check.py).
- `self_check(module, *example_args)` runs `module(*example_args)` once without gradients,
  records every fused call it makes (and the module that made it), then checks each distinct
  one. `check_calls(calls)` does the same for calls recorded with `record_fused_calls()`.

The ops register their checks and fallback routes here (`register_check`), so this module
imports none of them.
A check costs one fused and two reference forward+backward passes.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import os
import time
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from .testing import error_check, no_tf32

logger = logging.getLogger("lfvila.kernels")

MODES = ("error", "fallback")
ENV = "LFVILA_KERNEL_SELF_CHECK"


class KernelMismatchError(RuntimeError):
    """A fused kernel disagrees with its reference on this machine (see the message)."""


@dataclasses.dataclass(frozen=True)
class FusedCall:
    """One call signature of a fused op: everything that selects a compiled kernel variant.

    shape: window attention (B, T, H, W, heads, D); contrastive_loss (N, d); mtc_loss (B, M, d).
    strides: of the tensor the kernels read (window attention: q, or the packed qkv); () when the
        op copies to a fixed layout.
    params: the op's other settings as sorted (name, value) pairs (hashable).
    """

    op: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device
    params: tuple[tuple[str, object], ...]
    strides: tuple[int, ...] = ()

    def param(self, name: str):
        return dict(self.params)[name]

    def with_batch(self, batch: int) -> FusedCall:
        """The same signature at another batch (a batch stride does not depend on the batch)."""
        return dataclasses.replace(self, shape=(batch, *self.shape[1:]))

    def describe(self) -> str:
        """'window_attention (2, 32, 24, 40, 4, 32) bfloat16, window (2, 3, 5) shift (0, 1, 2),
        table float32, packed qkv' and the like."""
        dtype = _short(self.dtype)
        text = f"{self.op} {tuple(self.shape) if self.shape else '(any shape)'} {dtype}"
        p = dict(self.params)
        if self.op != "window_attention":
            return text + ", " + ", ".join(f"{k} {_short(v)}" for k, v in self.params)
        text += f", window {p['window']} shift {p['shift']}"
        kind = p["bias"]
        text += f", {kind} {_short(p['bias_dtype'])}" if kind != "none" else ", no bias"
        if p["pad_dtype"]:
            text += f", pad k/v {_short(p['pad_dtype'])}"
        if p["packed"]:
            text += ", packed qkv"
        if p["mask_value"] != -100.0:
            text += f", mask value {p['mask_value']}"
        if p["clamped_index"] != "effective":
            text += f", {p['clamped_index']} index"
        return text


def _short(value) -> str:
    if isinstance(value, torch.dtype):
        return str(value).replace("torch.", "")
    return str(value)


@dataclasses.dataclass
class CheckResult:
    call: FusedCall
    modules: list[str]
    """Modules that made this call (empty when unknown)."""
    ok: bool
    message: str
    """'' when ok, else every failing tensor with its error against the bound."""
    worst: float
    """Largest error as a multiple of its bound over all checked tensors (<= 1 passes)."""
    seconds: float

    def where(self) -> str:
        if not self.modules:
            return "a call"
        more = f" (+{len(self.modules) - 2} more)" if len(self.modules) > 2 else ""
        return ", ".join(self.modules[:2]) + more

    def summary(self) -> str:
        verdict = "ok" if self.ok else "MISMATCH"
        return (
            f"{self.where()}: {self.call.describe()}: {verdict} (worst error "
            f"{self.worst:.2g}x its bound, {self.seconds * 1e3:.0f} ms)"
        )


# ----------------------------------------------------------------------------------------------
# State: recording, module labels, verdicts, fallbacks, the first-call setting.

_recording: list[tuple[FusedCall, str]] | None = None
_fallback: dict[FusedCall, str] = {}  # signature -> why it runs on its fallback route
_checked: set[FusedCall] = set()
_results: list[CheckResult] = []  # every check of this process, in order
_unchecked_warned: set[FusedCall] = set()
_in_check = False
_module_name: contextvars.ContextVar[str] = contextvars.ContextVar("lfvila_module", default="")
_CHECKS: dict = {}  # op -> check(call, seed) -> {name: (out, truth, pt, rule)}; see register_check
_FALLBACKS: dict = {}  # op -> fallback(call) -> backend name; see register_check
SETTINGS = ("auto", "off", *MODES)


def register_check(op: str, check, fallback=None) -> None:
    """Register `check(call: FusedCall, seed: int) -> {name: (fused, truth, pt, rule)}` for op,
    and `fallback(call: FusedCall) -> str`, the backend a signature that failed its check runs
    from then on (default: "reference"; the call's shape may be empty, see
    `choice_while_tracing`). The op packages do this at import: the self-check never imports
    them (no import circle)."""
    _CHECKS[op] = check
    if fallback is not None:
        _FALLBACKS[op] = fallback


def fallback_route(call: FusedCall) -> str:
    """The backend a mismatched `call` runs on: its op's registered fallback, else the reference."""
    fallback = _FALLBACKS.get(call.op)
    return fallback(call) if fallback is not None else "reference"


def _env_setting() -> str:
    """LFVILA_KERNEL_SELF_CHECK, read at import: "auto" (unset: fallback on CUDA, off elsewhere),
    "off", "error" or "fallback" (on every device)."""
    value = os.environ.get(ENV, "").strip().lower()
    if value in ("", "auto"):
        return "auto"
    if value in ("0", "off", "none", "false"):
        return "off"
    if value not in MODES:
        logger.warning(
            "%s=%r is not one of auto, off, %s: the first-call check stays 'auto'",
            ENV, value, ", ".join(MODES),
        )  # fmt: skip
        return "auto"
    return value


_setting = _env_setting()


def set_first_call_check(mode: str | None) -> None:
    """The first-call check: "fallback" or "error" on every device, None or "off" nowhere, "auto"
    (the default unless LFVILA_KERNEL_SELF_CHECK says otherwise) fallback on CUDA only."""
    global _setting
    mode = "off" if mode is None else mode
    if mode not in SETTINGS:
        raise ValueError(f"first-call check mode must be one of {SETTINGS} or None, got {mode!r}")
    _setting = mode


def first_call_mode(device: torch.device) -> str | None:
    """What the first-call check does for a call on `device`: "fallback", "error" or None."""
    if _setting == "off":
        return None
    if _setting == "auto":
        return "fallback" if device.type == "cuda" else None
    return _setting


def active(device: torch.device) -> bool:
    """Whether a fused call on `device` needs `on_fused_call` (recording, fallbacks or checks)."""
    return _recording is not None or bool(_fallback) or first_call_mode(device) is not None


def fallback_calls() -> dict[FusedCall, str]:
    """The signatures that run on their fallback route (`fallback_route`) after a mismatch:
    {call: reason}."""
    return dict(_fallback)


def results() -> list[CheckResult]:
    """Every check this process ran (first-call checks included), in order."""
    return list(_results)


def reset() -> None:
    """Forget fallbacks, verdicts and results (tests; a new model)."""
    _fallback.clear()
    _checked.clear()
    _results.clear()
    _unchecked_warned.clear()


@contextlib.contextmanager
def record_fused_calls() -> Iterator[list[tuple[FusedCall, str]]]:
    """Inside: every fused call is appended (call, module name) to the yielded list."""
    global _recording
    previous, _recording = _recording, []
    try:
        yield _recording
    finally:
        _recording = previous


@contextlib.contextmanager
def module_labels(model: nn.Module) -> Iterator[None]:
    """Inside: fused calls made under a submodule of `model` carry its qualified name."""
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def pre(mod, args, _name=name):
            mod._lfvila_label_token = _module_name.set(_name)

        def post(mod, args, out):
            token = getattr(mod, "_lfvila_label_token", None)
            if token is not None:
                _module_name.reset(token)
                mod._lfvila_label_token = None

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def verdict(
    op: str, shape, dtype: torch.dtype, device: torch.device, params: dict, strides=(),
    chosen: str = "triton",
) -> str:  # fmt: skip
    """The dispatchers' entry: the backend to run for a fused call of this signature (`chosen`,
    or its fallback route after a mismatch). Eager calls go to `on_fused_call`; while
    torch.compile traces, the verdict is a constant of the graph (`choice_while_tracing`)."""
    items = tuple(sorted(params.items()))
    if torch.compiler.is_compiling():
        # sizes may be symbolic in a trace: only the settings cross into the constant function
        return choice_while_tracing(*_flatten((op, dtype, device, items, chosen)))
    if not active(device):
        return chosen
    call = FusedCall(op, tuple(shape), dtype, torch.device(device), items, tuple(strides))
    return on_fused_call(call, chosen)


# assume_constant_result takes only constants (ints, strs, dtypes, devices, None...), not tuples:
# the signature crosses into `choice_while_tracing` flattened, tuples between markers.
_OPEN, _CLOSE = "<lfvila-tuple>", "</lfvila-tuple>"


def _flatten(value) -> list:
    if isinstance(value, tuple):
        out = [_OPEN]
        for item in value:
            out.extend(_flatten(item))
        out.append(_CLOSE)
        return out
    return [value]


def _unflatten(flat: tuple):
    stack: list[list] = [[]]
    for item in flat:
        if isinstance(item, str) and item == _OPEN:
            stack.append([])
        elif isinstance(item, str) and item == _CLOSE:
            done = tuple(stack.pop())
            stack[-1].append(done)
        else:
            stack[-1].append(item)
    return stack[0][0]


def on_fused_call(call: FusedCall, chosen: str) -> str:
    """Called by the dispatchers (eagerly) when they chose a fused backend: records the call,
    applies a fallback, runs the first-call check. Returns the backend to run."""
    if _in_check:
        return chosen
    if _recording is not None:
        _recording.append((call, _module_name.get()))
    if call in _fallback:
        return fallback_route(call)
    mode = first_call_mode(call.device)
    if mode is None or call in _checked:
        return chosen
    if _capturing():
        _warn_unchecked(call, "CUDA-graph capture")
        return chosen
    _checked.add(call)
    modules = [_module_name.get()] if _module_name.get() else []
    result = check_call(call, modules)
    logger.info("kernel self-check (first call): %s", result.summary())
    if result.ok:
        return chosen
    apply_mismatch_policy([result], mode)
    return fallback_route(call)


@torch.compiler.assume_constant_result
def choice_while_tracing(*flat) -> str:
    """`on_fused_call` while torch.compile traces: a constant of the graph, decided on the call's
    settings (op, dtype, device, params) since its sizes may be symbolic there. No check can run
    in a trace: any signature of these settings that fell back sends the graph to its fallback
    route; settings never checked run fused, with one warning."""
    op, dtype, device, params, chosen = _unflatten(flat)
    settings = FusedCall(op, (), dtype, torch.device(device), params)
    if _in_check:
        return chosen
    if any(_settings(c) == settings for c in _fallback):
        return fallback_route(settings)
    mode = first_call_mode(settings.device)
    if mode is not None and not any(_settings(c) == settings for c in _checked):
        _warn_unchecked(settings, "torch.compile")
    return chosen


def _settings(call: FusedCall) -> FusedCall:
    """The call without its sizes and strides."""
    return dataclasses.replace(call, shape=(), strides=())


def _warn_unchecked(call: FusedCall, where: str) -> None:
    if call in _unchecked_warned:
        return
    _unchecked_warned.add(call)
    logger.warning(
        "kernel self-check: %s runs fused UNCHECKED: no check can run during %s. Check it "
        "first (one eager call, or lfvila.kernels.self_check(model, example)), or set %s=off "
        "to silence this.",
        call.describe(), where, ENV,
    )  # fmt: skip


def _capturing() -> bool:
    """During CUDA-graph capture (or a trace) a check cannot run."""
    if torch.compiler.is_compiling():
        return True
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def apply_mismatch_policy(failed: list[CheckResult], mode: str) -> None:
    if not failed:
        return
    if mode == "error":
        lines = [f"fused kernel mismatch on this machine ({_device_name(failed[0].call)}):"]
        for result in failed:
            lines.append(f"  {result.where()}: {result.call.describe()}:\n    {result.message}")
        lines.append(
            "  The kernel's result would be wrong here. Set kernels.on_mismatch=fallback (or "
            f"{ENV}=fallback) to run these calls on their fallback route (SDPA on a GPU, the "
            "reference on the CPU), or kernels.backend=sdpa (or reference) to run everything "
            "there; please report this."
        )
        raise KernelMismatchError("\n".join(lines))
    for result in failed:
        _fallback[result.call] = result.message
        logger.warning(
            "kernel self-check: %s: %s disagrees with the reference (%s); running it on the "
            "%s backend from now on (on_mismatch=fallback)",
            result.where(),
            result.call.describe(),
            result.message.splitlines()[0],
            fallback_route(result.call),
        )


def _device_name(call: FusedCall) -> str:
    if call.device.type == "cuda":
        return torch.cuda.get_device_name(call.device)
    return f"{call.device.type}, Triton interpreter"


# ----------------------------------------------------------------------------------------------
# Checks


def check_call(call: FusedCall, modules: list[str] | None = None, seed: int = 0) -> CheckResult:
    """The fused forward and backward of `call` on random inputs against the reference."""
    global _in_check
    if call.op not in _CHECKS:
        raise ValueError(f"no self-check registered for op {call.op!r}")
    start = time.perf_counter()
    previous, _in_check = _in_check, True
    try:
        # the call's own dtypes, whatever autocast the caller runs under; exact references
        with (
            torch.inference_mode(False),
            torch.enable_grad(),
            torch.autocast("cuda", enabled=False),
            torch.autocast("cpu", enabled=False),
            no_tf32(),
        ):
            pairs = _CHECKS[call.op](call, seed)
    finally:
        _in_check = previous
    failures, worst = [], 0.0
    for name, (out, truth, pt, rule) in pairs.items():
        ok, msg, margin = error_check(out, truth, pt, **rule)
        worst = max(worst, margin)
        if not ok:
            failures.append(f"{name}: {msg}")
    result = CheckResult(
        call, list(modules or []), not failures, "\n    ".join(failures), worst,
        time.perf_counter() - start,
    )  # fmt: skip
    _results.append(result)
    return result


def leaf(x: torch.Tensor | None, dtype=None, strides: tuple[int, ...] = ()):
    """A fresh leaf copy of x (in `dtype`), laid out with `strides` when given."""
    if x is None:
        return None
    x = x.detach().to(dtype or x.dtype)
    if strides and len(strides) == x.dim():
        y = torch.empty_strided(x.shape, strides, dtype=x.dtype, device=x.device)
        y.copy_(x)
    else:
        y = x.clone()
    return y.requires_grad_(True)


def grads(out, inputs: dict, g) -> dict:
    """{name: d out/d input} against the upstream gradient g (zeros for unused inputs)."""
    present = [x for x in inputs.values() if x is not None]
    got = iter(torch.autograd.grad(out, present, g.to(out.dtype), allow_unused=True))
    result = {}
    for name, x in inputs.items():
        if x is not None:
            d = next(got)
            result[name] = torch.zeros_like(x) if d is None else d
    return result


def error_pairs(run, dtype: torch.dtype, names: tuple[tuple[str, dict], ...]) -> dict:
    """{name: (fused, truth, pt, rule)}: `run(dtype, fused) -> tensors` in `names`' order, truth
    in fp32 (fp64 for fp32 inputs), pt and the fused run in the call's dtype."""
    truth_dtype = torch.float64 if dtype == torch.float32 else torch.float32
    truth, pt, out = run(truth_dtype, False), run(None, False), run(None, True)
    return {n: (o.reshape(-1), t.reshape(-1), q.reshape(-1), rule)
            for (n, rule), o, t, q in zip(names, out, truth, pt)}  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Public entry points


def check_calls(
    calls: Iterable[tuple[FusedCall, str]],
    on_mismatch: str | None = "error",
    batch: int | None = None,
    log=logger.info,
) -> list[CheckResult]:
    """Check each distinct recorded call once (calls that differ only in the module that made
    them are checked together); `batch` replaces the recorded batch. Logs one line per check.
    `on_mismatch`: "error" raises KernelMismatchError listing every mismatch, "fallback" sends
    those calls to the reference from now on, None only returns the results."""
    if on_mismatch is not None and on_mismatch not in MODES:
        raise ValueError(f"on_mismatch must be one of {MODES} or None, got {on_mismatch!r}")
    groups: dict[FusedCall, list[str]] = {}
    for call, module in calls:
        call = call.with_batch(batch) if batch else call
        names = groups.setdefault(call, [])
        if module and module not in names:
            names.append(module)
    checked = []
    for call, modules in groups.items():
        result = check_call(call, modules)
        _checked.add(call)
        log("kernel self-check: %s", result.summary())
        checked.append(result)
    if on_mismatch is not None:
        apply_mismatch_policy([r for r in checked if not r.ok], on_mismatch)
    return checked


def self_check(
    module: nn.Module,
    *example_args,
    on_mismatch: str | None = "error",
    batch: int | None = None,
    **example_kwargs,
) -> list[CheckResult]:
    """Run `module(*example_args, **example_kwargs)` once (no gradients), then check every fused
    call it made against the reference, forward and backward (see `check_calls`).

    Example:
        results = lfvila.kernels.self_check(model, video, on_mismatch="fallback")
    """
    with record_fused_calls() as calls, module_labels(module), torch.no_grad():
        module(*example_args, **example_kwargs)
    return check_calls(calls, on_mismatch, batch)


def loss_call(op: str, shape, dtype, device, **params) -> FusedCall:
    """The FusedCall of a contrastive_loss ((N, d); temperature) or mtc_loss ((B, M, d);
    temperature, num_key, num_value, num_other_neg) call."""
    return FusedCall(op, tuple(shape), dtype, torch.device(device), tuple(sorted(params.items())))
