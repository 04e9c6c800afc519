"""Checkpoints: an interrupted write leaves `latest` naming a complete checkpoint; rotation;
the engine state and every RNG come back exactly."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from lfvila.config import TrainConfig
from lfvila.training.checkpoint import CheckpointManager, TrainerState
from lfvila.training.dist import World
from lfvila.training.engine import TorchEngine


def _engine(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    engine = TorchEngine(model, optimizer, TrainConfig(), World(), ddp=False)
    loss = model(torch.randn(3, 4)).square().sum()
    engine.backward(loss)
    engine.step(1e-2)  # optimiser state exists
    return engine


def _weights(engine):
    return [p.detach().clone() for p in engine.module.parameters()]


def test_interrupted_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    engine, gen = _engine(), torch.Generator().manual_seed(5)
    manager = CheckpointManager(tmp_path, World(), keep=2)
    manager.save(engine, TrainerState(step=1, epoch=0, batch_in_epoch=1), gen, "model: {}\n")
    saved = _weights(engine)
    assert manager.latest().name == "step_1"

    for p in engine.module.parameters():
        p.data.add_(1.0)
    real_save = torch.save

    def torn_save(obj, f, *args, **kwargs):  # half a file, then the disk "fails"
        real_save(obj, f, *args, **kwargs)
        with open(f, "r+b") as handle:
            handle.truncate(max(1, handle.seek(0, 2) // 2))
        raise OSError("no space left on device")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="no space"):
        manager.save(engine, TrainerState(step=2), gen, "model: {}\n")
    monkeypatch.setattr(torch, "save", real_save)
    assert manager.latest().name == "step_1"
    assert list(tmp_path.glob("checkpoints/.tmp_step_2"))  # the torn write is set aside

    fresh = _engine(seed=1)
    state = manager.load(manager.latest(), fresh, torch.Generator())
    assert state.step == 1 and state.batch_in_epoch == 1
    for a, b in zip(_weights(fresh), saved):
        assert torch.equal(a, b)
    assert fresh.optimizer.state_dict()["state"][0]["step"] == 1

    for step in (3, 4):
        manager.save(engine, TrainerState(step=step), gen, "model: {}\n")
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["latest", "step_3", "step_4"]  # rotated to 2; the torn tmp folder removed


def test_rng_states_round_trip(tmp_path):
    engine, gen = _engine(), torch.Generator().manual_seed(7)
    manager = CheckpointManager(tmp_path, World())
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    manager.save(engine, TrainerState(step=1), gen, "")
    expected = (random.random(), np.random.rand(), torch.rand(3), torch.rand(2, generator=gen))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    gen2 = torch.Generator().manual_seed(0)
    manager.load(manager.latest(), engine, gen2)
    got = (random.random(), np.random.rand(), torch.rand(3), torch.rand(2, generator=gen2))
    assert got[0] == expected[0] and got[1] == expected[1]
    assert torch.equal(got[2], expected[2]) and torch.equal(got[3], expected[3])


def test_latest_naming_a_missing_checkpoint_is_an_error(tmp_path):
    manager = CheckpointManager(tmp_path, World())
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "latest").write_text("step_9\n")
    with pytest.raises(FileNotFoundError, match="step_9, which is not a checkpoint"):
        manager.latest()
