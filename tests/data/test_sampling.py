"""Frame and clip sampling (SPEC §9.1, §10.1) against hand-computed cases."""

from __future__ import annotations

import random

import pytest

from lfvila.data import clip_frame_indices, clip_window_start, video_frame_indices


def test_clip_frames_are_the_start_of_each_eighth():
    assert clip_frame_indices(20, 8) == [0, 2, 5, 7, 10, 12, 15, 17]  # floor(j*20/8)
    assert clip_frame_indices(40, 8) == [0, 5, 10, 15, 20, 25, 30, 35]
    assert clip_frame_indices(5, 8) == [0, 0, 1, 1, 2, 3, 3, 4]  # short clips repeat frames
    assert clip_frame_indices(1, 8) == [0] * 8
    with pytest.raises(ValueError, match="at least one frame"):
        clip_frame_indices(0, 8)


def test_clip_window_keeps_the_originals_off_by_one():
    """len 6, window 4: start in {0, 1} (range(len - 4)); the last window (start 2) never."""
    rng = random.Random(0)
    starts = {clip_window_start(6, 4, True, rng) for _ in range(300)}
    assert starts == {0, 1}
    assert {clip_window_start(9, 4, True, rng) for _ in range(500)} == {0, 1, 2, 3, 4}
    assert clip_window_start(4, 4, True, rng) == 0  # len <= sample_clip: start 0
    assert clip_window_start(3, 4, True, rng) == 0
    assert clip_window_start(9, 4, False, rng) == 0  # evaluation: the first window


def test_video_frames_eval_linspace():
    assert video_frame_indices(10, 4, train=False) == [0, 3, 6, 9]
    assert video_frame_indices(10, 3, train=False) == [0, 4, 9]  # 4.5 truncates to 4
    out = video_frame_indices(100, 32, train=False)
    assert len(out) == 32 and out[0] == 0 and out[-1] == 99
    assert out[:5] == [0, 3, 6, 9, 12] and out[6] == 19  # floor(k * 99 / 31)
    assert video_frame_indices(5, 8, train=False) == [0, 0, 1, 1, 2, 2, 3, 4]


def test_video_frames_train_jitter_range():
    """n = 62, 32 frames: start in [0, 62 // 31] = [0, 2], end in [59, 61]; every value drawn."""
    rng = random.Random(1)
    starts, ends = set(), set()
    for _ in range(400):
        out = video_frame_indices(62, 32, train=True, rng=rng)
        assert len(out) == 32 and out == sorted(out)
        starts.add(out[0])
        ends.add(out[-1])
    assert starts == {0, 1, 2} and ends == {59, 60, 61}
    # a video shorter than 31 frames gets no jitter
    assert video_frame_indices(30, 32, train=True, rng=rng) == video_frame_indices(30, 32, False)
    with pytest.raises(ValueError, match="at least one frame"):
        video_frame_indices(0, 32, train=False)
