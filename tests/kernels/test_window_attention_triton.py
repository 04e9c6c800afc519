"""Triton window attention (interpreter on CPU) against the reference, by the error-ratio rule.

fp32 and fp16 only on CPU: bf16 tl.dot is wrong under the interpreter (bf16 runs in the GPU
tests). Shapes are tiny because the interpreter costs milliseconds per program and loop step.
"""

from __future__ import annotations

import pytest
import torch

from lfvila.kernels import window_attention
from lfvila.kernels.testing import guarded, window_attention_inputs
from lfvila.kernels.window_attn.bias import fold_on_cpu, gather_table
from lfvila.kernels.window_attn.geometry import window_geometry
from lfvila.kernels.window_attn.triton_bias import dense_to_table

from ..helpers import grads, leaves
from .window_checks import check_against_reference, launcher_run, public_api_run

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# (B, T, H, W, heads, D), window, shift, pad_kv, clamped_index. Comments: what the case covers.
CASES = {
    # 30-token windows, two per 64-row program, padding tokens carrying the qkv bias
    "packed-shift-pad": ((2, 4, 6, 10, 3, 16), (2, 3, 5), (0, 1, 2), True, "effective"),
    # a map the window does not divide, padding keys masked out
    "pad-masked": ((1, 5, 7, 9, 2, 16), (2, 3, 5), (0, 1, 2), False, "effective"),
    # shift on all three axes, non-divisible, head_dim 32
    "shift-all-axes": ((1, 5, 4, 7, 2, 32), (2, 3, 5), (1, 1, 2), True, "effective"),
    # 6-token windows: four per program
    "tiny-windows": ((2, 3, 4, 6, 2, 16), (1, 2, 3), (0, 1, 1), True, "effective"),
    # temporal axis clamped 8 -> 4 (L5-like global window), table of the configured window
    "clamped": ((2, 4, 3, 5, 2, 32), (8, 3, 5), (0, 1, 2), True, "effective"),
    # torchvision's index[:N, :N] behaviour on a clamped window
    "clamped-legacy": ((1, 3, 4, 4, 2, 16), (4, 3, 5), (2, 1, 2), True, "legacy"),
    # 84-token windows: NP = 128 > the 64-row backward block: dk/dv, dq and bias kernels
    "multi-tile": ((1, 4, 6, 7, 2, 16), (4, 3, 7), (0, 1, 3), True, "effective"),
    "multi-tile-masked": ((1, 5, 4, 9, 1, 64), (4, 3, 7), (0, 1, 3), False, "effective"),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_window_attention_triton_matches_reference(case, dtype):
    if dtype == torch.float16 and case not in ("packed-shift-pad", "multi-tile", "clamped"):
        pytest.skip("fp16 runs on a representative subset to keep the interpreter time down")
    shape, window, shift, pad, clamped = CASES[case]
    inp = window_attention_inputs(shape, window, dtype, DEVICE, seed=len(case), pad_kv=pad)
    check_against_reference(
        inp, window, shift, clamped, public_api_run(inp, window, shift, clamped)
    )


@pytest.mark.parametrize(
    "block, chunks, window, shift",
    [
        (16, 3, (2, 3, 5), (0, 1, 2)),  # 32-row windows over two 16-row blocks: online softmax
        (32, 2, (1, 2, 3), (0, 1, 1)),  # packed 16-row windows, chunked bias partials
    ],
)
def test_window_attention_triton_tilings(block, chunks, window, shift):
    """Force block sizes and chunk counts that default heuristics would not pick."""
    inp = window_attention_inputs((1, 4, 6, 5, 2, 16), window, torch.float32, DEVICE, seed=block)
    run = launcher_run(inp, window, shift, block=block, chunks=chunks)
    check_against_reference(inp, window, shift, "effective", run)


def test_window_attention_triton_guarded_noncontiguous_inputs():
    """q, k, v as strided views inside NaN-filled storage: any unmasked over-read shows as NaN."""
    shape, window, shift = (1, 5, 7, 9, 2, 16), (2, 3, 5), (0, 1, 2)
    inp = window_attention_inputs(shape, window, torch.float32, DEVICE, seed=11)
    guarded_inp = dict(inp, q=guarded(inp["q"]), k=guarded(inp["k"]), v=guarded(inp["v"]))
    assert not guarded_inp["q"].is_contiguous()
    check_against_reference(
        guarded_inp,
        window,
        shift,
        "effective",
        public_api_run(guarded_inp, window, shift, "effective"),
    )


@pytest.mark.parametrize("case", ["packed-shift-pad", "multi-tile"])
def test_window_attention_triton_backward_deterministic(case):
    """Bias-table (and every other) gradient is bitwise identical across runs: no float atomics."""
    shape, window, shift, pad, _ = CASES[case]
    inp = window_attention_inputs(shape, window, torch.float32, DEVICE, seed=2, pad_kv=pad)
    g = torch.randn(shape, device=DEVICE)

    def once():
        q, k, v, table = leaves(inp["q"], inp["k"], inp["v"], inp["rel_pos_bias"])
        pad_kv = tuple(leaves(*inp["pad_kv"]))
        out = window_attention(q, k, v, window, shift, table, pad_kv=pad_kv, backend="triton")
        return grads(out, [q, k, v, table, *pad_kv], g)

    first, second = once(), once()
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_window_attention_triton_custom_op_opcheck():
    inp = window_attention_inputs((1, 2, 3, 5, 2, 16), (2, 3, 5), torch.float32, DEVICE, seed=4)
    geom = window_geometry((2, 3, 5), (2, 3, 5), (0, 1, 2))
    bias = gather_table(inp["rel_pos_bias"], geom)
    args = (inp["q"], inp["k"], inp["v"], bias, *inp["pad_kv"], [2, 3, 5], [0, 1, 2], 0.25,
            -100.0, "triton")  # fmt: skip
    torch.library.opcheck(
        torch.ops.lfvila.window_attn_fwd.default,
        args,
        test_utils=("test_schema", "test_faketensor"),
    )
    out, lse = torch.ops.lfvila.window_attn_fwd(*args)
    bwd_args = (torch.randn_like(out), inp["q"], inp["k"], inp["v"], out, lse, *args[3:])
    torch.library.opcheck(
        torch.ops.lfvila.window_attn_bwd.default,
        bwd_args,
        test_utils=("test_schema", "test_faketensor"),
    )


def test_bias_table_custom_ops_opcheck():
    """The table's gather into the dense operand and the fold of its gradient, as torch ops."""
    table = torch.randn(135, 3, device=DEVICE)
    spec = ([2, 3, 6], [2, 3, 5], [0, 1, 2], "effective")
    torch.library.opcheck(torch.ops.lfvila.window_bias_gather.default, (table, *spec),
                          test_utils=("test_schema", "test_faketensor"))  # fmt: skip
    dense = torch.ops.lfvila.window_bias_gather(table, *spec)
    assert dense.shape == (3, 32, 32)
    torch.library.opcheck(torch.ops.lfvila.window_bias_fold.default,
                          (torch.randn_like(dense), *spec, torch.float32),
                          test_utils=("test_schema", "test_faketensor"))  # fmt: skip


def test_window_attention_triton_compiles_without_graph_break():
    """Dynamo traces the autograd Function and its custom ops in one graph (aot_eager backend)."""
    inp = window_attention_inputs((1, 2, 3, 5, 2, 16), (2, 3, 5), torch.float32, DEVICE, seed=6)

    def fn(q, k, v, table):
        return window_attention(q, k, v, (2, 3, 5), (0, 1, 2), table, backend="triton").sum()

    q, k, v, table = leaves(inp["q"], inp["k"], inp["v"], inp["rel_pos_bias"])
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    loss = compiled(q, k, v, table)
    loss.backward()
    q2, k2, v2, t2 = leaves(inp["q"], inp["k"], inp["v"], inp["rel_pos_bias"])
    expected = fn(q2, k2, v2, t2)
    expected.backward()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(table.grad, t2.grad)


@pytest.mark.parametrize("window, clamped", [((2, 3, 5), "effective"), ((4, 3, 5), "legacy")])
def test_fold_bias_kernel_matches_index_add(window, clamped):
    """The GPU's deterministic table fold (run here under the interpreter) vs index_add_, from
    the padded (heads, NP, NP) gradient whose padding lanes must not count."""
    geom = window_geometry((3, 4, 4), window, (0, 1, 0), clamped)
    np_rows = geom.padded_tokens
    dense = torch.randn(3, np_rows, np_rows, dtype=torch.float64).float().to(DEVICE)
    folded = dense_to_table(dense, geom)
    expected = fold_on_cpu(dense.cpu(), geom)
    torch.testing.assert_close(folded.cpu(), expected, rtol=1e-6, atol=1e-6)
    assert folded.shape == (geom.table_rows, 3)
    # the padding lanes carry no gradient into the table
    dense[:, geom.tokens :, :] = 1e6
    dense[:, :, geom.tokens :] = 1e6
    torch.testing.assert_close(dense_to_table(dense, geom).cpu(), expected, rtol=1e-6, atol=1e-6)
