"""`lfvila attention-check`: the fused window-attention path and the sdpa backend against the
reference on a real LF-VILA layer shape (`lfvila.model.shapes`), with their timings, and the
backend `auto` picks for that shape here and why (the measured table, its rule, or the CPU).

On a machine without a GPU the fused path runs in the Triton interpreter: its numbers check
correctness, and its timing says nothing about speed.
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import torch

from lfvila.kernels.testing import GRADIENT, OUTPUT, error_report

from ..model.shapes import AttentionLayer, layer


@dataclasses.dataclass
class DemoResult:
    layer: AttentionLayer
    device: str
    dtype: torch.dtype
    batch: int
    fused_backend: str
    errors: dict[str, tuple[float, float, bool]]
    """name -> (max |fused - truth|, max |reference - truth|, within the error-ratio rule);
    truth = the reference in float64."""
    sdpa_errors: dict[str, tuple[float, float, bool]]
    """The same for the sdpa backend."""
    timings_ms: dict[str, float]
    """"reference" / "sdpa" / "fused" -> median forward+backward milliseconds."""
    auto_backend: str = "reference"
    auto_reason: str = ""
    """What `backend="auto"` runs for this shape on this device and dtype, and why."""

    @property
    def ok(self) -> bool:
        return all(ok for _, _, ok in [*self.errors.values(), *self.sdpa_errors.values()])


def _inputs(spec: AttentionLayer, batch: int, dtype, device, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, *spec.map_size, spec.heads, spec.head_dim)
    wt, wh, ww = spec.window
    rows = (2 * wt - 1) * (2 * wh - 1) * (2 * ww - 1)
    q, k, v = (torch.randn(shape, generator=gen) for _ in range(3))
    table = torch.randn(rows, spec.heads, generator=gen) * 0.5
    pads = torch.randn(2, spec.heads, spec.head_dim, generator=gen)
    tensors = [q, k, v, table, pads[0], pads[1]]
    return [t.to(device=device, dtype=dtype) for t in tensors], torch.randn(shape, generator=gen)


def _forward_backward(tensors, grad_out, spec: AttentionLayer, backend: str):
    from lfvila.kernels import window_attention

    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    q, k, v, table, k_pad, v_pad = leaves
    out = window_attention(
        q, k, v, spec.window, spec.shift, table, pad_kv=(k_pad, v_pad), backend=backend
    )
    grads = torch.autograd.grad(out, leaves, grad_out.to(out.dtype), allow_unused=True)
    # a map the window divides has no padding token: the pad vectors then get no gradient
    return [out, *(torch.zeros_like(x) if g is None else g for g, x in zip(grads, leaves))]


def _median_ms(fn, repeats: int, device: str) -> float:
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def run_attention_demo(
    layer_name: str | AttentionLayer = "L1",
    batch: int | None = None,
    repeats: int = 5,
    device: str | None = None,
    log=print,
) -> DemoResult:
    """Compare fused and reference forward+backward at one LF-VILA layer shape.

    Args:
        layer_name: "L0".."L5" (SPEC.md §4.6), "VS-8x7x7" / "VS-2x7x7", or an AttentionLayer.
        batch: samples (default 16 on a GPU, LF-VILA's per-GPU batch; 1 on a CPU).
        repeats: timed runs per backend, median reported. Under the Triton interpreter the fused
            path runs once (its check run is also its timing).
        device: "cuda" when available, else "cpu" (fused path under the Triton interpreter).
        log: progress messages.
    """
    spec = layer_name if isinstance(layer_name, AttentionLayer) else layer(layer_name)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    batch = batch or (16 if device == "cuda" else 1)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    tensors, grad_out = _inputs(spec, batch, dtype, device)
    truth = _forward_backward([t.double() for t in tensors], grad_out.double(), spec, "reference")
    reference = _forward_backward(tensors, grad_out, spec, "reference")

    def run(backend):
        return lambda: _forward_backward(tensors, grad_out, spec, backend)

    timings = {"reference": _median_ms(run("reference"), repeats, device)}
    sdpa = _forward_backward(tensors, grad_out, spec, "sdpa")  # (on a GPU also the warm-up)
    timings["sdpa"] = _median_ms(run("sdpa"), repeats, device)
    if device == "cpu":
        log("running the fused kernels in the Triton interpreter (no GPU): about a minute ...")
        start = time.perf_counter()
        fused = _forward_backward(tensors, grad_out, spec, "triton")
        timings["fused"] = (time.perf_counter() - start) * 1e3
    else:
        fused = _forward_backward(tensors, grad_out, spec, "triton")  # also compiles
        timings["fused"] = _median_ms(run("triton"), repeats, device)
    from lfvila.kernels import explain_window_backend

    auto, why = explain_window_backend(tensors[0], spec.window, spec.shift)
    errors, sdpa_errors = _errors(fused, reference, truth), _errors(sdpa, reference, truth)
    return DemoResult(spec, device, dtype, batch, "triton", errors, sdpa_errors, timings, auto, why)


def _errors(routed, reference, truth) -> dict[str, tuple[float, float, bool]]:
    names = ["output", "dq", "dk", "dv", "dtable", "dk_pad", "dv_pad"]
    errors = {}
    for name, f, r, t in zip(names, routed, reference, truth):
        rule = OUTPUT if name == "output" else GRADIENT  # STYLE.md's error-ratio rule
        ok, _ = error_report(f, t, r, **rule)
        errors[name] = (
            (f.double() - t).abs().max().item(),
            (r.double() - t).abs().max().item(),
            ok,
        )
    return errors


def format_result(result: DemoResult) -> str:
    spec = result.layer
    lines = [
        f"lfvila attention demo: layer {spec.name}, map {spec.map_size}, window {spec.window}, "
        f"shift {spec.shift}, {spec.heads} heads x {spec.head_dim}, batch {result.batch}, "
        f"{str(result.dtype).replace('torch.', '')} on {result.device}",
        f"  auto runs: {result.auto_backend} ({result.auto_reason})",
        "  max |error| vs the float64 reference:   fused        sdpa         reference",
    ]
    for name, (fused, ref, ok) in result.errors.items():
        sdpa, _, sdpa_ok = result.sdpa_errors[name]
        flag = "" if ok and sdpa_ok else "  FAIL"
        lines.append(
            f"    {name:<8}                          {fused:.3e}    {sdpa:.3e}    {ref:.3e}{flag}"
        )
    verdict = "yes" if result.ok else "NO"
    lines.append(
        "  fused and sdpa within the error-ratio rule (STYLE.md: 2x/3x the reference's error): "
        + verdict
    )
    ms = result.timings_ms
    lines.append(
        f"  forward+backward median: reference {ms['reference']:.1f} ms, sdpa {ms['sdpa']:.1f} "
        f"ms, fused {ms['fused']:.1f} ms"
    )
    if result.device == "cpu":
        lines.append(
            "  (no GPU: the fused kernels ran in the Triton interpreter, which checks correctness;"
            " its time is not a speed measurement)"
        )
    return "\n".join(lines)
