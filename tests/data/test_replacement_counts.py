"""The replacement summary adds up (issue 21): with one bad clip of each kind (empty, random
bytes, truncated, missing, excluded), every failed decode is one "unreadable video" warning and
counted under its kind, every item served by a replacement is counted once under its own
video's kind (logged the first time, counted as "already known" after), and the run's summary
line states both."""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import shutil

import pytest
import torch

from lfvila.data import DataOptions, build_dataset, build_loader, read_frames
from lfvila.data.datasets import ClipExclusions, failure_kind

pytest.importorskip("av")

SMALL = dict(size=(48, 80), max_tokens=16)
LINE = re.compile(r"^(unreadable video|excluded clip) (.*?) \((.*)\): (item \d+ replaced|"
                  r"replacement candidate \d+ for item \d+ passed over)$")  # fmt: skip


@pytest.fixture
def spoiled(demo_data, tmp_path):
    root = tmp_path / "clips"
    shutil.copytree(demo_data["clip_root"], root)
    records = [json.loads(x) for x in demo_data["pretrain_train"].read_text().splitlines()]

    def clip(v, k):
        c = records[v][k]["clip_id"]
        return root / c.split(".")[0] / c

    clip(0, 1).write_bytes(b"")  # empty file
    clip(1, 2).write_bytes(os.urandom(clip(1, 2).stat().st_size))  # cannot open
    data = clip(2, 0).read_bytes()
    clip(2, 0).write_bytes(data[: len(data) // 3])  # corrupt or truncated
    clip(3, 3).unlink()  # file not found
    exclude = ClipExclusions([records[4][0]["clip_id"]])  # excluded
    return root, exclude


def test_counts_add_up_with_one_bad_file_of_each_kind(spoiled, demo_data, caplog):
    root, exclude = spoiled
    opts = DataOptions(**SMALL, exclude=exclude, max_bad_fraction=1.0)
    ds = build_dataset("pretrain", demo_data["pretrain_train"], root, True, opts, seed=2)
    loader = build_loader(ds, batch_size=2, train=True, workers=0)
    with caplog.at_level(logging.INFO, logger="lfvila.data.datasets"):
        for epoch in range(3):  # later epochs meet the known-bad items again
            loader.set_epoch(epoch)
            for _ in loader:
                pass
    lines = [LINE.match(r.getMessage()) for r in caplog.records]
    lines = [m for m in lines if m]
    decodes = collections.Counter(failure_kind(m[3]) for m in lines if m[1] == "unreadable video")
    assert decodes == loader.failure_counts  # one warning per failed decode, same kinds
    assert set(decodes) == {"empty file", "cannot open", "corrupt or truncated", "file not found"}
    first = collections.Counter(failure_kind(m[3]) for m in lines if m[4].endswith("replaced"))
    assert sum(first.values()) + loader.replaced_known == sum(loader.replaced_counts.values())
    assert set(loader.replaced_counts) == set(decodes) | {"excluded"}
    assert all(loader.replaced_counts[k] >= first[k] for k in first)
    assert loader.replaced_known > 0  # epochs 2 and 3 met them again without a decode
    total, failed = sum(loader.replaced_counts.values()), sum(loader.failure_counts.values())
    summary = loader.summary()
    assert summary.startswith(f"videos replaced: {total} items (")
    assert f"{loader.replaced_known} of them already known unreadable" in summary
    kinds = sorted(loader.failure_counts.items(), key=lambda kv: -kv[1])
    listed = ", ".join(f"{n} {k}" for k, n in kinds)
    assert summary.endswith(f"unreadable decodes: {failed} ({listed})")
    assert "3 excluded" in summary.split(";")[0]  # once per epoch, never decoded
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("excluded clip") for m in messages)
    assert not any(m.startswith("unreadable video") and "data.exclude" in m for m in messages)


def test_a_truncated_mp4_is_reported_as_truncated(spoiled):
    root, _ = spoiled
    path = next(p for p in root.rglob("*.mp4") if 0 < p.stat().st_size and p.name.endswith(".0.mp4")
                and "demo00002" in p.name)  # fmt: skip
    with pytest.raises(Exception) as info:
        read_frames(path, [0], "pyav")
    assert "corrupt or truncated: the file ends inside its media data" in str(info.value)
    assert "index (moov atom) is missing" in str(info.value) and "<none>" not in str(info.value)


def test_the_pyav_notice_is_said_once_per_process(demo_data, caplog):
    """`data: PyAV decoding (...)` was printed 2-3 times per run (a loader each)."""
    from lfvila.data.datasets import loader

    loader._NOTICES.clear()
    ds = build_dataset("retrieval", demo_data["retrieval_val"], demo_data["video_root"], False,
                       DataOptions(**SMALL))  # fmt: skip
    with caplog.at_level(logging.INFO, logger="lfvila.data.datasets"):
        for _ in range(3):
            build_loader(ds, batch_size=2, train=False, workers=0, decoder="auto")
    notices = [r for r in caplog.records if r.getMessage().startswith("data: PyAV decoding")]
    if torch.cuda.is_available():  # DALI may run there: no notice at all
        assert len(notices) <= 1
    else:
        assert len(notices) == 1 and "no CUDA device" in notices[0].getMessage()
