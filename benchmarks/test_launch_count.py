"""benchmarks/launch_count.py: the op counter's classification and one layer's counts (CPU)."""

from __future__ import annotations

import torch
from triton.runtime.jit import JITFunction

from benchmarks.launch_count import OpCounter, count_layers, table
from lfvila.model.shapes import layer


def test_op_counter_separates_kernels_views_and_allocations():
    x = torch.randn(4, 4)
    with OpCounter() as ops:
        y = x.view(16).unsqueeze(0).t()  # views: no kernel
        (y + 1).permute(1, 0)  # one kernel
        torch.empty(3)  # an allocation
        x.t().contiguous()  # a copy kernel
    assert ops.kinds["aten"] == 2, ops.names
    assert ops.kinds["alloc"] == 1, ops.names
    assert ops.kinds["view"] >= 4


def test_launch_count_layer_counts_and_restores():
    run = JITFunction.run
    rows = count_layers([layer("L0")])
    assert JITFunction.run is run  # patches undone
    assert {(r["case"], r["path"]) for r in rows} == {
        ("L0", "functional"), ("L0", "module"), ("L0-shift", "functional"), ("L0-shift", "module")
    }  # fmt: skip
    for r in rows:
        assert r["fwd"]["triton"] >= 1 and r["bwd"]["triton"] >= 1, r
    module = next(r for r in rows if r["path"] == "module")
    assert module["fwd"]["aten"] >= 2, module  # the qkv and output projections
    assert "| L0 | functional |" in table(rows)
