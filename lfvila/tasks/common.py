"""What every task needs from the config: resolved data paths (checked before anything is
built, errors naming the key), `DataOptions` from the model's shapes, and loaders."""

from __future__ import annotations

import logging
from pathlib import Path

from ..config import Config
from ..data import DataOptions, build_loader
from ..training.dist import World

logger = logging.getLogger(__name__)


class DataPathError(FileNotFoundError):
    """A configured data or weights path does not exist; the message names the key."""


def resolve(cfg: Config, key: str, value: str, kind: str = "any") -> Path:
    """`value` (from config key `key`) against data.root; `kind` 'file', 'dir' or 'any'.
    Raises DataPathError naming the key, the path and data.root."""
    path = Path(value).expanduser()
    if not path.is_absolute():
        root = Path(cfg.data.root).expanduser()
        if not root.is_dir():
            raise DataPathError(f"data.root: {root} is not a folder (needed for {key}={value})")
        path = root / path
    ok = {"file": path.is_file(), "dir": path.is_dir(), "any": path.exists()}[kind]
    if not ok:
        what = {"file": "file", "dir": "folder", "any": "path"}[kind]
        hint = f" (data.root={cfg.data.root})" if not Path(value).is_absolute() else ""
        raise DataPathError(f"{key}: {what} {path} not found{hint}")
    return path


def data_options(cfg: Config, mlm_probability: float = 0.0, **overrides) -> DataOptions:
    """Frames, size and text shapes from the model config; decoding from `data`."""
    v, t = cfg.model.video, cfg.model.text
    vocab = None
    if cfg.data.vocab is not None:
        vocab = str(resolve(cfg, "data.vocab", cfg.data.vocab, "file"))
    opts = dict(
        num_frames=v.num_frames,
        num_clips=v.num_clips,
        size=tuple(v.input_size),
        max_sentences=t.max_sentences,
        max_tokens=t.max_tokens,
        vocab=vocab,
        decoder="pyav",
        mlm_probability=mlm_probability,
        strict=cfg.data.strict,
        exact_frame_counts=cfg.data.exact_frame_counts,
        max_bad_fraction=cfg.data.max_bad_fraction,
        eval_on_bad_video=cfg.eval.on_bad_video,
        exclude=_exclusions(cfg),
    )
    opts.update(overrides)
    return DataOptions(**opts)


_EXCLUSIONS: dict = {}


def _exclusions(cfg: Config):
    """data.exclude read once per process (every dataset of a run shares it)."""
    if cfg.data.exclude is None:
        return None
    from ..data.datasets import ClipExclusions

    path = resolve(cfg, "data.exclude", cfg.data.exclude, "file")
    stat = path.stat()
    key = (path, stat.st_mtime_ns, stat.st_size)
    if key not in _EXCLUSIONS:
        _EXCLUSIONS[key] = ClipExclusions.from_file(path)
        logger.info("data.exclude: %d ids from %s", len(_EXCLUSIONS[key]), path)
    return _EXCLUSIONS[key]


def loader(cfg: Config, dataset, world: World, train: bool, workers: int | None = None):
    """A training loader (global-batch sampler, seed train.seed) or an evaluation one (every item
    once over the ranks, eval.batch_size)."""
    batch = cfg.train.batch_size if train or not cfg.eval.batch_size else cfg.eval.batch_size
    return build_loader(
        dataset,
        batch,
        train,
        workers=cfg.data.workers if workers is None else workers,
        rank=world.rank,
        world_size=world.world_size,
        seed=cfg.train.seed,
        decoder=cfg.data.decoder,
    )
