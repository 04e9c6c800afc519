"""Feature index files: what `lfvila encode` writes and `lfvila search` reads.

An index is one safetensors file (readable by any safetensors reader) holding:

| tensor       | dtype   | shape    | content                                                     |
|--------------|---------|----------|-------------------------------------------------------------|
| `features`   | float32 | (N, P)   | L2-normalised features, row i of id i                       |
| `id_offsets` | int64   | (N + 1,) | id i is `ids[id_offsets[i]:id_offsets[i + 1]]`              |
| `ids`        | uint8   | (bytes,) | the N ids, UTF-8, back to back                              |
| `failed`     | uint8   | (bytes,) | JSON lines {id, path, kind, reason} of the inputs skipped   |

and string metadata: `lfvila_index` (format version "1"), `kind` ("video" or "text"), `count`,
`dim`, `model` (the weights' fingerprint), `weights` (their path when written), `frames`,
`size`, `lfvila_version`. Ids are tensors, not metadata, because safetensors caps its JSON
header at 100 MB: 10M ids do not fit there.

Files are written streaming (`write_index`: a header, then the rows chunk by chunk; a 10M x 1024
index never sits in memory) into a temporary file that is renamed over the target. `Index` reads
the small tensors and streams `features` in row slices (`chunks`).
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

FORMAT = "1"
DTYPES = {torch.float32: "F32", torch.int64: "I64", torch.uint8: "U8"}


def _blob(strings: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
    encoded = [s.encode("utf-8") for s in strings]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    return offsets, np.frombuffer(b"".join(encoded), dtype=np.uint8)


def write_index(
    path: str | os.PathLike,
    rows: Iterable[torch.Tensor],
    count: int,
    dim: int,
    ids: list[str],
    failed: list[dict] = (),
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write an index atomically (a temporary file beside `path`, then a rename).

    Args:
        rows: float32 blocks (n_j, dim) whose n_j add up to `count`, in id order; they are
            written as they come.
        ids: `count` distinct strings; failed: dicts {id, path, kind, reason}.
        metadata: extra string metadata (kind, model, weights, ...).
    """
    path = Path(path)
    if len(ids) != count:
        raise ValueError(f"{path}: {len(ids)} ids for {count} rows")
    offsets, id_bytes = _blob(ids)
    failed_bytes = np.frombuffer(
        "".join(json.dumps(f) + "\n" for f in failed).encode("utf-8"), dtype=np.uint8
    )
    meta = {"format": "pt", "lfvila_index": FORMAT, "count": str(count), "dim": str(dim)}
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    layout = [  # 8-byte aligned first: the header is padded to 8, features follow id_offsets
        ("id_offsets", "I64", [count + 1], offsets.nbytes),
        ("features", "F32", [count, dim], count * dim * 4),
        ("ids", "U8", [len(id_bytes)], id_bytes.nbytes),
        ("failed", "U8", [len(failed_bytes)], failed_bytes.nbytes),
    ]
    header, at = {"__metadata__": meta}, 0
    for name, dtype, shape, nbytes in layout:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [at, at + nbytes]}
        at += nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<Q", len(text)))
            f.write(text)
            f.write(offsets.tobytes())
            written = 0
            for block in rows:
                block = block.detach().to("cpu", torch.float32).contiguous()
                if block.dim() != 2 or block.shape[1] != dim:
                    raise ValueError(f"{path}: a block of {tuple(block.shape)}, not (n, {dim})")
                f.write(block.numpy().tobytes())
                written += block.shape[0]
            if written != count:
                raise ValueError(f"{path}: {written} rows written, {count} announced")
            f.write(id_bytes.tobytes())
            f.write(failed_bytes.tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class Index:
    """A feature index file opened for reading: metadata, ids and failures in memory, features
    streamed in row slices."""

    def __init__(self, path: str | os.PathLike):
        from safetensors import safe_open

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"--index: {self.path} not found")
        try:
            self._file = safe_open(str(self.path), framework="pt")
            self.metadata = dict(self._file.metadata() or {})
        except Exception as exc:  # safetensors raises its own error types
            raise ValueError(f"{self.path}: not a safetensors file ({exc})") from None
        if self.metadata.get("lfvila_index") != FORMAT:
            raise ValueError(f"{self.path}: not an lfvila index (no lfvila_index metadata)")
        self._offsets = self._file.get_tensor("id_offsets").numpy()
        self._id_bytes = self._file.get_tensor("ids").numpy().tobytes()
        self.count = len(self._offsets) - 1
        shape = self._file.get_slice("features").get_shape()
        self.dim = int(shape[1])

    def __len__(self) -> int:
        return self.count

    @property
    def kind(self) -> str:
        return self.metadata.get("kind", "video")

    def id(self, row: int) -> str:
        a, b = self._offsets[row], self._offsets[row + 1]
        return self._id_bytes[a:b].decode("utf-8")

    @property
    def ids(self) -> list[str]:
        return [self.id(i) for i in range(self.count)]

    @property
    def failed(self) -> list[dict]:
        text = self._file.get_tensor("failed").numpy().tobytes().decode("utf-8")
        return [json.loads(line) for line in text.splitlines() if line]

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """features[start:stop], (stop - start, P) float32, read from disk."""
        return self._file.get_slice("features")[start:stop]

    def chunks(self, rows: int) -> Iterator[tuple[int, torch.Tensor]]:
        """(first row, features block of at most `rows` rows), in order."""
        if rows < 1:
            raise ValueError(f"chunk rows must be >= 1, got {rows}")
        for start in range(0, self.count, rows):
            yield start, self.rows(start, min(start + rows, self.count))

    def features(self) -> torch.Tensor:
        """All features, (N, P) float32 (in memory: small indices and tests)."""
        return self.rows(0, self.count)
