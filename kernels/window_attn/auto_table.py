"""`auto`'s measured table for window attention: (GPU, dtype, window tokens) -> backend.

The fastest route depends on the window: on the 2026-12-04 H200 run the fused kernel was 3x
every PyTorch route at 30 and 60 tokens and slower than SDPA on partitioned windows from 120
tokens up (shared/PERF.md). So on a GPU `auto` asks this table first, per call.

- **The file**: `auto_table.json` beside this module, a small versioned JSON document, loaded
  once at import; `LFVILA_AUTO_TABLE=path` loads another instead (e.g. the one
  `benchmarks/gpu_check.sh` just wrote from its kernel table, `benchmarks/auto_table.py`).
- **Format** (version 1): `{"format": FORMAT, "version": 1, "rule": {"fused_max_tokens": int,
  "source": str}, "devices": [{"gpu": name, "capability": "9.0" or null, "measured": date,
  "source": str, "fused_max_tokens": int or null, "entries": [{"dtype": "bfloat16", "tokens":
  int, "backend": name, "cases": [case ids], "ms": {route: fwd+bwd ms}}]}]}`.
- **Lookup**: the device section whose `gpu` is the device's name, else the first whose compute
  capability is the device's; in it, the entry of exactly (dtype, effective window tokens). No
  entry: the rule, fused ("triton") up to `fused_max_tokens` window tokens and "sdpa" above (the
  section's own threshold where it has one, else the table's: 64 from the H200 figures).

The choice is only `auto`'s first candidate: a backend that cannot run the call (Triton missing,
a head_dim it lacks) is skipped for the next one of `dispatch.PRIORITY`. Explicit `backend=` and
`LFVILA_KERNEL_BACKEND` never consult the table; CPU tensors never do (the reference).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from pathlib import Path

import torch

from .geometry import next_power_of_2

FORMAT = "lfvila window-attention auto table"
VERSION = 1
ENV = "LFVILA_AUTO_TABLE"
PACKAGED = Path(__file__).with_name("auto_table.json")
ROUTES = ("triton", "cuda", "sdpa", "reference")
FUSED_ROUTES = ("triton", "cuda")
DTYPE_NAMES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclasses.dataclass(frozen=True)
class Entry:
    """The measured winner of one (dtype, window tokens) on one GPU."""

    dtype: str
    tokens: int
    backend: str
    cases: tuple[str, ...] = ()
    """Benchmark cases measured (e.g. "L2", "L2-shift"): their times are summed in `ms`."""
    ms: tuple[tuple[str, float], ...] = ()
    """(route, forward+backward ms) pairs, fastest first."""


@dataclasses.dataclass(frozen=True)
class DeviceTable:
    gpu: str
    """torch.cuda.get_device_name(), e.g. "NVIDIA H200"."""
    capability: str | None
    """"major.minor" (e.g. "9.0"): a GPU without its own section uses one of its capability."""
    measured: str
    source: str
    fused_max_tokens: int | None
    """This GPU's rule for shapes it has no entry for (None: the table's rule)."""
    entries: tuple[Entry, ...]


@dataclasses.dataclass(frozen=True)
class AutoTable:
    fused_max_tokens: int
    """The rule for GPUs and shapes without an entry: fused up to this many tokens, sdpa above."""
    rule_source: str
    devices: tuple[DeviceTable, ...] = ()
    version: int = VERSION


@dataclasses.dataclass(frozen=True)
class AutoChoice:
    backend: str
    reason: str


# ----------------------------------------------------------------------------------------------
# Reading and writing


def _get(data: dict, key: str, kind, where: str, optional: bool = False):
    if key not in data:
        if optional:
            return None
        raise ValueError(f"{where}: missing key '{key}'")
    value = data[key]
    if value is None and optional:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        name = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ValueError(f"{where}: '{key}' must be {name}, got {value!r}")
    return value


def _entry(data, where: str) -> Entry:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: an entry must be an object, got {data!r}")
    dtype = _get(data, "dtype", str, where)
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"{where}: 'dtype' must be one of {tuple(DTYPE_NAMES)}, got {dtype!r}")
    tokens = _get(data, "tokens", int, where)
    if tokens < 1:
        raise ValueError(f"{where}: 'tokens' must be >= 1, got {tokens}")
    backend = _get(data, "backend", str, where)
    if backend not in ROUTES:
        raise ValueError(f"{where}: 'backend' must be one of {ROUTES}, got {backend!r}")
    cases = tuple(_get(data, "cases", list, where, optional=True) or ())
    ms = _get(data, "ms", dict, where, optional=True) or {}
    pairs = tuple(sorted(((str(k), float(v)) for k, v in ms.items()), key=lambda kv: kv[1]))
    return Entry(dtype, tokens, backend, tuple(str(c) for c in cases), pairs)


def parse_table(data, where: str = "auto table") -> AutoTable:
    """A table from its JSON object; errors name `where` and the key."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f'{where}: not an auto table (expected "format": "{FORMAT}")')
    version = _get(data, "version", int, where)
    if version != VERSION:
        raise ValueError(f"{where}: table version {version}; this lfvila reads version {VERSION}")
    rule = _get(data, "rule", dict, where)
    threshold = _get(rule, "fused_max_tokens", int, f"{where}: rule")
    devices = []
    for i, dev in enumerate(_get(data, "devices", list, where)):
        at = f"{where}: devices[{i}]"
        if not isinstance(dev, dict):
            raise ValueError(f"{at}: must be an object, got {dev!r}")
        entries = tuple(
            _entry(e, f"{at}.entries[{j}]") for j, e in enumerate(_get(dev, "entries", list, at))
        )
        keys = [(e.dtype, e.tokens) for e in entries]
        if len(set(keys)) != len(keys):
            raise ValueError(f"{at}: two entries for one (dtype, tokens)")
        devices.append(
            DeviceTable(
                gpu=_get(dev, "gpu", str, at),
                capability=_get(dev, "capability", str, at, optional=True),
                measured=_get(dev, "measured", str, at, optional=True) or "",
                source=_get(dev, "source", str, at, optional=True) or "",
                fused_max_tokens=_get(dev, "fused_max_tokens", int, at, optional=True),
                entries=tuple(sorted(entries, key=lambda e: (e.dtype, e.tokens))),
            )
        )
    source = _get(rule, "source", str, f"{where}: rule", optional=True) or ""
    return AutoTable(threshold, source, tuple(devices), version)


def load_table(path: str | os.PathLike) -> AutoTable:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the auto table ({exc})") from exc
    return parse_table(data, str(path))


def table_to_dict(table: AutoTable) -> dict:
    def entry(e: Entry) -> dict:
        return {"dtype": e.dtype, "tokens": e.tokens, "backend": e.backend,
                "cases": list(e.cases), "ms": dict(e.ms)}  # fmt: skip

    return {
        "format": FORMAT,
        "version": table.version,
        "rule": {"fused_max_tokens": table.fused_max_tokens, "source": table.rule_source},
        "devices": [
            {
                "gpu": d.gpu,
                "capability": d.capability,
                "measured": d.measured,
                "source": d.source,
                "fused_max_tokens": d.fused_max_tokens,
                "entries": [entry(e) for e in d.entries],
            }
            for d in table.devices
        ],  # fmt: skip
    }


def dump_table(table: AutoTable) -> str:
    return json.dumps(table_to_dict(table), indent=1) + "\n"


def fused_threshold(entries) -> int | None:
    """The rule's threshold from measured entries (of every dtype): the largest token count up
    to which every entry chose a fused route, raised to the kernels' padded window (the next
    power of two: 60 tokens run the 64-row tile, so 61-64 tokens cost the same) but below the
    first unfused entry; 0 when the smallest entry is unfused; None without entries."""
    entries = sorted(entries, key=lambda e: e.tokens)
    if not entries:
        return None
    best = 0
    for e in entries:
        if e.backend not in FUSED_ROUTES:
            return min(next_power_of_2(best), e.tokens - 1) if best else 0
        best = e.tokens
    return next_power_of_2(best)


def merge_device(table: AutoTable, device: DeviceTable) -> AutoTable:
    """`table` with `device`'s entries added (replacing those of the same GPU, dtype and tokens)
    and that GPU's threshold recomputed from all its entries."""
    others = [d for d in table.devices if d.gpu != device.gpu]
    old = next((d for d in table.devices if d.gpu == device.gpu), None)
    entries = {(e.dtype, e.tokens): e for e in (old.entries if old else ())}
    entries.update({(e.dtype, e.tokens): e for e in device.entries})
    merged = dataclasses.replace(
        device,
        entries=tuple(sorted(entries.values(), key=lambda e: (e.dtype, e.tokens))),
        fused_max_tokens=fused_threshold(entries.values()),
    )
    return dataclasses.replace(table, devices=tuple([*others, merged]))


# ----------------------------------------------------------------------------------------------
# Lookup


def _rule(tokens: int, threshold: int, why: str) -> AutoChoice:
    if tokens <= threshold:
        return AutoChoice("triton", f"rule: {tokens} tokens <= {threshold}, fused ({why})")
    return AutoChoice("sdpa", f"rule: {tokens} tokens > {threshold}, sdpa ({why})")


def _ms_text(entry: Entry) -> str:
    return ", ".join(f"{route} {ms:.3g}" for route, ms in entry.ms)


def lookup(
    table: AutoTable, gpu: str | None, capability: str | None, dtype: torch.dtype, tokens: int
) -> AutoChoice:
    """`auto`'s first candidate for one call and why (see the module docstring)."""
    dtype_name = str(dtype).replace("torch.", "")
    section = next((d for d in table.devices if gpu is not None and d.gpu == gpu), None)
    via = ""
    if section is None and capability is not None:
        section = next((d for d in table.devices if d.capability == capability), None)
        if section is not None:
            via = f", measured on {section.gpu} (same compute capability {capability})"
    if section is not None:
        for e in section.entries:
            if e.dtype == dtype_name and e.tokens == tokens:
                when = f"{section.measured}: " if section.measured else ""
                ms = f"; fwd+bwd ms {_ms_text(e)}" if e.ms else ""
                return AutoChoice(
                    e.backend,
                    f"table: {section.gpu} {dtype_name} {tokens} tokens -> {e.backend} "
                    f"({when}{', '.join(e.cases) or 'measured'}{ms}{via})",
                )
        if section.fused_max_tokens is not None:
            why = f"no {dtype_name} entry at {tokens} tokens; {section.gpu}'s measured threshold"
            return _rule(tokens, section.fused_max_tokens, why + via)
    where = gpu or "this device"
    why = f"no table entry for {where} {dtype_name}; fused up to {table.fused_max_tokens} tokens"
    return _rule(tokens, table.fused_max_tokens, why)


def _load_at_import() -> AutoTable:
    path = os.environ.get(ENV, "").strip()
    return load_table(path or PACKAGED)


TABLE = _load_at_import()


@functools.cache
def device_info(device_type: str, index: int) -> tuple[str | None, str | None]:
    """(GPU name, "major.minor") of a CUDA device; (None, None) for other device types."""
    if device_type != "cuda":
        return None, None
    major, minor = torch.cuda.get_device_capability(index)
    return torch.cuda.get_device_name(index), f"{major}.{minor}"


@functools.lru_cache(maxsize=256)
def explain(device_type: str, index: int, dtype: torch.dtype, tokens: int) -> AutoChoice:
    """`auto`'s first candidate on this device, from the table loaded at import."""
    gpu, capability = device_info(device_type, index)
    return lookup(TABLE, gpu, capability, dtype, tokens)


# Constants of the graph while torch.compile traces (constant arguments only): dynamo calls
# them eagerly instead of tracing the lookup.
@torch.compiler.assume_constant_result
def preferred_backend(device_type: str, index: int, dtype: torch.dtype, tokens: int) -> str:
    return explain(device_type, index, dtype, tokens).backend


@torch.compiler.assume_constant_result
def preferred_reason(device_type: str, index: int, dtype: torch.dtype, tokens: int) -> str:
    return explain(device_type, index, dtype, tokens).reason
