"""LF-VILA's window-attention layer shapes (SPEC.md §4.6, PERF.md): one place for demos,
benchmarks and GPU checks."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class AttentionLayer:
    """One video-encoder layer's attention problem, per sample."""

    name: str
    map_size: tuple[int, int, int]
    """(T, H, W) token map."""
    heads: int
    window: tuple[int, int, int]
    head_dim: int = 32
    temporal_shift: bool = False
    """Video-Swin shifts every axis by half a window; LF-VILA never shifts in time."""

    @property
    def channels(self) -> int:
        return self.heads * self.head_dim

    @property
    def shift(self) -> tuple[int, int, int]:
        """Odd blocks' shift: half a window (LF-VILA: none in time), 0 on clamped axes."""
        half = [w // 2 for w in self.window]
        if not self.temporal_shift:
            half[0] = 0
        return tuple(0 if s <= w else h for s, w, h in zip(self.map_size, self.window, half))

    @property
    def tokens(self) -> int:
        t, h, w = self.map_size
        return t * h * w


LFVILA_LAYERS = (
    AttentionLayer("L0", (32, 24, 40), 4, (2, 3, 5)),
    AttentionLayer("L1", (32, 12, 20), 8, (4, 3, 5)),
    AttentionLayer("L2", (32, 6, 10), 16, (8, 3, 5)),
    AttentionLayer("L3", (32, 6, 10), 16, (16, 3, 5)),  # L4 has the same shape
    AttentionLayer("L5", (32, 3, 5), 32, (32, 3, 5)),  # global: clamped, no shift
)
# Video-Swin-T stage 1 (32 frames at 224 px, patch 2x4x4) with its window and a short one.
VIDEO_SWIN_LAYERS = (
    AttentionLayer("VS-8x7x7", (16, 56, 56), 3, (8, 7, 7), temporal_shift=True),
    AttentionLayer("VS-2x7x7", (16, 56, 56), 3, (2, 7, 7), temporal_shift=True),
)


def layer(name: str) -> AttentionLayer:
    for spec in LFVILA_LAYERS + VIDEO_SWIN_LAYERS:
        if spec.name == name:
            return spec
    known = ", ".join(s.name for s in LFVILA_LAYERS + VIDEO_SWIN_LAYERS)
    raise ValueError(f"unknown layer {name!r}; known: {known}")
