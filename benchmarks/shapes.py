"""Named benchmark cases: LF-VILA's layers (PERF.md) and Video-Swin's windows, or tiny smoke
shapes when LFVILA_BENCH_SMOKE=1."""

from __future__ import annotations

import os

from lfvila.model.shapes import LFVILA_LAYERS, VIDEO_SWIN_LAYERS, AttentionLayer

CPU_BATCH = 1
GPU_BATCH = 16  # LF-VILA's per-GPU batch in stage 1 (SPEC.md §11.3)

SMOKE_LAYERS = (
    AttentionLayer("tiny-packed", (4, 6, 10), 2, (2, 3, 5), head_dim=16),
    AttentionLayer("tiny-multi-tile", (4, 6, 7), 2, (4, 3, 7), head_dim=16),
)


def smoke_mode() -> bool:
    return os.environ.get("LFVILA_BENCH_SMOKE", "0") not in ("", "0")


def attention_cases(include_video_swin: bool = True) -> list[tuple[str, AttentionLayer, tuple]]:
    """(case id, layer, shift) for unshifted and shifted blocks; L4 equals L3 and is left out."""
    layers = SMOKE_LAYERS if smoke_mode() else LFVILA_LAYERS
    if include_video_swin and not smoke_mode():
        layers = layers + VIDEO_SWIN_LAYERS
    cases = []
    for spec in layers:
        cases.append((spec.name, spec, (0, 0, 0)))
        if spec.shift != (0, 0, 0):
            cases.append((f"{spec.name}-shift", spec, spec.shift))
    return cases
