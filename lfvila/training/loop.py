"""The training loop: one loop for pre-training and every task (STYLE.md §8).

A task is a small object: `task.loss(model, batch, ctx) -> LossOutput` for training, and a list
of evaluations, each `step(model, batch, ctx) -> EvalOutput` plus `metrics(rows, sums)`
(`training.protocol`). The loop owns everything else: micro-batches and gradient accumulation,
the learning-rate schedule, skipping non-finite steps, evaluation (every item exactly once, in
dataset order: SPEC Decision 4c), checkpoints and exact resume, SIGTERM/SIGINT, logging and the
progress bar.

`train` reads top to bottom; what it does besides stepping is in named pieces with their state
in plain sight: `LogWindow` (the tally of the steps since the last log line, the log record, the
non-finite stop rule), `Checkpointer` (saves, and the step of the last one), `BestWeights` (the
best evaluation's weights) and `Evaluator` (evaluations, logged and passed on); one optimiser
step is `_optimiser_step`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
import time
from collections.abc import Callable
from pathlib import Path

import torch

from .checkpoint import CheckpointManager, TrainerState
from .dist import World
from .evaluation import evaluate
from .metrics import RunLog, Throughput
from .optim import LRSchedule
from .protocol import EvalOutput, Evaluation, LossOutput, StepContext, Task
from .tally import StepTally

__all__ = [
    "EvalOutput",
    "Evaluation",
    "LossOutput",
    "RunSettings",
    "StepContext",
    "StepTally",
    "Task",
    "TrainingError",
    "evaluate",
    "train",
]

logger = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """The run cannot go on (too many non-finite steps); a checkpoint has been written."""


class StopSignal:
    """SIGTERM / SIGINT set a flag the loop checks after each step; a second SIGINT raises."""

    def __init__(self):
        self.name: str | None = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.name = signal.Signals(signum).name
        logger.warning("%s received: finishing this step, then checkpoint and stop", self.name)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclasses.dataclass
class RunSettings:
    """How `train` runs: lengths, schedule, cadences and where things go."""

    run_dir: Path
    total_steps: int
    steps_per_epoch: int
    schedule: LRSchedule
    grad_accum: int
    log_every: int
    eval_every: int
    checkpoint_every: int
    max_nonfinite: int
    eval_before: bool
    config_text: str
    resume_hint: str
    """The command that resumes this run (printed on a signal)."""
    flops_per_sample: float | None = None
    peak_flops: float | None = None
    headline: tuple[str, str, bool] | None = None
    """(evaluation, metric, higher is better): each evaluation that improves it calls
    `on_best(weights, step, results)` with the bare model's fp32 weights (None: no best)."""
    on_best: Callable[[dict, int, dict], None] | None = None


def _finite(world: World, loss: torch.Tensor) -> bool:
    """All ranks agree (a rank that skipped backward alone would hang DDP's all-reduce). A host
    read: only for engines that decide on the host (`checks_loss_on_host`, DeepSpeed)."""
    return not world.any(not bool(torch.isfinite(loss.detach()).all()))


class LogWindow:
    """The steps since the last log line, as the run reports them: the tally's counts (read in
    one host sync by `flush`), the throughput meter, and the stop rule for non-finite steps."""

    def __init__(
        self,
        engine,
        settings: RunSettings,
        state: TrainerState,
        world: World,
        log: RunLog,
        checkpoints: CheckpointManager,
        mtc_generator,
    ):
        self.engine, self.s, self.state, self.world, self.log = engine, settings, state, world, log
        self.checkpoints, self.mtc_generator = checkpoints, mtc_generator
        self.meter = Throughput(settings.flops_per_sample, settings.peak_flops)
        self.tally = StepTally(state, world.device)

    def flush(self, record: bool) -> None:
        """Read the tally (the one host sync of a logging step); with `record`, write the log
        record of the window; stop on too many non-finite steps in a row."""
        s, state, tally, engine = self.s, self.state, self.tally, self.engine
        if not (tally.steps if record else tally.unread):
            return
        lr = s.schedule(state.step - 1)
        averages = tally.flush(terms=record)
        if tally.last_nonfinite:
            logger.warning(
                "non-finite loss or gradient: %d step(s) skipped up to step %d (%d in a row now)",
                tally.last_nonfinite,
                state.step,
                state.nonfinite_streak,
            )
        if record:
            line = {"step": state.step, "epoch": state.epoch, "lr": lr, **averages}
            line.update(self.meter.summary(self.world.world_size))
            line["nonfinite_skipped"] = state.nonfinite_total
            if engine.loss_scale() is not None:
                line["loss_scale"] = engine.loss_scale()
            if self.world.device.type == "cuda":
                line["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
            self.log.write(line, "train")
            self.log.progress(state.step, _postfix(line))
            if self.log.bar is None:
                self.log.say(_line(line, s.total_steps))
            self.meter.reset()
        if tally.last_max_streak > s.max_nonfinite:
            path = self.checkpoints.save(engine, state, self.mtc_generator, s.config_text)
            raise TrainingError(
                f"{tally.last_max_streak} steps in a row had a non-finite loss or gradient "
                f"(train.max_nonfinite={s.max_nonfinite}) by step {state.step}; checkpoint "
                f"{path}. Lower train.lr, clip gradients (train.clip_grad) or use bf16/fp32."
            )


class Checkpointer:
    """Checkpoints of the run: the window's counts read first (so the state saved is current),
    and the step of the last one (`last`, -1: none yet), so that no step is saved twice."""

    def __init__(
        self,
        engine,
        checkpoints: CheckpointManager,
        state: TrainerState,
        mtc_generator,
        window: LogWindow,
        config_text: str,
    ):
        self.engine, self.checkpoints, self.state = engine, checkpoints, state
        self.mtc_generator, self.window, self.config_text = mtc_generator, window, config_text
        self.last = -1

    def save(self) -> Path:
        self.window.flush(record=False)  # the state's counters current before they are saved
        path = self.checkpoints.save(self.engine, self.state, self.mtc_generator, self.config_text)
        self.last = self.state.step
        self.window.log.say(f"checkpoint: {path}")
        return path

    def save_if_new(self) -> None:
        if self.last != self.state.step:
            self.save()


class BestWeights:
    """Best-weights tracking: each evaluation that improves the headline metric
    (`RunSettings.headline`) becomes `state.best`, and the bare model's fp32 weights go to
    `RunSettings.on_best` (from a checkpoint where the engine keeps them only there)."""

    def __init__(
        self, engine, settings: RunSettings, state: TrainerState, saver: Checkpointer, log: RunLog
    ):
        self.engine, self.s, self.state, self.saver, self.log = engine, settings, state, saver, log

    def consider(self, step: int, results: dict) -> None:
        name, metric, higher = self.s.headline
        value = results.get(name, {}).get(metric)
        if value is None or math.isnan(value):
            logger.warning("headline metric %s/%s not in the evaluation: no best", name, metric)
            return
        best = self.state.best.get("value")
        if best is not None and not (value > best if higher else value < best):
            return
        self.state.best = {"step": step, "metric": f"{name}/{metric}", "value": value}
        checkpoint = None
        if self.engine.export_needs_checkpoint:  # DeepSpeed fp16/bf16: fp32 masters from disk
            saver = self.saver
            checkpoint = (
                saver.save() if saver.last != self.state.step else saver.checkpoints.latest()
            )
        self.s.on_best(self.engine.export_state_dict(checkpoint), step, results)
        self.log.say(f"best {name}/{metric} {value:.4g} at step {step}: {self.s.run_dir / 'best'}")


class Evaluator:
    """The run's evaluations: each one logged, passed to `on_eval` and to the best-weights
    tracker (None: no headline metric); `last` is the step of the latest (-1: none yet)."""

    def __init__(
        self,
        engine,
        evaluations: list,
        eval_ctx: Callable[[], StepContext],
        log: RunLog,
        on_eval: Callable[[int, dict], None] | None,
        best: BestWeights | None,
    ):
        self.engine, self.evaluations, self.eval_ctx = engine, evaluations, eval_ctx
        self.log, self.on_eval, self.best = log, on_eval, best
        self.last = -1

    def run(self, step: int) -> None:
        results = evaluate(self.engine, self.evaluations, self.eval_ctx())
        for name, metrics in results.items():
            self.log.write({"step": step, "eval": name, **metrics}, f"eval/{name}")
            shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
            self.log.say(f"eval {name} @ step {step}: {shown}")
        if self.on_eval is not None:
            self.on_eval(step, results)
        self.last = step
        if self.best is not None:
            self.best.consider(step, results)


def train(
    engine,
    task: Task,
    loader,
    evaluations: list,
    settings: RunSettings,
    checkpoints: CheckpointManager,
    state: TrainerState,
    ctx: StepContext,
    eval_ctx: Callable[[], StepContext],
    on_eval: Callable[[int, dict], None] | None = None,
) -> str | None:
    """Train from `state` (fresh, or restored by `checkpoints.load`; updated in place) to
    `settings.total_steps`. Returns None when the run is complete, or the name of the signal
    that stopped it (after a checkpoint).

    `loader`: the training Loader (`set_epoch`, `skip`, iteration of micro-batches of
    `batch_size` per rank); `eval_ctx()` a fresh evaluation context (its own MTC generator, so
    evaluating never moves the training's random streams).
    """
    world, s = ctx.world, settings
    log = RunLog(s.run_dir, world.is_main, s.total_steps, state.step)
    window = LogWindow(engine, s, state, world, log, checkpoints, ctx.mtc_generator)
    saver = Checkpointer(engine, checkpoints, state, ctx.mtc_generator, window, s.config_text)
    best = BestWeights(engine, s, state, saver, log) if s.headline is not None else None
    evaluator = Evaluator(engine, evaluations, eval_ctx, log, on_eval, best)

    engine.module.train()
    if s.eval_before and state.step == 0 and evaluations:
        evaluator.run(0)
    stop = None
    with StopSignal() as signals:
        try:
            while state.step < s.total_steps and stop is None:
                loader.set_epoch(state.epoch)
                loader.skip(state.batch_in_epoch)
                batches = iter(loader)
                per_epoch = s.steps_per_epoch * s.grad_accum
                while state.batch_in_epoch < per_epoch and state.step < s.total_steps:
                    samples, wait = _optimiser_step(engine, task, batches, s, state, ctx, window)
                    state.step += 1
                    state.samples += samples
                    window.meter.add(samples, wait)
                    log.progress(state.step, None)
                    if state.step % s.log_every == 0 or state.step == s.total_steps:
                        window.flush(record=True)
                    if s.eval_every and state.step % s.eval_every == 0 and evaluations:
                        evaluator.run(state.step)
                    if s.checkpoint_every and state.step % s.checkpoint_every == 0:
                        saver.save_if_new()
                    if world.any(signals.name is not None):
                        stop = signals.name or "a signal on another rank"
                        break
                if state.batch_in_epoch >= per_epoch:
                    state.epoch += 1
                    state.batch_in_epoch = 0
            window.flush(record=False)  # a stop between logging steps: counts, no record
        finally:
            log.close()
    if stop is not None:
        saver.save_if_new()
        logger.warning(
            "stopped by %s at step %d of %d; resume with:\n  %s",
            stop,
            state.step,
            s.total_steps,
            s.resume_hint,
        )
        return stop
    saver.save_if_new()
    if evaluations and evaluator.last != state.step:
        evaluator.run(state.step)
    return None


def _optimiser_step(
    engine,
    task: Task,
    batches,
    s: RunSettings,
    state: TrainerState,
    ctx: StepContext,
    window: LogWindow,
) -> tuple[int, float]:
    """One optimiser step: `s.grad_accum` micro-batches of `batches` (forward, backward), then
    the engine's step at the schedule's learning rate, counted in the window's tally. Advances
    `state.batch_in_epoch`; returns (samples over all ranks, seconds spent waiting for data).

    No host read of a device value in here (issue 20): the non-finite check is decided on the
    device and the loss terms accumulate there, except with an engine that decides on the host
    (`checks_loss_on_host`, DeepSpeed), as it must."""
    world, tally = ctx.world, window.tally
    host_checks = getattr(engine, "checks_loss_on_host", True)
    per_epoch = s.steps_per_epoch * s.grad_accum
    poisoned, bad_loss, samples, wait = False, None, 0, 0.0
    for micro in range(s.grad_accum):
        t0 = time.perf_counter()
        try:
            batch = engine.prepare(next(batches))
        except StopIteration:
            raise RuntimeError(
                f"the training loader ended after {state.batch_in_epoch} of "
                f"{per_epoch} batches in epoch {state.epoch}"
            ) from None
        wait += time.perf_counter() - t0
        last = micro == s.grad_accum - 1
        with engine.no_sync(last):
            with engine.autocast():
                out = task.loss(engine.model, batch, ctx)
            if host_checks:
                if poisoned or not _finite(world, out.loss):
                    poisoned = True
                    engine.skip_micro_batch()
                else:
                    engine.backward(out.backward)
            else:
                bad = ~torch.isfinite(out.loss.detach()).all()
                bad_loss = bad if bad_loss is None else bad_loss | bad
                engine.backward(out.backward)
        tally.add_terms(out, s.grad_accum)
        samples += len(batch["index"]) * world.world_size
        state.batch_in_epoch += 1
    lr = s.schedule(state.step)
    if poisoned:
        engine.skip_step()
        one = torch.ones((), dtype=torch.bool)
        tally.add_step(one, ~one, ~one, torch.tensor(math.nan))
    else:
        result = engine.step(lr, bad_loss)
        tally.add_step(result.nonfinite, result.overflow, result.applied, result.grad_norm)
    return samples, wait


def _postfix(record: dict) -> dict:
    out = {
        "loss": f"{record.get('loss', math.nan):.4f}",
        "lr": f"{record['lr']:.2e}",
        "samples/s": f"{record['samples_per_s']:.1f}",
        "data wait": f"{100 * record['data_wait']:.0f}%",
    }
    if "mfu" in record:
        out["MFU"] = f"{100 * record['mfu']:.1f}%"
    return out


def _line(record: dict, total: int) -> str:
    terms = " ".join(
        f"{k} {record[k]:.4f}"
        for k in ("loss", "vpc", "mtc", "mlm", "vtm", "ce", "span")
        if k in record
    )
    text = (
        f"step {record['step']}/{total} epoch {record['epoch']} {terms} lr {record['lr']:.3g} "
        f"{record['samples_per_s']:.2f} samples/s data wait "
        f"{100 * record['data_wait']:.0f}%"
    )
    if "mfu" in record:
        text += f" MFU {100 * record['mfu']:.1f}%"
    return text
