"""`lfvila pretrain` (and, through `jobs.finetune`, `lfvila finetune`): everything a training
run needs, built from one config, the one loop of `lfvila.training.loop`, and the export.

`pretrain` reads top to bottom as a run goes:
1. the process group and the run folder, fresh or resumed from its newest checkpoint (`runs`);
2. the task with its data, the initialised model, optimiser and engine (`_build`);
3. the trainer state and the random streams, restored from the checkpoint or seeded
   (`_restore`);
4. the resolved config written to the run folder and the run announced (`_announce`);
5. the kernel self-check and regional compilation (`_prepare_engine`);
6. the loop's settings (`_settings`) and its two callbacks, the best export
   (`weights.BestExport`) and the evaluation history (`EvalHistory`);
7. the loop (`train`);
8. the final export, metrics.json and the summary line (`_finish`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import random
import time
from pathlib import Path

import numpy as np
import torch

from ..config import Config, dump_config
from ..model.shapes import attention_backends
from ..training.checkpoint import CheckpointManager, TrainerState, write_text_atomic
from ..training.dist import World
from ..training.engine import DTYPES, build_engine, prepare_deepspeed_env, resolve_engine
from ..training.kernel_check import write_kernel_record
from ..training.loop import RunSettings, StepContext, train
from ..training.metrics import setup_logging
from ..training.optim import LRSchedule, build_optimizer, freeze_excluded
from .runs import open_run, resume_command
from .weights import BestExport, build_initialised_model, export

logger = logging.getLogger("lfvila")


@dataclasses.dataclass
class RunResult:
    run_dir: Path
    state: TrainerState
    stopped_by: str | None
    """None when the run finished; else the signal that stopped it after a checkpoint."""
    metrics: dict
    """The final evaluation: {evaluation: {metric: value}}."""
    history: list = dataclasses.field(default_factory=list)
    """(step, evaluation results) of every evaluation of this process."""
    seconds: float = 0.0


@dataclasses.dataclass
class _Parts:
    """What `_build` makes from the config."""

    task: object
    loader: object
    evaluations: list
    engine: object
    trainable: int
    """Parameters the optimiser updates."""
    left_out: int
    """Parameters left out of the optimiser (frozen or never reached)."""
    steps_per_epoch: int
    total_steps: int


class EvalHistory:
    """`train`'s on_eval: keeps (step, results) of every evaluation, then calls `on_eval`."""

    def __init__(self, on_eval=None):
        self.items: list = []
        self.on_eval = on_eval

    def __call__(self, step: int, results: dict) -> None:
        self.items.append((step, results))
        if self.on_eval is not None:
            self.on_eval(step, results)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pretrain(
    cfg: Config,
    run_dir: str | Path,
    resume: bool = False,
    export_dtype: str = "fp32",
    config_path: str | Path | None = None,
    overrides: tuple[str, ...] = (),
    on_eval=None,
    command: str = "pretrain",
) -> RunResult:
    """Train `cfg`'s task (pre-training, or a fine-tuning task: see `finetune`) as `cfg` says,
    writing into `run_dir`: config.yaml, checkpoints/, metrics.jsonl, tb/, log.txt,
    model.safetensors, metrics.json, and best/ (model.safetensors, config.yaml, metrics.json of
    the best evaluation by eval.metric)."""
    if command == "pretrain" and cfg.model.task != "pretrain":
        raise ValueError(
            f"model.task is {cfg.model.task!r}: use `lfvila finetune` for downstream tasks"
        )
    start = time.time()
    run_dir = Path(run_dir)
    world = World.from_env(cfg.train.device)
    engine_name = resolve_engine(cfg.train, world)
    if engine_name == "deepspeed":
        prepare_deepspeed_env(world)
    world.init(via_deepspeed=engine_name == "deepspeed")
    try:
        setup_logging(run_dir, world.is_main)
        checkpoints, latest = open_run(cfg, run_dir, world, resume)
        seed_all(cfg.train.seed)  # the same model initialisation on every rank
        parts = _build(cfg, world, engine_name)
        mtc_generator = torch.Generator().manual_seed(cfg.train.seed)
        state = _restore(cfg, world, engine_name, checkpoints, latest, parts.engine, mtc_generator)
        config_text = dump_config(cfg)
        if world.is_main:
            write_text_atomic(run_dir / "config.yaml", config_text)
            _announce(cfg, run_dir, world, engine_name, parts)
        checked = _prepare_engine(parts.engine, cfg, world, run_dir)
        hint = resume_command(config_path, run_dir, overrides, world, command)
        settings = _settings(cfg, run_dir, world, parts, config_text, hint)
        settings.on_best = BestExport(
            cfg, parts.engine, run_dir, export_dtype, settings.headline, world.is_main
        )
        history = EvalHistory(on_eval)
        ctx = StepContext(world, world.group, mtc_generator)
        eval_ctx = functools.partial(_eval_context, world, cfg.train.seed)
        stopped = train(
            parts.engine, parts.task, parts.loader, parts.evaluations, settings, checkpoints,
            state, ctx, eval_ctx, history,
        )  # fmt: skip
        final = history.items[-1][1] if history.items else {}
        if checked:  # with the first-call checks the run made since
            write_kernel_record(run_dir, world, cfg.kernels.on_mismatch)
        failures = failure_summary(parts.loader, world)  # every rank: a collective
        if stopped is None:
            _finish(cfg, run_dir, world, parts, checkpoints, state, final, export_dtype)
            if world.is_main:
                _say_done(state, start, failures, run_dir)
        return RunResult(run_dir, state, stopped, final, history.items, time.time() - start)
    finally:
        world.shutdown()


def _build(cfg: Config, world: World, engine_name: str) -> _Parts:
    """The task (its training loader and evaluations), the initialised model, its optimiser
    groups and the engine, and the run's length in optimiser steps."""
    from ..tasks import build_task

    task, train_loader, evaluations = build_task(cfg, world)
    model = build_initialised_model(cfg, log=world.is_main)
    frozen = freeze_excluded(model, cfg.model.freeze_pooler)
    optimizer = build_optimizer(model, cfg.train, cfg.model.freeze_pooler)
    trainable = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    engine = build_engine(engine_name, model, optimizer, cfg.train, world)
    steps_per_epoch = len(train_loader) // cfg.train.grad_accum
    if steps_per_epoch == 0:
        raise ValueError(
            f"an epoch has {len(train_loader)} batches, fewer than train.grad_accum "
            f"{cfg.train.grad_accum}"
        )
    total = cfg.train.max_steps or cfg.train.epochs * steps_per_epoch
    return _Parts(
        task, train_loader, evaluations, engine, trainable, len(frozen), steps_per_epoch, total
    )


def _restore(
    cfg: Config,
    world: World,
    engine_name: str,
    checkpoints: CheckpointManager,
    latest: Path | None,
    engine,
    mtc_generator: torch.Generator,
) -> TrainerState:
    """The trainer state: from `latest` (the engine's tensors and this rank's random streams
    restored too) or fresh, with the global random streams seeded per rank."""
    state = TrainerState(
        world_size=world.world_size,
        global_batch=cfg.train.batch_size * world.world_size,
        engine=engine_name,
    )
    if latest is None:
        seed_all(cfg.train.seed + world.rank)  # dropout differs across ranks
        return state
    state = checkpoints.load(latest, engine, mtc_generator)
    if state.global_batch != cfg.train.batch_size * world.world_size:
        raise ValueError(
            f"{latest} was trained with a global batch of {state.global_batch} "
            f"(batch_size x processes); this run has {cfg.train.batch_size} x "
            f"{world.world_size}: the data order would not continue"
        )
    logger.info(
        "resumed from %s: step %d, epoch %d, batch %d of the epoch",
        latest, state.step, state.epoch, state.batch_in_epoch,
    )  # fmt: skip
    return state


def _announce(cfg: Config, run_dir: Path, world: World, engine_name: str, parts: _Parts) -> None:
    logger.info(
        "run %s: engine %s, %s, %d process(es) on %s, %d trainable parameters (%d "
        "left out: frozen or unused), %d steps (%d per epoch), global batch %d",
        run_dir,
        engine_name,
        parts.engine.precision,
        world.world_size,
        world.device,
        parts.trainable,
        parts.left_out,
        parts.total_steps,
        parts.steps_per_epoch,
        cfg.train.batch_size * world.world_size * cfg.train.grad_accum,
    )
    # which window-attention backend each encoder layer runs, and why (before the self-check)
    video = cfg.model.video
    backend = video.attention_backend if video.attention_backend != "auto" else cfg.kernels.backend
    dtype = DTYPES[parts.engine.precision] if world.device.type == "cuda" else torch.float32
    for line in attention_backends(video, backend, world.device, dtype):
        logger.info("window attention %s", line)


def _prepare_engine(engine, cfg: Config, world: World, run_dir: Path) -> bool:
    """Before any step: the kernel self-check (recorded in run_dir/kernel_check.json), then
    regional torch.compile where enabled. Returns whether the check ran."""
    from ..training import compile as regional
    from ..training.kernel_check import run_kernel_self_check

    checked = run_kernel_self_check(engine.module, cfg, engine, world, run_dir) is not None
    if regional.compile_enabled(cfg.train.compile, world.device):
        counts = regional.compile_blocks(engine.module)
        logger.info(
            "torch.compile: %d video blocks and %d text layers (regional; each compiles at "
            "its first call; train.compile=false turns it off)",
            counts["video"], counts["text"],
        )  # fmt: skip
    return checked


def _settings(
    cfg: Config, run_dir: Path, world: World, parts: _Parts, config_text: str, resume_hint: str
) -> RunSettings:
    """The loop's lengths, schedule, cadences, FLOPs and headline metric (no `on_best` yet)."""
    from ..model.flops import flops_per_sample, peak_tflops
    from ..tasks import headline_metric

    peak = None
    if world.device.type == "cuda":
        tflops = peak_tflops(torch.cuda.get_device_name(world.device))
        peak = tflops * 1e12 if tflops else None
    return RunSettings(
        run_dir=run_dir,
        total_steps=parts.total_steps,
        steps_per_epoch=parts.steps_per_epoch,
        schedule=LRSchedule.from_config(cfg.train, parts.steps_per_epoch, parts.total_steps),
        grad_accum=cfg.train.grad_accum,
        log_every=cfg.train.log_every,
        eval_every=cfg.train.eval_every,
        checkpoint_every=cfg.train.checkpoint_every,
        max_nonfinite=cfg.train.max_nonfinite,
        eval_before=cfg.eval.before_training,
        config_text=config_text,
        resume_hint=resume_hint,
        flops_per_sample=flops_per_sample(cfg.model),
        peak_flops=peak,
        headline=headline_metric(cfg, parts.evaluations),
    )


def _eval_context(world: World, seed: int) -> StepContext:
    """A fresh evaluation context: its own MTC generator, so evaluating never moves the
    training's random streams."""
    return StepContext(world, None, torch.Generator().manual_seed(seed))


def _finish(
    cfg: Config,
    run_dir: Path,
    world: World,
    parts: _Parts,
    checkpoints: CheckpointManager,
    state: TrainerState,
    final: dict,
    export_dtype: str,
) -> None:
    """A complete run: the final weights (from the last checkpoint where the engine needs it)
    to run_dir/model.safetensors and the final evaluation to run_dir/metrics.json."""
    weights = parts.engine.export_state_dict(checkpoints.latest())
    if world.is_main:
        export(cfg, parts.engine, weights, run_dir, export_dtype)
        write_text_atomic(
            run_dir / "metrics.json",
            json.dumps(with_skipped(final, parts.evaluations), indent=1) + "\n",
        )


def _say_done(state: TrainerState, start: float, failures: str, run_dir: Path) -> None:
    logger.info(
        "done: %d steps in %.0f s (%d samples); %d non-finite steps skipped%s; %s; weights %s",
        state.step,
        time.time() - start,
        state.samples,
        state.nonfinite_total,
        f", {state.overflow_total} loss-scale overflows" if state.overflow_total else "",
        failures,
        run_dir / "model.safetensors",
    )


def with_skipped(results: dict, evaluations: list) -> dict:
    """metrics.json: the results, and under 'skipped_items' the evaluation items left out or
    served as zeros for unreadable videos (eval.on_bad_video=skip) and how they were counted."""
    from ..tasks.eval_data import skipped_report

    report = skipped_report(evaluations)
    return {**results, "skipped_items": report} if report else results


def failure_summary(loader, world: World) -> str:
    """The replaced items and the failed decodes of every rank (`replacement_summary`)."""
    from ..data import FAILURE_KINDS, replacement_summary

    local = [float(loader.replaced_counts.get(k, 0)) for k in FAILURE_KINDS]
    local += [float(loader.failure_counts.get(k, 0)) for k in FAILURE_KINDS]
    local.append(float(loader.replaced_known))
    counts = world.sum(torch.tensor(local)).tolist()
    n = len(FAILURE_KINDS)
    replaced = dict(zip(FAILURE_KINDS, counts[:n]))
    decodes = dict(zip(FAILURE_KINDS, counts[n : 2 * n]))
    return replacement_summary(replaced, int(counts[-1]), decodes)
