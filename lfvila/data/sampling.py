"""Frame and clip sampling (SPEC.md §9.1, §10.1). Indices are computed once per sample and shared
by every decoder, so PyAV and DALI return the same frames.

- Pre-training: a window of `sample_clip` consecutive clips (train: uniformly random start in
  {0, ..., len - sample_clip - 1}, the original's off-by-one kept: the last window is never
  chosen; start 0 when len <= sample_clip; evaluation: start 0), then `frames_per_clip` frames per
  clip at floor(j·n/frames_per_clip).
- Downstream: `num_frames` frames spread over the whole video; evaluation linspace(0, n-1),
  training a random start in [0, n//31] and end in [n-1-n//31, n-1] before the linspace.
- The random streams an item draws these from: `seeded_stream`, seeded from stable integers
  (seed, epoch, index, attempt, stream tag), the same in every process.
"""

from __future__ import annotations

import random

import numpy as np


def clip_window_start(
    num_clips: int, sample_clip: int, train: bool, rng: random.Random | None = None
) -> int:
    """First clip of the window of `sample_clip` consecutive clips (SPEC §10.1)."""
    if not train or num_clips <= sample_clip:
        return 0
    rng = rng or random
    # The original draws from range(len - sample_clip): the last window is never chosen (kept).
    return rng.randrange(num_clips - sample_clip)


def clip_frame_indices(num_frames: int, frames_per_clip: int) -> list[int]:
    """Frames floor(j·n/k), j = 0..k-1: the start of each k-th of an n-frame clip."""
    if num_frames <= 0:
        raise ValueError(f"a clip needs at least one frame, got {num_frames}")
    return [(j * num_frames) // frames_per_clip for j in range(frames_per_clip)]


def video_frame_indices(
    num_frames: int, count: int, train: bool, rng: random.Random | None = None
) -> list[int]:
    """`count` frames spread over a whole video of `num_frames` frames (SPEC §9.1)."""
    if num_frames <= 0:
        raise ValueError(f"a video needs at least one frame, got {num_frames}")
    start, end = 0, num_frames - 1
    if train:
        rng = rng or random
        jitter = num_frames // (count - 1) if count > 1 else 0
        start = rng.randint(0, jitter)
        end = rng.randint(num_frames - 1 - jitter, num_frames - 1)
    return np.linspace(start, end, count).astype(np.int64).tolist()


# Tags of the random streams an item draws from (stable integers, see `seeded_stream`).
ITEM_STREAM, REPLACEMENT_STREAM = 0, 1


def seeded_stream(*values: int | None) -> random.Random:
    """A random stream seeded from stable integers: the same in every process, Python version and
    PYTHONHASHSEED (never Python's `hash`, which salts strings per process and, before 3.12,
    hashes None by its address). None counts as -1; each value enters numpy's SeedSequence as
    a 64-bit word."""
    words = [(-1 if v is None else int(v)) % 2**64 for v in values]
    state = np.random.SeedSequence(words).generate_state(2, np.uint64)
    return random.Random((int(state[0]) << 64) | int(state[1]))
