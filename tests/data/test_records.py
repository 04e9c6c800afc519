"""Annotations at 8.5M scale: records in flat buffers shared by forked workers (issue 10 item 5),
the pre-training LMDB as a lazy sequence."""

from __future__ import annotations

import json
import os
import pickle
import random
import tracemalloc

import pytest

from lfvila.config import Config
from lfvila.data import AnnotationError, DataOptions, read_jsonl
from lfvila.data.annotations import PretrainLMDB
from lfvila.data.datasets import PretrainDataset
from lfvila.data.records import RecordTable

WORDS = "the a man woman cat dog runs jumps over under quickly slowly red blue big small".split()


def synthetic_records(n: int, seed: int = 0):
    """Pre-training records of realistic size: 4-6 clips, ids like 'QMi8x8o55Ns.12.mp4',
    sentences of 10-20 words."""
    rng = random.Random(seed)
    chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"
    for _ in range(n):
        vid = "".join(rng.choice(chars) for _ in range(11))
        first = rng.randrange(100)
        yield [
            {
                "clip_id": f"{vid}.{first + k}.mp4",
                "text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 20))),
            }
            for k in range(rng.randint(4, 6))
        ]


def _write(path, records):
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return path


def test_read_jsonl_returns_a_table_that_behaves_as_a_sequence(tmp_path):
    records = list(synthetic_records(50))
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records[:10]) + "\n\n\n")
    with open(path, "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in records[10:])
    table = read_jsonl(path, "pretrain")
    assert isinstance(table, RecordTable)
    assert len(table) == 50 and table[0] == records[0] and table[-1] == records[-1]
    assert list(table) == records and table[3:6] == records[3:6]
    with pytest.raises(IndexError):
        table[50]
    # cheap to pickle: the two arrays, not an object per record
    blob = pickle.dumps(table)
    assert len(blob) < table.nbytes + 1024
    assert list(pickle.loads(blob)) == records


def test_table_memory_is_a_small_multiple_of_the_raw_bytes(tmp_path):
    """20k records: reading them peaks near the file's size (a list of dicts: ~4x) and keeps
    about the file's bytes."""
    path = _write(tmp_path / "train.jsonl", synthetic_records(20_000))
    raw = path.stat().st_size
    tracemalloc.start()
    try:
        table = read_jsonl(path, "pretrain")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(table) == 20_000
    assert table.nbytes <= raw + 8 * (len(table) + 1)
    assert peak < 1.5 * raw, (peak, raw)


def _private_growth_after_touching(records) -> int:
    """Bytes of private (copied) memory a forked child gains by reading every record."""

    def private() -> int:
        with open("/proc/self/smaps_rollup") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return sum(int(fields[k].split()[0]) * 1024 for k in ("Private_Dirty", "Private_Clean"))

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a DataLoader worker in all but name
        try:
            before = private()
            total = sum(len(c["text"]) + len(c["clip_id"]) for r in records for c in r)
            os.write(write, str((private() - before) * (total > 0)).encode())
        finally:
            os._exit(0)
    os.close(write)
    try:
        return int(os.read(read, 64).decode())
    finally:
        os.close(read)
        os.waitpid(pid, 0)


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps_rollup"), reason="needs Linux /proc")
def test_forked_workers_share_the_table():
    """Reading every record in a forked child copies (almost) nothing of the table; the same
    records as Python objects are copied as they are read (the control: the measure sees it)."""
    objects = list(synthetic_records(20_000))
    table = RecordTable.from_records(objects)
    assert _private_growth_after_touching(objects) > 0.5 * table.nbytes
    assert _private_growth_after_touching(table) < 0.1 * table.nbytes


def test_dataset_keeps_the_sequence_it_is_given(tmp_path):
    table = read_jsonl(_write(tmp_path / "a.jsonl", synthetic_records(5)), "pretrain")
    ds = PretrainDataset(table, tmp_path, True, DataOptions())
    assert ds.records is table and len(ds) == 5


@pytest.fixture
def lmdb_path(tmp_path):
    lmdb = pytest.importorskip("lmdb", reason="the optional lmdb extra is not installed")
    path = tmp_path / "train_db"
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i, record in enumerate(synthetic_records(5)):
            txn.put(str(i).encode(), repr(record).encode())
        txn.put(b"5", repr(list(synthetic_records(1, seed=9))[0][:2]).encode())
    env.close()
    return path


def test_pretrain_lmdb_is_a_lazy_sequence(lmdb_path):
    db = PretrainLMDB(lmdb_path)
    assert len(db) == 6
    records = list(db)  # iteration stops at the end (IndexError, not AnnotationError)
    assert len(records) == 6 and records[:5] == list(synthetic_records(5))
    assert db[-1] == records[-1]
    with pytest.raises(IndexError):
        db[6]
    # the environment is not pickled (DataLoader workers open their own)
    copy = pickle.loads(pickle.dumps(db))
    assert copy[2] == records[2] and len(copy) == 6


def test_pretrain_lmdb_checks_the_clip_count_on_access(lmdb_path):
    db = PretrainLMDB(lmdb_path, min_clips=4)
    assert len(db[0]) >= 4
    with pytest.raises(AnnotationError, match=r"train_db key 5: 2 clips, fewer than the 4"):
        db[5]


def test_pretrain_records_do_not_list_the_lmdb(lmdb_path):
    from lfvila.tasks.pretrain import _pretrain_records

    cfg = Config()
    records = _pretrain_records(cfg, "data.train", str(lmdb_path))
    assert isinstance(records, PretrainLMDB) and len(records) == 6
    with pytest.raises(AnnotationError, match="key 5: 2 clips, fewer than the 4"):
        records[5]
