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

from ..data import BadEvaluationVideos, VideoDecodeError
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
            try:
                for batch in ev.loader:
                    batch = engine.prepare(batch)
                    with engine.autocast():
                        out = ev.step(model, batch, ctx)
                    index.append(batch["index"].cpu())
                    for key, value in out.rows.items():
                        rows.setdefault(key, []).append(value.float().cpu())
                    if "skipped" in batch:  # eval.on_bad_video=skip: items served as zeros
                        rows.setdefault("skipped", []).append(batch["skipped"].float().cpu())
                    for key, value in out.sums.items():
                        sums[key] = sums.get(key, 0.0) + value.detach().double().cpu()
            except VideoDecodeError as exc:  # eval.on_bad_video=error: one line, no traceback
                raise BadEvaluationVideos(
                    f"evaluation {ev.name}: unreadable video {exc.path} ({exc.reason}). Replace "
                    "or remove its item, or set eval.on_bad_video=skip to evaluate the rest (it "
                    "then counts as a miss)."
                ) from None
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
    """All ranks agree (a rank that skipped backward alone would hang DDP's all-reduce). A host
    read: only for engines that decide on the host (`checks_loss_on_host`, DeepSpeed)."""
    return not world.any(not bool(torch.isfinite(loss.detach()).all()))


class StepTally:
    """What the steps between two log lines did, kept on the device: loss terms, gradient norm,
    skipped steps and the run of non-finite steps. `flush()` reads it all in one host sync (once
    per `log_every`, at checkpoints and at the end) into the TrainerState and a log record.

    The streak is exact: `max_streak` is the longest run of non-finite steps since the last
    flush, so the stop rule (more than train.max_nonfinite in a row) sees a run that ended before
    the flush too."""

    def __init__(self, state: TrainerState, device: torch.device):
        self.state, self.device = state, device
        self.terms: dict[str, torch.Tensor] = {}
        self.steps = 0  # in the log window
        self.unread = 0  # since the counts were last read
        zero = torch.zeros((), dtype=torch.float64, device=device)
        self.grad_norm, self.nonfinite, self.overflow = zero.clone(), zero.clone(), zero.clone()
        self.streak = torch.full((), float(state.nonfinite_streak), dtype=torch.float64,
                                 device=device)  # fmt: skip
        self.max_streak = self.streak.clone()

    def add_terms(self, out: LossOutput, grad_accum: int) -> None:
        for key, value in {"loss": out.loss, **out.terms}.items():
            value = value.detach().to(self.device, torch.float64) / grad_accum
            self.terms[key] = self.terms[key] + value if key in self.terms else value

    def add_step(self, nonfinite: torch.Tensor, overflow: torch.Tensor, applied, grad_norm) -> None:
        self.steps += 1
        self.unread += 1
        nonfinite = nonfinite.to(self.device, torch.float64)
        self.nonfinite += nonfinite
        self.overflow += overflow.to(self.device, torch.float64)
        self.streak = (self.streak + 1) * nonfinite  # an applied or overflowed step ends the run
        self.max_streak = torch.maximum(self.max_streak, self.streak)
        norm = grad_norm.to(self.device, torch.float64)
        self.grad_norm += torch.where(applied.to(self.device), norm, torch.zeros_like(norm))

    def flush(self, terms: bool = True) -> dict[str, float]:
        """One host read. The non-finite and overflow counts always go into the state (and
        `last_nonfinite`, `last_max_streak`); with `terms`, also the window's averages, returned,
        and the window restarts. Without (a checkpoint or the end between logging steps), the
        loss terms stay for the next log line."""
        names = sorted(self.terms)
        packed = torch.stack(
            [*(self.terms[n] for n in names), self.grad_norm, self.nonfinite, self.overflow,
             self.streak, self.max_streak]
        ).cpu()  # fmt: skip
        *values, grad_norm, nonfinite, overflow, streak, max_streak = packed.tolist()
        self.state.nonfinite_total += int(nonfinite)
        self.state.overflow_total += int(overflow)
        self.state.nonfinite_streak = int(streak)
        self.last_nonfinite, self.last_max_streak = int(nonfinite), int(max_streak)
        self.unread = 0
        self.nonfinite, self.overflow = (
            torch.zeros_like(self.nonfinite),
            torch.zeros_like(self.overflow),
        )
        self.max_streak = self.streak.clone()
        if not terms:
            return {}
        steps = max(self.steps, 1)
        record = {n: v / steps for n, v in zip(names, values)}
        if self.steps:
            record["grad_norm"] = grad_norm / steps
        self.terms, self.steps, self.grad_norm = {}, 0, torch.zeros_like(self.grad_norm)
        return record


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
    tally = StepTally(state, world.device)
    last_eval = last_ckpt = -1
    host_checks = getattr(engine, "checks_loss_on_host", True)

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
        flush_and_log(record=False)  # the state's counters current before they are saved
        path = checkpoints.save(engine, state, ctx.mtc_generator, s.config_text)
        last_ckpt = state.step
        log.say(f"checkpoint: {path}")
        return path

    def flush_and_log(record: bool) -> None:
        """Read the tally (the one host sync of a logging step); with `record`, write the log
        record of the window; stop on too many non-finite steps in a row."""
        if not (tally.steps if record else tally.unread):
            return
        lr = s.schedule(state.step - 1)
        averages = tally.flush(terms=record)
        if tally.last_nonfinite:
            logger.warning(
                "non-finite loss or gradient: %d step(s) skipped up to step %d (%d in a row now)",
                tally.last_nonfinite, state.step, state.nonfinite_streak,
            )  # fmt: skip
        if record:
            line = {"step": state.step, "epoch": state.epoch, "lr": lr, **averages}
            line.update(meter.summary(world.world_size))
            line["nonfinite_skipped"] = state.nonfinite_total
            if engine.loss_scale() is not None:
                line["loss_scale"] = engine.loss_scale()
            if world.device.type == "cuda":
                line["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
            log.write(line, "train")
            log.progress(state.step, _postfix(line))
            if log.bar is None:
                log.say(_line(line, s.total_steps))
            meter.reset()
        if tally.last_max_streak > s.max_nonfinite:
            path = checkpoints.save(engine, state, ctx.mtc_generator, s.config_text)
            raise TrainingError(
                f"{tally.last_max_streak} steps in a row had a non-finite loss or gradient "
                f"(train.max_nonfinite={s.max_nonfinite}) by step {state.step}; checkpoint "
                f"{path}. Lower train.lr, clip gradients (train.clip_grad) or use bf16/fp32."
            )

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
                    # No host read of a device value in here (issue 20): the non-finite check
                    # is decided on the device, the loss terms accumulate there
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
                            if host_checks:  # DeepSpeed: decided on the host, as it must
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
                        tally.add_step(
                            result.nonfinite, result.overflow, result.applied, result.grad_norm
                        )
                    state.step += 1
                    state.samples += samples
                    meter.add(samples, wait)
                    log.progress(state.step, None)
                    logging_step = state.step % s.log_every == 0 or state.step == s.total_steps
                    if logging_step:
                        flush_and_log(record=True)
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
            flush_and_log(record=False)  # a stop between logging steps: counts, no record
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
