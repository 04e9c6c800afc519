"""GPU checks of the compiled contrastive kernels (skipped without CUDA; gpu_check.sh runs them):
bf16/fp16 at LF-VILA's sizes by the error-ratio rule, bitwise determinism, memory, and capture
of forward + backward in a CUDA graph."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lfvila.kernels import contrastive_loss, mtc_loss, sample_mtc_indices
from lfvila.kernels.testing import GRADIENT, error_report, no_tf32

from ..helpers import grads, leaves

pytestmark = pytest.mark.gpu


def _pair(n, d, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    a = F.normalize(torch.randn(n, d, generator=gen), dim=-1)
    b = F.normalize(a + 0.7 * torch.randn(n, d, generator=gen), dim=-1)
    return a.cuda().to(dtype), b.cuda().to(dtype)


def _compare(run, inputs, names):
    """run(backend, dtype_or_None) -> (loss, grads); error-ratio rule on loss and every grad."""
    with no_tf32():
        truth, truth_grads = run("reference", torch.float32)
        pt, pt_grads = run("reference", None)
    out, out_grads = run("triton", None)
    ok, msg = error_report(out.reshape(1), truth.reshape(1), pt.reshape(1), 2.0, 1e-5)
    assert ok, f"loss: {msg}"
    for name, o, t, p in zip(names, out_grads, truth_grads, pt_grads):
        ok, msg = error_report(o, t, p, **GRADIENT)
        assert ok, f"{name}: {msg}"


@pytest.mark.parametrize(
    "n, d, dtype",
    [
        (512, 1024, torch.bfloat16),
        (4096, 1024, torch.bfloat16),
        (3001, 256, torch.bfloat16),
        (512, 1024, torch.float16),
    ],
)
def test_contrastive_gpu_matches_reference(n, d, dtype):
    a, b = _pair(n, d, dtype)
    log_scale = torch.tensor(math.log(20.0), device="cuda")

    def run(backend, dt):
        x, y, s = leaves(a, b, log_scale, dtype=dt)
        s = s.float().detach().requires_grad_()
        loss = contrastive_loss(x, y, logit_scale=s, backend=backend)
        return loss, grads(loss, [x, y, s], torch.tensor(1.3, device="cuda"))

    _compare(run, (a, b), ("da", "db", "dlogit_scale"))


def test_contrastive_gpu_backward_bitwise_deterministic():
    a, b = _pair(8192, 1024, torch.bfloat16, seed=1)

    def once():
        x, y = leaves(a, b)
        loss = contrastive_loss(x, y, backend="triton")
        return [loss, *torch.autograd.grad(loss, [x, y])]

    first, second = once(), once()
    assert all(torch.equal(p, q) for p, q in zip(first, second))


def test_contrastive_gpu_memory_stays_far_below_the_logits():
    """N = 65,536, d = 1024, bf16: scratch memory of forward + backward (peak over the inputs,
    their requires-grad copies and the two gradients every method returns) under 5% of the
    naive N x N fp32 logits (16 GiB). Analytic peak: 128 MiB of column partials in forward;
    G (128 MiB) + the fp32 dA accumulator (256 MiB) + one bf16 (N, d) product in backward."""
    n = 65536
    a, b = _pair(n, 1024, torch.bfloat16, seed=2)
    x, y = leaves(a, b)  # allocated before `base`: inputs, not scratch
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    da, db = torch.autograd.grad(contrastive_loss(x, y, backend="triton"), [x, y])
    torch.cuda.synchronize()
    scratch = torch.cuda.max_memory_allocated() - base - da.nbytes - db.nbytes
    assert scratch < 0.05 * 4 * n * n, f"scratch {scratch / 2**20:.0f} MiB"


def _graph_matches_eager(step, inputs, fresh):
    """Capture step(*inputs) -> [loss, *grads] in a CUDA graph after warm-up on a side stream,
    refill the static inputs with `fresh`, replay, and compare with eager on `fresh`: the loss
    bitwise (the same kernels on the same data), the gradients to bf16 rounding (cuBLAS may
    pick another algorithm under capture; MTC's backward uses float atomics). A stale replay
    would still hold the captured inputs' results, far outside that."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up: Triton compiles, the allocator settles
        for _ in range(2):
            step(*inputs)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = step(*inputs)
    with torch.no_grad():
        for x, f in zip(inputs, fresh):
            x.copy_(f)
    graph.replay()
    torch.cuda.synchronize()
    eager = step(*leaves(*fresh))
    assert torch.equal(static_out[0], eager[0]), (static_out[0], eager[0])
    for got, want in zip(static_out[1:], eager[1:]):
        torch.testing.assert_close(got, want)


def test_contrastive_and_mtc_gpu_capture_in_a_cuda_graph():
    """Forward + backward of both losses in a CUDA graph (no host sync anywhere on the path:
    capture fails on one, and eager runs under sync debug mode "error") equal eager."""
    a, b = _pair(1000, 256, torch.bfloat16, seed=6)
    a2, b2 = _pair(1000, 256, torch.bfloat16, seed=7)

    def infonce(x, y):
        loss = contrastive_loss(x, y, backend="triton")
        return [loss.detach(), *torch.autograd.grad(loss, [x, y])]

    torch.cuda.set_sync_debug_mode("error")  # eager calls must not sync either
    try:
        infonce(*leaves(a, b))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    _graph_matches_eager(infonce, leaves(a, b), (a2, b2))

    gen = torch.Generator().manual_seed(8)
    clip, sent, clip2, sent2 = (
        F.normalize(torch.randn(64, 4, 256, generator=gen), dim=-1).cuda().to(torch.bfloat16)
        for _ in range(4)
    )
    idx = sample_mtc_indices(64, 4, generator=torch.Generator().manual_seed(9), device="cuda")

    def mtc(c, s):
        loss = mtc_loss(c, s, indices=idx, backend="triton")
        return [loss.detach(), *torch.autograd.grad(loss, [c, s])]

    torch.cuda.set_sync_debug_mode("error")
    try:
        mtc(*leaves(clip, sent))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    _graph_matches_eager(mtc, leaves(clip, sent), (clip2, sent2))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_mtc_gpu_matches_reference(dtype):
    gen = torch.Generator().manual_seed(4)
    clip = F.normalize(torch.randn(512, 4, 1024, generator=gen), dim=-1).cuda().to(dtype)
    sent = (
        F.normalize(clip.float().cpu() + 0.5 * torch.randn(512, 4, 1024, generator=gen), dim=-1)
        .cuda()
        .to(dtype)
    )
    idx = sample_mtc_indices(512, 4, generator=torch.Generator().manual_seed(5), device="cuda")

    def run(backend, dt):
        c, s = leaves(clip, sent, dtype=dt)
        loss = mtc_loss(c, s, indices=idx, backend=backend)
        return loss, grads(loss, [c, s], torch.tensor(1.0, device="cuda"))

    _compare(run, (clip, sent), ("dclip", "dsent"))
