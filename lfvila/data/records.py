"""Annotation records in two flat numpy arrays: the UTF-8 JSON of every record back to back in
one uint8 buffer, and int64 offsets into it. A record is decoded when it is asked for.

Why: LF-VILA-8M has 8.5M pre-training records (SPEC §10.1). As Python lists of dicts they take
~2.7 kB each, ~21 GiB per process, and a forked DataLoader worker that merely reads a record
writes its reference counts, so the pages it touches are copied: every worker grows towards
its own copy. Two numpy arrays are two objects; reading a record only reads their buffers, so
forked workers share the pages (measured in BENCHMARKS.md, "Annotations at scale"). Pickling
(spawned workers) copies two arrays, not millions of objects. Arrow would do the same with a
dependency; two arrays are enough for records that are read whole.
"""

from __future__ import annotations

import array
import json
import math
import operator
from collections.abc import Iterable, Sequence

import numpy as np


def _constant(name: str):
    """JSON's NaN is a float NaN (How2QA's spans); Infinity and -Infinity read as None."""
    return math.nan if name == "NaN" else None


_DECODER = json.JSONDecoder(parse_constant=_constant)  # json.loads(..., kw) builds one a call


def loads(text: str | bytes):
    """One record from its JSON (NaN allowed)."""
    return _DECODER.decode(text.decode("utf-8") if isinstance(text, bytes) else text)


def dumps(record) -> bytes:
    """The compact UTF-8 JSON of one record (what `loads` reads back)."""
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class RecordTable(Sequence):
    """A read-only sequence of JSON records: `len`, `table[i]` (negative too; IndexError past
    the end), iteration, slices (a list). `where(i)` names the record for error messages.

    data: (B,) uint8, the records' JSON back to back; offsets: (N + 1,) int64, record i is
    data[offsets[i]:offsets[i + 1]]. Build one with `RecordTableBuilder` (streaming) or
    `from_records`."""

    def __init__(self, data: np.ndarray, offsets: np.ndarray, source: str | None = None):
        if data.dtype != np.uint8 or data.ndim != 1:
            raise ValueError(f"data must be a 1-D uint8 array, got {data.dtype} {data.shape}")
        if offsets.dtype != np.int64 or offsets.ndim != 1 or len(offsets) < 1:
            raise ValueError(f"offsets must be a non-empty 1-D int64 array, got {offsets.shape}")
        if offsets[0] < 0 or offsets[-1] > len(data) or np.any(np.diff(offsets) < 0):
            raise ValueError("offsets must be non-decreasing and lie inside data")
        self.data, self.offsets, self.source = data, offsets, source

    @classmethod
    def from_records(cls, records: Iterable, source: str | None = None) -> RecordTable:
        """A table of the records' JSON (streamed: the iterable is read once)."""
        builder = RecordTableBuilder(source=source)
        for record in records:
            builder.append(dumps(record))
        return builder.build()

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def raw(self, index: int) -> bytes:
        """Record `index`'s JSON bytes."""
        n = len(self)
        i = operator.index(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"record index {index} out of range for {n} records")
        return self.data[self.offsets[i] : self.offsets[i + 1]].tobytes()

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return loads(self.raw(index))

    def where(self, index: int) -> str:
        return f"{self.source or 'records'}, record {index}"

    @property
    def nbytes(self) -> int:
        """Bytes held: the buffer and the offsets."""
        return self.data.nbytes + self.offsets.nbytes

    def __repr__(self) -> str:
        return f"RecordTable({len(self)} records, {self.nbytes / 2**20:.1f} MiB, {self.source})"


class RecordTableBuilder:
    """Appends records' JSON bytes to a buffer that grows geometrically (or is sized once by
    `capacity`, e.g. the file's size for the lines of a JSONL file); no object per record is
    kept. `build()` trims the buffer in place and returns the table."""

    def __init__(self, capacity: int = 1 << 20, source: str | None = None):
        self._data = np.empty(max(int(capacity), 1), dtype=np.uint8)
        self._size = 0
        self._ends = array.array("q")
        self.source = source

    def append(self, raw: bytes) -> None:
        end = self._size + len(raw)
        if end > len(self._data):
            grown = np.empty(max(end, 2 * len(self._data)), dtype=np.uint8)
            grown[: self._size] = self._data[: self._size]
            self._data = grown
        self._data[self._size : end] = np.frombuffer(raw, dtype=np.uint8)
        self._size = end
        self._ends.append(end)

    def __len__(self) -> int:
        return len(self._ends)

    def build(self) -> RecordTable:
        data, self._data = self._data, np.empty(0, dtype=np.uint8)
        data.resize(self._size, refcheck=False)  # in place (realloc): no second copy
        offsets = np.zeros(len(self._ends) + 1, dtype=np.int64)
        offsets[1:] = np.frombuffer(self._ends, dtype=np.int64)
        self._ends = array.array("q")
        return RecordTable(data, offsets, self.source)
