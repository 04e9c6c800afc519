"""Engine and precision choice, the DeepSpeed config derived from TrainConfig, and the bf16
autocast / fp32 paths of the torch engine."""

from __future__ import annotations

import pytest
import torch

from lfvila.config import TrainConfig
from lfvila.training.dist import World
from lfvila.training.engine import (
    TorchEngine,
    deepspeed_config,
    deepspeed_installed,
    resolve_engine,
    resolve_precision,
)


def test_auto_engine_rules():
    one, two = World(), World(world_size=2)
    assert resolve_engine(TrainConfig(), one) == "single"
    assert resolve_engine(TrainConfig(), two) == "ddp"
    if deepspeed_installed():
        assert resolve_engine(TrainConfig(zero_stage=2), one) == "deepspeed"
        assert resolve_engine(TrainConfig(zero_stage=2), two) == "deepspeed"
    with pytest.raises(ValueError, match="train.engine 'single' but WORLD_SIZE=2"):
        resolve_engine(TrainConfig(engine="single"), two)
    with pytest.raises(ValueError, match="train.zero_stage 2 needs train.engine 'deepspeed'"):
        resolve_engine(TrainConfig(engine="ddp", zero_stage=2), two)


def test_precision_rules_on_cpu():
    cpu = torch.device("cpu")
    assert resolve_precision(TrainConfig(), cpu) == "fp32"
    assert resolve_precision(TrainConfig(precision="bf16"), cpu) == "bf16"
    with pytest.raises(ValueError, match="'fp16' needs a CUDA device"):
        resolve_precision(TrainConfig(precision="fp16"), cpu)


def test_deepspeed_config_carries_spec_settings():
    ds = deepspeed_config(
        TrainConfig(batch_size=48, grad_accum=2, zero_stage=2, clip_grad=1.0), "fp16"
    )
    assert ds["train_micro_batch_size_per_gpu"] == 48 and ds["gradient_accumulation_steps"] == 2
    assert ds["zero_optimization"]["stage"] == 2 and ds["gradient_clipping"] == 1.0
    assert ds["zero_optimization"]["reduce_bucket_size"] == 5e8
    fp16 = {"enabled": True, "loss_scale": 0, "initial_scale_power": 32,
            "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1}  # fmt: skip
    assert ds["fp16"] == fp16
    assert deepspeed_config(TrainConfig(), "bf16")["bf16"] == {"enabled": True}
    assert "fp16" not in deepspeed_config(TrainConfig(), "fp32")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_torch_engine_step_accumulates_and_clips(precision):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    cfg = TrainConfig(precision=precision, grad_accum=2, clip_grad=0.5)
    engine = TorchEngine(model, torch.optim.SGD(model.parameters(), lr=1.0), cfg, World(), False)
    x = torch.randn(2, 4)
    before = model.weight.detach().clone()
    for half in (x[:1], x[1:]):
        with engine.autocast():
            y = engine.model(half)
        assert y.dtype == (torch.bfloat16 if precision == "bf16" else torch.float32)
        engine.backward(y.float().square().sum())
    result = engine.step(lr=0.1)
    assert result.applied and result.grad_norm is not None
    # the update is -lr * (clipped mean gradient): its norm is at most lr * clip
    step = (model.weight.detach() - before).norm()
    assert 0 < step <= 0.1 * 0.5 + 1e-6
    assert all(p.grad is None for p in model.parameters())  # zeroed after the step


def test_nonfinite_gradient_is_skipped():
    model = torch.nn.Linear(2, 1)
    engine = TorchEngine(
        model, torch.optim.SGD(model.parameters(), lr=1.0), TrainConfig(), World(), False
    )
    before = model.weight.detach().clone()
    engine.backward(model(torch.tensor([[float("inf"), 1.0]])).sum())
    result = engine.step(lr=1.0)
    assert not result.applied and not result.overflow
    assert torch.equal(model.weight.detach(), before)
