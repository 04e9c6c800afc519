"""How2QA's temporal span labels, exactly the original's `get_temporal_loss_label`."""

from __future__ import annotations

import torch

HOW2QA_FPS = 3.0
"""The frame rate How2QA's files are taken to have when spans (seconds) become frame bins."""


def how2qa_span_labels(
    start: float | None, end: float | None, num_frames_in_file: int, bins: int
) -> torch.Tensor:
    """Per-bin labels of How2QA's temporal span loss, exactly the original's
    `get_temporal_loss_label` (SPEC §9.2): (bins,) int64, 1 inside the answer's span.

    The file is taken to be 3 fps, so it lasts total = num_frames_in_file / 3 seconds. With
    both ends numbers, s = clamp(start / total, 0, 1) and e = clamp(end / total, 0, 1); else
    (NaN or None) s, e = 0, 1. Bins b_s = round(s·bins), b_e = round(e·bins) with Python's
    round (half to even), then b_s = clamp(b_s, 0, bins - 1) and b_e = clamp(b_e, b_s + 1, bins):
    bins b_s..b_e-1 are positive, at least one always. The labels cut the file's duration into
    `bins` equal parts whatever frames were sampled from it.
    """
    if num_frames_in_file < 1 or bins < 1:
        raise ValueError(
            f"num_frames_in_file and bins must be >= 1, got {num_frames_in_file} and {bins}"
        )

    def number(v) -> bool:
        return v is not None and v == v

    total = num_frames_in_file / HOW2QA_FPS
    if number(start) and number(end):
        s, e = min(max(start / total, 0.0), 1.0), min(max(end / total, 0.0), 1.0)
    else:
        s, e = 0.0, 1.0
    b_s = min(max(round(s * bins), 0), bins - 1)
    b_e = min(max(round(e * bins), b_s + 1), bins)
    labels = torch.zeros(bins, dtype=torch.long)
    labels[b_s:b_e] = 1
    return labels
