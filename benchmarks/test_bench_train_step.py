"""The full stage-1 pre-training step (forward + backward), fused vs reference kernels.

GPU (marked `gpu`; benchmarks/gpu_check.sh): the full-size model, batch 16, bf16 autocast, window
attention and contrastive losses on the Triton kernels ("triton") or on the PyTorch references
("reference"): ms per step, peak memory, samples/s and model FLOPs utilisation. Both backends run
the same weights and batch; their losses are recorded side by side ("at equal loss").
Smoke mode: the tiny config on the CPU.
"""

from __future__ import annotations

import pathlib

import pytest
import torch

from benchmarks.shapes import smoke_mode
from benchmarks.utils import run
from lfvila.config import load_config
from lfvila.model import build_model
from lfvila.model.flops import flops_per_sample, peak_tflops

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BATCH = 1 if smoke_mode() else 16


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_bench_train_step_stage1(benchmark, backend):
    path = ROOT / "configs" / ("tiny.yaml" if smoke_mode() else "pretrain_stage1.yaml")
    cfg = load_config(path, [f"kernels.backend={backend}"])
    torch.manual_seed(0)
    model = build_model(cfg).to(DEVICE).train()
    gen = torch.Generator().manual_seed(0)
    v, t = cfg.model.video, cfg.model.text
    video = torch.randn(BATCH, 3, v.num_frames, *v.input_size, generator=gen).to(DEVICE)
    ids = torch.randint(1000, 30000, (BATCH, t.max_sentences, t.max_tokens), generator=gen).to(
        DEVICE
    )
    mask = torch.ones_like(ids)
    indices = {
        "keys": torch.tensor([[0, 1]] * BATCH, device=DEVICE),
        "values": torch.tensor([[1, 0]] * BATCH, device=DEVICE),
        "other": torch.zeros(BATCH, dtype=torch.long, device=DEVICE),
    }
    autocast = torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=DEVICE == "cuda")
    losses = []

    def step():
        with autocast:
            out = model(video, ids, mask, mtc_indices=indices)
        out.loss.backward()
        model.zero_grad(set_to_none=True)
        losses.append(out.loss.detach())

    peak = None
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**30
    benchmark.group = "train-step-stage1"
    case = f"stage 1, batch {BATCH}"
    run(benchmark, step, DEVICE, repeat=1, rounds=10, warmup=2, provider=backend, mode="fwd_bwd",
        case=case, dtype="bf16-autocast", batch=BATCH, level="train")  # fmt: skip
    median = benchmark.stats.stats.median if benchmark.stats else None
    flops = 3 * flops_per_sample(cfg.model)  # forward + backward
    info = {"loss": float(losses[0]), "peak_gib": peak, "flops_per_sample": flops}
    if median:
        info["samples_per_s"] = BATCH / median
        name = torch.cuda.get_device_name() if DEVICE == "cuda" else ""
        if (peak_flops := peak_tflops(name)) is not None:
            info["mfu"] = flops * info["samples_per_s"] / (peak_flops * 1e12)
    benchmark.extra_info.update(info)
