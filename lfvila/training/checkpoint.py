"""Resumable checkpoints, written atomically (STYLE.md §8).

Layout under `DIR/checkpoints/`:

    step_<N>/state.pt            model, optimiser, loss scaler (single / DDP; rank 0)
    step_<N>/deepspeed/...       DeepSpeed's own checkpoint instead (every rank writes its part)
    step_<N>/rng_rank<r>.json    each rank's RNG states (torch CPU, CUDA, numpy, python, MTC):
    step_<N>/rng_rank<r>.tensors.pt   their scalars as JSON and their arrays as plain tensors
    step_<N>/trainer.json        step, epoch, position in the epoch, counters, world size
    latest                       the name of the newest complete checkpoint ("step_<N>")

A checkpoint is written into `.tmp_step_<N>/`, every file fsynced, then the folder is renamed
to `step_<N>` and `latest` replaced (temporary file, fsync, os.replace): a crash at any point
leaves `latest` naming a complete checkpoint. Leftover temporary folders are removed by the next
save. The newest `keep` checkpoints are kept. On several machines `DIR` must be shared.

Nothing is unpickled on resume: tensors are read with `torch.load(..., weights_only=True)` and
the rest is JSON, so a run folder from someone else cannot run code (DeepSpeed's own checkpoint,
which DeepSpeed loads, aside). The previous RNG format (`rng_rank<r>.pt`, a pickled dict holding
numpy arrays) is still read, under the same restriction with numpy's array type allowed;
anything else in it is refused with a message saying what to do (`legacy_rng_state`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import random
import re
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


RNG_FORMAT = 2
"""Version of the RNG files: 2 = JSON + tensors; the pickled dict before it had none."""


def rng_files(directory: Path, rank: int) -> tuple[Path, Path]:
    """(JSON, tensors) of rank `rank`'s RNG state in a checkpoint folder."""
    return directory / f"rng_rank{rank}.json", directory / f"rng_rank{rank}.tensors.pt"


def save_rng_state(state: dict, directory: Path, rank: int) -> None:
    """`rng_state()` as JSON (the scalars) and a file of plain tensors (the arrays): both read
    back without unpickling anything (`load_rng_state`)."""
    kind, keys, pos, has_gauss, cached_gaussian = state["numpy"]
    version, words, gauss_next = state["python"]
    tensors = {
        "torch": state["torch"],
        "numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "python_words": torch.tensor(words, dtype=torch.int64),
    }
    if state["mtc"] is not None:
        tensors["mtc"] = state["mtc"]
    cuda = state["cuda"]
    for i, device_state in enumerate(cuda or []):
        tensors[f"cuda.{i}"] = device_state
    meta = {
        "format": RNG_FORMAT,
        "numpy": {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached_gaussian)},
        "python": {"version": version, "gauss_next": gauss_next},
        "cuda_devices": None if cuda is None else len(cuda),
        "mtc": state["mtc"] is not None,
    }  # fmt: skip
    meta_file, tensor_file = rng_files(directory, rank)
    torch.save(tensors, tensor_file)
    meta_file.write_text(json.dumps(meta, indent=1) + "\n")


def load_rng_state(directory: Path, rank: int) -> dict | None:
    """Rank `rank`'s RNG state from a checkpoint folder as `rng_state()` returns it, or None
    when the folder has none. Reads JSON and plain tensors only (`weights_only=True`); a
    checkpoint of the previous format is read by `legacy_rng_state`."""
    meta_file, tensor_file = rng_files(directory, rank)
    if not meta_file.is_file():
        legacy = directory / f"rng_rank{rank}.pt"
        return legacy_rng_state(legacy) if legacy.is_file() else None
    try:
        meta = json.loads(meta_file.read_text())
        tensors = torch.load(tensor_file, map_location="cpu", weights_only=True)
        numpy, python = meta["numpy"], meta["python"]
        keys = tensors["numpy_keys"].numpy().astype(np.uint32)
        words = tuple(int(w) for w in tensors["python_words"].tolist())
        n_cuda = meta["cuda_devices"]
        return {
            "torch": tensors["torch"],
            "numpy": (numpy["kind"], keys, numpy["pos"], numpy["has_gauss"],
                      numpy["cached_gaussian"]),
            "python": (python["version"], words, python["gauss_next"]),
            "cuda": None if n_cuda is None else [tensors[f"cuda.{i}"] for i in range(n_cuda)],
            "mtc": tensors["mtc"] if meta["mtc"] else None,
        }  # fmt: skip
    except (OSError, RuntimeError, ValueError, KeyError, TypeError, pickle.UnpicklingError) as exc:
        raise ValueError(
            f"{directory}: unreadable RNG state of rank {rank} ({type(exc).__name__}: {exc})"
        ) from None


def _numpy_array_globals() -> list:
    """What a pickled numpy array needs besides plain data (the numpy RNG state is one)."""
    try:  # numpy >= 2; a file numpy 1.x wrote names the function numpy.core.multiarray's
        from numpy._core.multiarray import _reconstruct

        older = [(_reconstruct, "numpy.core.multiarray._reconstruct")]
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct

        older = []
    return [_reconstruct, *older, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def _why(exc: Exception) -> str:
    """The restricted unpickler's reason in a few words (torch's message is a page long)."""
    text = str(exc)
    found = re.search(r"WeightsUnpickler error: (.*?)(?:\. |\.?\n|$)", text)
    line = found.group(1) if found else (text.strip().splitlines() or [type(exc).__name__])[0]
    return line[:200]


def legacy_rng_state(path: Path) -> dict:
    """An RNG state of the previous format (`rng_rank<r>.pt`: `torch.save` of `rng_state()`),
    read with `weights_only=True` and numpy's array type allowed, so that it holds tensors,
    numpy arrays and plain values or is refused: nothing in it can run code. Refused: a
    ValueError whose one line says what to do."""
    try:
        with torch.serialization.safe_globals(_numpy_array_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not {"torch", "numpy", "python"} <= set(state):
            raise ValueError("not a dict of torch, numpy and python RNG states")
    except Exception as exc:  # noqa: BLE001 - whatever the restricted unpickler refuses
        raise ValueError(
            f"{path}: an RNG state of the previous checkpoint format that holds more than "
            f"tensors, numpy arrays and plain values ({_why(exc)}), so it is never unpickled. "
            "Delete it to resume without this rank's random streams (the data order is kept; "
            "dropout and MTC sampling then differ from an uninterrupted run), or resume from "
            "another checkpoint"
        ) from None
    return state


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
        save_rng_state(rng_state(mtc_generator), tmp, self.world.rank)
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
        rng = load_rng_state(path, self.world.rank)
        if rng is not None:
            set_rng_state(rng, mtc_generator)
        return state
