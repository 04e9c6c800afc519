"""Kernel self-check: each fused kernel against its reference, on the shapes a model runs, where
it runs, before its result is trusted.

A kernel that passes every test on one machine can still be wrong on another GPU, driver or
Triton version (issue 18: shifted windows with a bias table were wrong on an H200 and right
everywhere else). So the fused ops check themselves on the user's machine:

- `self_check(module, *example_args)` runs `module(*example_args)` once without gradients,
  records every fused call it makes (op, shapes, dtypes, layout, window and shift, the module that
  made it), then runs each distinct call's fused forward and backward against the reference by
  the error-ratio rule (STYLE.md §5: truth = the reference in fp32, fp64 for fp32 inputs; the
  kernel may err at most 2x (outputs) or 3x (gradients) what the reference errs in the input
  dtype). `check_calls(calls)` does the same for calls recorded with `record_fused_calls()`.
- The first-call check (`set_first_call_check("error" | "fallback")`, or the environment variable
  `LFVILA_KERNEL_SELF_CHECK=error|fallback`) checks each distinct call the first time it is made.
- On a mismatch, "error" raises `KernelMismatchError` naming the module, the shape and the
  error; "fallback" makes every later call of that kind (same op, shapes but the batch, dtypes,
  window, shift) run on the reference backend, and says so once in the log.

`lfvila pretrain` / `finetune` run the check before their first step on a GPU (the
`kernels.self_check*` and `kernels.on_mismatch` config keys; lfvila/training/kernel_check.py).
A check costs one fused and two reference forward+backward passes per distinct call.
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

from .testing import GRADIENT, OUTPUT, error_check, no_tf32

logger = logging.getLogger("lfvila.kernels")

MODES = ("error", "fallback")
ENV = "LFVILA_KERNEL_SELF_CHECK"


class KernelMismatchError(RuntimeError):
    """A fused kernel disagrees with its reference on this machine (see the message)."""


@dataclasses.dataclass(frozen=True)
class FusedCall:
    """One call of a fused op, as a model makes it (everything that selects a kernel variant).

    shape: window attention (B, T, H, W, heads, D); contrastive_loss (N, d); mtc_loss (B, M, d).
    params: the op's other settings as sorted (name, value) pairs (hashable).
    """

    op: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device
    params: tuple[tuple[str, object], ...]

    def param(self, name: str):
        return dict(self.params)[name]

    def key(self) -> tuple:
        """Identity for the fallback: everything but the batch (the leading dimension)."""
        return (self.op, self.shape[1:], self.dtype, self.device.type, self.params)

    def with_batch(self, batch: int) -> FusedCall:
        return dataclasses.replace(self, shape=(batch, *self.shape[1:]))

    def describe(self) -> str:
        """'window_attention (2, 32, 24, 40, 4, 32) bfloat16, window (2, 3, 5) shift (0, 1, 2),
        table float32, packed qkv' and the like."""
        dtype = str(self.dtype).replace("torch.", "")
        text = f"{self.op} {tuple(self.shape)} {dtype}"
        p = dict(self.params)
        if self.op != "window_attention":
            return text + ", " + ", ".join(f"{k} {_short(v)}" for k, v in self.params)
        text += f", window {p['window']} shift {p['shift']}"
        text += f", table {_short(p['table_dtype'])}" if p["table_dtype"] else ", no table"
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
# State: recording, module labels, fallbacks, first-call mode. `active()` is the dispatchers'
# single fast-path test.

_recording: list[tuple[FusedCall, str]] | None = None
_fallback: dict[tuple, str] = {}  # FusedCall.key() -> why
_first_call_mode: str | None = None  # set from LFVILA_KERNEL_SELF_CHECK below
_checked: set[tuple] = set()
_in_check = False
_module_name: contextvars.ContextVar[str] = contextvars.ContextVar("lfvila_module", default="")


def _env_mode() -> str | None:
    """LFVILA_KERNEL_SELF_CHECK, read once at import: "error", "fallback" or off."""
    value = os.environ.get(ENV, "").strip().lower()
    if value in ("", "0", "off", "none"):
        return None
    if value not in MODES:
        logger.warning("%s=%r is not one of %s: the first-call check stays off", ENV, value, MODES)
        return None
    return value


_first_call_mode = _env_mode()


def set_first_call_check(mode: str | None) -> None:
    """Check each distinct fused call the first time it is made: mode "error", "fallback" or
    None (off, the default unless LFVILA_KERNEL_SELF_CHECK is set)."""
    global _first_call_mode
    if mode is not None and mode not in MODES:
        raise ValueError(f"first-call check mode must be one of {MODES} or None, got {mode!r}")
    _first_call_mode = mode


def active() -> bool:
    """Whether a fused call needs `on_fused_call` (recording, fallbacks or first-call checks)."""
    return bool(_recording is not None or _fallback or _first_call_mode)


def fallback_calls() -> dict[tuple, str]:
    """The calls that run on the reference after a mismatch: {key: reason}."""
    return dict(_fallback)


def reset() -> None:
    """Forget fallbacks and which calls were checked (tests; a new model)."""
    _fallback.clear()
    _checked.clear()


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


def on_fused_call(call: FusedCall, chosen: str) -> str:
    """Called by the dispatchers when they chose a fused backend: records the call, applies a
    fallback, runs the first-call check. Returns the backend to run."""
    if _in_check:
        return chosen
    if _recording is not None:
        _recording.append((call, _module_name.get()))
    key = call.key()
    if key in _fallback:
        return "reference"
    mode = _first_call_mode
    if mode is None or key in _checked or _capturing():
        return chosen
    _checked.add(key)
    result = check_call(call, [_module_name.get()] if _module_name.get() else [])
    logger.info("kernel self-check (first call): %s", result.summary())
    if result.ok:
        return chosen
    apply_mismatch_policy([result], mode)
    return "reference"


def _capturing() -> bool:
    """Inside torch.compile tracing or CUDA-graph capture a check cannot run."""
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
            f"{ENV}=fallback) to run these calls on the reference backend, or "
            "kernels.backend=reference to run everything there; please report this."
        )
        raise KernelMismatchError("\n".join(lines))
    for result in failed:
        _fallback[result.call.key()] = result.message
        logger.warning(
            "kernel self-check: %s: %s disagrees with the reference (%s); running it on the "
            "reference backend from now on (on_mismatch=fallback)",
            result.where(),
            result.call.describe(),
            result.message.splitlines()[0],
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
    return CheckResult(
        call, list(modules or []), not failures, "\n    ".join(failures), worst,
        time.perf_counter() - start,
    )  # fmt: skip


def _leaf(x: torch.Tensor | None, dtype=None) -> torch.Tensor | None:
    if x is None:
        return None
    return x.detach().to(dtype or x.dtype).clone().requires_grad_(True)


def _grads(out, inputs, g):
    present = [x for x in inputs.values() if x is not None]
    got = iter(torch.autograd.grad(out, present, g.to(out.dtype), allow_unused=True))
    result = {}
    for name, x in inputs.items():
        if x is not None:
            d = next(got)
            result[name] = torch.zeros_like(x) if d is None else d
    return result


def _check_window_attention(call: FusedCall, seed: int) -> dict:
    from .testing import window_attention_inputs
    from .window_attn import window_attention, window_attention_qkv, window_attention_ref

    p = dict(call.params)
    window, shift = p["window"], p["shift"]
    inp = window_attention_inputs(call.shape, window, call.dtype, call.device, seed=seed)
    table = inp["rel_pos_bias"].to(p["table_dtype"]) if p["table_dtype"] is not None else None
    pad = tuple(x.to(p["pad_dtype"]) for x in inp["pad_kv"]) if p["pad_dtype"] else None
    base = {"q": inp["q"], "k": inp["k"], "v": inp["v"], "table": table}
    if pad is not None:
        base.update(k_pad=pad[0], v_pad=pad[1])
    g = torch.randn(call.shape, generator=torch.Generator().manual_seed(seed + 1))
    g = g.to(call.device)
    kwargs = dict(scale=p["scale"], mask_value=p["mask_value"], clamped_index=p["clamped_index"])

    def run(dtype, fused: bool):
        """dtype None: every input as the call has it (the fused run and `pt`); else all cast."""
        x = {n: _leaf(t, dtype) for n, t in base.items()}
        pads = (x["k_pad"], x["v_pad"]) if pad is not None else None
        if not fused:
            out = window_attention_ref(x["q"], x["k"], x["v"], window, shift, x["table"],
                                       pad_kv=pads, **kwargs)  # fmt: skip
            return out, _grads(out, x, g)
        if p["packed"]:
            qkv = torch.stack([x["q"], x["k"], x["v"]], dim=4).detach().requires_grad_(True)
            out = window_attention_qkv(qkv, window, shift, x["table"], pad_kv=pads,
                                       backend="triton", **kwargs)  # fmt: skip
            rest = {n: t for n, t in x.items() if n not in "qkv"}
            grads = _grads(out, {"qkv": qkv, **rest}, g)
            dq, dk, dv = grads.pop("qkv").unbind(4)
            return out, {"q": dq, "k": dk, "v": dv, **grads}
        out = window_attention(x["q"], x["k"], x["v"], window, shift, x["table"], pad_kv=pads,
                               backend="triton", **kwargs)  # fmt: skip
        return out, _grads(out, x, g)

    truth_dtype = torch.float64 if call.dtype == torch.float32 else torch.float32
    truth, pt, out = run(truth_dtype, False), run(None, False), run(None, True)
    pairs = {"output": (out[0], truth[0], pt[0], OUTPUT)}
    for name in out[1]:
        label = {"q": "dq", "k": "dk", "v": "dv", "table": "dtable"}.get(name, f"d{name}")
        pairs[label] = (out[1][name], truth[1][name], pt[1][name], GRADIENT)
    return pairs


def _unit_rows(shape, dtype, device, gen):
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    return torch.nn.functional.normalize(x, dim=-1).to(dtype=dtype, device=device)


def _loss_pairs(run, dtype: torch.dtype, grad_names: tuple[str, str]) -> dict:
    """{name: (fused, truth, pt, rule)} of a loss check: `run(dtype, fused) -> (loss, grad,
    grad)`, truth in fp32 (fp64 for fp32 inputs), pt and the fused run in the call's dtype."""
    truth_dtype = torch.float64 if dtype == torch.float32 else torch.float32
    truth, pt, out = run(truth_dtype, False), run(None, False), run(None, True)
    names = (("loss", OUTPUT), (grad_names[0], GRADIENT), (grad_names[1], GRADIENT))
    return {n: (o.reshape(-1), t.reshape(-1), q.reshape(-1), rule)
            for (n, rule), o, t, q in zip(names, out, truth, pt)}  # fmt: skip


def _check_contrastive(call: FusedCall, seed: int) -> dict:
    from .contrastive import contrastive_loss, contrastive_loss_ref

    gen = torch.Generator().manual_seed(seed)
    a = _unit_rows(call.shape, call.dtype, call.device, gen)
    b = _unit_rows(call.shape, call.dtype, call.device, gen)
    temperature = call.param("temperature")

    def run(dtype, fused):
        xa, xb = _leaf(a, dtype), _leaf(b, dtype)
        if fused:
            loss = contrastive_loss(xa, xb, temperature, backend="triton")
        else:
            loss = contrastive_loss_ref(xa, xb, temperature)
        return (loss, *torch.autograd.grad(loss, [xa, xb]))

    return _loss_pairs(run, call.dtype, ("da", "db"))


def _check_mtc(call: FusedCall, seed: int) -> dict:
    from .contrastive import mtc_loss, mtc_loss_ref, sample_mtc_indices

    p = dict(call.params)
    gen = torch.Generator().manual_seed(seed)
    clips = _unit_rows(call.shape, call.dtype, call.device, gen)
    sents = _unit_rows(call.shape, call.dtype, call.device, gen)
    batch, m, _ = call.shape
    indices = sample_mtc_indices(
        batch, m, p["num_key"], p["num_value"], None, torch.Generator().manual_seed(seed),
        call.device,
    )  # fmt: skip

    def run(dtype, fused):
        xc, xs = _leaf(clips, dtype), _leaf(sents, dtype)
        if fused:
            loss = mtc_loss(xc, xs, p["temperature"], p["num_key"], p["num_value"],
                            p["num_other_neg"], indices=indices, backend="triton")  # fmt: skip
        else:
            loss = mtc_loss_ref(xc, xs, p["temperature"], indices, p["num_other_neg"])
        return (loss, *torch.autograd.grad(loss, [xc, xs]))

    return _loss_pairs(run, call.dtype, ("dclip", "dsent"))


_CHECKS = {
    "window_attention": _check_window_attention,
    "contrastive_loss": _check_contrastive,
    "mtc_loss": _check_mtc,
}


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
    results = []
    for call, modules in groups.items():
        result = check_call(call, modules)
        _checked.add(call.key())
        log("kernel self-check: %s", result.summary())
        results.append(result)
    if on_mismatch is not None:
        apply_mismatch_policy([r for r in results if not r.ok], on_mismatch)
    return results


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


def window_attention_call(
    q_shape, dtype, device, window, shift, table_dtype, pad_dtype, packed: bool, scale: float,
    mask_value: float, clamped_index: str,
) -> FusedCall:  # fmt: skip
    """The FusedCall of a window-attention call (what the dispatcher records)."""
    params = dict(
        clamped_index=clamped_index, mask_value=float(mask_value), packed=bool(packed),
        pad_dtype=pad_dtype, scale=float(scale), shift=tuple(shift), table_dtype=table_dtype,
        window=tuple(window),
    )  # fmt: skip
    return FusedCall(
        "window_attention", tuple(q_shape), dtype, torch.device(device),
        tuple(sorted(params.items())),
    )  # fmt: skip


def loss_call(op: str, shape, dtype, device, **params) -> FusedCall:
    """The FusedCall of a contrastive_loss ((N, d); temperature) or mtc_loss ((B, M, d);
    temperature, num_key, num_value, num_other_neg) call."""
    return FusedCall(op, tuple(shape), dtype, torch.device(device), tuple(sorted(params.items())))
