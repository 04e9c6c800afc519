"""Contrastive-loss benchmarks (forward + backward).

CPU: the chunked reference vs the naive N×N formula, speed and peak memory (RSS growth measured
once per case in a fresh process), fp32, d = 256.
GPU (marked `gpu`; benchmarks/gpu_check.sh), bf16, d = 1024: Triton vs naive vs reference at
N = 512 ... 65,536 with peak CUDA memory; MTC at Bg x 4 x 1024. Every provider's loss first
passes the error-ratio rule against the reference.
"""

from __future__ import annotations

import functools
import math
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from benchmarks import baselines
from benchmarks.shapes import smoke_mode
from benchmarks.utils import run
from lfvila.kernels import contrastive_loss, contrastive_loss_ref, mtc_loss, sample_mtc_indices
from lfvila.kernels.contrastive import can_run_triton_contrastive
from lfvila.kernels.testing import assert_error_ratio, no_tf32

GPU_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
GPU_DTYPE = torch.bfloat16 if torch.cuda.is_available() else torch.float32
CPU_SIZES = (100, 300) if smoke_mode() else (512, 4096)
GPU_SIZES = (100, 300) if smoke_mode() else (512, 4096, 16384, 32768, 65536)
CPU_DIM, GPU_DIM = (32, 32) if smoke_mode() else (256, 1024)

PROVIDERS = {
    "naive": lambda a, b, s: baselines.naive_contrastive(a, b, s),
    "reference": lambda a, b, s: contrastive_loss_ref(a, b, logit_scale=s),
    "triton": lambda a, b, s: contrastive_loss(a, b, logit_scale=s, backend="triton"),
}


def _pair(n, d, dtype, device):
    gen = torch.Generator().manual_seed(n)
    a = F.normalize(torch.randn(n, d, generator=gen), dim=-1)
    b = F.normalize(a + 0.7 * torch.randn(n, d, generator=gen), dim=-1)
    return a.to(device, dtype), b.to(device, dtype)


def _leaves(a, b):
    s = torch.tensor(math.log(20.0), device=a.device, requires_grad=True)
    return a.clone().requires_grad_(), b.clone().requires_grad_(), s


# Peak resident memory of one forward + backward in a fresh process: Linux resets the
# high-water mark (VmHWM) when "5" is written to /proc/self/clear_refs.
_RSS_SCRIPT = textwrap.dedent(
    """
    import math, sys, torch
    import torch.nn.functional as F
    from benchmarks import baselines
    from lfvila.kernels import contrastive_loss_ref

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1])  # KiB

    n, d, provider = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    a = F.normalize(torch.randn(n, d), dim=-1).requires_grad_()
    b = F.normalize(torch.randn(n, d), dim=-1).requires_grad_()
    s = torch.tensor(math.log(20.0), requires_grad=True)
    open("/proc/self/clear_refs", "w").write("5")
    base = status("VmRSS")
    if provider == "naive":
        loss = baselines.naive_contrastive(a, b, s)
    else:
        loss = contrastive_loss_ref(a, b, logit_scale=s)
    loss.backward()
    print((status("VmHWM") - base) / 1024)
    """
)


@functools.cache
def _peak_rss_mib(n: int, d: int, provider: str) -> float:
    out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(n), str(d), provider],
                         capture_output=True, text=True, check=True)  # fmt: skip
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("provider", ["naive", "reference"])
@pytest.mark.parametrize("n", CPU_SIZES)
def test_bench_contrastive_cpu(benchmark, n, provider):
    a, b = _pair(n, CPU_DIM, torch.float32, "cpu")
    x, y, s = _leaves(a, b)
    with torch.no_grad():
        truth = contrastive_loss_ref(a.double(), b.double(), logit_scale=s.detach().double())
        assert_error_ratio(
            PROVIDERS[provider](a, b, s.detach()).double().reshape(1),
            truth.reshape(1),
            truth.reshape(1),
            provider,
        )

    def step():
        torch.autograd.grad(PROVIDERS[provider](x, y, s), [x, y, s])

    benchmark.group = f"cpu-contrastive-N{n}"
    run(benchmark, step, "cpu", rounds=5, warmup=1, provider=provider, mode="fwd_bwd",
        case=f"N={n}, d={CPU_DIM}", dtype="float32", batch=n, level="loss",
        peak_mib=_peak_rss_mib(n, CPU_DIM, provider), memory="CPU: peak RSS growth")  # fmt: skip


@pytest.mark.gpu
@pytest.mark.parametrize("provider", list(PROVIDERS))
@pytest.mark.parametrize("n", GPU_SIZES)
def test_bench_contrastive_gpu(benchmark, n, provider):
    a, b = _pair(n, GPU_DIM, GPU_DTYPE, GPU_DEVICE)
    if provider == "triton" and (reasons := can_run_triton_contrastive(a, b)):
        pytest.skip("; ".join(reasons))
    x, y, s = _leaves(a, b)
    try:
        with torch.no_grad(), no_tf32():
            truth = contrastive_loss_ref(a.float(), b.float(), logit_scale=s.detach())
            pt = contrastive_loss_ref(a, b, logit_scale=s.detach())
            out = PROVIDERS[provider](a, b, s.detach())
        assert_error_ratio(
            out.float().reshape(1), truth.reshape(1), pt.float().reshape(1), provider
        )
        peak = _cuda_scratch_mib(
            lambda: torch.autograd.grad(PROVIDERS[provider](x, y, s), [x, y, s])
        )
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        pytest.skip(f"{provider} runs out of GPU memory at N = {n}")

    def step():
        torch.autograd.grad(PROVIDERS[provider](x, y, s), [x, y, s])

    benchmark.group = f"gpu-contrastive-N{n}"
    run(benchmark, step, GPU_DEVICE, repeat=1, provider=provider, mode="fwd_bwd",
        case=f"N={n}, d={GPU_DIM}", dtype=str(GPU_DTYPE).replace("torch.", ""), batch=n,
        level="loss", peak_mib=peak,
        memory="GPU: peak CUDA memory over the inputs and the returned gradients",
        n=n)  # fmt: skip


def _cuda_scratch_mib(fn) -> float | None:
    """Peak CUDA memory of fn() over what was allocated before and the gradients it returns."""
    if GPU_DEVICE != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    outputs = fn()
    torch.cuda.synchronize()
    returned = sum(t.nbytes for t in outputs)
    return (torch.cuda.max_memory_allocated() - base - returned) / 2**20


@pytest.mark.gpu
@pytest.mark.parametrize("provider", ["reference", "triton"])
def test_bench_mtc_gpu(benchmark, provider):
    batch, clips, d = (8, 4, 32) if smoke_mode() else (512, 4, 1024)
    gen = torch.Generator().manual_seed(0)
    clip = F.normalize(torch.randn(batch, clips, d, generator=gen), dim=-1).to(
        GPU_DEVICE, GPU_DTYPE
    )
    sent = F.normalize(torch.randn(batch, clips, d, generator=gen), dim=-1).to(
        GPU_DEVICE, GPU_DTYPE
    )
    idx = sample_mtc_indices(batch, clips, generator=gen, device=GPU_DEVICE)
    c, t = clip.clone().requires_grad_(), sent.clone().requires_grad_()

    def step():
        torch.autograd.grad(mtc_loss(c, t, indices=idx, backend=provider), [c, t])

    benchmark.group = "gpu-mtc"
    run(benchmark, step, GPU_DEVICE, repeat=5, provider=provider, mode="fwd_bwd",
        case=f"Bg={batch}, M={clips}, d={d}", dtype=str(GPU_DTYPE).replace("torch.", ""),
        batch=batch, level="loss")  # fmt: skip
