"""Window geometry of 3D (shifted) window attention: clamping, padding, shifts, bias indexing.

One place computes, from the map size and the configured window and shift, everything the
reference and the kernels agree on (SPEC.md §4.3-4.4, Decision 4e):

- Video-Swin's clamping rule: an axis whose map size is <= its window uses the map size as the
  window and shift 0 on that axis.
- Padding: each axis is padded at its end to a multiple of the (effective) window.
- The cyclic shift rolls the padded map by -shift before partitioning. The window-row of a token
  at rolled coordinate r comes from source coordinate (r + shift) mod padded_size; a source
  coordinate >= the map size is a padding token.
- Shift regions: along a shifted axis of padded size P, window w and shift s, a rolled coordinate
  r lies in region 0 (r < P - w), 1 (P - w <= r < P - s) or 2 (r >= P - s); an unshifted axis is
  one region. Pairs of tokens whose (t, h, w) regions differ get the additive mask value.
- Relative position bias: the token at position n of a window has coordinates
  (n // (bh*bw), n // bw % bh, n % bw) in a "bias window" (bt, bh, bw), and the table row of a
  pair (p, q) is g(p) - g(q) + g0 with g(n) = ct*(2Wh-1)(2Ww-1) + ch*(2Ww-1) + cw over the
  *configured* window (Wt, Wh, Ww). The bias window is the effective window (Decision 4e) or,
  for `clamped_index="legacy"`, the configured one: that reproduces the `index[:N, :N]` slice
  of Video-Swin and torchvision when a window is clamped.
"""

from __future__ import annotations

import dataclasses
import functools
import math

Triple = tuple[int, int, int]


def next_power_of_2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@dataclasses.dataclass(frozen=True)
class WindowGeometry:
    """Geometry of one window-attention call on a (T, H, W) map."""

    size: Triple
    """Map size (T, H, W)."""
    window_cfg: Triple
    """Configured window: the bias table is ((2Wt-1)(2Wh-1)(2Ww-1), heads)."""
    window: Triple
    """Effective window after clamping to the map."""
    shift: Triple
    """Effective shift: 0 on clamped axes."""
    bias_window: Triple
    """Window whose token enumeration gives bias coordinates (effective; configured if legacy)."""

    @property
    def padded(self) -> Triple:
        return tuple(math.ceil(s / w) * w for s, w in zip(self.size, self.window))  # type: ignore[return-value]

    @property
    def grid(self) -> Triple:
        """Windows per axis."""
        return tuple(p // w for p, w in zip(self.padded, self.window))  # type: ignore[return-value]

    @property
    def num_windows(self) -> int:
        return math.prod(self.grid)

    @property
    def tokens(self) -> int:
        """N: tokens per window."""
        return math.prod(self.window)

    @property
    def has_padding(self) -> bool:
        return self.padded != self.size

    @property
    def shifted(self) -> bool:
        return any(s > 0 for s in self.shift)

    @property
    def padded_tokens(self) -> int:
        """NP: rows a window occupies in the kernels and in their dense bias operand (the next
        power of two of N, at least 16: tl.arange needs a power of two, tl.dot tiles >= 16)."""
        return max(16, next_power_of_2(self.tokens))

    @property
    def table_rows(self) -> int:
        wt, wh, ww = self.window_cfg
        return (2 * wt - 1) * (2 * wh - 1) * (2 * ww - 1)

    @property
    def table_strides(self) -> tuple[int, int]:
        """Row strides of a unit temporal and a unit vertical offset in the bias table."""
        _, wh, ww = self.window_cfg
        return (2 * wh - 1) * (2 * ww - 1), 2 * ww - 1

    @property
    def table_origin(self) -> int:
        """Table row of the zero offset, g0."""
        wt, wh, ww = self.window_cfg
        st, sh = self.table_strides
        return (wt - 1) * st + (wh - 1) * sh + (ww - 1)


def window_geometry(
    size: Triple,
    window_size: Triple,
    shift_size: Triple = (0, 0, 0),
    clamped_index: str = "effective",
) -> WindowGeometry:
    """Apply Video-Swin's clamping rule to a (T, H, W) map; see the module docstring.

    Cached: every call of a layer shape after the first is a dictionary lookup (host path).
    """
    return _window_geometry(
        tuple(int(s) for s in size), tuple(window_size), tuple(shift_size), clamped_index
    )


@functools.lru_cache(maxsize=1024)
def _window_geometry(
    size: Triple, window_size: Triple, shift_size: Triple, clamped_index: str
) -> WindowGeometry:
    window = tuple(min(s, w) for s, w in zip(size, window_size))
    shift = tuple(0 if s <= w else sh for s, w, sh in zip(size, window_size, shift_size))
    bias_window = tuple(window_size) if clamped_index == "legacy" else window
    return WindowGeometry(
        size=tuple(size),
        window_cfg=tuple(window_size),
        window=window,  # type: ignore[arg-type]
        shift=shift,  # type: ignore[arg-type]
        bias_window=bias_window,  # type: ignore[arg-type]
    )
