"""How2QA span labels: the original's get_temporal_loss_label, worked by hand, and the dataset's
labels independent of which frames were sampled."""

from __future__ import annotations

import json

import pytest
import torch

from lfvila.data import DataOptions, build_dataset
from lfvila.data.datasets import how2qa_span_labels

from ..helpers import write_index_clip


def _positive(labels) -> list[int]:
    return [i for i, v in enumerate(labels.tolist()) if v]


# 96 frames at 3 fps: total = 32 s, so with 32 bins s·32 = start in seconds
@pytest.mark.parametrize(
    "start, end, frames, bins, positive",
    [
        (2.5, 4.5, 96, 32, [2, 3]),  # round(2.5) = 2, round(4.5) = 4 (half to even, not 3..4)
        (3.5, 5.5, 96, 32, [4, 5]),  # round(3.5) = 4, round(5.5) = 6
        (24.0, 50.0, 96, 32, list(range(24, 32))),  # past the end: e = clamp(50/32) = 1 -> 32
        (10.0, 10.0, 96, 32, [10]),  # zero length: b_e = max(10, 10 + 1)
        (40.0, 45.0, 96, 32, [31]),  # start > total: s = e = 1, b_s = min(32, 31), b_e = 32
        (0.0, 0.2, 96, 32, [0]),  # round(0.2) = 0 -> b_e = 1
        # 75 frames: total 25 s; 3/25·32 = 3.84 -> 4, 7/25·32 = 8.96 -> 9
        (3.0, 7.0, 75, 32, [4, 5, 6, 7, 8]),
        # 8 bins over 32 s: 5/32·8 = 1.25 -> 1, 20/32·8 = 5 -> 5
        (5.0, 20.0, 96, 8, [1, 2, 3, 4]),
    ],
)
def test_hand_worked_labels(start, end, frames, bins, positive):
    labels = how2qa_span_labels(start, end, frames, bins)
    assert labels.shape == (bins,) and labels.dtype == torch.long
    assert _positive(labels) == positive


@pytest.mark.parametrize("span", [(float("nan"), float("nan")), (None, None), (3.0, None)])
def test_missing_span_is_the_whole_video(span):
    assert how2qa_span_labels(*span, 96, 32).tolist() == [1] * 32


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="num_frames_in_file and bins must be >= 1"):
        how2qa_span_labels(1.0, 2.0, 0, 32)


def test_dataset_labels_ignore_the_sampled_frames(tmp_path):
    root = tmp_path / "videos"
    root.mkdir()
    write_index_clip(root / "h0.mp4", frames=96, size=(32, 48))
    record = {
        "clip_id": "h0",
        "span": [5.0, 20.0],
        "text_q": "q",
        "text_a": ["a", "b"],
        "text_s": [],
        "answer_idx": 1,
    }
    ann = tmp_path / "h.jsonl"
    ann.write_text(json.dumps(record) + "\n")
    opt = DataOptions(num_frames=8, size=(32, 48), max_tokens=8)
    # eval frames linspace(0, 95, 8) -> 0, 13, 27, ... at 0, 4.3, 9, 13.3, 18 s: comparing frame
    # times with [5, 20] would give bins 2..4; the rule gives 1..4 (see test_hand_worked_labels)
    ds = build_dataset("how2qa", ann, root, False, opt, num_candidates=2)
    item = ds.item(0, decode=False)
    assert item["plan"].files[0][1] == [0, 13, 27, 40, 54, 67, 81, 95]
    assert _positive(item["span_labels"]) == [1, 2, 3, 4]
    train = build_dataset("how2qa", ann, root, True, opt)
    items = [train.item(0, decode=False, epoch=e) for e in range(6)]
    assert len({tuple(i["plan"].files[0][1]) for i in items}) > 1
    assert all(_positive(i["span_labels"]) == [1, 2, 3, 4] for i in items)
