"""Packed qkv entry point, the bias-partial reduction kernel and the launch plan, under the
Triton interpreter (fp32 / fp16), against the independent reference by the error-ratio rule."""

from __future__ import annotations

import pytest
import torch

from lfvila.kernels.testing import window_attention_inputs
from lfvila.kernels.window_attn import triton_impl, window_attention_qkv
from lfvila.kernels.window_attn.bias import gather_table
from lfvila.kernels.window_attn.geometry import window_geometry
from lfvila.kernels.window_attn.module import attention_block
from lfvila.kernels.window_attn.triton_bias import reduce_bias_partials
from lfvila.kernels.window_attn.triton_bwd_fused import _bwd_fused_kernel
from lfvila.kernels.window_attn.triton_bwd_two_pass import _bwd_dkdv_kernel, _bwd_dq_bias_kernel
from lfvila.kernels.window_attn.triton_fwd import FWD_CONFIGS, _fwd_kernel, prune_fwd_configs

from ..helpers import grads, leaves
from .window_checks import check_against_reference, launcher_run

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

CASES = {
    # fused one-pass backward (30-token windows packed two per tile), padding carrying pad_kv
    "fused-pad": ((1, 4, 6, 10, 2, 16), (2, 3, 5), (0, 1, 2), True),
    # two-pass backward (84-token windows, NP 128 > 64): dq/bias pass then dk/dv pass
    "two-pass": ((1, 4, 6, 7, 2, 16), (4, 3, 7), (0, 1, 3), True),
    # no padding at all: pad_kv None, as the module passes it
    "no-padding": ((1, 4, 6, 10, 2, 16), (2, 3, 5), (0, 1, 2), False),
}


def _packed_run(inp, window, shift):
    def run(g):
        q, k, v, table = leaves(inp["q"], inp["k"], inp["v"], inp["rel_pos_bias"])
        qkv = torch.stack([q, k, v], dim=4).detach().requires_grad_(True)
        pad = tuple(leaves(*inp["pad_kv"])) if inp["pad_kv"] is not None else None
        out = window_attention_qkv(qkv, window, shift, table, pad_kv=pad, backend="triton")
        dqkv, *rest = grads(out, [qkv, table] + (list(pad) if pad else []), g)
        assert dqkv.shape == qkv.shape
        return out, [*dqkv.unbind(4), *rest]

    return run


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_packed_qkv_matches_reference(case, dtype):
    if dtype == torch.float16 and case != "two-pass":
        pytest.skip("fp16 on the two-pass case only, to keep the interpreter time down")
    shape, window, shift, pad = CASES[case]
    inp = window_attention_inputs(shape, window, dtype, DEVICE, seed=len(case), pad_kv=pad)
    check_against_reference(inp, window, shift, "effective", _packed_run(inp, window, shift))


def test_packed_qkv_backward_writes_one_packed_gradient():
    """The packed backward allocates the (…, 3, heads, D) gradient once and the kernels write its
    three views: the gradient reaching qkv is that buffer, not a stack of three tensors."""
    shape, window, shift, _ = CASES["fused-pad"]
    inp = window_attention_inputs(shape, window, torch.float32, DEVICE, seed=3, pad_kv=False)
    qkv = torch.stack([inp["q"], inp["k"], inp["v"]], dim=4).requires_grad_(True)
    out = window_attention_qkv(qkv, window, shift, inp["rel_pos_bias"], backend="triton")
    (dqkv,) = torch.autograd.grad(out, [qkv], torch.ones_like(out))
    assert dqkv.is_contiguous() and dqkv.shape == qkv.shape
    # the same numbers as the unpacked API
    from lfvila.kernels import window_attention

    q, k, v = leaves(inp["q"], inp["k"], inp["v"])
    out2 = window_attention(q, k, v, window, shift, inp["rel_pos_bias"], backend="triton")
    torch.testing.assert_close(out, out2, rtol=0, atol=0)
    dq, dk, dv = torch.autograd.grad(out2, [q, k, v], torch.ones_like(out2))
    torch.testing.assert_close(dqkv, torch.stack([dq, dk, dv], 4), rtol=0, atol=0)


def test_packed_qkv_rejects_bad_shape():
    with pytest.raises(ValueError, match=r"qkv must have shape \(B, T, H, W, 3, heads"):
        window_attention_qkv(torch.zeros(1, 2, 3, 5, 2, 2, 16), (2, 3, 5))


@pytest.mark.parametrize("np_rows, packed, chunks", [(32, 2, 3), (128, 1, 2), (16, 4, 1)])
def test_reduce_bias_kernel_matches_torch(np_rows, packed, chunks):
    """The GPU's fixed-order partial reduction (here under the interpreter) vs torch's sum."""
    s = packed * np_rows
    part = torch.randn(chunks, 3, s, s, dtype=torch.float64).float().to(DEVICE)
    got = reduce_bias_partials(part, np_rows, packed, use_kernel=True)
    want = reduce_bias_partials(part.cpu(), np_rows, packed, use_kernel=False)
    assert got.shape == (3, np_rows, np_rows) and got.is_contiguous()
    torch.testing.assert_close(got.cpu(), want, rtol=1e-6, atol=1e-5)
    # the diagonal blocks, summed over chunks, by a loop
    loop = sum(part[:, :, i * np_rows : (i + 1) * np_rows, i * np_rows : (i + 1) * np_rows]
               for i in range(packed)).sum(0)  # fmt: skip
    torch.testing.assert_close(want, loop.cpu(), rtol=1e-6, atol=1e-5)


def test_module_passes_pad_kv_only_with_padding(monkeypatch):
    """No LF-VILA layer pads: then the kernels get pad_kv=None (no pad path, no pad reductions);
    a map the window does not divide still gets the qkv bias as the padding tokens' k, v."""
    seen = []

    def spy(q, k, v, window, shift, table, scale, pad_kv, **kwargs):
        seen.append(pad_kv)
        return q

    monkeypatch.setattr("lfvila.kernels.window_attn.module.window_attention", spy)
    qkv = torch.nn.Linear(8, 24)
    attention_block(torch.zeros(1, 4, 6, 10, 8), qkv, 2, (2, 3, 5), (0, 1, 2), None, 0.5,
                    "reference", "effective", 0.0)  # fmt: skip
    attention_block(torch.zeros(1, 4, 7, 10, 8), qkv, 2, (2, 3, 5), (0, 1, 2), None, 0.5,
                    "reference", "effective", 0.0)  # fmt: skip
    assert seen[0] is None
    assert seen[1] is not None and seen[1][0].shape == (2, 4)
    assert not window_geometry((4, 6, 10), (2, 3, 5)).has_padding


def test_launch_plan_is_pinned_and_the_forward_is_persistent(monkeypatch):
    """Without LFVILA_AUTOTUNE the forward launches the plain kernel with the pinned settings
    (same code in every process), one launch, over fewer programs than units."""
    from triton.runtime.autotuner import Autotuner

    launches = []
    kernel_type = type(_fwd_kernel)  # JITFunction, or InterpretedFunction on the CPU
    monkeypatch.setattr(
        kernel_type, "run", lambda self, *a, grid, warmup, **kw: launches.append((self, grid, kw))
    )
    monkeypatch.setattr(Autotuner, "run", lambda self, *a, **kw: launches.append((self, None, kw)))
    monkeypatch.delenv("LFVILA_AUTOTUNE", raising=False)
    shape, window, shift, _ = CASES["no-padding"]
    inp = window_attention_inputs((4, *shape[1:]), window, torch.float32, "cpu", pad_kv=False)
    bias = gather_table(inp["rel_pos_bias"], window_geometry(shape[1:4], window, shift))
    triton_impl.fwd(inp["q"], inp["k"], inp["v"], bias, None, None, window, shift, 0.25, -100.0)
    assert len(launches) == 1
    fn, grid, kw = launches[0]
    assert fn is _fwd_kernel
    assert {kw["num_warps"], kw["num_stages"]} <= {1, 2, 4, 8}
    units = 4 * 2 * 2 * 2 * 32 // 64  # batch x windows x 32 rows / 64-row units
    heads = shape[-2]
    assert grid[0] == heads and grid[1] < units


def test_opt_in_autotuned_forward_matches_reference(monkeypatch):
    """LFVILA_AUTOTUNE=1 goes through the autotuner (and its config prune) to the same kernel."""
    monkeypatch.setenv("LFVILA_AUTOTUNE", "1")
    shape, window, shift, pad = CASES["fused-pad"]
    inp = window_attention_inputs(shape, window, torch.float32, DEVICE, seed=9, pad_kv=pad)
    check_against_reference(inp, window, shift, "effective", launcher_run(inp, window, shift))


def test_autotune_prune_keeps_stages_within_shared_memory():
    """Three key/value stages of fp32 at head_dim 128 would need ~290 KiB (compile report):
    pruned; every config stays for the training dtypes at LF-VILA's head dims."""
    configs = FWD_CONFIGS

    def kept(dtype, head_dim):
        q = torch.empty(1, 1, 1, 1, 2, head_dim, dtype=dtype)
        return prune_fwd_configs(configs, {"Q": q}, BLOCK=64)

    assert kept(torch.bfloat16, 32) == configs and kept(torch.float16, 64) == configs
    assert [c.num_stages for c in kept(torch.float32, 128)] == [2, 2]
    assert all(c.num_warps >= 4 for c in configs)  # 2 warps spilled at every big window


def test_backward_launch_counts(monkeypatch):
    """Fused path: one kernel; two-pass: two (on CPU tensors the bias partials are summed by
    torch ops; on a GPU one more launch reduces them)."""
    names = []
    kernels = {_bwd_fused_kernel: "fused", _bwd_dq_bias_kernel: "dq_bias", _bwd_dkdv_kernel: "dkdv"}
    monkeypatch.setattr(
        type(_fwd_kernel),
        "run",
        lambda self, *a, grid, warmup, **kw: names.append(kernels[self]),
    )
    for case, expected in (("no-padding", ["fused"]), ("two-pass", ["dq_bias", "dkdv"])):
        shape, window, shift, _ = CASES[case]
        inp = window_attention_inputs(shape, window, torch.float32, "cpu", pad_kv=False)
        q, k, v = inp["q"], inp["k"], inp["v"]
        bias = gather_table(inp["rel_pos_bias"], window_geometry(shape[1:4], window, shift))
        o, lse = torch.zeros_like(q), torch.zeros(q.shape[:-1])
        names.clear()
        triton_impl.bwd(o, q, k, v, o, lse, bias, None, None, window, shift, 0.25, -100.0)
        assert names == expected


def test_packed_custom_ops_opcheck():
    inp = window_attention_inputs((1, 2, 3, 5, 2, 16), (2, 3, 5), torch.float32, DEVICE, seed=4)
    qkv = torch.stack([inp["q"], inp["k"], inp["v"]], dim=4)
    bias = gather_table(inp["rel_pos_bias"], window_geometry((2, 3, 5), (2, 3, 5), (0, 1, 2)))
    args = (qkv, bias, *inp["pad_kv"], [2, 3, 5], [0, 1, 2], 0.25, -100.0, "triton")
    torch.library.opcheck(torch.ops.lfvila.window_attn_fwd_qkv.default, args,
                          test_utils=("test_schema", "test_faketensor"))  # fmt: skip
    out, lse = torch.ops.lfvila.window_attn_fwd_qkv(*args)
    bwd_args = (torch.randn_like(out), qkv, out, lse, *args[1:])
    torch.library.opcheck(torch.ops.lfvila.window_attn_bwd_qkv.default, bwd_args,
                          test_utils=("test_schema", "test_faketensor"))  # fmt: skip


def test_packed_path_compiles_without_graph_break():
    inp = window_attention_inputs((1, 2, 3, 5, 2, 16), (2, 3, 5), torch.float32, DEVICE, seed=6)

    def fn(qkv, table):
        return window_attention_qkv(qkv, (2, 3, 5), (0, 1, 2), table, backend="triton").sum()

    qkv = torch.stack([inp["q"], inp["k"], inp["v"]], dim=4).requires_grad_(True)
    table = inp["rel_pos_bias"].clone().requires_grad_(True)
    loss = torch.compile(fn, backend="aot_eager", fullgraph=True)(qkv, table)
    loss.backward()
    qkv2, table2 = leaves(qkv, table)
    expected = fn(qkv2, table2)
    expected.backward()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(qkv.grad, qkv2.grad)
    torch.testing.assert_close(table.grad, table2.grad)


@pytest.mark.parametrize(
    "block, chunks, key_split", [(32, 1, None), (64, 3, None), (32, 2, 2), (64, 1, 4)]
)
def test_two_pass_backward_tilings(block, chunks, key_split):
    """Two-pass backward with four or two key blocks per window, bias partials summed over one
    chunk of all 5 windows or over chunks of 2, 2 and 1 (the last one ragged). key_split: the
    dq/bias pass takes each 128-row window's keys in 2 or 4 parts and sums the bias rows in
    memory across the chunk's windows (3 and 2, or all 5)."""
    window, shift = (4, 3, 7), (0, 1, 3)
    inp = window_attention_inputs((1, 20, 3, 7, 2, 16), window, torch.float32, DEVICE, seed=block)
    run = launcher_run(inp, window, shift, block=block, chunks=chunks, key_split=key_split)
    check_against_reference(inp, window, shift, "effective", run)
