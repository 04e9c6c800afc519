"""torchrun with 2 processes on gloo: DDP and DeepSpeed ZeRO-2 stage-1 steps give the losses and
the updated weights of one process on the same global batch.

Why they can be compared at all: the global-batch sampler gives both runs the same global
batches in the same order, the gathered features are concatenated in rank order (= the single
process's order), the MTC generator is seeded alike on every rank, and dropout is off.
Tolerance: the runs differ only in float summation order (the DDP/ZeRO all-reduce averages two
half-batch gradients; matmuls over 2 rows instead of 4), so losses agree to 1e-5 relative. The
weights pass through 3 AdamW steps, where m/sqrt(v) turns a relative gradient error into an
update error; they are compared to 1e-6 absolute, i.e. 1e-3 of the learning rate."""

from __future__ import annotations

import json
import pathlib
import shutil
import sys

import pytest
from safetensors.torch import load_file

from .conftest import NO_DROPOUT, lfvila

STEPS = [
    "train.max_steps=3",
    "train.eval_every=0",
    "eval.before_training=false",
    "data.val=null",
    "data.val_retrieval=null",
    "train.warmup_epochs=0",
    *NO_DROPOUT,
]


def _losses(run):
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [(x["step"], x["loss"], x["vpc"], x["mtc"]) for x in lines if "eval" not in x]


def _torchrun():
    """torchrun of this interpreter's environment, on a free port."""
    exe = pathlib.Path(sys.executable).parent / "torchrun"
    return [
        str(exe if exe.is_file() else shutil.which("torchrun")),
        "--standalone",
        "--nproc_per_node=2",
    ]


@pytest.mark.dist
@pytest.mark.parametrize("engine", ["ddp", "deepspeed"])
def test_two_processes_equal_one(engine, tiny_config, tmp_path):
    single = tmp_path / "single"
    lfvila(
        "pretrain", "--config", tiny_config, "--output-dir", single, "train.batch_size=4", *STEPS
    )
    extra = ["train.zero_stage=2"] if engine == "deepspeed" else []
    run = tmp_path / engine
    lfvila(
        "pretrain",
        "--config",
        tiny_config,
        "--output-dir",
        run,
        "train.batch_size=2",
        f"train.engine={engine}",
        *extra,
        *STEPS,
        launcher=_torchrun(),
    )
    one, two = _losses(single), _losses(run)
    assert [x[0] for x in two] == [1, 2, 3]
    for a, b in zip(one, two):
        assert b[1:] == pytest.approx(a[1:], rel=1e-5), (a, b)
    wa, wb = load_file(str(single / "model.safetensors")), load_file(str(run / "model.safetensors"))
    assert wa.keys() == wb.keys()
    worst = max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa)
    assert worst <= 1e-6, f"max weight difference {worst}"
    log = (run / "log.txt").read_text()
    assert f"engine {engine}" in log and "2 process(es)" in log
