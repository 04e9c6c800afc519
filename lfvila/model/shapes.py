"""LF-VILA's window-attention layer shapes (SPEC.md §4.6, PERF.md): one place for demos,
benchmarks and GPU checks."""

from __future__ import annotations

import dataclasses
import math

import torch


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


def encoder_layers(cfg) -> list[tuple[AttentionLayer, int]]:
    """(attention problem, blocks) of each layer of a `VideoEncoderConfig` at its input size
    (the maps `video_swin.VideoEncoder` runs: patch embedding, then 2x2 merges after
    `downsample_stages`)."""
    t = math.ceil(cfg.num_frames / cfg.patch_size[0])
    h, w = (math.ceil(s / p) for s, p in zip(cfg.input_size, cfg.patch_size[1:]))
    dims, layers = cfg.dims(), []
    for i, depth in enumerate(cfg.depths):
        heads = cfg.num_heads[i]
        spec = AttentionLayer(
            f"L{i}", (t, h, w), heads, tuple(cfg.window_size[i]), head_dim=dims[i] // heads,
            temporal_shift=not cfg.temporal_no_shifting,
        )  # fmt: skip
        layers.append((spec, depth))
        if i in cfg.downsample_stages:
            h, w = math.ceil(h / 2), math.ceil(w / 2)
    return layers


def attention_backends(cfg, backend: str, device: torch.device, dtype: torch.dtype) -> list[str]:
    """One line per encoder layer: the window-attention backend `backend` ("auto" or a name)
    runs for that layer's q (`dtype` on `device`, batch aside) and why, before any self-check
    verdict (`lfvila.kernels.explain_window_backend`)."""
    from lfvila.kernels import explain_window_backend

    lines = []
    for spec, blocks in encoder_layers(cfg):
        probe = torch.empty(1, 1, 1, 1, spec.heads, spec.head_dim, dtype=dtype, device=device)
        probe = probe.expand(1, *spec.map_size, spec.heads, spec.head_dim)
        chosen, why = explain_window_backend(probe, spec.window, spec.shift, backend)
        tokens = math.prod(min(s, w) for s, w in zip(spec.map_size, spec.window))
        lines.append(
            f"{spec.name} ({'x'.join(map(str, spec.map_size))} map, {tokens}-token windows, "
            f"{blocks} block{'s' * (blocks != 1)}): {chosen} ({why})"
        )
    return lines
