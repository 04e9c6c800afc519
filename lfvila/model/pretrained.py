"""Saving and loading trained models: a directory with `model.safetensors` (the bare model's
state dict) and `config.yaml` (the root `Config` that builds it).

- `save_pretrained(model, cfg, directory, dtype)` writes both files atomically (temporary file in
  the same directory, fsync, rename, fsync of the directory), so a crash leaves either the old
  file or the new one, never a torn one. Floating tensors are cast to `dtype`; integer buffers
  (`relative_position_index`, `position_ids`) are kept. The safetensors metadata records the
  dtype and the lfvila version.
- `from_pretrained(path, config=None)` builds the model from the config with `build_model` and
  loads the weights with `convert.load_weights` (cast to the model's fp32); it returns just the
  model, in eval mode. `load_pretrained_config(path)` returns the Config that goes with a path.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .._version import __version__
from ..config import Config, dump_config, load_config

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.yaml"


def _fsync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(target: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` to a temporary file beside `target`, fsync it, then rename it over `target`."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        with open(tmp_path, "rb") as f:  # the writer has closed (flushed) it: make it durable
            os.fsync(f.fileno())
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    _fsync_directory(target.parent)


def _bare(model: nn.Module) -> nn.Module:
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return model.module
    return model


def save_pretrained(
    model: nn.Module, cfg: Config, directory: str | Path, dtype: torch.dtype = torch.float32
) -> Path:
    """Write `directory/model.safetensors` and `directory/config.yaml`; returns the weights path.

    Args:
        model: the model `build_model(cfg)` builds (a DDP/DataParallel wrapper is unwrapped).
        cfg: the root Config; `from_pretrained` rebuilds the model from it.
        dtype: floating tensors are cast to it (fp32, bf16 or fp16); integer buffers are kept.
    Tensors that share storage (`cls.predictions.decoder.bias` is `cls.predictions.bias`) are
    written as separate copies: safetensors refuses shared tensors, and loading into the built
    model restores the sharing (the model ties them itself).
    """
    from safetensors.torch import save_file

    if not isinstance(cfg, Config):
        raise TypeError(f"save_pretrained: cfg must be a root Config, got {type(cfg).__name__}")
    if not dtype.is_floating_point:
        raise ValueError(f"save_pretrained: dtype must be a floating dtype, got {dtype}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for key, value in _bare(model).state_dict().items():
        target = dtype if value.is_floating_point() else value.dtype
        # copy=True: one tensor per key, even where the model shares storage or dtype matches
        tensors[key] = value.detach().to("cpu", target, copy=True).contiguous()
    metadata = {"format": "pt", "dtype": str(dtype).removeprefix("torch."),
                "lfvila_version": __version__}  # fmt: skip
    weights = directory / WEIGHTS_NAME
    _write_atomic(weights, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    _write_atomic(directory / CONFIG_NAME, lambda tmp: tmp.write_text(dump_config(cfg)))
    return weights


def _locate(path: str | Path) -> tuple[Path, Path | None]:
    """(weights file, config.yaml beside it or None) for a run directory or a .safetensors file."""
    path = Path(path)
    if path.is_dir():
        weights = path / WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"{path}: directory holds no {WEIGHTS_NAME}")
    elif path.is_file():
        if path.suffix != ".safetensors":
            raise ValueError(f"{path}: expected a run directory or a .safetensors file")
        weights = path
    else:
        raise FileNotFoundError(f"{path}: no such file or directory")
    beside = weights.parent / CONFIG_NAME
    return weights, beside if beside.is_file() else None


def load_pretrained_config(path: str | Path, config: Config | str | Path | None = None) -> Config:
    """The Config for a run directory or a .safetensors file: `config` when given (a Config or a
    YAML path), else the `config.yaml` beside the weights."""
    weights, beside = _locate(path)
    if isinstance(config, Config):
        return config
    if config is not None:
        config = Path(config)
        if not config.is_file():
            raise FileNotFoundError(f"{config}: config file not found")
        return load_config(config)
    if beside is None:
        raise FileNotFoundError(
            f"{path}: no {CONFIG_NAME} beside {weights.name}; pass config= (a Config or YAML path)"
        )
    return load_config(beside)


def from_pretrained(
    path: str | Path,
    config: Config | str | Path | None = None,
    strict: bool = True,
    map_location: str | torch.device = "cpu",
) -> nn.Module:
    """Build the model of a saved run and load its weights; returns it in eval mode.

    Args:
        path: a run directory (model.safetensors + config.yaml) or a .safetensors file.
        config: a Config or YAML path; required for a bare .safetensors file without a
            config.yaml beside it, and it replaces a directory's config.yaml when given.
        strict: raise ValueError unless the file's keys and shapes match the model exactly.
        map_location: the device the returned model is moved to (weights are read on the CPU).
    The model holds fp32 weights whatever dtype was saved (bf16 exports load bf16-rounded). Use
    `load_pretrained_config(path)` for the Config that built it.
    """
    from safetensors.torch import load_file

    from .convert import load_weights
    from .tasks import build_model

    cfg = load_pretrained_config(path, config)
    weights, _ = _locate(path)
    model = build_model(cfg)
    try:
        load_weights(model, load_file(str(weights)), strict=strict)
    except ValueError as exc:
        raise ValueError(f"{weights}: {exc}") from None
    return model.to(map_location).eval()
