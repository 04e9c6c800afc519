"""Timing, FLOP and byte accounting (PERF.md formulas), and `extra_info` for the report.

Two times per benchmark, both per call:
- host: pytest-benchmark's wall clock over `repeat` calls then a device sync (median over
  rounds): the whole call as training sees it, Python, dispatch and launch overhead included;
  the report's "host ms" (`median_ms`).
- GPU, on CUDA only: CUDA events around each single call with L2 flushed before it (so inputs
  come from HBM, as in a training step, never from a warm L2), median and IQR over the
  repetitions, as `triton.testing.do_bench` does; `extra_info["gpu_ms"]`, the report's "GPU ms",
  from which it computes TFLOP/s and GB/s. When GPU ms is well below host ms the call is
  launch- or host-bound.
"""

from __future__ import annotations

import torch

from benchmarks.shapes import smoke_mode
from lfvila.model.shapes import AttentionLayer

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


L2_FLUSH_BYTES = 256 * 2**20  # > any GPU's L2 (H100/H200: 50 MiB), as triton's do_bench
GPU_TIME_BUDGET_MS = 200.0  # CUDA-event repetitions per benchmark: about this much GPU time
GPU_REPS = (10, 200)  # at least / at most


def cuda_event_times(fn, budget_ms: float = GPU_TIME_BUDGET_MS, reps=GPU_REPS) -> dict:
    """GPU time per call of `fn` from CUDA events: {gpu_ms (median), gpu_iqr_ms, gpu_reps}.

    Each call is bracketed by its own pair of events on the current stream, after zeroing an
    L2-sized buffer (outside the brackets), so no call finds its inputs in L2.
    """
    flush = torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device="cuda")
    fn()  # warm-up: compilation, autotuning, allocator
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(3):
        fn()
    end.record()
    torch.cuda.synchronize()
    estimate = max(start.elapsed_time(end) / 3, 1e-3)
    n = int(min(reps[1], max(reps[0], budget_ms // estimate)))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for s, e in zip(starts, ends):
        flush.zero_()
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    times = torch.tensor([s.elapsed_time(e) for s, e in zip(starts, ends)], dtype=torch.float64)
    q1, median, q3 = torch.quantile(times, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
    return dict(gpu_ms=float(median), gpu_iqr_ms=float(q3 - q1), gpu_reps=n)


def run(benchmark, fn, device, repeat: int = 1, rounds: int = 20, warmup: int = 3, **info):
    """Time `fn` run `repeat` times per round (then a device sync); record `info` + repeat.

    On CUDA also records the GPU time per call (`cuda_event_times`) in extra_info.
    The smoke run (LFVILA_BENCH_SMOKE=1) runs each case once: it tests the harness, not speed.
    """
    if smoke_mode():
        repeat, rounds, warmup = 1, 1, 0
    if torch.device(device).type == "cuda" and not smoke_mode():
        info = {**info, **cuda_event_times(fn), "gpu_timing": "CUDA events, L2 flushed"}

    def closure():
        for _ in range(repeat):
            fn()
        synchronize(device)

    benchmark.extra_info.update(info, repeat=repeat)
    benchmark.pedantic(closure, rounds=rounds, warmup_rounds=warmup, iterations=1)
