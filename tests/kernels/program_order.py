"""Run Triton-interpreter launches with their programs out of order, and each launch twice.

The interpreter runs a launch's programs one after another in grid order (x, then y, then z), so
a kernel whose result depends on which program runs first (one program reading what another
writes, a "first program initialises" assumption, a stale value surviving a loop iteration)
passes there by luck of that order. `scrambled_programs(order)` makes every interpreted launch
inside it run its programs `reversed` or `shuffled` (a fixed seed per launch), and with
`repeat=2` run each whole launch twice, so a kernel that is not idempotent (accumulates into
its output, or reads an output it wrote) shows it. Together with
`lfvila.kernels._buffers.poisoned_buffers()` (scratch starts as NaN, not as whatever the
allocator returns) this keeps the class of order- and initialisation-dependent bugs out of the
CPU suite. It cannot show a race between programs that run at the same time on a GPU, or
anything the GPU compiler does (pipelining, layouts): the GPU tests and
benchmarks/bisect_window_attention.py exist for those.

Works by patching the interpreter's grid-index setter (the index of the k-th program run is the
k-th cell of a permuted grid) and `GridExecutor.__call__` (repeat); Triton 3.6 and 3.8 share both.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

ORDERS = ("reversed", "shuffled")


@contextlib.contextmanager
def scrambled_programs(order: str, seed: int = 0, repeat: int = 1) -> Iterator[dict]:
    """Inside, interpreted launches run their programs in `order`, each launch `repeat` times.

    Yields a dict whose "launches" counts the launches run (a test can assert the patch took).
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    from triton.runtime import interpreter

    builder = interpreter.interpreter_builder
    set_dim, set_idx = builder.set_grid_dim, builder.set_grid_idx
    executor_call = interpreter.GridExecutor.__call__
    state = {"launches": 0, "cells": iter(())}

    def scrambled_dim(nx, ny, nz):
        set_dim(nx, ny, nz)
        cells = [(x, y, z) for x in range(nx) for y in range(ny) for z in range(nz)]
        if order == "reversed":
            cells.reverse()
        else:
            random.Random(seed * 1_000_003 + state["launches"]).shuffle(cells)
        state["launches"] += 1
        state["cells"] = iter(cells)

    def scrambled_idx(x, y, z):
        # the interpreter asks for (x, y, z) in grid order; run the next permuted cell instead
        set_idx(*next(state["cells"]))

    def repeated_call(self, *args, **kwargs):
        for _ in range(repeat):
            executor_call(self, *args, **kwargs)

    builder.set_grid_dim, builder.set_grid_idx = scrambled_dim, scrambled_idx
    interpreter.GridExecutor.__call__ = repeated_call
    try:
        yield state
    finally:
        del builder.set_grid_dim, builder.set_grid_idx  # the class's methods show again
        interpreter.GridExecutor.__call__ = executor_call
