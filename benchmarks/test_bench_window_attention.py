"""Window-attention benchmarks.

CPU (every `make test` runs them once with --benchmark-disable; `make bench` times them):
    module vs module, `WindowAttention3D` (reference path) vs torchvision's
    `ShiftedWindowAttention3d` with the same weights, fwd and fwd_bwd, batch 1, fp32.
GPU (marked `gpu`; benchmarks/gpu_check.sh), bf16, LF-VILA's per-GPU batch 16:
    the op q, k, v -> o with RPB and shift: every library route (`window_attention` with
    backend "triton", "sdpa" and "auto", and the reference) against the outside baselines
    (Video-Swin's eager steps, "sdpa-windows": SDPA on windows with a batch-expanded mask as
    users assemble it, FlexAttention), fwd / bwd / fwd_bwd, with TFLOP/s and GB/s; the fwd_bwd
    rows of the library routes are what benchmarks/auto_table.py turns into `auto`'s table;
    the whole module vs torchvision's; and the device-to-device copy bandwidth (the roofline).
Every provider's output first passes the error-ratio rule against the reference.
"""

from __future__ import annotations

import copy
import functools
import time

import pytest
import torch
from torchvision.models.video.swin_transformer import ShiftedWindowAttention3d

from benchmarks import baselines
from benchmarks.shapes import CPU_BATCH, GPU_BATCH, attention_cases, smoke_mode
from benchmarks.utils import run, window_attention_cost
from lfvila.kernels import (
    WindowAttention3D,
    can_run_triton,
    explain_window_backend,
    window_attention,
    window_attention_ref,
)
from lfvila.kernels.testing import assert_error_ratio, no_tf32, window_attention_inputs
from lfvila.kernels.window_attn.geometry import window_geometry

CASES = attention_cases()
CASE_IDS = [case_id for case_id, _, _ in CASES]
SPECS = {case_id: (spec, shift) for case_id, spec, shift in CASES}
GPU_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # cpu only in smoke mode
GPU_DTYPE = torch.bfloat16 if torch.cuda.is_available() else torch.float32  # interpreter: no bf16


# ---------------------------------------------------------------------------------------------
# CPU: module vs module


def _module_pair(spec, shift, dtype=torch.float32, device="cpu"):
    torch.manual_seed(0)
    tv = ShiftedWindowAttention3d(spec.channels, list(spec.window), list(shift), spec.heads)
    ours = WindowAttention3D(spec.channels, spec.window, spec.heads)
    ours.load_state_dict(tv.state_dict())
    return tv.to(device, dtype), ours.to(device, dtype)


@functools.lru_cache(maxsize=4)
def _module_truth(case_id: str):
    """torchvision's module in fp64 and fp32 on the case's input: (x, truth, pt)."""
    spec, shift = SPECS[case_id]
    tv, _ = _module_pair(spec, shift)
    x = torch.randn(CPU_BATCH, *spec.map_size, spec.channels)
    with torch.no_grad():
        return x, copy.deepcopy(tv).double()(x.double()), tv(x)


def _call_module(module, x, shift, provider):
    return module(x) if provider == "torchvision" else module(x, shift)


@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
@pytest.mark.parametrize("provider", ["reference", "torchvision"])
@pytest.mark.parametrize("case_id", CASE_IDS)
def test_bench_window_attention_module_cpu(benchmark, case_id, provider, mode):
    spec, shift = SPECS[case_id]
    tv, ours = _module_pair(spec, shift)
    module = tv if provider == "torchvision" else ours
    x, truth, pt = _module_truth(case_id)
    with torch.no_grad():
        assert_error_ratio(
            _call_module(module, x, shift, provider), truth, pt, f"{provider} {case_id}"
        )
    x = x.clone().requires_grad_(mode == "fwd_bwd")
    grad = torch.randn_like(x)

    def step():
        if mode == "fwd":
            with torch.no_grad():
                _call_module(module, x, shift, provider)
        else:
            _call_module(module, x, shift, provider).backward(grad)

    group = f"cpu-module-{case_id}-{mode}"
    benchmark.group = group
    run(benchmark, step, "cpu", rounds=9, warmup=2, provider=provider, mode=mode, case=case_id,
        dtype="float32", batch=CPU_BATCH, level="module")  # fmt: skip


@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
@pytest.mark.parametrize("case_id", CASE_IDS)
def test_bench_window_attention_module_cpu_paired(benchmark, case_id, mode):
    """Both modules timed alternately within each round (order swapped every round), so that the
    2-core machine's drift and allocator state hit both alike: the ratio is the headline."""
    spec, shift = SPECS[case_id]
    modules = dict(zip(("torchvision", "lfvila"), _module_pair(spec, shift)))
    x, _, _ = _module_truth(case_id)
    x = x.clone().requires_grad_(mode == "fwd_bwd")
    grad = torch.randn_like(x)
    times = {name: [] for name in modules}
    rounds = [0]

    def call(name):
        provider = "torchvision" if name == "torchvision" else "reference"
        start = time.perf_counter()
        if mode == "fwd":
            with torch.no_grad():
                _call_module(modules[name], x, shift, provider)
        else:
            _call_module(modules[name], x, shift, provider).backward(grad)
        times[name].append(time.perf_counter() - start)

    def pair():
        order = list(modules) if rounds[0] % 2 == 0 else list(reversed(modules))
        rounds[0] += 1
        for name in order:
            call(name)

    benchmark.group = f"cpu-module-paired-{case_id}-{mode}"
    run(benchmark, pair, "cpu", rounds=11, warmup=2, provider="paired", mode=mode, case=case_id,
        dtype="float32", batch=CPU_BATCH, level="module-paired")  # fmt: skip
    kept = {name: sorted(ts[-11:]) for name, ts in times.items()}  # drop the warm-up calls
    medians = {name: ts[len(ts) // 2] * 1e3 for name, ts in kept.items()}
    benchmark.extra_info.update(
        lfvila_ms=medians["lfvila"],
        torchvision_ms=medians["torchvision"],
        speedup=medians["torchvision"] / medians["lfvila"],
    )


# ---------------------------------------------------------------------------------------------
# GPU: the attention op alone


def _backend(name: str):
    return lambda q, k, v, w, s, t, sc, p: window_attention(q, k, v, w, s, t, sc, p, backend=name)


OP_PROVIDERS = {
    "triton": _backend("triton"),
    "sdpa": _backend("sdpa"),
    "auto": _backend("auto"),  # what the measured table picks here (the reference on a CPU)
    "reference": lambda q, k, v, w, s, t, sc, p: window_attention_ref(q, k, v, w, s, t, sc, p),
    "video-swin-eager": baselines.video_swin_eager,
    "sdpa-windows": baselines.sdpa_windows,
    "flex": baselines.flex_windows,
}


def _op_inputs(case_id: str):
    spec, _ = SPECS[case_id]
    batch = 1 if smoke_mode() else GPU_BATCH
    shape = (batch, *spec.map_size, spec.heads, spec.head_dim)
    inp = window_attention_inputs(shape, spec.window, GPU_DTYPE, GPU_DEVICE, seed=0, bias_std=0.5)
    inp["rel_pos_bias"] = inp["rel_pos_bias"].float()  # a parameter stays fp32 under autocast
    return batch, inp


@functools.lru_cache(maxsize=2)
def _op_truth(case_id: str):
    spec, shift = SPECS[case_id]
    _, inp = _op_inputs(case_id)
    args = (spec.window, shift, inp["rel_pos_bias"], spec.head_dim**-0.5)
    with torch.no_grad(), no_tf32():
        up = [inp[n].float() for n in ("q", "k", "v")]
        truth = window_attention_ref(*up, *args, tuple(p.float() for p in inp["pad_kv"]))
        pt = window_attention_ref(inp["q"], inp["k"], inp["v"], *args, inp["pad_kv"])
    return truth, pt


def _skip_reason(provider: str, inp) -> str | None:
    if provider == "triton":
        reasons = can_run_triton(inp["q"], inp["k"], inp["v"])
        return "; ".join(reasons) if reasons else None
    if provider == "flex" and GPU_DEVICE != "cuda":
        return "FlexAttention has no CPU backward (GPU only)"
    return None


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["fwd", "bwd", "fwd_bwd"])
@pytest.mark.parametrize("provider", list(OP_PROVIDERS))
@pytest.mark.parametrize("case_id", CASE_IDS)
def test_bench_window_attention_op(benchmark, case_id, provider, mode):
    spec, shift = SPECS[case_id]
    batch, inp = _op_inputs(case_id)
    if (reason := _skip_reason(provider, inp)) is not None:
        pytest.skip(reason)
    fn = OP_PROVIDERS[provider]
    leaves = [inp[n].detach().clone().requires_grad_(mode != "fwd") for n in ("q", "k", "v")]
    table = inp["rel_pos_bias"].detach().clone().requires_grad_(mode != "fwd")
    args = (spec.window, shift, table, spec.head_dim**-0.5, inp["pad_kv"])
    if mode == "fwd":  # correctness gate once per (case, provider)
        truth, pt = _op_truth(case_id)
        with torch.no_grad():
            assert_error_ratio(
                fn(*leaves, *args).float(), truth, pt.float(), f"{provider} {case_id}"
            )
    grad = torch.randn(inp["q"].shape, device=GPU_DEVICE, dtype=GPU_DTYPE)
    inputs = [*leaves, table]
    if mode == "fwd":

        def step():
            with torch.no_grad():
                fn(*leaves, *args)
    elif mode == "bwd":
        out = fn(*leaves, *args)

        def step():
            torch.autograd.grad(out, inputs, grad, retain_graph=True)
    else:

        def step():
            torch.autograd.grad(fn(*leaves, *args), inputs, grad)

    flops, bytes_ = window_attention_cost(spec, batch, mode, GPU_DTYPE)
    tokens = window_geometry(spec.map_size, spec.window).tokens  # the auto table's key
    info = {"auto_choice": explain_window_backend(inp["q"], spec.window, shift)[0]}
    benchmark.group = f"op-{case_id}-{mode}"
    run(benchmark, step, GPU_DEVICE, repeat=5, provider=provider, mode=mode, case=case_id,
        dtype=str(GPU_DTYPE).replace("torch.", ""), batch=batch, flops=flops, bytes=bytes_,
        level="op", tokens=tokens, **(info if provider == "auto" else {}))  # fmt: skip


# ---------------------------------------------------------------------------------------------
# GPU: the whole module, and the copy bandwidth that bounds the op


@pytest.mark.gpu
@pytest.mark.parametrize("provider", ["lfvila", "torchvision"])
@pytest.mark.parametrize("case_id", CASE_IDS)
def test_bench_window_attention_module_gpu(benchmark, case_id, provider):
    spec, shift = SPECS[case_id]
    batch = 1 if smoke_mode() else GPU_BATCH
    tv, ours = _module_pair(spec, shift, device=GPU_DEVICE)
    module = tv if provider == "torchvision" else ours
    x = torch.randn(batch, *spec.map_size, spec.channels, device=GPU_DEVICE, requires_grad=True)
    grad = torch.randn_like(x)
    autocast = torch.autocast(GPU_DEVICE, dtype=torch.bfloat16, enabled=GPU_DEVICE == "cuda")

    def step():
        with autocast:
            out = module(x) if provider == "torchvision" else module(x, shift)
        out.backward(grad.to(out.dtype))

    benchmark.group = f"gpu-module-{case_id}-fwd_bwd"
    run(benchmark, step, GPU_DEVICE, repeat=3, provider=provider, mode="fwd_bwd", case=case_id,
        dtype="bfloat16-autocast", batch=batch, level="module")  # fmt: skip


@pytest.mark.gpu
def test_bench_copy_bandwidth(benchmark):
    """Device-to-device copy, read + write counted: the achievable bandwidth of PERF.md."""
    numel = (1 << 16) if smoke_mode() else (1 << 28)  # 512 MiB of bf16 on a GPU
    src = torch.randn(numel, device=GPU_DEVICE).to(GPU_DTYPE)
    dst = torch.empty_like(src)
    benchmark.group = "copy-bandwidth"
    copied = 2.0 * src.numel() * src.element_size()
    run(benchmark, lambda: dst.copy_(src), GPU_DEVICE, repeat=10, provider="copy", mode="copy",
        case="copy", dtype=str(GPU_DTYPE), bytes=copied, level="copy")  # fmt: skip
