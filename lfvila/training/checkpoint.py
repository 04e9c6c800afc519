"""Resumable checkpoints, written atomically (STYLE.md §8).

Layout under `DIR/checkpoints/`:

    step_<N>/state.pt            model, optimiser, loss scaler (single / DDP; rank 0)
    step_<N>/deepspeed/...       DeepSpeed's own checkpoint instead (every rank writes its part)
    step_<N>/rng_rank<r>.pt      each rank's RNG states: torch CPU, CUDA, numpy, python, MTC
    step_<N>/trainer.json        step, epoch, position in the epoch, counters, world size
    latest                       the name of the newest complete checkpoint ("step_<N>")

A checkpoint is written into `.tmp_step_<N>/`, every file fsynced, then the folder is renamed
to `step_<N>` and `latest` replaced (temporary file, fsync, os.replace): a crash at any point
leaves `latest` naming a complete checkpoint. Leftover temporary folders are removed by the next
save. The newest `keep` checkpoints are kept. On several machines `DIR` must be shared.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from .dist import World

LATEST = "latest"


@dataclasses.dataclass
class TrainerState:
    """Where the run is: everything besides the engine's tensors and the RNGs."""

    step: int = 0
    """Optimiser steps taken (also the schedule's t)."""
    epoch: int = 0
    batch_in_epoch: int = 0
    """Micro-batches of `epoch` already consumed (the resumed loader skips them)."""
    samples: int = 0
    """Training samples seen over all ranks."""
    nonfinite_streak: int = 0
    nonfinite_total: int = 0
    overflow_total: int = 0
    world_size: int = 1
    global_batch: int = 0
    """batch_size x world_size: the data order depends on it, so a resume must keep it."""
    engine: str = "single"
    best: dict = dataclasses.field(default_factory=dict)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(Path(dirpath))


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def rng_state(mtc_generator: torch.Generator | None) -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "mtc": mtc_generator.get_state() if mtc_generator is not None else None,
    }
    return state


def set_rng_state(state: dict, mtc_generator: torch.Generator | None) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if mtc_generator is not None and state.get("mtc") is not None:
        mtc_generator.set_state(state["mtc"])


class CheckpointManager:
    """Saves and finds checkpoints under `run_dir/checkpoints` (every rank calls save/load)."""

    def __init__(self, run_dir: Path, world: World, keep: int = 2):
        self.root = Path(run_dir) / "checkpoints"
        self.world, self.keep = world, keep

    def latest(self) -> Path | None:
        """The newest complete checkpoint, or None."""
        pointer = self.root / LATEST
        if not pointer.is_file():
            return None
        path = self.root / pointer.read_text().strip()
        if not (path / "trainer.json").is_file():
            raise FileNotFoundError(f"{pointer} names {path.name}, which is not a checkpoint")
        return path

    def save(self, engine, state: TrainerState, mtc_generator, config_text: str) -> Path:
        name = f"step_{state.step}"
        tmp, final = self.root / f".tmp_{name}", self.root / name
        if self.world.is_main:
            self.root.mkdir(parents=True, exist_ok=True)
            for stale in self.root.glob(".tmp_*"):
                shutil.rmtree(stale, ignore_errors=True)
            tmp.mkdir()
        self.world.barrier()
        engine.save(tmp)
        torch.save(rng_state(mtc_generator), tmp / f"rng_rank{self.world.rank}.pt")
        self.world.barrier()
        if self.world.is_main:
            (tmp / "config.yaml").write_text(config_text)
            (tmp / "trainer.json").write_text(json.dumps(dataclasses.asdict(state), indent=1))
            _fsync_tree(tmp)
            if final.exists():  # the same step saved again (a stop right after a save)
                shutil.rmtree(final)
            os.replace(tmp, final)
            fsync_dir(self.root)
            write_text_atomic(self.root / LATEST, name + "\n")
            self._rotate(keep_name=name)
        self.world.barrier()
        return final

    def _rotate(self, keep_name: str) -> None:
        steps = sorted(
            (p for p in self.root.glob("step_*") if p.is_dir() and p.name[5:].isdigit()),
            key=lambda p: int(p.name[5:]),
        )
        for old in steps[: max(0, len(steps) - self.keep)]:
            if old.name != keep_name:
                shutil.rmtree(old, ignore_errors=True)

    def load(self, path: Path, engine, mtc_generator) -> TrainerState:
        """Restore the engine, this rank's RNGs and the trainer state from `path`."""
        data = json.loads((path / "trainer.json").read_text())
        state = TrainerState(**data)
        engine.load(path)
        rng_file = path / f"rng_rank{self.world.rank}.pt"
        if rng_file.is_file():
            set_rng_state(torch.load(rng_file, weights_only=False), mtc_generator)
        return state
