"""Output and scratch buffers of the Triton launchers, and a switch that poisons them.

Every launcher allocates what its kernels write through `alloc`, never `torch.empty` directly.
A kernel must write each element it (or a later kernel) reads, so a buffer's initial bits must
never matter. `poisoned_buffers()` fills every new buffer with NaN (integers with their largest
value) instead of leaving it uninitialised: an element read before it is written, or an output
element no program writes, then shows up as NaN in the result. The order-harness tests run the
kernels under it on the CPU, and the GPU bisect (benchmarks/bisect_window_attention.py) on the GPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

_poison = False


def alloc(shape, dtype: torch.dtype, device) -> torch.Tensor:
    """`torch.empty(shape, dtype, device)`, or a NaN-filled tensor inside `poisoned_buffers()`."""
    if not _poison:
        return torch.empty(shape, dtype=dtype, device=device)
    fill = float("nan") if dtype.is_floating_point else torch.iinfo(dtype).max
    return torch.full(shape, fill, dtype=dtype, device=device)


@contextlib.contextmanager
def poisoned_buffers() -> Iterator[None]:
    """Inside: launcher buffers start as NaN instead of uninitialised memory (tests, bisects)."""
    global _poison
    previous, _poison = _poison, True
    try:
        yield
    finally:
        _poison = previous
