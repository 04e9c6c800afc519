"""Where a training step's time goes: torch.profiler over a few steps after warm-up, kernels
grouped by kind, the top kernels, and the device's idle gaps (issue 20: "a profile, not a guess").

    profile = profile_steps(step, device, steps=3)   # step(): one whole training step
    profile["categories"]  [(kind, ms per step, share of the wall time)], idle gaps included
    profile["top"]         [(kernel, ms per step, launches per step)], the 15 largest
    profile["forward"]     [(model part, ms per step)]: forward kernels launched under the
                           video encoder, the text encoder or the losses (record_function ranges)

On a GPU the kernels are the CUDA kernels (device time); the idle gap is the wall time of the
profiled steps minus the union of kernel intervals (the device waiting for the host: launch
overhead, Python, synchronisation). On the CPU (smoke mode) the "kernels" are the ATen ops' self
times and there is no idle gap to speak of. `benchmarks/report.py` renders the result.
"""

from __future__ import annotations

import contextlib
import time

import torch
from torch import nn

# (kind, substrings of a kernel or op name), first match wins; order matters (a Triton window-
# attention kernel name contains "kernel", an Inductor one "triton_").
KINDS = (
    ("window attention (fused)", ("_fwd_kernel", "_bwd_fused_kernel", "_bwd_dq_bias_kernel",
                                  "_bwd_dkdv_kernel", "_reduce_bias_kernel", "_fold_bias_kernel")),
    ("contrastive losses (fused)", ("_infonce_", "_mtc_")),
    ("optimizer", ("adam", "Adam", "multi_tensor_apply", "foreach", "clip_grad")),
    ("matmul", ("gemm", "Gemm", "xmma", "cutlass", "nvjet", "wgmma", "aten::mm", "aten::bmm",
                "aten::addmm", "aten::matmul", "aten::linear", "_scaled_dot_product",
                "flash", "fmha", "aten::baddbmm")),
    ("normalisation / elementwise (Inductor-fused)", ("triton_poi", "triton_red", "triton_per")),
    ("copies and gathers", ("memcpy", "Memcpy", "memset", "Memset", "copy", "index", "gather",
                            "aten::cat", "CatArray", "_to_copy")),
    ("normalisation / elementwise", ("layer_norm", "LayerNorm", "softmax", "elementwise",
                                     "vectorized", "reduce", "gelu", "dropout", "aten::")),
)  # fmt: skip


def _parts(model: nn.Module) -> dict[str, list[nn.Module]]:
    """Modules whose forward calls belong to a model part: the video encoder (called as a
    module), the text encoder's embeddings and layers (its methods call them one by one)."""
    parts = {}
    if (video := getattr(model, "video_encoder", None)) is not None:
        parts["video encoder"] = [video]
    bert = getattr(getattr(model, "text_encoder", None), "bert", None)
    if bert is not None:
        parts["text encoder"] = [bert.embeddings, *bert.encoder.layer]
    return parts


def kind_of(name: str) -> str:
    for kind, needles in KINDS:
        if any(n in name for n in needles):
            return kind
    return "other"


@contextlib.contextmanager
def part_ranges(model: nn.Module):
    """record_function ranges around the model parts' forward calls."""
    handles, stack = [], []
    for label, modules in _parts(model).items():

        def pre(mod, args, _label=label):
            ctx = torch.profiler.record_function(f"lfvila::{_label}")
            ctx.__enter__()
            stack.append(ctx)

        def post(mod, args, out):
            stack.pop().__exit__(None, None, None)

        for module in modules:
            handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _merged_busy_us(intervals: list[tuple[float, float]]) -> float:
    busy, end = 0.0, -float("inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        busy += b - max(a, end)
        end = b
    return busy


def profile_steps(step, device: str | torch.device, steps: int = 3, model: nn.Module | None = None,
                  top: int = 15) -> dict:  # fmt: skip
    """Profile `steps` calls of `step` (already warmed up) and group the time (see the module
    docstring). Times are per step, in ms."""
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.device(device).type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    ranges = part_ranges(model) if model is not None else contextlib.nullcontext()
    if cuda:
        torch.cuda.synchronize()
    with profile(activities=activities) as prof, ranges:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize()
        wall_us = (time.perf_counter() - start) * 1e6
    events = prof.events()
    kernels = []  # (name, duration us, start us): device kernels, or the CPU's ATen ops
    by_part: dict[str, float] = {}
    for evt in events:
        if cuda and evt.device_type.name == "CUDA":
            kernels.append((evt.name, evt.time_range.elapsed_us(), evt.time_range.start))
        elif evt.device_type.name == "CPU":
            part = _part(evt)
            if cuda:  # a launching op: its kernels' device time goes to its model part
                spent = sum(k.duration for k in evt.kernels)
            elif evt.name.startswith("aten::") and evt.self_cpu_time_total > 0:
                spent = evt.self_cpu_time_total
                kernels.append((evt.name, spent, evt.time_range.start))
            else:
                spent = 0.0
            if part is not None and spent:
                by_part[part] = by_part.get(part, 0.0) + spent
    by_kind: dict[str, float] = {}
    by_name: dict[str, list] = {}
    for name, dur, _ in kernels:
        by_kind[kind_of(name)] = by_kind.get(kind_of(name), 0.0) + dur
        entry = by_name.setdefault(name, [0.0, 0])
        entry[0] += dur
        entry[1] += 1
    if cuda:
        busy = _merged_busy_us([(start, start + dur) for _, dur, start in kernels])
        by_kind["idle gaps (device waiting for the host)"] = max(0.0, wall_us - busy)
    per_step = 1e-3 / steps  # us -> ms per step
    ordered = sorted(by_kind.items(), key=lambda kv: -kv[1])
    return {
        "steps": steps,
        "wall_ms": wall_us * per_step,
        "device": "cuda" if cuda else "cpu",
        "categories": [[k, v * per_step, v / wall_us] for k, v in ordered],
        "top": [
            [n, v[0] * per_step, v[1] / steps]
            for n, v in sorted(by_name.items(), key=lambda kv: -kv[1][0])[:top]
        ],  # fmt: skip
        "forward": [[p, v * per_step] for p, v in sorted(by_part.items(), key=lambda kv: -kv[1])],
    }


def _part(evt) -> str | None:
    """The model part whose record_function range encloses a CPU event (forward only)."""
    node = evt
    while node is not None:
        if node.name.startswith("lfvila::"):
            return node.name[len("lfvila::") :]
        node = node.cpu_parent
    return None
