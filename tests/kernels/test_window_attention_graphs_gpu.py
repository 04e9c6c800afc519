"""GPU checks of the host path and reproducibility (skipped without CUDA; gpu_check.sh runs
them): the packed module path at LF-VILA shapes in bf16 against the reference, CUDA-graph
capture of forward + backward after warm-up (no host syncs), and bitwise-identical results in
two separate processes (pinned launch configs, no autotuning)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from lfvila.kernels import window_attention_qkv
from lfvila.kernels.testing import window_attention_inputs
from lfvila.model.shapes import LFVILA_LAYERS

from ..helpers import grads, leaves
from .window_checks import check_against_reference

pytestmark = pytest.mark.gpu
LAYERS = {spec.name: spec for spec in LFVILA_LAYERS}


def _packed_run(inp, window, shift):
    def run(g):
        q, k, v, table = leaves(inp["q"], inp["k"], inp["v"], inp["rel_pos_bias"])
        qkv = torch.stack([q, k, v], dim=4).detach().requires_grad_(True)
        out = window_attention_qkv(qkv, window, shift, table, backend="triton")
        dqkv, dtable = grads(out, [qkv, table], g)
        return out, [*dqkv.unbind(4), dtable]

    return run


@pytest.mark.parametrize("name", list(LAYERS))
def test_packed_qkv_gpu_lfvila_shapes_bf16(name):
    spec = LAYERS[name]
    shape = (2, *spec.map_size, spec.heads, spec.head_dim)
    inp = window_attention_inputs(shape, spec.window, torch.bfloat16, "cuda", seed=5, pad_kv=False)
    check_against_reference(inp, spec.window, spec.shift, "effective",
                            _packed_run(inp, spec.window, spec.shift))  # fmt: skip


@pytest.mark.parametrize("name", ["L0", "L2", "L5"])
def test_window_attention_cuda_graph_capture(name):
    """Forward + backward captured in a CUDA graph after warm-up replays to eager's numbers."""
    spec = LAYERS[name]
    shape = (2, *spec.map_size, spec.heads, spec.head_dim)
    inp = window_attention_inputs(shape, spec.window, torch.bfloat16, "cuda", seed=7, pad_kv=False)
    qkv = torch.stack([inp["q"], inp["k"], inp["v"]], dim=4).requires_grad_(True)
    table = inp["rel_pos_bias"].float().requires_grad_(True)
    g = torch.randn(shape, device="cuda", dtype=torch.bfloat16)

    def step():
        out = window_attention_qkv(qkv, spec.window, spec.shift, table, backend="triton")
        return (out, *torch.autograd.grad(out, [qkv, table], g))

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm-up: JIT compile, geometry caches, bias-pair tables
            eager = step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(captured, eager):
        assert torch.equal(a, b)


_CHILD = r"""
import hashlib, sys, torch
from lfvila.kernels import window_attention_qkv
from lfvila.kernels.testing import window_attention_inputs
from lfvila.model.shapes import LFVILA_LAYERS
for spec in LFVILA_LAYERS:
    shape = (2, *spec.map_size, spec.heads, spec.head_dim)
    inp = window_attention_inputs(shape, spec.window, torch.bfloat16, "cuda", seed=9, pad_kv=False)
    qkv = torch.stack([inp["q"], inp["k"], inp["v"]], dim=4).requires_grad_(True)
    table = inp["rel_pos_bias"].float().requires_grad_(True)
    out = window_attention_qkv(qkv, spec.window, spec.shift, table, backend="triton")
    dqkv, dtable = torch.autograd.grad(out, [qkv, table], torch.ones_like(out))
    h = hashlib.sha256()
    for t in (out, dqkv, dtable):
        h.update(t.detach().float().cpu().numpy().tobytes())  # out requires grad
    print(spec.name, h.hexdigest())
"""


def test_window_attention_bitwise_reproducible_across_processes():
    """Pinned launch settings: two fresh processes give the same bits (no autotuner choice)."""
    env = {k: v for k, v in os.environ.items() if k != "LFVILA_AUTOTUNE"}

    def child():
        run = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True,
                             env=env, timeout=600)  # fmt: skip
        assert run.returncode == 0, run.stderr[-3000:]
        return run.stdout

    first, second = child(), child()
    assert first == second and len(first.splitlines()) == len(LFVILA_LAYERS)
