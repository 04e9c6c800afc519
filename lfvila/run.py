"""The jobs behind the command line: pre-train (`lfvila pretrain`) and evaluate weights
(`lfvila evaluate`). Each builds, from one config, the process group, data, model, optimiser and
engine, then runs the one loop of `lfvila.training.loop`; `lfvila demo` runs `pretrain` on the
generated demo data.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import shlex
import time
from pathlib import Path

import numpy as np
import torch

from .config import Config, dump_config, load_config, to_dict
from .training.checkpoint import CheckpointManager, TrainerState, write_text_atomic
from .training.dist import World
from .training.engine import (
    InferenceEngine,
    build_engine,
    prepare_deepspeed_env,
    resolve_engine,
)
from .training.loop import RunSettings, StepContext, evaluate, train
from .training.metrics import setup_logging
from .training.optim import LRSchedule, build_optimizer, freeze_excluded

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


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _config_paths(config_path) -> list:
    if config_path is None:
        return []
    return list(config_path) if isinstance(config_path, (list, tuple)) else [config_path]


def default_run_dir(config_path, name: str = "run") -> Path:
    """runs/<stem of the (first) config>."""
    paths = _config_paths(config_path)
    return Path("runs") / (Path(paths[0]).stem if paths else name)


def build_initialised_model(cfg: Config, log: bool = True):
    """`build_model(cfg)` with init.swin / init.bert / init.weights loaded (SPEC §8.1 order)."""
    from .model import build_model
    from .model.convert import initialise
    from .tasks.pretrain import init_paths

    paths = init_paths(cfg)
    model = build_model(cfg)
    if any(paths.values()):
        reports = initialise(model, paths["swin"], paths["bert"], paths["weights"], cfg.init.strict)
        for name, report in reports.items():
            key = "weights" if name == "lfvila" else name
            if log:
                logger.info("init.%s %s: %s", key, paths[key], _summary(report, name))
    return model


def _summary(report, part: str, shown: int = 6) -> str:
    """One line of a LoadReport (or TransferReport); for BERT only the text encoder's keys count
    as missing."""
    extra = ""
    if hasattr(report, "dropped"):
        if report.dropped:
            extra += f"; {len(report.dropped)} pre-training-only tensors left out"
        if report.new:
            extra += "; new heads: " + ", ".join(sorted({k.rsplit(".", 1)[0] for k in report.new}))
        report = report.report
    missing = report.missing
    if part == "bert":
        missing = [k for k in missing if k.startswith("text_encoder.bert.")]
    text = f"loaded {report.loaded} tensors"
    for label, keys in (
        ("missing", missing),
        ("unexpected", report.unexpected),
        ("shape mismatch", [k for k, _, _ in report.mismatched]),
    ):
        if keys:
            more = f", ... ({len(keys)} in all)" if len(keys) > shown else ""
            text += f"; {label}: " + ", ".join(keys[:shown]) + more
    return text + extra


def _config_changes(saved: dict, now: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _config_changes(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def resume_command(
    config_path, run_dir: Path, overrides, world: World, command: str = "pretrain"
) -> str:
    parts = ["lfvila", command]
    if world.distributed:
        parts = ["torchrun", f"--nproc_per_node={world.world_size}", "-m", "lfvila", command]
    for path in _config_paths(config_path):
        parts += ["--config", str(path)]
    parts += ["--output-dir", str(run_dir), "--resume", *overrides]
    return shlex.join(parts)


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
    from .tasks import build_task, headline_metric

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
        checkpoints = CheckpointManager(run_dir, world, cfg.train.keep_checkpoints)
        latest = checkpoints.latest() if (run_dir / "checkpoints").exists() else None
        if resume and latest is None:
            raise FileNotFoundError(f"--resume: no checkpoint in {run_dir / 'checkpoints'}")
        if not resume and latest is not None:
            raise FileExistsError(
                f"{run_dir} already holds checkpoints ({latest.name}): pass --resume to continue "
                "that run, or choose another --output-dir"
            )
        if latest is not None:
            saved = load_config(latest / "config.yaml")
            for change in _config_changes(to_dict(saved), to_dict(cfg)):
                logger.warning("config differs from the checkpoint's: %s", change)
        seed_all(cfg.train.seed)  # the same model initialisation on every rank
        task, train_loader, evaluations = build_task(cfg, world)
        model = build_initialised_model(cfg, log=world.is_main)
        frozen = freeze_excluded(model, cfg.model.freeze_pooler)
        optimizer = build_optimizer(model, cfg.train, cfg.model.freeze_pooler)
        n_train = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
        engine = build_engine(engine_name, model, optimizer, cfg.train, world)
        steps_per_epoch = len(train_loader) // cfg.train.grad_accum
        if steps_per_epoch == 0:
            raise ValueError(
                f"an epoch has {len(train_loader)} batches, fewer than train.grad_accum "
                f"{cfg.train.grad_accum}"
            )
        total = cfg.train.max_steps or cfg.train.epochs * steps_per_epoch
        mtc_generator = torch.Generator().manual_seed(cfg.train.seed)
        state = TrainerState(
            world_size=world.world_size,
            global_batch=cfg.train.batch_size * world.world_size,
            engine=engine_name,
        )
        if latest is not None:
            state = checkpoints.load(latest, engine, mtc_generator)
            if state.global_batch != cfg.train.batch_size * world.world_size:
                raise ValueError(
                    f"{latest} was trained with a global batch of {state.global_batch} "
                    f"(batch_size x processes); this run has {cfg.train.batch_size} x "
                    f"{world.world_size}: the data order would not continue"
                )
            logger.info(
                "resumed from %s: step %d, epoch %d, batch %d of the epoch",
                latest,
                state.step,
                state.epoch,
                state.batch_in_epoch,
            )
        else:
            seed_all(cfg.train.seed + world.rank)  # dropout differs across ranks
        config_text = dump_config(cfg)
        if world.is_main:
            write_text_atomic(run_dir / "config.yaml", config_text)
            logger.info(
                "run %s: engine %s, %s, %d process(es) on %s, %d trainable parameters (%d "
                "left out: frozen or unused), %d steps (%d per epoch), global batch %d",
                run_dir,
                engine_name,
                engine.precision,
                world.world_size,
                world.device,
                n_train,
                len(frozen),
                total,
                steps_per_epoch,
                cfg.train.batch_size * world.world_size * cfg.train.grad_accum,
            )
        from .training.kernel_check import run_kernel_self_check

        run_kernel_self_check(engine.module, cfg, engine, world)  # before any step
        from .training import compile as regional

        if regional.compile_enabled(cfg.train.compile, world.device):
            counts = regional.compile_blocks(engine.module)
            logger.info(
                "torch.compile: %d video blocks and %d text layers (regional; each compiles at "
                "its first call; train.compile=false turns it off)",
                counts["video"], counts["text"],
            )  # fmt: skip
        from .model.flops import flops_per_sample, peak_tflops

        peak = None
        if world.device.type == "cuda":
            tflops = peak_tflops(torch.cuda.get_device_name(world.device))
            peak = tflops * 1e12 if tflops else None
        settings = RunSettings(
            run_dir=run_dir,
            total_steps=total,
            steps_per_epoch=steps_per_epoch,
            schedule=LRSchedule.from_config(cfg.train, steps_per_epoch, total),
            grad_accum=cfg.train.grad_accum,
            log_every=cfg.train.log_every,
            eval_every=cfg.train.eval_every,
            checkpoint_every=cfg.train.checkpoint_every,
            max_nonfinite=cfg.train.max_nonfinite,
            eval_before=cfg.eval.before_training,
            config_text=config_text,
            resume_hint=resume_command(config_path, run_dir, overrides, world, command),
            flops_per_sample=flops_per_sample(cfg.model),
            peak_flops=peak,
            headline=headline_metric(cfg, evaluations),
        )

        def export_best(weights: dict, step: int, results: dict) -> None:
            if world.is_main:
                _export_best(cfg, engine, weights, run_dir, export_dtype, step, results, settings)

        settings.on_best = export_best
        ctx = StepContext(world, world.group, mtc_generator)
        history = []

        def record(step, results):
            history.append((step, results))
            if on_eval is not None:
                on_eval(step, results)

        def eval_ctx():
            return StepContext(world, None, torch.Generator().manual_seed(cfg.train.seed))

        stopped = train(
            engine,
            task,
            train_loader,
            evaluations,
            settings,
            checkpoints,
            state,
            ctx,
            eval_ctx,
            record,
        )
        final = history[-1][1] if history else {}
        failures = _failure_summary(train_loader, world)
        if stopped is None:
            latest = checkpoints.latest()
            weights = engine.export_state_dict(latest)
            if world.is_main:
                _export(cfg, engine, weights, run_dir, export_dtype)
                write_text_atomic(
                    run_dir / "metrics.json",
                    json.dumps(_with_skipped(final, evaluations), indent=1) + "\n",
                )
                logger.info(
                    "done: %d steps in %.0f s (%d samples); %d non-finite steps skipped%s; %s; "
                    "weights %s",
                    state.step,
                    time.time() - start,
                    state.samples,
                    state.nonfinite_total,
                    f", {state.overflow_total} loss-scale overflows"
                    if state.overflow_total
                    else "",
                    failures,
                    run_dir / "model.safetensors",
                )
        return RunResult(run_dir, state, stopped, final, history, time.time() - start)
    finally:
        world.shutdown()


def _with_skipped(results: dict, evaluations: list) -> dict:
    """metrics.json: the results, and under 'skipped_items' the evaluation items left out or
    served as zeros for unreadable videos (eval.on_bad_video=skip) and how they were counted."""
    from .tasks.eval_data import skipped_report

    report = skipped_report(evaluations)
    return {**results, "skipped_items": report} if report else results


def _export(cfg, engine, weights: dict, run_dir: Path, dtype: str) -> None:
    """The bare model's weights to run_dir/model.safetensors beside config.yaml."""
    from .model.pretrained import save_pretrained
    from .training.engine import DTYPES

    module = engine.module
    if any(v.dtype != torch.float32 for v in module.state_dict().values() if v.is_floating_point()):
        from .model import build_model

        module = build_model(cfg)  # DeepSpeed fp16/bf16: rebuild in fp32 from its fp32 weights
        module.load_state_dict({k: v.cpu() for k, v in weights.items()})
    save_pretrained(module, cfg, run_dir, dtype=DTYPES[dtype])


def _export_best(cfg, engine, weights, run_dir: Path, dtype, step, results, settings) -> None:
    """run_dir/best/{model.safetensors, config.yaml, metrics.json}, replaced as a whole: written
    into a temporary folder first, so that a crash leaves the previous best intact."""
    import shutil

    best, tmp, old = run_dir / "best", run_dir / ".best.tmp", run_dir / ".best.old"
    shutil.rmtree(tmp, ignore_errors=True)
    _export(cfg, engine, weights, tmp, dtype)
    name, metric, _ = settings.headline
    header = {"step": step, "metric": f"{name}/{metric}", "value": results[name][metric]}
    (tmp / "metrics.json").write_text(json.dumps({**header, **results}, indent=1) + "\n")
    shutil.rmtree(old, ignore_errors=True)
    if best.exists():
        os.replace(best, old)
    os.replace(tmp, best)
    shutil.rmtree(old, ignore_errors=True)


def _failure_summary(loader, world: World) -> str:
    """The replaced items and the failed decodes of every rank (`replacement_summary`)."""
    from .data import FAILURE_KINDS, replacement_summary

    local = [float(loader.replaced_counts.get(k, 0)) for k in FAILURE_KINDS]
    local += [float(loader.failure_counts.get(k, 0)) for k in FAILURE_KINDS]
    local.append(float(loader.replaced_known))
    counts = world.sum(torch.tensor(local)).tolist()
    n = len(FAILURE_KINDS)
    replaced = dict(zip(FAILURE_KINDS, counts[:n]))
    decodes = dict(zip(FAILURE_KINDS, counts[n : 2 * n]))
    return replacement_summary(replaced, int(counts[-1]), decodes)


def load_weights_any(model, path: str | Path, strict: bool = True, allow_new_heads: bool = False):
    """A run directory (model.safetensors), our .safetensors, or an original-layout LF-VILA
    checkpoint (.bin/.pth/.pt, `module.` prefix allowed) into `model`; returns the report. A
    task model takes pre-training weights less the heads it has no use for
    (`lfvila.model.convert.load_task_weights`); its own heads must be in the file unless
    `allow_new_heads`."""
    from .model.convert import from_original, load_task_weights, load_weights, read_checkpoint

    path = Path(path)
    if path.is_dir():
        if not (path / "model.safetensors").is_file():
            raise FileNotFoundError(f"--weights: {path} holds no model.safetensors")
        path = path / "model.safetensors"
    state = from_original(read_checkpoint(path))
    if getattr(getattr(model, "cfg", None), "task", "pretrain") == "pretrain":
        return load_weights(model, state, strict=strict)
    return load_task_weights(model, state, strict=strict, allow_new_heads=allow_new_heads)


def finetune(
    cfg: Config,
    run_dir: str | Path,
    weights: str | Path | None = None,
    resume: bool = False,
    export_dtype: str = "fp32",
    config_path: str | Path | None = None,
    overrides: tuple[str, ...] = (),
    on_eval=None,
) -> RunResult:
    """Fine-tune `cfg`'s downstream task from `weights` (a pre-training or task run directory,
    a model.safetensors, or an original LF-VILA checkpoint; None: init.weights, or random
    weights when that is null), with every pre-training feature of the loop; the best
    evaluation by eval.metric goes to run_dir/best."""
    if cfg.model.task == "pretrain":
        raise ValueError("model.task is 'pretrain': use `lfvila pretrain` for pre-training")
    if weights is not None:
        path = Path(weights).expanduser().resolve()
        if not path.exists():
            raise FileNotFoundError(f"--weights: {weights} not found")
        cfg = dataclasses.replace(cfg, init=dataclasses.replace(cfg.init, weights=str(path)))
        overrides = (*overrides, f"init.weights={path}")  # the resume command repeats it
    if cfg.init.weights is None and not resume:
        logger.warning("fine-tuning from random weights (no --weights, init.weights is null)")
    return pretrain(
        cfg, run_dir, resume, export_dtype, config_path, overrides, on_eval, command="finetune"
    )


def evaluate_weights(cfg: Config, weights: str | Path, run_dir: str | Path) -> dict:
    """The task's evaluations of `weights`, written to run_dir/metrics.json."""
    from .model import build_model
    from .tasks import build_task

    run_dir = Path(run_dir)
    world = World.from_env(cfg.train.device)
    world.init()
    try:
        setup_logging(run_dir, world.is_main)
        _, _, evaluations = build_task(cfg, world, train=False)
        if not evaluations:
            raise ValueError("nothing to evaluate: set data.val_retrieval and/or data.val")
        model = build_model(cfg)
        report = load_weights_any(model, weights, strict=True)
        logger.info("weights %s: %s", weights, _summary(report, "weights"))

        from .training.kernel_check import run_kernel_self_check

        engine = InferenceEngine(model, world)
        run_kernel_self_check(engine.module, cfg, engine, world)  # before any evaluation
        ctx = StepContext(world, None, torch.Generator().manual_seed(cfg.train.seed))
        results = evaluate(engine, evaluations, ctx)
        if world.is_main:
            for name, metrics in results.items():
                logger.info("%s: %s", name, ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
            out = _with_skipped(results, evaluations)
            write_text_atomic(run_dir / "metrics.json", json.dumps(out, indent=1) + "\n")
        return results
    finally:
        world.shutdown()
