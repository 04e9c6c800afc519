"""torchrun with 2 processes on gloo: DDP and DeepSpeed ZeRO-2 stage-1 steps give the losses and
the updated weights of one process on the same global batch.

Why they can be compared at all: the global-batch sampler gives both runs the same global
batches in the same order, the gathered features are concatenated in rank order (= the single
process's order), the MTC generator is seeded alike on every rank, and dropout is off.
Tolerance: the runs differ only in float summation order (the all-reduce averages two
half-batch gradients; matmuls over 2 rows instead of 4), so the losses, which depend on every
update, agree to 1e-5 relative. Weights after AdamW steps agree to 1e-5 absolute (1% of the
learning rate), except the attention key biases: q·b_k is the same for every key of a query, so
their true gradient is 0 and AdamW's m/sqrt(v) blows the float noise left in it up to
learning-rate-sized random steps (they cannot change any output: the losses prove it); those
are only checked to stay within the steps' reach (3 x lr)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from .conftest import NO_DROPOUT, TINY_RUN, lfvila, torchrun

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
    return torchrun(2)


@pytest.fixture(scope="module")
def single_run(tiny_data, tmp_path_factory):
    """One process at batch 4: the reference of both launcher runs."""
    tmp = tmp_path_factory.mktemp("single")
    config = tmp / "tiny_run.yaml"
    data = yaml.safe_load(yaml.safe_dump(TINY_RUN))
    data["data"]["root"] = str(tiny_data)
    config.write_text(yaml.safe_dump(data))
    lfvila(
        "pretrain", "--config", config, "--output-dir", tmp / "run", "train.batch_size=4", *STEPS
    )
    return config, tmp / "run"


@pytest.mark.dist
@pytest.mark.parametrize("engine", ["ddp", "deepspeed"])
def test_two_processes_equal_one(engine, single_run, tmp_path):
    config, single = single_run
    extra = ["train.zero_stage=2"] if engine == "deepspeed" else []
    run = tmp_path / engine
    lfvila(
        "pretrain",
        "--config",
        config,
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
    diffs = {k: (wa[k].float() - wb[k].float()).abs() for k in wa if wa[k].is_floating_point()}
    keys = {k: d for k, d in diffs.items() if k.endswith("attention.self.key.bias")}
    for k, d in diffs.items():
        if k.endswith("attn.qkv.bias"):  # [q | k | v] biases: take the key part out
            c = d.numel() // 3
            keys[k], diffs[k] = d[c : 2 * c], torch.cat([d[:c], d[2 * c :]])
        elif k in keys:
            diffs[k] = d[:0]
    worst = max((d.max().item() if d.numel() else 0.0, k) for k, d in diffs.items())
    assert worst[0] <= 0.01 * TINY_RUN["train"]["lr"], f"max weight difference {worst}"
    assert max(d.max().item() for d in keys.values()) <= 3 * TINY_RUN["train"]["lr"]
    log = (run / "log.txt").read_text()
    assert f"engine {engine}" in log and "2 process(es)" in log
