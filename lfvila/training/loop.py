"""The training loop: one loop for pre-training and every task (STYLE.md §8).

A task is a small object: `task.loss(model, batch, ctx) -> LossOutput` for training, and a list
of evaluations, each `step(model, batch, ctx) -> EvalOutput` plus `metrics(rows, sums)`. The
loop owns everything else: micro-batches and gradient accumulation, the learning-rate schedule,
skipping non-finite steps, evaluation (every item exactly once, in dataset order: SPEC Decision
4c), checkpoints and exact resume, SIGTERM/SIGINT, logging and the progress bar.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

import torch

from .checkpoint import CheckpointManager, TrainerState
from .dist import World
from .metrics import RunLog, Throughput
from .optim import LRSchedule

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class StepContext:
    """What a task's loss or evaluation step may need besides the model and the batch."""

    world: World
    process_group: object = None
    """Group the contrastive features are gathered over (None: this rank's batch only)."""
    mtc_generator: torch.Generator | None = None
    """MTC sampling, seeded the same on every rank (SPEC Decision 3)."""


@dataclasses.dataclass
class LossOutput:
    loss: torch.Tensor
    """The objective as defined (what is logged)."""
    terms: dict[str, torch.Tensor]
    """Its unweighted terms, e.g. {'vpc': ..., 'mtc': ...}."""
    backward: torch.Tensor
    """What the engine differentiates. Gathered terms appear times the world size: each rank's
    gradient of a gathered loss is its slice of the global gradient, and DDP/DeepSpeed average
    over ranks (lfvila/kernels/contrastive/distributed.py)."""


@dataclasses.dataclass
class EvalOutput:
    rows: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    """Per-item results (B, ...), aligned with batch['index']; gathered in dataset order."""
    sums: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    """Scalars summed over all batches and ranks (e.g. loss x items, correct, counted)."""


class Evaluation(Protocol):
    name: str
    loader: Iterable
    """Batches with 'index'; `loader.dataset_length` items in all over the ranks."""

    def step(self, model, batch: dict, ctx: StepContext) -> EvalOutput: ...

    def metrics(self, rows: dict, sums: dict) -> dict[str, float]: ...


class Task(Protocol):
    def loss(self, model, batch: dict, ctx: StepContext) -> LossOutput: ...


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


@torch.no_grad()
def evaluate(engine, evaluations: list, ctx: StepContext) -> dict[str, dict[str, float]]:
    """Every evaluation over its whole dataset: rows gathered by item index (each exactly once),
    sums added over ranks; returns {evaluation name: metrics}."""
    model = engine.module
    was_training = model.training
    model.eval()
    results = {}
    try:
        for ev in evaluations:
            rows, index, sums = {}, [], {}
            for batch in ev.loader:
                batch = engine.prepare(batch)
                with engine.autocast():
                    out = ev.step(model, batch, ctx)
                index.append(batch["index"].cpu())
                for key, value in out.rows.items():
                    rows.setdefault(key, []).append(value.float().cpu())
                for key, value in out.sums.items():
                    sums[key] = sums.get(key, 0.0) + value.detach().double().cpu()
            length = ev.loader.dataset_length
            idx = torch.cat(index) if index else torch.zeros(0, dtype=torch.long)
            gathered = {}
            for key in sorted(rows) or []:
                gathered[key] = ctx.world.gather_rows(torch.cat(rows[key]), idx, length)
            if not rows:  # still check that every item was seen once
                ctx.world.gather_rows(torch.zeros(len(idx), 0), idx, length)
            keys = sorted(sums)
            totals = (
                ctx.world.sum(torch.stack([torch.as_tensor(sums[k]) for k in keys])) if keys else []
            )
            results[ev.name] = ev.metrics(gathered, dict(zip(keys, [float(t) for t in totals])))
    finally:
        model.train(was_training)
    return results


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
    """All ranks agree (a rank that skipped backward alone would hang DDP's all-reduce)."""
    return not world.any(not bool(torch.isfinite(loss.detach()).all()))


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
    meter = Throughput(s.flops_per_sample, s.peak_flops)
    window: dict[str, float] = {}
    window_steps = 0
    last_eval = last_ckpt = -1

    def run_eval(step: int) -> None:
        nonlocal last_eval
        results = evaluate(engine, evaluations, eval_ctx())
        for name, metrics in results.items():
            log.write({"step": step, "eval": name, **metrics}, f"eval/{name}")
            shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
            log.say(f"eval {name} @ step {step}: {shown}")
        if on_eval is not None:
            on_eval(step, results)
        last_eval = step
        if s.headline is not None:
            track_best(step, results)

    def track_best(step: int, results: dict) -> None:
        name, metric, higher = s.headline
        value = results.get(name, {}).get(metric)
        if value is None or math.isnan(value):
            logger.warning("headline metric %s/%s not in the evaluation: no best", name, metric)
            return
        best = state.best.get("value")
        if best is not None and not (value > best if higher else value < best):
            return
        state.best = {"step": step, "metric": f"{name}/{metric}", "value": value}
        checkpoint = None
        if engine.export_needs_checkpoint:  # DeepSpeed fp16/bf16: fp32 masters from disk
            checkpoint = save() if last_ckpt != state.step else checkpoints.latest()
        s.on_best(engine.export_state_dict(checkpoint), step, results)
        log.say(f"best {name}/{metric} {value:.4g} at step {step}: {s.run_dir / 'best'}")

    def save() -> Path:
        nonlocal last_ckpt
        path = checkpoints.save(engine, state, ctx.mtc_generator, s.config_text)
        last_ckpt = state.step
        log.say(f"checkpoint: {path}")
        return path

    engine.module.train()
    if s.eval_before and state.step == 0 and evaluations:
        run_eval(0)
    stop = None
    with StopSignal() as signals:
        try:
            while state.step < s.total_steps and stop is None:
                loader.set_epoch(state.epoch)
                loader.skip(state.batch_in_epoch)
                batches = iter(loader)
                per_epoch = s.steps_per_epoch * s.grad_accum
                while state.batch_in_epoch < per_epoch and state.step < s.total_steps:
                    poisoned, outputs, samples, wait = False, [], 0, 0.0
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
                            if poisoned or not _finite(world, out.loss):
                                poisoned = True
                                engine.skip_micro_batch()
                            else:
                                engine.backward(out.backward)
                        outputs.append(out)
                        samples += len(batch["index"]) * world.world_size
                        state.batch_in_epoch += 1
                    lr = s.schedule(state.step)
                    if poisoned:
                        engine.skip_step()
                        state.nonfinite_streak += 1
                        state.nonfinite_total += 1
                        logger.warning(
                            "step %d: non-finite loss, step skipped (%d in a row)",
                            state.step + 1,
                            state.nonfinite_streak,
                        )
                    else:
                        result = engine.step(lr)
                        if result.applied:
                            state.nonfinite_streak = 0
                        elif result.overflow:
                            state.overflow_total += 1
                        else:
                            state.nonfinite_streak += 1
                            state.nonfinite_total += 1
                            logger.warning(
                                "step %d: non-finite gradient, step skipped", state.step + 1
                            )
                        if result.grad_norm is not None:
                            window["grad_norm"] = window.get("grad_norm", 0.0) + result.grad_norm
                    state.step += 1
                    state.samples += samples
                    meter.add(samples, wait)
                    for out in outputs:
                        for key, value in {"loss": out.loss, **out.terms}.items():
                            window[key] = (
                                window.get(key, 0.0) + float(value.detach()) / s.grad_accum
                            )
                    window_steps += 1
                    log.progress(
                        state.step,
                        {"loss": f"{float(outputs[-1].loss.detach()):.4f}", "lr": f"{lr:.2e}"},
                    )

                    if state.step % s.log_every == 0 or state.step == s.total_steps:
                        record = {"step": state.step, "epoch": state.epoch, "lr": lr}
                        record.update({k: v / window_steps for k, v in window.items()})
                        record.update(meter.summary(world.world_size))
                        record["nonfinite_skipped"] = state.nonfinite_total
                        if engine.loss_scale() is not None:
                            record["loss_scale"] = engine.loss_scale()
                        if world.device.type == "cuda":
                            record["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
                        log.write(record, "train")
                        log.progress(state.step, _postfix(record))
                        if log.bar is None:
                            log.say(_line(record, s.total_steps))
                        window, window_steps = {}, 0
                        meter.reset()
                    if state.nonfinite_streak > s.max_nonfinite:
                        path = save()
                        raise TrainingError(
                            f"{state.nonfinite_streak} steps in a row had a non-finite loss or "
                            f"gradient (train.max_nonfinite={s.max_nonfinite}) at step "
                            f"{state.step}; checkpoint {path}. Lower train.lr, clip gradients "
                            "(train.clip_grad) or use bf16/fp32."
                        )
                    if s.eval_every and state.step % s.eval_every == 0 and evaluations:
                        run_eval(state.step)
                    if (
                        s.checkpoint_every
                        and state.step % s.checkpoint_every == 0
                        and last_ckpt != state.step
                    ):
                        save()
                    if world.any(signals.name is not None):
                        stop = signals.name or "a signal on another rank"
                        break
                if state.batch_in_epoch >= per_epoch:
                    state.epoch += 1
                    state.batch_in_epoch = 0
        finally:
            log.close()
    if stop is not None:
        if last_ckpt != state.step:
            save()
        logger.warning(
            "stopped by %s at step %d of %d; resume with:\n  %s",
            stop,
            state.step,
            s.total_steps,
            s.resume_hint,
        )
        return stop
    if last_ckpt != state.step:
        save()
    if evaluations and last_eval != state.step:
        run_eval(state.step)
    return None


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
        f"{k} {record[k]:.4f}" for k in ("loss", "vpc", "mtc", "mlm", "vtm") if k in record
    )
    text = (
        f"step {record['step']}/{total} epoch {record['epoch']} {terms} lr {record['lr']:.3g} "
        f"{record['samples_per_s']:.2f} samples/s data wait "
        f"{100 * record['data_wait']:.0f}%"
    )
    if "mfu" in record:
        text += f" MFU {100 * record['mfu']:.1f}%"
    return text
