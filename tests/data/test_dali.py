"""DALI (its CPU decoder, VP9): a pipeline that errors is rebuilt and the bad item found and
replaced; a frame index past the end is an error; the loader plans in worker processes and keeps
batches in flight."""

from __future__ import annotations

import io
import json
import logging
import os

import pytest
import torch

from lfvila.data import DataOptions, VideoDecodeError, build_dataset, build_loader
from lfvila.data.datasets import EpochSampler, ExactDistributedSampler, RetrievalDataset

from ..helpers import frame_marks, write_index_clip
from .test_video_reads import count_io

# PyAV is optional (the GPU image has none): skip this module, not error, without it.
av = pytest.importorskip("av")

pytestmark = pytest.mark.dali

SMALL = dict(size=(48, 80), max_tokens=16)


def _corrupt_packet(src, dst, packet: int = 20):
    """A copy of `src` with the payload of one packet overwritten: the container (and so the
    probe) is intact, decoding past that packet fails in PyAV and in DALI."""
    data = bytearray(src.read_bytes())
    with av.open(io.BytesIO(bytes(data))) as c:
        pos, size = [(p.pos, p.size) for p in c.demux(video=0) if p.size][packet]
    data[pos + 4 : pos + size] = b"\xff" * (size - 4)
    dst.write_bytes(bytes(data))
    return dst


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("dali")
    for i in range(4):
        write_index_clip(root / f"v{i}.webm", frames=40, codec="libvpx-vp9")
    _corrupt_packet(root / "v0.webm", root / "bad.webm")
    return root


def _dataset(root, names, train, cls=None, **options):
    ann = root / f"{'_'.join(names)}.jsonl"
    ann.write_text("".join(json.dumps({"clip_id": n, "text": n}) + "\n" for n in names))
    ds = build_dataset("retrieval", ann, root, train, DataOptions(**SMALL, **options))
    if cls is not None:
        ds.__class__ = cls
    return ds


def _dali_decode(ds, index, epoch):
    """Item `index` decoded and augmented by DALI alone (one clip, one pipeline run)."""
    from lfvila.data.dali import decode_and_augment

    plan = ds.item(index, decode=False, epoch=epoch)["plan"]
    ((path, frames),) = plan.files
    box = None if plan.box is None else [plan.box]
    flip = None if plan.box is None else [plan.flip]
    return decode_and_augment([path], [frames], box, flip, tuple(ds.opt.size), "cpu")[0]


def test_a_failed_pipeline_is_rebuilt_and_the_error_names_the_bad_file(clips):
    """Item 1: DALI invalidates a pipeline that errored; it is dropped, never handed out again,
    and the batch is decoded clip by clip to name the file that failed."""
    from lfvila.data.dali import decode_and_augment

    good, bad = str(clips / "v1.webm"), str(clips / "bad.webm")
    args = (None, None, (48, 80), "cpu")
    with pytest.raises(VideoDecodeError) as info:
        decode_and_augment([good, bad, good], [[0, 30]] * 3, *args)
    assert info.value.path == bad and "DALI" in info.value.reason
    out = decode_and_augment([good, good], [[0, 30], [5]], *args)  # a new pipeline
    assert [tuple(o.shape) for o in out] == [(3, 2, 48, 80), (3, 1, 48, 80)]


def test_an_index_past_the_end_is_an_error_not_a_black_frame(clips):
    """Item 2: out-of-range padding is off: frame 45 of a 40-frame file is an error naming the
    file (DALI's default pads with black frames)."""
    from lfvila.data import dali

    good = str(clips / "v1.webm")
    with pytest.raises(VideoDecodeError, match=r"v1\.webm: DALI .*out-of-bounds"):
        dali.decode_and_augment([good], [[0, 45]], None, None, (48, 80), "cpu")
    assert frame_marks(dali.read_frames(good, [0, 39], "cpu")) == [0, 39]


class _Overcounting(RetrievalDataset):
    """Claims 8 more frames than v2.webm has: its plans ask for frames past the end (what a
    header or packet count larger than the decodable frames does)."""

    def num_frames(self, path):
        return super().num_frames(path) + (8 if path.endswith("v2.webm") else 0)


def test_the_loader_never_returns_frames_past_the_end(clips):
    """Item 2 through the loader: evaluation raises naming the file; training replaces the item
    and counts it as too few frames."""
    from lfvila.data.dali import DaliLoader

    ds = _dataset(clips, ["v1.webm", "v2.webm"], False, _Overcounting)
    loader = DaliLoader(ds, ExactDistributedSampler(2), 2, drop_last=False, device="cpu")
    with pytest.raises(VideoDecodeError, match=r"v2\.webm: asked for frame 4\d but the video"):
        list(loader)
    ds = _dataset(clips, ["v1.webm", "v2.webm", "v3.webm"], True, _Overcounting)
    loader = DaliLoader(ds, EpochSampler(ExactDistributedSampler(3)), 3, device="cpu")
    (batch,) = loader
    assert batch["index"][1] != 1 and batch["decode_failures"].sum() == 1
    assert ds.failure_counts == {"too few frames": 1}


def test_the_loader_replaces_the_bad_item_and_keeps_the_rest_from_dali(clips, caplog):
    """Item 1 through the loader: batch 0 holds a file DALI (and PyAV) cannot decode. That item
    alone is recorded as unreadable (the dataset's counts) and replaced; the batch's other items
    are DALI's own output (exactly), and the next batch runs on a rebuilt pipeline."""
    from lfvila.data import dali

    ds = _dataset(clips, ["v1.webm", "bad.webm", "v2.webm", "v3.webm"], True)
    sampler = EpochSampler(ExactDistributedSampler(4))
    sampler.set_epoch(1)
    loader = dali.DaliLoader(ds, sampler, 2, device="cpu")
    with caplog.at_level(logging.WARNING):
        batches = list(loader)
    assert len(batches) == 2 and loader.batch_failures == 1
    assert ds.failure_counts == {"corrupt or truncated": 1}
    assert ds.known_unreadable(1) and not any(ds.known_unreadable(i) for i in (0, 2, 3))
    assert batches[0]["index"][0] == 0 and batches[0]["index"][1] != 1
    assert batches[0]["decode_failures"].sum() == 1 and batches[1]["decode_failures"].sum() == 0
    assert "bad.webm" in caplog.text
    for b, k, index in ((0, 0, 0), (1, 0, 2), (1, 1, 3)):  # DALI's frames, not PyAV's
        torch.testing.assert_close(
            batches[b]["video"][k], _dali_decode(ds, index, 1), atol=1e-5, rtol=0
        )


class _PidRetrieval(RetrievalDataset):
    """Records the process that planned each item."""

    def text_and_labels(self, index, rng, plan):
        out = super().text_and_labels(index, rng, plan)
        out["pid"] = torch.tensor(os.getpid())
        return out


def test_the_loader_plans_in_workers_and_prefetches(clips):
    """Item 8: with workers, planning, file reads and tokenisation run in DataLoader worker
    processes; the DALI pipeline runs asynchronously with more than one batch in flight, so
    while the training step holds batch k, batches k+1.. are already planned and decoding."""
    from lfvila.data.dali import DaliLoader

    names = [f"v{i % 4}.webm" for i in range(8)]
    ds = _dataset(clips, names, True, _PidRetrieval)
    loader = DaliLoader(ds, EpochSampler(ExactDistributedSampler(8)), 2, device="cpu", workers=1)
    it = iter(loader)
    batches = [next(it)]
    pipe = loader.pipeline
    assert loader.prefetch >= 2
    assert pipe.exec_async and pipe.exec_pipelined and pipe.prefetch_queue_depth >= 2
    batches += list(it)
    assert len(batches) == 4
    pids = {int(p) for b in batches for p in b["pid"]}
    assert len(pids) == 1 and os.getpid() not in pids

    planned = []
    ds0 = _dataset(clips, names, True, _PidRetrieval)
    plan_video = ds0.plan_video
    ds0.plan_video = lambda index, rng: planned.append(index) or plan_video(index, rng)
    loader = DaliLoader(ds0, EpochSampler(ExactDistributedSampler(8)), 2, device="cpu")
    it = iter(loader)
    next(it)  # the "training step" holds batch 0: batches 1 and 2 are planned, in DALI
    assert len(planned) == 2 * (1 + loader.prefetch)
    assert len(list(it)) == 3


def test_build_loader_passes_workers_to_the_dali_loader(clips, monkeypatch):
    """Item 8: `workers` reaches the DALI loader (it was silently ignored)."""
    from lfvila.data import dali, video

    seen = {}

    class Recorder:
        def __init__(self, *args, **kwargs):
            seen.update(kwargs)

        def __len__(self):
            return 0

    monkeypatch.setattr(video, "can_use_dali", lambda path=None, device="cuda": [])
    monkeypatch.setattr(dali, "DaliLoader", Recorder)
    ds = _dataset(clips, ["v1.webm", "v2.webm"], True)
    build_loader(ds, 2, True, workers=3, decoder="dali")
    assert seen.get("workers") == 3


def test_the_loader_opens_each_clip_once(clips, monkeypatch):
    """Item 9 through the DALI loader: the plan's probes read each file once and their bytes are
    the ones DALI decodes (no second open), with or without the probe cache."""
    from lfvila.data import containers
    from lfvila.data.dali import DaliLoader

    ds = _dataset(clips, ["v1.webm", "v2.webm", "v3.webm"], True)
    counts = count_io(monkeypatch)
    for epoch in range(2):
        containers._probe_cached.cache_clear()  # a probe cache too small for the dataset
        counts.opens.clear()
        sampler = EpochSampler(ExactDistributedSampler(3))
        sampler.set_epoch(epoch)
        (batch,) = DaliLoader(ds, sampler, 3, device="cpu")
        assert batch["video"].shape == (3, 3, 32, 48, 80)
        opens = {p: n for p, n in counts.opens.items() if p.endswith(".webm")}
        assert sorted(opens) == [str(clips / f"v{i}.webm") for i in (1, 2, 3)]
        assert set(opens.values()) == {1}, opens
