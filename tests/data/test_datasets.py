"""Datasets and loaders: the demo dataset, every task's items, bad videos in training and
evaluation, the samplers, the DALI loader (CPU decoder, VP9)."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch

from lfvila.data import (
    FAILURE_KINDS,
    DataOptions,
    ExactDistributedSampler,
    VideoDecodeError,
    build_dataset,
    build_loader,
    probe,
    read_frames,
)
from lfvila.data import demo as demo_module
from lfvila.data.datasets import EpochSampler, failure_kind

from ..helpers import write_index_clip

SMALL = dict(size=(48, 80), max_tokens=16)


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_demo_is_deterministic_and_decodes(tmp_path, demo_data):
    a = demo_module.generate(tmp_path / "a", videos=3, val_videos=1, seed=5)
    b = demo_module.generate(tmp_path / "b", videos=3, val_videos=1, seed=5)
    demo_module.generate(tmp_path / "c", videos=3, val_videos=1, seed=6)
    fa, fb, fc = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    # 4 clips + 1 whole video each, 4 JSONL files, 22 task annotation files (the task video
    # folders are symlinks to directories: not files, and rglob does not descend into them)
    assert len(fa) == 4 * 5 + 4 + 22 and fa == fb
    assert fa != fc
    records = [json.loads(line) for line in a["pretrain_train"].read_text().splitlines()]
    assert len(records) == 3 and all(len(r) == 4 for r in records)
    clip = records[0][1]
    words = clip["text"].split()
    assert words[0] == "a" and words[1] in demo_module.COLORS and words[2] in demo_module.SHAPES
    path = a["clip_root"] / clip["clip_id"].split(".")[0] / clip["clip_id"]
    assert probe(path) == {
        "num_frames": 8,
        "fps": 3.0,
        "width": 160,
        "height": 96,
        "codec": "mpeg4",
    }
    assert probe(a["video_root"] / "demo00000.mp4")["num_frames"] == 32
    # the whole video is its clips back to back (encoded separately: I- vs P-frames on a
    # noisy texture differ by ~4 levels on average; another clip differs by far more, ~17 on
    # the demo's low-contrast backgrounds)
    whole = read_frames(a["video_root"] / "demo00000.mp4", list(range(8, 16)), "pyav").float()
    same = read_frames(path, list(range(8)), "pyav").float()
    other = read_frames(path.with_name("demo00000.2.mp4"), list(range(8)), "pyav").float()
    assert (whole - same).abs().mean() < 6 < 2 * 6 < (whole - other).abs().mean()
    retrieval = [json.loads(x) for x in b["retrieval_val"].read_text().splitlines()]
    assert retrieval == [
        {
            "clip_id": "demo00003",
            "text": [c["text"] for c in json.loads(b["pretrain_val"].read_text())],
        }
    ]


def test_pretrain_items(demo_data):
    train = build_dataset(
        "pretrain", demo_data["pretrain_train"], demo_data["clip_root"], True, DataOptions(**SMALL)
    )
    item = train[0]
    assert item["video"].shape == (3, 32, 48, 80) and item["video"].dtype == torch.float32
    assert item["text_ids"].shape == item["text_mask"].shape == (4, 16)
    assert item["decode_failures"].sum() == 0 and item["index"] == 0
    # sentence m is the transcript of clip m: the plan keeps them together
    plan = train.item(0, decode=False)["plan"]
    record = train.records[0]
    assert plan.texts == [c["text"] for c in record]
    assert [f.rsplit("/", 1)[1] for f, _ in plan.files] == [c["clip_id"] for c in record]
    assert all(idx == [0, 1, 2, 3, 4, 5, 6, 7] for _, idx in plan.files)  # floor(j*8/8)
    # the same (seed, epoch, index): the same item; another epoch: another crop or flip
    torch.testing.assert_close(train[0]["video"], item["video"])
    plans = {
        (p.box, p.flip) for p in (train.item(0, decode=False, epoch=e)["plan"] for e in range(6))
    }
    assert len(plans) > 1
    val = build_dataset(
        "pretrain", demo_data["pretrain_val"], demo_data["clip_root"], False, DataOptions(**SMALL)
    )
    assert val.item(0, decode=False)["plan"].box is None


def test_stage2_mlm_labels(demo_data):
    ds = build_dataset(
        "pretrain",
        demo_data["pretrain_train"],
        demo_data["clip_root"],
        True,
        DataOptions(**SMALL, mlm_probability=0.5),
    )
    item = ds.item(1, decode=False)
    chosen = item["mlm_labels"] != -100
    assert chosen.any() and item["text_mask"][chosen].eq(1).all()


def test_retrieval_items(demo_data):
    ds = build_dataset(
        "retrieval",
        demo_data["retrieval_val"],
        demo_data["video_root"],
        False,
        DataOptions(**SMALL),
    )
    item = ds[1]
    assert item["video"].shape == (3, 32, 48, 80) and item["text_ids"].shape == (4, 16)
    ((path, indices),) = ds.item(1, decode=False)["plan"].files
    assert path.endswith("whole/demo00007.mp4") and indices == list(range(32))


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_qa_and_classification_items(tmp_path, demo_data):
    root = demo_data["video_root"]
    subs = [{"text": f"subtitle {i}", "start": i, "end": i + 1} for i in range(9)]
    how2qa = _write_jsonl(
        tmp_path / "how2qa.jsonl",
        [
            {
                "clip_id": "demo00000",
                "span": [2.0, 4.0],
                "text_q": "what moves?",
                "text_a": ["a", "b", "c", "d"],
                "text_s": subs,
                "answer_idx": 3,
            },
            {
                "clip_id": "demo00001",
                "span": [None, None],
                "text_q": "q",
                "text_a": ["a", "b"],
                "text_s": [],
                "answer_idx": 0,
            },
        ],
    )
    opt = DataOptions(**{**SMALL, "max_sentences": 8, "max_tokens": 12})
    ds = build_dataset("how2qa", how2qa, root, False, opt)
    item = ds.item(0, decode=False)
    assert item["text_ids"].shape == (4, 8, 12) and item["answer"] == 3
    # 32 frames at 3 fps: total 32/3 s; round(2 / (32/3) · 32) = 6, round(4 / (32/3) · 32) = 12:
    # bins 6..11 (SPEC §9.2; comparing frame times with [2, 4] s would give 6..12)
    assert item["span_labels"].tolist() == [0] * 6 + [1] * 6 + [0] * 20
    assert ds.item(1, decode=False)["span_labels"].eq(1).all()  # NaN span: the whole video
    violin = _write_jsonl(
        tmp_path / "violin.jsonl",
        [{"clip_id": "demo00002", "text_q": "a red circle", "text_s": subs, "answer": 1}],
    )
    item = build_dataset("violin", violin, root, False, DataOptions(**SMALL, max_sentences=5))[0]
    assert item["text_ids"].shape == (5, 16) and item["labels"] == 1
    assert item["video"].shape == (3, 32, 48, 80)
    anqa = _write_jsonl(
        tmp_path / "anqa.jsonl", [{"video_name": "demo00003", "question": "q?", "answer": 17}]
    )
    item = build_dataset("actnet_qa", anqa, root, True, DataOptions(**SMALL)).item(0, decode=False)
    assert item["text_ids"].shape == (1, 16) and item["labels"] == 17
    coin = _write_jsonl(tmp_path / "coin.jsonl", [{"video_id": "demo00004", "recipe_type": 9}])
    item = build_dataset("video_classification", coin, root, True, DataOptions(**SMALL))[0]
    assert set(item) == {"labels", "video", "index", "decode_failures", "replaced"}
    assert item["labels"] == 9
    with pytest.raises(ValueError, match="dataset kind must be one of"):
        build_dataset("nope", coin, root, True)


@pytest.fixture
def broken_data(tmp_path, demo_data):
    """A copy of the demo's clips: in videos 0-3 one clip is missing, truncated, corrupt or
    empty; videos 4 and 5 are intact."""
    root = tmp_path / "clips"
    shutil.copytree(demo_data["clip_root"], root)
    records = [json.loads(x) for x in demo_data["pretrain_train"].read_text().splitlines()]

    def clip_path(v, k):
        c = records[v][k]["clip_id"]
        return root / c.split(".")[0] / c

    clip_path(0, 1).unlink()
    data = clip_path(1, 2).read_bytes()
    clip_path(1, 2).write_bytes(data[: len(data) // 3])
    clip_path(2, 0).write_bytes(bytes(range(256)) * 8)
    clip_path(3, 3).write_bytes(b"")
    return root, [clip_path(v, k) for v, k in ((0, 1), (1, 2), (2, 0), (3, 3))]


def test_bad_videos_in_training_are_replaced_logged_and_counted(broken_data, demo_data, caplog):
    root, bad = broken_data
    ds = build_dataset("pretrain", demo_data["pretrain_train"], root, True, DataOptions(**SMALL))
    with caplog.at_level(logging.WARNING, logger="lfvila.data.datasets"):
        items = [ds[i] for i in range(4)]
    for item in items:
        assert item["video"].shape == (3, 32, 48, 80) and item["index"] >= 4  # replaced
        assert item["replaced"][:-1].sum() == 1  # once, under its own video's kind
        # its failed decode travels with it, unless another item's request met it first
        assert item["decode_failures"].sum() >= 1 or item["replaced"][-1] == 1
    assert sum(ds.failure_counts.values()) >= 4
    assert ds.failure_counts["file not found"] >= 1 and ds.failure_counts["empty file"] >= 1
    for path in bad:
        assert str(path) in caplog.text
    assert "replaced" in caplog.text


@pytest.mark.parametrize("strict", [False, True])
def test_bad_videos_raise_in_evaluation_and_strict(broken_data, demo_data, strict):
    root, bad = broken_data
    ds = build_dataset(
        "pretrain", demo_data["pretrain_train"], root, strict, DataOptions(**SMALL, strict=strict)
    )
    for i, path in enumerate(bad):
        with pytest.raises(VideoDecodeError, match=str(path.name)):
            ds[i]


def test_failure_kinds():
    assert failure_kind("file not found") == "file not found"
    assert failure_kind("corrupt or truncated after 3 frames (x)") == "corrupt or truncated"
    assert failure_kind("asked for frame 9 but the video has 4 frames") == "too few frames"
    assert failure_kind("something new") == "other" and FAILURE_KINDS[-1] == "other"


def test_loader_counts_failures_from_workers(broken_data, demo_data):
    root, _ = broken_data
    ds = build_dataset("pretrain", demo_data["pretrain_train"], root, True, DataOptions(**SMALL))
    loader = build_loader(ds, batch_size=2, train=True, workers=1, progress=None)
    assert len(loader) == 3
    batches = list(loader)
    assert [b["video"].shape for b in batches] == [(2, 3, 32, 48, 80)] * 3
    assert "decode_failures" not in batches[0]
    assert sum(loader.failure_counts.values()) >= 4  # counted in the worker, summed here
    assert loader.summary().startswith("videos replaced: ")
    assert ds.failure_counts == {}  # the main process's copy decoded nothing


def test_samplers_cover_every_item_once():
    seen = sorted(i for r in range(3) for i in ExactDistributedSampler(10, r, 3))
    assert seen == list(range(10))
    with pytest.raises(ValueError, match="rank must be in"):
        ExactDistributedSampler(10, 3, 3)
    sampler = EpochSampler(ExactDistributedSampler(4))
    sampler.set_epoch(2)
    assert list(sampler) == [(2, 0), (2, 1), (2, 2), (2, 3)]


def test_eval_loader_keeps_every_item(demo_data, capsys):
    ds = build_dataset(
        "retrieval",
        demo_data["retrieval_train"],
        demo_data["video_root"],
        False,
        DataOptions(**SMALL),
    )
    indices = []
    for rank in range(4):
        loader = build_loader(ds, batch_size=4, train=False, workers=0, rank=rank, world_size=4)
        indices += [i for b in loader for i in b["index"].tolist()]
    assert sorted(indices) == list(range(6))
    assert sum(len(b["index"]) for b in build_loader(ds, 4, False, workers=0, progress="eval")) == 6
    err = capsys.readouterr().err
    assert "eval" in err and "2/2" in err  # the progress bar, two batches of 4 and 2
    with pytest.raises(ValueError, match="decoder must be"):
        build_loader(ds, 2, False, decoder="nvdec")
    ds.opt.decoder = "dali"
    with pytest.raises(ValueError, match="decodes inside DataLoader worker processes"):
        build_loader(ds, 2, False, workers=2)


@pytest.fixture(scope="module")
def vp9_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("vp9")
    for i in range(3):
        write_index_clip(root / f"v{i}.webm", frames=34 + i, codec="libvpx-vp9")
    write_index_clip(root / "h264.mp4", frames=34, codec="libx264")
    ann = _write_jsonl(
        root / "ret.jsonl", [{"clip_id": f"v{i}.webm", "text": f"video {i}"} for i in range(3)]
    )
    return root, ann


@pytest.mark.dali
@pytest.mark.parametrize("train", [False, True])
def test_dali_loader_on_cpu_matches_the_pyav_path(vp9_data, train):
    """The DALI loader (CPU decoder here) gives the items of the DataLoader path: the same plans,
    frames within the decoders' few-level difference (see test_video)."""
    from torch.utils.data import DataLoader

    from lfvila.data.dali import DaliLoader

    root, ann = vp9_data
    ds = build_dataset("retrieval", ann, root, train, DataOptions(**SMALL))
    sampler = EpochSampler(ExactDistributedSampler(3))
    sampler.set_epoch(1)
    (dali_batch,) = DaliLoader(ds, sampler, batch_size=3, drop_last=False, device="cpu")
    (cpu_batch,) = DataLoader(ds, batch_size=3, sampler=sampler)
    assert dali_batch["video"].shape == cpu_batch["video"].shape == (3, 3, 32, 48, 80)
    for key in ("text_ids", "text_mask", "index"):
        assert dali_batch[key].equal(cpu_batch[key])
    # exact assembly: each item is the CPU augmentation of the frames DALI decodes
    for k in range(3):
        plan = ds.item(k, decode=False, epoch=1)["plan"]
        expected = ds.decode(plan, backend="dali")
        torch.testing.assert_close(dali_batch["video"][k], expected, atol=1e-4, rtol=0)
    # and the PyAV path within test_video's bound for the decoders: a mean under 2 levels of 255
    diff = (dali_batch["video"] - cpu_batch["video"]).abs()
    assert diff.mean() < 2 / 255 / 0.224


@pytest.mark.dali
def test_dali_loader_falls_back_to_pyav_when_dali_fails(vp9_data, caplog):
    from lfvila.data.dali import DaliLoader

    root, _ = vp9_data
    ann = _write_jsonl(
        root / "mixed.jsonl",
        [{"clip_id": "v0.webm", "text": "a"}, {"clip_id": "h264", "text": "b"}],
    )
    ds = build_dataset("retrieval", ann, root, False, DataOptions(**SMALL))
    loader = DaliLoader(ds, ExactDistributedSampler(2), batch_size=2, drop_last=False, device="cpu")
    with caplog.at_level(logging.WARNING):
        (batch,) = loader
    assert loader.batch_failures == 1 and "decoding it with PyAV" in caplog.text
    torch.testing.assert_close(batch["video"][1], ds[1]["video"])
