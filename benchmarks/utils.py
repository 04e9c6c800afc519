"""Timing, FLOP and byte accounting (PERF.md formulas), and `extra_info` for the report."""

from __future__ import annotations

import torch

from benchmarks.shapes import smoke_mode
from lfvila.shapes import AttentionLayer

BWD_FLOP_FACTOR = 2.5  # FlashAttention convention: backward = 2.5x forward FLOPs
MODE_FACTORS = {
    "fwd": (1.0, 1.0),
    "bwd": (BWD_FLOP_FACTOR, 2.0),
    "fwd_bwd": (1 + BWD_FLOP_FACTOR, 3.0),
}


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def window_attention_cost(spec: AttentionLayer, batch: int, mode: str, dtype: torch.dtype):
    """(FLOPs, minimal bytes) of window attention, PERF.md: forward 4·N·w·d FLOPs and 4 tensors
    of N·d read or written (q, k, v, o); backward 2.5x the FLOPs and 8 tensors (q, k, v, o, dO in,
    dq, dk, dv out). N = tokens, w = window tokens, d = head dim, per head."""
    w = 1
    for size, win in zip(spec.map_size, spec.window):
        w *= min(size, win)
    n = spec.tokens * batch * spec.heads
    flop_factor, byte_factor = MODE_FACTORS[mode]
    elem = torch.finfo(dtype).bits // 8
    flops = 4.0 * n * w * spec.head_dim * flop_factor
    bytes_ = 4.0 * n * spec.head_dim * elem * byte_factor
    return flops, bytes_


def run(benchmark, fn, device, repeat: int = 1, rounds: int = 20, warmup: int = 3, **info):
    """Time `fn` run `repeat` times per round (then a device sync); record `info` + repeat.

    The smoke run (LFVILA_BENCH_SMOKE=1) runs each case once: it tests the harness, not speed.
    """
    if smoke_mode():
        repeat, rounds, warmup = 1, 1, 0

    def closure():
        for _ in range(repeat):
            fn()
        synchronize(device)

    benchmark.extra_info.update(info, repeat=repeat)
    benchmark.pedantic(closure, rounds=rounds, warmup_rounds=warmup, iterations=1)
