"""The whole training loop (`lfvila.jobs.pretrain`: loader, engine, task, logging) on generated
videos: samples/s, the share of time the step waits for data, and model FLOPs utilisation.

CPU (part of `make test`, once): the tiny config, PyAV in 1 DataLoader worker, fp32.
GPU (marked `gpu`; benchmarks/gpu_check.sh): full-size stage 1 at batch 16, bf16 autocast, 8
DataLoader workers, with the Triton kernels ("triton") and the PyTorch references ("reference").
The figures are the loop's own (metrics.jsonl), averaged over the log windows after the first.
"""

from __future__ import annotations

import json
import pathlib

import pytest
import torch

from benchmarks.shapes import smoke_mode
from lfvila.config import load_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
GPU = torch.cuda.is_available() and not smoke_mode()


@pytest.fixture(scope="module")
def loop_data(tmp_path_factory):
    from lfvila.data import demo

    root = tmp_path_factory.mktemp("loop_data")
    videos = 96 if GPU else 16
    demo.generate(root, videos=videos, val_videos=2, size=(96, 160), seed=2)
    return root


def _run(root: pathlib.Path, out: pathlib.Path, backend: str, task: str | None = None) -> dict:
    """Pre-training stage 1, or fine-tuning `task` (a config stem) from random weights on the
    demo's annotations of that task (throughput does not depend on the weights)."""
    from lfvila.jobs.finetune import finetune
    from lfvila.jobs.pretrain import pretrain

    if task is not None:
        config = [ROOT / "configs" / f"{task}.yaml"]
        if not GPU:
            config.append(ROOT / "configs" / "demo_finetune.yaml")
        steps, log_every = (24, 6) if GPU else (4, 2)
        data = ["data.val=null", "eval.metric=none", "init.weights=null", "train.zero_stage=0"]
        data += ["data.workers=8"] if GPU else ["data.workers=1", "train.batch_size=2"]
        extra = []
    elif GPU:
        config = [ROOT / "configs" / "pretrain_stage1.yaml"]
        steps, log_every = 24, 6
        extra = [
            "train.batch_size=16",
            "data.workers=8",
            "train.zero_stage=0",
            "init.swin=null",
            "init.bert=null",
        ]
    else:
        config = [ROOT / "configs" / "tiny.yaml"]
        # smoke mode (make test): the Triton path runs in the interpreter, ~20 s a step
        steps, log_every = (2, 1) if smoke_mode() else (4, 2)
        extra = ["train.batch_size=2", "data.workers=1"]
    if task is None:
        data = [
            "data.train=pretrain_train.jsonl",
            "data.val=null",
            "data.val_retrieval=null",
            "data.video_root=videos",
        ]
    cfg = load_config(
        config,
        [
            f"data.root={root}",
            *data,
            f"kernels.backend={backend}",
            f"train.max_steps={steps}",
            f"train.log_every={log_every}",
            "train.eval_every=0",
            "train.checkpoint_every=0",
            "eval.before_training=false",
            *extra,
        ],
    )
    result = pretrain(cfg, out) if task is None else finetune(cfg, out)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    windows = [x for x in lines if "eval" not in x][1:]  # the first window includes warm-up
    mean = lambda key: sum(x[key] for x in windows) / len(windows)  # noqa: E731
    info = {
        "samples_per_s": mean("samples_per_s"),
        "data_wait": mean("data_wait"),
        "loss": windows[-1]["loss"],
        "steps": result.state.step,
        "batch": cfg.train.batch_size,
        "case": f"{config[0].stem}, batch {cfg.train.batch_size}",
    }
    if "mfu" in windows[-1]:
        info["mfu"] = mean("mfu")
    if "peak_mem_gib" in windows[-1]:
        info["peak_gib"] = windows[-1]["peak_mem_gib"]
    return info


@pytest.mark.parametrize("backend", ["reference"])
def test_bench_train_loop_cpu(benchmark, loop_data, tmp_path, backend):
    if GPU:
        pytest.skip("the GPU case runs instead")
    info = {}
    benchmark.group = "train-loop"
    benchmark.pedantic(
        lambda: info.update(_run(loop_data, tmp_path / "run", backend)), rounds=1, iterations=1
    )
    benchmark.extra_info.update(
        info, provider=backend, level="train-loop", mode="train", dtype="fp32"
    )
    assert info["samples_per_s"] > 0 and 0.0 <= info["data_wait"] <= 1.0


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_bench_train_loop_gpu(benchmark, loop_data, tmp_path, backend):
    info = {}
    benchmark.group = "train-loop"
    benchmark.pedantic(
        lambda: info.update(_run(loop_data, tmp_path / backend, backend)), rounds=1, iterations=1
    )
    benchmark.extra_info.update(
        info,
        provider=backend,
        level="train-loop",
        mode="train",
        dtype="bf16-autocast" if GPU else "fp32",
    )


@pytest.mark.gpu
@pytest.mark.parametrize("task", ["actnet_ret", "how2_qa"])
def test_bench_finetune_gpu(benchmark, loop_data, tmp_path, task):
    """Fine-tuning at full size with the configs' batch (retrieval 16, How2QA 4 x 4 candidates),
    bf16 autocast, the Triton kernels (CPU smoke: the demo overlay, 4 steps)."""
    info = {}
    benchmark.group = "train-loop"
    benchmark.pedantic(
        lambda: info.update(_run(loop_data, tmp_path / task, "auto", task)), rounds=1, iterations=1
    )
    benchmark.extra_info.update(
        info,
        provider="triton" if GPU else "reference",
        level="train-loop",
        mode="finetune",
        dtype="bf16-autocast" if GPU else "fp32",
    )
    assert info["samples_per_s"] > 0 and 0.0 <= info["data_wait"] <= 1.0
