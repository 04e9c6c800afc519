"""Swin-family models on lfvila's window-attention kernel (issue 28): one training step's forward
and backward (cross-entropy on random labels, no optimizer) of timm's Swin-T at 224 and
Swin-V2-T at 256, batch 64, bf16 autocast, random weights (nothing downloads).

Providers: "timm-eager" (timm's attention as shipped: explicit scores and softmax), "timm-sdpa"
(Swin-V1's `fused_attn`: SDPA with the bias and mask as a float mask; Swin-V2's cosine attention
has no SDPA path), "lfvila" (`patch_timm_swin`, the Triton kernels), each eager and under
`torch.compile` (inductor). Drop-path is off (timm's Swin-T default is 0.1), so the first step's
logits pass the error-ratio rule against the unpatched model in fp32 (the unpatched model under
the same autocast as the yardstick) before anything is timed.

GPU (marked `gpu`; benchmarks/gpu_check.sh, `--swin` runs only these after the patches' GPU
tests): ms per step, images/s, peak memory, compile seconds; the report's "Swin family" table has
the speedups against the unpatched eager model. `LFVILA_SWIN_BENCH_BUDGET_S`: compiled cases
that would start later than this many seconds after the module's import are skipped (so a device
call's limit is not hit in the middle of a compilation). Smoke mode (LFVILA_BENCH_SMOKE=1): a
one-stage tiny Swin and Swin-V2 on the CPU, batch 2, fp32, the patched model on the Triton
interpreter, compiled ("aot_eager") for the patched model only.
"""

from __future__ import annotations

import copy
import functools
import os
import time

import pytest
import torch
import torch.nn.functional as F

from benchmarks.shapes import smoke_mode
from benchmarks.utils import run, synchronize
from lfvila.kernels import patch_timm_swin
from lfvila.kernels.testing import assert_error_ratio, no_tf32

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
AUTOCAST = DEVICE == "cuda"  # bf16: the interpreter's bf16 tl.dot is wrong, the CPU runs fp32
BATCH = 2 if smoke_mode() else 64
ROUNDS, WARMUP = (1, 0) if smoke_mode() else (10, 3)
COMPILE_BACKEND = "aot_eager" if smoke_mode() else "inductor"
START = time.monotonic()
COMPILE_SECONDS = 150  # the worst compile-and-time of one case seen: a case starting later is cut

# case: (timm model name, image size); the providers each case runs
CASES = {
    "swin-t-224": ("swin_tiny_patch4_window7_224", 224),
    "swinv2-t-256": ("swinv2_tiny_window8_256", 256),
}
PROVIDERS = {"swin-t-224": ("timm-eager", "timm-sdpa", "lfvila"),
             "swinv2-t-256": ("timm-eager", "lfvila")}  # fmt: skip
# eager first, then compiled, each patched model before the unpatched models it is compared
# with: a budget cut drops the least telling compilations, never an eager case
RUNS = [(case, p, False) for case in CASES for p in PROVIDERS[case]] + [
    ("swin-t-224", "lfvila", True), ("swin-t-224", "timm-sdpa", True),
    ("swinv2-t-256", "lfvila", True), ("swinv2-t-256", "timm-eager", True),
    ("swin-t-224", "timm-eager", True),
]  # fmt: skip


def _build(case: str):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    if smoke_mode():
        from timm.models.swin_transformer import SwinTransformer
        from timm.models.swin_transformer_v2 import SwinTransformerV2

        cls = SwinTransformer if case == "swin-t-224" else SwinTransformerV2
        model = cls(img_size=32, patch_size=4, embed_dim=32, depths=(2,), num_heads=(2,),
                    window_size=4, num_classes=10, drop_path_rate=0.0)  # fmt: skip
        return model, 32
    name, size = CASES[case]
    return timm.create_model(name, pretrained=False, drop_path_rate=0.0), size


@functools.lru_cache(maxsize=2)
def _truth(case: str):
    """(model, x, labels, truth logits, pt logits): the unpatched eager model's logits in fp32
    (fp64 on the CPU) and under the benchmark's autocast, on the benchmark's batch."""
    model, size = _build(case)
    model = model.to(DEVICE)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, 3, size, size, generator=gen).to(DEVICE)
    labels = torch.randint(0, model.num_classes, (BATCH,), generator=gen).to(DEVICE)
    with torch.no_grad(), no_tf32():
        wide = torch.float32 if AUTOCAST else torch.float64
        truth = copy.deepcopy(model).to(wide)(x.to(wide)).float()
        with torch.autocast(DEVICE, torch.bfloat16, enabled=AUTOCAST):
            pt = model(x).float()
    return model, x, labels, truth, pt


def _provider_model(case: str, provider: str):
    model, *_ = _truth(case)
    model = copy.deepcopy(model).train()
    for module in model.modules():
        if hasattr(module, "fused_attn"):  # timm's switch between its eager and SDPA attention
            module.fused_attn = provider == "timm-sdpa"
    if provider == "lfvila":
        patch_timm_swin(model, backend="triton")
    return model


@pytest.mark.gpu
@pytest.mark.parametrize(("case", "provider", "compiled"), RUNS,
                         ids=[f"{p}{'+compile' if c else ''}-{k}" for k, p, c in RUNS])  # fmt: skip
def test_bench_swin(benchmark, case, provider, compiled):
    if smoke_mode() and compiled and provider != "lfvila":
        pytest.skip("smoke mode: compile only the patched model (a CPU compile is slow)")
    budget = os.environ.get("LFVILA_SWIN_BENCH_BUDGET_S")
    if compiled and budget and time.monotonic() - START + COMPILE_SECONDS > float(budget):
        pytest.skip(f"LFVILA_SWIN_BENCH_BUDGET_S={budget}: no time left to compile")
    torch._dynamo.reset()
    _, x, labels, truth, pt = _truth(case)
    model = _provider_model(case, provider)
    forward = torch.compile(model, backend=COMPILE_BACKEND) if compiled else model

    def step():
        with torch.autocast(DEVICE, torch.bfloat16, enabled=AUTOCAST):
            logits = forward(x)
            loss = F.cross_entropy(logits, labels)
        loss.backward()
        model.zero_grad(set_to_none=True)
        return logits

    tic = time.perf_counter()
    logits = step()  # the compilation, the kernels' first launches, the self-check
    synchronize(DEVICE)
    first_s = time.perf_counter() - tic
    # no dropout and no drop-path: the training step's logits are the eval logits
    assert_error_ratio(logits.detach().float(), truth, pt, f"{case} {provider} logits")
    peak = None
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**30
    benchmark.group = f"swin-{case}"
    name = provider + ("+compile" if compiled else "")
    run(benchmark, step, DEVICE, repeat=1, rounds=ROUNDS, warmup=WARMUP, level="swin",
        provider=name, mode="fwd_bwd", case=case, batch=BATCH,
        dtype="bf16-autocast" if AUTOCAST else "fp32")  # fmt: skip
    median = benchmark.stats.stats.median if benchmark.stats else None
    benchmark.extra_info.update(
        peak_gib=peak, first_step_s=first_s, compiled=compiled,
        images_per_s=BATCH / median if median else None,
    )  # fmt: skip
