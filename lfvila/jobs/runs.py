"""The run folder of a job: where it goes by default, whether it starts fresh or continues from
its newest checkpoint, and the command that resumes it."""

from __future__ import annotations

import logging
import shlex
from pathlib import Path

from ..config import Config, load_config, to_dict
from ..training.checkpoint import CheckpointManager
from ..training.dist import World

logger = logging.getLogger("lfvila")


def _config_paths(config_path) -> list:
    if config_path is None:
        return []
    return list(config_path) if isinstance(config_path, (list, tuple)) else [config_path]


def default_run_dir(config_path, name: str = "run") -> Path:
    """runs/<stem of the (first) config>."""
    paths = _config_paths(config_path)
    return Path("runs") / (Path(paths[0]).stem if paths else name)


def config_changes(saved: dict, now: dict, prefix: str = "") -> list[str]:
    """'key: old -> new' for every dotted key whose value differs between two config dicts."""
    out = []
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_changes(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def open_run(
    cfg: Config, run_dir: Path, world: World, resume: bool
) -> tuple[CheckpointManager, Path | None]:
    """The run's CheckpointManager and the checkpoint to continue from (None: a fresh run).
    `--resume` needs a checkpoint; a fresh run refuses a folder that holds one. Every config key
    that differs from the checkpoint's is logged as a warning."""
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
        for change in config_changes(to_dict(saved), to_dict(cfg)):
            logger.warning("config differs from the checkpoint's: %s", change)
    return checkpoints, latest


def resume_command(
    config_path, run_dir: Path, overrides, world: World, command: str = "pretrain"
) -> str:
    """The command line that continues this run (printed when a signal stops it)."""
    parts = ["lfvila", command]
    if world.distributed:
        parts = ["torchrun", f"--nproc_per_node={world.world_size}", "-m", "lfvila", command]
    for path in _config_paths(config_path):
        parts += ["--config", str(path)]
    parts += ["--output-dir", str(run_dir), "--resume", *overrides]
    return shlex.join(parts)
