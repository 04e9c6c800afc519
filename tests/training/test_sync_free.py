"""No host synchronisation inside a training step (issue 20): the tiny stage-1 model trains with
every host read of a tensor value counted (`Tensor.item`, `__bool__`, `__float__`, `__int__`,
`tolist`, `numpy`; on a GPU each is a wait for the device), attributed to the step in progress.
Only logging steps may read (once, the tally); the non-finite check is decided on the device.
On a GPU the same run is checked with `torch.cuda.set_sync_debug_mode("error")`."""

from __future__ import annotations

import contextlib
import itertools
import math

import pytest
import torch
import yaml

from lfvila.config import load_config
from lfvila.training.checkpoint import CheckpointManager, TrainerState
from lfvila.training.dist import World
from lfvila.training.engine import TorchEngine
from lfvila.training.loop import RunSettings, StepContext, train
from lfvila.training.optim import LRSchedule, build_optimizer

from .conftest import NO_DROPOUT, TINY_RUN

READS = ("item", "__bool__", "__float__", "__int__", "tolist", "numpy")


class ListLoader:
    """Pre-decoded batches (decoding is host work by design, not a device read)."""

    def __init__(self, batches):
        self.batches, self._skip, self.failure_counts = batches, 0, {}

    def set_epoch(self, epoch):
        pass

    def skip(self, n):
        self._skip = n

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        skip, self._skip = self._skip, 0
        return iter(self.batches[skip:])


class StepReads:
    """Counts host reads per training step: the step in progress is the number of
    `task.loss` calls so far divided by grad_accum (reads before the first step go to 0)."""

    def __init__(self, task, grad_accum):
        self.calls, self.per_step, self.where = 0, {}, {}
        real = task.loss

        def loss(*args, **kwargs):
            self.calls += 1
            return real(*args, **kwargs)

        task.loss = loss
        self.grad_accum = grad_accum

    def step(self) -> int:
        return (self.calls + self.grad_accum - 1) // self.grad_accum

    @contextlib.contextmanager
    def counting(self):
        import traceback

        originals = {name: getattr(torch.Tensor, name) for name in READS}

        def wrap(name, fn):
            def counted(tensor, *args, **kwargs):
                step = self.step()
                self.per_step[step] = self.per_step.get(step, 0) + 1
                if step not in self.where:
                    frames = traceback.extract_stack(limit=6)[:-1]
                    self.where[step] = f"{name}: " + " <- ".join(
                        f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}" for f in reversed(frames)
                    )
                return fn(tensor, *args, **kwargs)

            return counted

        for name, fn in originals.items():
            setattr(torch.Tensor, name, wrap(name, fn))
        try:
            yield self
        finally:
            for name, fn in originals.items():
                setattr(torch.Tensor, name, fn)


def _tiny_run(tiny_data, tmp_path, steps=6, log_every=3, grad_accum=1, bad=(), device="cpu"):
    from lfvila.jobs.weights import build_initialised_model
    from lfvila.tasks import build_task

    data = yaml.safe_load(yaml.safe_dump(TINY_RUN))
    data["data"]["root"] = str(tiny_data)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    overrides = ["data.val=null", "data.val_retrieval=null", "train.batch_size=2"]  # 8 batches
    cfg = load_config(path, [*NO_DROPOUT, *overrides])
    world = World(device=torch.device(device))
    torch.manual_seed(0)
    task, loader, _ = build_task(cfg, world)
    batches = list(itertools.islice(iter(loader), steps * grad_accum))
    if device == "cuda":  # pinned, as the DataLoader's pin_memory gives them: async copies
        batches = [{k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in b.items()}
                   for b in batches]  # fmt: skip
    model = build_initialised_model(cfg, log=False)
    optimizer = build_optimizer(model, cfg.train, cfg.model.freeze_pooler)
    engine = TorchEngine(model, optimizer, cfg.train, world, ddp=False)
    if bad:  # NaN losses at these micro-batches (1-based)
        real, calls = task.loss, [0]

        def poisoned(*args, **kwargs):
            calls[0] += 1
            out = real(*args, **kwargs)
            if calls[0] in bad:
                out.loss, out.backward = out.loss * math.nan, out.backward * math.nan
            return out

        task.loss = poisoned
    settings = RunSettings(
        run_dir=tmp_path / "run", total_steps=steps, steps_per_epoch=steps,
        schedule=LRSchedule("linear", 1e-3, steps, 0), grad_accum=grad_accum,
        log_every=log_every, eval_every=0, checkpoint_every=0, max_nonfinite=3,
        eval_before=False, config_text="", resume_hint="",
    )  # fmt: skip
    ctx = StepContext(world, None, torch.Generator().manual_seed(0))
    checkpoints = CheckpointManager(tmp_path / "run", world)
    return engine, task, ListLoader(batches), settings, checkpoints, ctx


@pytest.mark.parametrize("grad_accum, steps, log_every", [(1, 6, 3), (2, 4, 2)])
def test_no_host_reads_between_logging_steps(tiny_data, tmp_path, grad_accum, steps, log_every):
    engine, task, loader, settings, checkpoints, ctx = _tiny_run(
        tiny_data, tmp_path, steps=steps, log_every=log_every, grad_accum=grad_accum
    )
    assert engine.optimizer.defaults["fused"]  # the skip runs in the optimiser's kernel
    reads = StepReads(task, grad_accum)
    state = TrainerState()
    with reads.counting():
        train(engine, task, loader, [], settings, checkpoints, state, ctx, lambda: ctx)
    assert state.step == steps
    logging = {0, *range(log_every, steps + 1, log_every)}
    quiet = {step: n for step, n in reads.per_step.items() if step not in logging}
    assert not quiet, f"host reads on non-logging steps: {quiet}; first: {reads.where}"
    assert reads.per_step.get(log_every, 0) > 0  # a logging step does read (the tally)


def test_device_side_skip_counts_exactly(tiny_data, tmp_path):
    """NaN losses at steps 2 and 3 (of 6): skipped by the fused optimiser on the device, counted
    exactly at the next logging step, weights untouched by those steps."""
    engine, task, loader, settings, checkpoints, ctx = _tiny_run(tiny_data, tmp_path, bad={2, 3})
    weights = []
    real = task.loss

    def recording(model, batch, ctx_):
        weights.append(next(engine.module.parameters()).detach().clone())
        return real(model, batch, ctx_)

    task.loss = recording
    state = TrainerState()
    train(engine, task, loader, [], settings, checkpoints, state, ctx, lambda: ctx)
    assert state.nonfinite_total == 2 and state.nonfinite_streak == 0
    assert torch.equal(weights[1], weights[2]) and torch.equal(weights[2], weights[3])
    assert not torch.equal(weights[3], weights[4]) and not torch.equal(weights[0], weights[1])
    final = next(engine.module.parameters())
    assert torch.isfinite(final).all()
    step_counts = {int(s["step"]) for s in engine.optimizer.state.values()}
    assert step_counts == {4}  # the fused kernel took its step count back on skipped steps


@pytest.mark.gpu
def test_no_device_sync_between_logging_steps_gpu(tiny_data, tmp_path, monkeypatch):
    """On a GPU: torch's sync debug mode raises on any synchronising call from the second step's
    forward on; the tally's read at a logging step turns it off (and the next forward back on),
    so logging, the final checkpoint and the first step's compilation may synchronise."""
    from lfvila.training.loop import StepTally

    engine, task, loader, settings, checkpoints, ctx = _tiny_run(tiny_data, tmp_path, device="cuda")
    flush = StepTally.flush

    def allowed(self, *args, **kwargs):  # the loop calls flush(terms=...)
        torch.cuda.set_sync_debug_mode("default")
        return flush(self, *args, **kwargs)

    monkeypatch.setattr(StepTally, "flush", allowed)
    real = task.loss
    calls = [0]

    def strict(*args, **kwargs):
        calls[0] += 1
        if calls[0] >= 2:  # from step 2 on: step 1 compiles kernels and warms the allocator
            torch.cuda.set_sync_debug_mode("error")
        return real(*args, **kwargs)

    task.loss = strict
    state = TrainerState()
    try:
        train(engine, task, loader, [], settings, checkpoints, state, ctx, lambda: ctx)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert state.step == 6 and state.nonfinite_total == 0
