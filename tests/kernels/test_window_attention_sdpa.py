"""The sdpa backend (the reference's partition, then one `F.scaled_dot_product_attention`) against
the independent reference by the error-ratio rule: every case of the Triton tests and every bias
kind at every LF-VILA / Video-Swin window geometry (shifted and not, padded, pad vectors or
masked padding keys, a table, a dense and a broadcast bias), fp32 and fp16; the packed entry
point, the module, fp64 gradcheck, dropout, repeatability, torch.compile, and the one mask per
call (broadcast over the batch, never expanded per sample)."""

from __future__ import annotations

import pytest
import torch

from lfvila.kernels import (
    WindowAttention3D,
    can_run_sdpa,
    window_attention,
    window_attention_qkv,
    window_attention_ref,
)
from lfvila.kernels.testing import guarded, window_attention_inputs
from lfvila.kernels.window_attn import sdpa

from ..helpers import grads, leaves
from .test_window_attention_bias import GEOMETRIES, VARIANTS
from .test_window_attention_bias import _inputs as bias_inputs
from .test_window_attention_triton import CASES
from .window_checks import check_against_reference, public_api_run

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_window_attention_sdpa_matches_reference(case, dtype):
    shape, window, shift, pad, clamped = CASES[case]
    inp = window_attention_inputs(shape, window, dtype, DEVICE, seed=len(case), pad_kv=pad)
    run = public_api_run(inp, window, shift, clamped, backend="sdpa")
    check_against_reference(inp, window, shift, clamped, run)


@pytest.mark.parametrize("kind, shifted, pad", VARIANTS, ids=lambda v: str(v))
@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_window_attention_sdpa_bias_kinds_at_every_geometry(name, kind, shifted, pad):
    _, window, shift, _, _ = GEOMETRIES[name]
    shift = shift if shifted else (0, 0, 0)
    inp = bias_inputs(name, kind, torch.float32, pad, seed=len(name))
    run = public_api_run(inp, window, shift, "effective", backend="sdpa")
    check_against_reference(inp, window, shift, "effective", run)


@pytest.mark.parametrize(
    "name, kind", [("L0", "dense"), ("L2", "dense-broadcast"), ("L1", "table")]
)
def test_window_attention_sdpa_fp16_bias(name, kind):
    """fp16 with a bias in the inputs' dtype (a table stays fp32, as modules keep it)."""
    _, window, shift, _, _ = GEOMETRIES[name]
    inp = bias_inputs(name, kind, torch.float16, True, seed=3)
    if kind == "table":
        inp["rel_pos_bias"] = inp["rel_pos_bias"].float()
    run = public_api_run(inp, window, shift, "effective", backend="sdpa")
    check_against_reference(inp, window, shift, "effective", run)


def test_window_attention_sdpa_guarded_noncontiguous_inputs():
    shape, window, shift = (1, 5, 7, 9, 2, 16), (2, 3, 5), (0, 1, 2)
    inp = window_attention_inputs(shape, window, torch.float32, DEVICE, seed=11)
    inp = dict(inp, q=guarded(inp["q"]), k=guarded(inp["k"]), v=guarded(inp["v"]))
    run = public_api_run(inp, window, shift, "effective", backend="sdpa")
    check_against_reference(inp, window, shift, "effective", run)


def test_window_attention_sdpa_gradcheck_fp64():
    """Every input's gradient, the table's (through the fixed-order fold) and the pad vectors'
    included, on a shifted and padded map; then a broadcast dense bias with padding keys masked."""
    inp = window_attention_inputs((1, 3, 4, 6, 2, 8), (2, 3, 5), torch.float64, DEVICE, seed=1)
    q, k, v, table, k_pad, v_pad = leaves(
        inp["q"], inp["k"], inp["v"], inp["rel_pos_bias"], *inp["pad_kv"]
    )

    def with_table(q, k, v, table, k_pad, v_pad):
        return window_attention(q, k, v, (2, 3, 5), (0, 1, 2), table, pad_kv=(k_pad, v_pad),
                                backend="sdpa")  # fmt: skip

    assert torch.autograd.gradcheck(with_table, (q, k, v, table, k_pad, v_pad), fast_mode=True)
    dense = torch.randn(1, 30, 30, dtype=torch.float64, device=DEVICE, requires_grad=True)

    def with_dense(q, k, v, dense):
        return window_attention(q, k, v, (2, 3, 5), (0, 1, 2), attn_bias=dense, backend="sdpa")

    assert torch.autograd.gradcheck(with_dense, (q, k, v, dense), fast_mode=True)


def test_window_attention_sdpa_packed_and_module_paths():
    """window_attention_qkv and WindowAttention3D on sdpa: the same numbers as the unpacked call
    and as the reference module (fp64: equal up to rounding)."""
    inp = window_attention_inputs((2, 3, 5, 7, 2, 8), (2, 3, 5), torch.float64, DEVICE, seed=2)
    qkv = torch.stack([inp["q"], inp["k"], inp["v"]], dim=4)
    args = ((2, 3, 5), (0, 1, 2), inp["rel_pos_bias"])
    packed = window_attention_qkv(qkv, *args, pad_kv=inp["pad_kv"], backend="sdpa")
    plain = window_attention(*qkv.unbind(4), *args, pad_kv=inp["pad_kv"], backend="sdpa")
    torch.testing.assert_close(packed, plain, rtol=0, atol=0)
    torch.manual_seed(0)
    module = WindowAttention3D(16, (2, 3, 5), 2, backend="sdpa").double().to(DEVICE)
    reference = WindowAttention3D(16, (2, 3, 5), 2, backend="reference").double().to(DEVICE)
    reference.load_state_dict(module.state_dict())
    x = torch.randn(2, 3, 5, 7, 16, dtype=torch.float64, device=DEVICE, requires_grad=True)
    out, want = module(x, (0, 1, 2)), reference(x, (0, 1, 2))
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(out)
    got = grads(out, [x, module.relative_position_bias_table, module.qkv.weight], g)
    ref = grads(want, [x, reference.relative_position_bias_table, reference.qkv.weight], g)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_window_attention_sdpa_dropout_and_repeatability():
    """Dropout on the attention probabilities runs in SDPA (seeded: repeatable); without it the
    CPU backward is bitwise repeatable."""
    inp = window_attention_inputs((1, 4, 6, 10, 2, 16), (2, 3, 5), torch.float32, DEVICE, seed=3)
    g = torch.randn(inp["q"].shape, generator=torch.Generator().manual_seed(5)).to(DEVICE)

    def once(p=0.0, seed=0):
        torch.manual_seed(seed)
        q, k, v, table = leaves(inp["q"], inp["k"], inp["v"], inp["rel_pos_bias"])
        out = window_attention(q, k, v, (2, 3, 5), (0, 1, 2), table, backend="sdpa", dropout_p=p)
        return [out, *grads(out, [q, k, v, table], g)]

    for a, b in zip(once(), once()):
        assert torch.equal(a, b)
    dropped, again = once(0.5), once(0.5)
    assert torch.equal(dropped[0], again[0])
    assert not torch.allclose(dropped[0], once()[0])


def _recorded_masks(monkeypatch):
    calls = []
    real = sdpa.F.scaled_dot_product_attention

    def record(q, k, v, attn_mask=None, **kwargs):
        calls.append((tuple(q.shape), attn_mask))
        return real(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(sdpa.F, "scaled_dot_product_attention", record)
    return calls


@pytest.mark.parametrize(
    "shift, pad, kind, mask_shape",
    [
        ((0, 1, 2), True, "table", (1, 2 * 8, 30, 30)),  # per head and per window
        ((0, 0, 0), True, "none", None),  # nothing added: no mask at all
        ((0, 0, 0), True, "dense-broadcast", (1, 1, 30, 30)),  # one (N, N) for everything
        ((0, 1, 2), False, "dense-broadcast", (1, 2 * 8, 30, 30)),  # masked padding keys
    ],
)
def test_window_attention_sdpa_one_call_one_mask(monkeypatch, shift, pad, kind, mask_shape):
    """One SDPA call per window_attention call over (B, heads * nW, N, D), with one mask per
    call shared by the batch (its batch dim is 1: broadcast, not expanded per sample)."""
    calls = _recorded_masks(monkeypatch)
    inp = window_attention_inputs((3, 3, 5, 9, 2, 16), (2, 3, 5), torch.float32, DEVICE, pad_kv=pad)
    table = inp["rel_pos_bias"] if kind == "table" else None
    dense = torch.randn(1, 30, 30, device=DEVICE) if kind == "dense-broadcast" else None
    out = window_attention(inp["q"], inp["k"], inp["v"], (2, 3, 5), shift, table,
                           pad_kv=inp["pad_kv"], attn_bias=dense, backend="sdpa")  # fmt: skip
    [(q_shape, mask)] = calls
    assert q_shape == (3, 2 * 8, 30, 16)  # (B, heads * nW, N, D): 8 windows, padded map
    assert (None if mask is None else tuple(mask.shape)) == mask_shape
    want = window_attention_ref(inp["q"], inp["k"], inp["v"], (2, 3, 5), shift, table,
                                pad_kv=inp["pad_kv"], attn_bias=dense)  # fmt: skip
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)


def test_window_attention_sdpa_compiles_without_graph_break():
    """torch.compile traces the sdpa path (gather, table gather custom op, SDPA) in one graph."""
    inp = window_attention_inputs((1, 2, 3, 7, 2, 16), (2, 3, 5), torch.float32, DEVICE, seed=6)

    def fn(q, k, v, table):
        return window_attention(q, k, v, (2, 3, 5), (0, 1, 2), table, pad_kv=inp["pad_kv"],
                                backend="sdpa")  # fmt: skip

    q, k, v, table = leaves(inp["q"], inp["k"], inp["v"], inp["rel_pos_bias"])
    out = torch.compile(fn, backend="aot_eager", fullgraph=True)(q, k, v, table)
    g = torch.randn_like(out)
    got = grads(out, [q, k, v, table], g)
    q2, k2, v2, t2 = leaves(inp["q"], inp["k"], inp["v"], inp["rel_pos_bias"])
    want = fn(q2, k2, v2, t2)
    torch.testing.assert_close(out, want)
    for a, b in zip(got, grads(want, [q2, k2, v2, t2], g)):
        torch.testing.assert_close(a, b)


def test_can_run_sdpa_reasons():
    q = torch.zeros(1, 2, 3, 5, 2, 16)
    assert can_run_sdpa(q) == [] and can_run_sdpa(q.double()) == []
    assert can_run_sdpa(q.to(torch.float8_e4m3fn)) == [
        "dtype float8_e4m3fn not in (float16, bfloat16, float32, float64)"
    ]
