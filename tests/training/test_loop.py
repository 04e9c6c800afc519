"""The loop on a toy task: non-finite losses are skipped and counted, too many in a row stop the
run after a checkpoint; gradient accumulation; the schedule reaches the optimiser; a resumed
loop continues exactly (in process)."""

from __future__ import annotations

import math
import os
import signal

import pytest
import torch

from lfvila.config import TrainConfig
from lfvila.training.checkpoint import CheckpointManager, TrainerState
from lfvila.training.dist import World
from lfvila.training.engine import TorchEngine
from lfvila.training.loop import LossOutput, RunSettings, StepContext, TrainingError, train
from lfvila.training.optim import LRSchedule


class ToyLoader:
    """Batches of 2 items of a fixed regression problem; supports set_epoch / skip."""

    def __init__(self, n_batches=6):
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(n_batches * 2, 3, generator=gen)
        self.n, self.epoch, self._skip = n_batches, 0, 0
        self.failure_counts = {}

    def set_epoch(self, epoch):
        self.epoch = epoch

    def skip(self, batches):
        self._skip = batches

    def __len__(self):
        return self.n

    def __iter__(self):
        skip, self._skip = self._skip, 0
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.epoch))
        for b in order.tolist()[skip:]:
            yield {"index": torch.tensor([2 * b, 2 * b + 1]), "x": self.x[2 * b : 2 * b + 2]}


class ToyTask:
    """loss = mean((dropout(w x) - 1)^2); NaN at the micro-batches listed in `bad`."""

    def __init__(self, bad=()):
        self.bad, self.calls = set(bad), 0

    def loss(self, model, batch, ctx):
        self.calls += 1
        y = torch.nn.functional.dropout(model(batch["x"]), 0.2, training=True)
        loss = (y - 1).square().mean()
        if self.calls in self.bad:
            loss = loss * float("nan")
        return LossOutput(loss, {"mse": loss.detach()}, loss)


def _setup(tmp_path, accum=1, steps=6, max_nonfinite=3):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    cfg = TrainConfig(grad_accum=accum, lr=0.1, max_steps=steps, max_nonfinite=max_nonfinite)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    world = World()
    engine = TorchEngine(model, optimizer, cfg, world, ddp=False)
    loader = ToyLoader()
    settings = RunSettings(
        run_dir=tmp_path,
        total_steps=steps,
        steps_per_epoch=len(loader) // accum,
        schedule=LRSchedule("linear", 0.1, steps, 2),
        grad_accum=accum,
        log_every=1,
        eval_every=0,
        checkpoint_every=0,
        max_nonfinite=max_nonfinite,
        eval_before=False,
        config_text="",
        resume_hint="lfvila pretrain ... --resume",
    )
    checkpoints = CheckpointManager(tmp_path, world)
    gen = torch.Generator().manual_seed(0)
    return engine, loader, settings, checkpoints, StepContext(world, None, gen)


def _run(tmp_path, task, state=None, **kw):
    engine, loader, settings, checkpoints, ctx = _setup(tmp_path, **kw)
    state = state or TrainerState()
    stopped = train(engine, task, loader, [], settings, checkpoints, state, ctx, lambda: ctx)
    return engine, state, stopped


def test_nonfinite_steps_are_skipped_and_counted(tmp_path):
    weights = []

    class Recording(ToyTask):
        def loss(self, model, batch, ctx):
            weights.append(model.weight.detach().clone())
            return super().loss(model, batch, ctx)

    engine, state, stopped = _run(tmp_path, Recording(bad={3, 4}))
    assert stopped is None and state.step == 6
    assert state.nonfinite_total == 2 and state.nonfinite_streak == 0
    assert torch.equal(weights[2], weights[3]) and torch.equal(weights[3], weights[4])  # no update
    assert not torch.equal(weights[1], weights[2])  # a normal step changes the weights
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 6 and '"nonfinite_skipped": 2' in lines[-1]


def test_too_many_nonfinite_steps_stop_after_a_checkpoint(tmp_path):
    with pytest.raises(TrainingError, match="4 steps in a row had a non-finite loss"):
        _run(tmp_path, ToyTask(bad={2, 3, 4, 5, 6}), max_nonfinite=3)
    latest = CheckpointManager(tmp_path, World()).latest()
    assert latest is not None and latest.name == "step_5"


def test_accumulation_and_schedule(tmp_path):
    lrs = []
    engine, loader, settings, checkpoints, ctx = _setup(tmp_path, accum=2, steps=3)
    real_step = engine.step

    def step(lr, bad_loss=None):
        lrs.append(lr)
        return real_step(lr, bad_loss)

    engine.step = step
    task = ToyTask()
    state = TrainerState()
    train(engine, task, loader, [], settings, checkpoints, state, ctx, lambda: ctx)
    assert task.calls == 6 and state.step == 3 and state.epoch == 1 and state.batch_in_epoch == 0
    assert lrs == [0.0, 0.05, 0.1]  # warm-up of 2 steps, then the linear decay starts at 0.1


def test_sigterm_then_resume_equals_uninterrupted(tmp_path):
    """SIGTERM during step 4 of 8: the step finishes, a checkpoint is written, the loop returns;
    resumed in a fresh engine, the weights equal 8 steps straight bit for bit (dropout makes
    the RNG state matter, and the loader resumes inside its epoch)."""
    straight, _, _ = _run(tmp_path / "a", ToyTask(), steps=8)

    class Interrupted(ToyTask):
        def loss(self, model, batch, ctx):
            if self.calls == 3:
                os.kill(os.getpid(), signal.SIGTERM)
            return super().loss(model, batch, ctx)

    _, state, stopped = _run(tmp_path / "b", Interrupted(), steps=8)
    assert stopped == "SIGTERM" and state.step == 4
    engine, loader, settings, checkpoints, ctx = _setup(tmp_path / "b", steps=8)
    assert checkpoints.latest().name == "step_4"
    state = checkpoints.load(checkpoints.latest(), engine, ctx.mtc_generator)
    assert (state.epoch, state.batch_in_epoch) == (0, 4)
    train(engine, ToyTask(), loader, [], settings, checkpoints, state, ctx, lambda: ctx)
    assert state.step == 8 and state.epoch == 1
    assert torch.equal(engine.module.weight, straight.module.weight)
    assert torch.equal(engine.module.bias, straight.module.bias)
    assert not math.isnan(float(engine.module.weight.detach().sum()))


def test_log_record_averages_its_whole_window_across_a_checkpoint(tmp_path):
    """A checkpoint between logging steps reads the counts (the state must be current) but the
    next log line still averages every step of its window."""
    engine, loader, settings, checkpoints, ctx = _setup(tmp_path, steps=6)
    settings.log_every, settings.checkpoint_every = 3, 2
    losses = []

    class Recording(ToyTask):
        def loss(self, model, batch, ctx):
            out = super().loss(model, batch, ctx)
            losses.append(float(out.loss.detach()))
            return out

    train(engine, Recording(), loader, [], settings, checkpoints, TrainerState(), ctx, lambda: ctx)
    import json

    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [3, 6]
    assert lines[0]["loss"] == pytest.approx(sum(losses[:3]) / 3)
    assert lines[1]["loss"] == pytest.approx(sum(losses[3:]) / 3)
