"""The whole pre-training step: forward, backward, clipping and the fused AdamW update, as
`lfvila pretrain` runs it (TorchEngine, no host read inside the step), stage 1 and stage 2,
fused kernels or references, eager or with regional torch.compile (issue 20).

GPU (marked `gpu`; benchmarks/gpu_check.sh, `--train` runs only these): the full-size models,
batch 16, bf16 autocast: ms per step, samples/s, model FLOPs utilisation (3 x flops_per_sample
against the card's dense bf16 peak) and peak memory; then a torch.profiler profile of the
compiled fused stage-1 step (kernels grouped by kind, the top kernels, the device's idle gaps)
for the report's "Step profile". Activation checkpointing of the video encoder, once: the same
step with every video layer checkpointed, at batch 16 and at the largest batch that fits.
Smoke mode (LFVILA_BENCH_SMOKE=1): the tiny config on the CPU, "aot_eager" for compile (Inductor's
CPU build would dominate), two rounds.
"""

from __future__ import annotations

import pathlib

import pytest
import torch

from benchmarks.shapes import smoke_mode
from benchmarks.step_profile import profile_steps
from benchmarks.utils import run
from lfvila.config import load_config
from lfvila.model import build_model
from lfvila.model.flops import flops_per_sample, peak_tflops
from lfvila.training.compile import compile_blocks
from lfvila.training.dist import World
from lfvila.training.engine import TorchEngine
from lfvila.training.optim import build_optimizer

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BATCH = 1 if smoke_mode() else 16
COMPILE_BACKEND = "aot_eager" if smoke_mode() else "inductor"
ROUNDS, WARMUP = (2, 1) if smoke_mode() else (10, 3)
# Smoke mode keeps the CPU run short: the Triton interpreter only for the eager stage-1 step
# (the script's path through the fused kernels), the references everywhere else, and compile
# only in the one case that tests it.
FUSED = "reference" if smoke_mode() else "triton"
COMPILED = not smoke_mode()
SMOKE_CASES = {(1, "triton", False), (1, "reference", False), (1, "reference", True),
               (2, "reference", False)}  # fmt: skip


def _config(stage: int, backend: str, overrides=()):
    if smoke_mode():
        path, extra = ROOT / "configs" / "tiny.yaml", [f"model.stage={stage}"]
    else:
        path, extra = ROOT / "configs" / f"pretrain_stage{stage}.yaml", []
    return load_config(path, [f"kernels.backend={backend}", *extra, *overrides])


def _inputs(cfg, batch: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    v, t = cfg.model.video, cfg.model.text
    ids = torch.randint(1000, 30000, (batch, t.max_sentences, t.max_tokens), generator=gen)
    labels = torch.where(torch.rand(ids.shape, generator=gen) < 0.15, ids, -100)
    out = {
        "video": torch.randn(batch, 3, v.num_frames, *v.input_size, generator=gen),
        "text_ids": ids,
        "text_mask": torch.ones_like(ids),
        "mlm_labels": labels,
    }
    return {k: x.to(DEVICE) for k, x in out.items()}


def build_step(stage: int, backend: str, compiled: bool, batch: int = BATCH, overrides=()):
    """(step function, model, cfg, losses list): one whole training step on fixed inputs."""
    cfg = _config(stage, backend, overrides)
    torch.manual_seed(0)
    model = build_model(cfg)
    optimizer = build_optimizer(model, cfg.train, cfg.model.freeze_pooler)
    engine = TorchEngine(model, optimizer, cfg.train, World(device=torch.device(DEVICE)), False)
    if compiled:
        compile_blocks(engine.module, backend=COMPILE_BACKEND)
    engine.module.train()
    inputs = _inputs(cfg, batch)
    indices = {
        "keys": torch.tensor([[0, 1]] * batch, device=DEVICE),
        "values": torch.tensor([[1, 0]] * batch, device=DEVICE),
        "other": torch.zeros(batch, dtype=torch.long, device=DEVICE),
    }
    losses = []

    def step():
        with engine.autocast():
            if stage == 1:
                out = engine.model(
                    inputs["video"], inputs["text_ids"], inputs["text_mask"], mtc_indices=indices
                )
            else:
                out = engine.model(
                    inputs["video"], inputs["text_ids"], inputs["text_mask"], inputs["mlm_labels"]
                )
        engine.backward(out.loss)
        engine.step(cfg.train.lr, ~torch.isfinite(out.loss.detach()))
        losses.append(out.loss.detach())

    return step, engine.module, cfg, losses


def _record(benchmark, step, cfg, losses, stage, provider, batch, extra=None, level="train"):
    peak = None
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**30
    benchmark.group = f"train-step-stage{stage}"
    run(benchmark, step, DEVICE, repeat=1, rounds=ROUNDS, warmup=WARMUP, provider=provider,
        mode="step", case=f"stage {stage}, batch {batch}", dtype="bf16-autocast", batch=batch,
        level=level)  # fmt: skip
    median = benchmark.stats.stats.median if benchmark.stats else None
    flops = 3 * flops_per_sample(cfg.model)  # forward + backward
    info = {"loss": float(losses[0]), "peak_gib": peak, "flops_per_sample": flops, **(extra or {})}
    if median:
        info["samples_per_s"] = batch / median
        name = torch.cuda.get_device_name() if DEVICE == "cuda" else ""
        if (peak_flops := peak_tflops(name)) is not None:
            info["mfu"] = flops * info["samples_per_s"] / (peak_flops * 1e12)
    benchmark.extra_info.update(info)


@pytest.mark.gpu
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("stage", [1, 2])
def test_bench_train_step(benchmark, stage, backend, compiled):
    if smoke_mode() and (stage, backend, compiled) not in SMOKE_CASES:
        pytest.skip("smoke mode: a representative subset (the interpreter is slow)")
    torch._dynamo.reset()
    step, _, cfg, losses = build_step(stage, backend, compiled)
    provider = backend + ("+compile" if compiled else "")
    _record(benchmark, step, cfg, losses, stage, provider, BATCH, {"compiled": compiled})


@pytest.mark.gpu
def test_profile_train_step_stage1(benchmark):
    """The compiled fused stage-1 step under torch.profiler (3 steps after warm-up)."""
    torch._dynamo.reset()
    step, model, cfg, losses = build_step(1, FUSED, compiled=COMPILED)
    for _ in range(WARMUP):
        step()
    profile = profile_steps(step, DEVICE, steps=3, model=model)
    provider = FUSED + ("+compile" if COMPILED else "")
    _record(benchmark, step, cfg, losses, 1, provider, BATCH,
            {"compiled": COMPILED, "profile": profile}, level="train-profile")  # fmt: skip


@pytest.mark.gpu
@pytest.mark.parametrize("checkpointed", [False, True], ids=["plain", "checkpointed"])
def test_bench_train_step_activation_checkpointing(benchmark, checkpointed):
    """Stage 1, fused, compiled: every video layer under activation checkpointing or none, at
    batch 16; then the largest power-of-two batch that fits (GPU only), reported alongside."""
    torch._dynamo.reset()
    layers = len(_config(1, FUSED).model.video.depths)
    overrides = [f"model.video.checkpoint_layers=[{','.join(map(str, range(layers)))}]"]
    overrides = overrides if checkpointed else []
    step, _, cfg, losses = build_step(1, FUSED, COMPILED, overrides=overrides)
    extra = {"compiled": COMPILED, "checkpointed": checkpointed}
    if DEVICE == "cuda":
        extra["largest_batch"] = _largest_batch(overrides)
    provider = FUSED + ("+compile" if COMPILED else "") + ("+checkpoint" if checkpointed else "")
    _record(benchmark, step, cfg, losses, 1, provider, BATCH, extra, level="train-checkpointing")


def _largest_batch(overrides, limit: int = 256) -> int:
    """The largest power-of-two batch whose step fits on this GPU (2 steps each)."""
    best, batch = 0, BATCH
    while batch <= limit:
        try:
            torch._dynamo.reset()
            step, *_ = build_step(1, "triton", True, batch=batch, overrides=overrides)
            step()
            step()
            torch.cuda.synchronize()
            best = batch
        except torch.OutOfMemoryError:
            break
        finally:
            torch.cuda.empty_cache()
        batch *= 2
    return best
