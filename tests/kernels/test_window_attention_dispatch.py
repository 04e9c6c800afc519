"""Dispatch, validation errors, the module wrapper and torch.compile on the reference path."""

from __future__ import annotations

import logging

import pytest
import torch

import lfvila.kernels._dispatch as shared_dispatch
from lfvila.kernels import WindowAttention3D, can_run_triton, window_attention, window_attention_ref
from lfvila.kernels.testing import window_attention_inputs


def _qkv(shape=(1, 4, 6, 10, 2, 16), dtype=torch.float32):
    inp = window_attention_inputs(shape, (2, 3, 5), dtype)
    return inp["q"], inp["k"], inp["v"], inp["rel_pos_bias"]


BAD_INPUTS = {
    "rank": (
        lambda q, k, v, t: dict(q=q[0], k=k[0], v=v[0]),
        r"q must have shape \(B, T, H, W, heads, head_dim\)",
    ),
    "k-shape": (
        lambda q, k, v, t: dict(k=k[:, :2]),
        r"k must have q's shape \(1, 4, 6, 10, 2, 16\), got \(1, 2, 6, 10, 2, 16\)",
    ),
    "v-dtype": (
        lambda q, k, v, t: dict(v=v.double()),
        r"v has dtype torch.float64 but q has torch.float32",
    ),
    "k-device": (lambda q, k, v, t: dict(k=k.to("meta")), r"k is on meta but q is on cpu"),
    "window-zero": (
        lambda q, k, v, t: dict(window_size=(0, 3, 5)),
        r"window_size must be 3 positive ints",
    ),
    "window-len": (
        lambda q, k, v, t: dict(window_size=(2, 3)),
        r"window_size must be 3 positive ints",
    ),
    "shift-too-big": (
        lambda q, k, v, t: dict(shift_size=(0, 3, 2)),
        r"shift_size\[1\]=3 must be < window_size\[1\]=3",
    ),
    "shift-negative": (
        lambda q, k, v, t: dict(shift_size=(0, -1, 2)),
        r"shift_size must be 3 non-negative ints",
    ),
    "table-size": (
        lambda q, k, v, t: dict(rel_pos_bias=t[:-1]),
        r"rel_pos_bias must have shape .* = \(135, 2\) for window_size \(2, 3, 5\), got \(134, 2\)",
    ),
    "pad-shape": (
        lambda q, k, v, t: dict(pad_kv=(torch.zeros(2, 8), torch.zeros(2, 16))),
        r"pad_kv\[0\] must have shape \(heads, head_dim\) = \(2, 16\), got \(2, 8\)",
    ),
    "pad-pair": (lambda q, k, v, t: dict(pad_kv=torch.zeros(2, 16)), r"pad_kv must be a pair"),
    "scale-nan": (lambda q, k, v, t: dict(scale=float("nan")), r"scale must be a finite number"),
    "backend": (lambda q, k, v, t: dict(backend="fast"), r"backend must be one of"),
    "clamped-index": (
        lambda q, k, v, t: dict(clamped_index="sliced"),
        r"clamped_index must be one of",
    ),
    "int-dtype": (
        lambda q, k, v, t: dict(q=q.long(), k=k.long(), v=v.long()),
        r"q must be a floating tensor",
    ),
    "empty-map": (
        lambda q, k, v, t: dict(q=q[:, :0], k=k[:, :0], v=v[:, :0]),
        r"q has an empty dimension",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_window_attention_bad_input_raises(case):
    q, k, v, table = _qkv()
    change, message = BAD_INPUTS[case]
    kwargs = dict(q=q, k=k, v=v, window_size=(2, 3, 5), shift_size=(0, 1, 2), rel_pos_bias=table)
    kwargs.update(change(q, k, v, table))
    with pytest.raises(ValueError, match=message):
        window_attention(**kwargs)


def test_window_attention_triton_rejects_non_unit_inner_stride():
    q, k, v, _ = _qkv()
    q_strided = q.transpose(-1, -2).contiguous().transpose(-1, -2)  # stride(-1) == heads
    with pytest.raises(ValueError, match=r"q.stride\(-1\) is 2, not 1"):
        window_attention(q_strided, k, v, (2, 3, 5), backend="triton")
    # the reference takes any layout
    torch.testing.assert_close(
        window_attention(q_strided, k, v, (2, 3, 5), backend="reference"),
        window_attention_ref(q, k, v, (2, 3, 5)),
    )


def test_can_run_triton_reasons():
    q, k, v, _ = _qkv(shape=(1, 2, 3, 5, 2, 40))
    reasons = can_run_triton(q, k, v, dropout_p=0.1)
    assert "head_dim 40 not in (16, 32, 64, 128)" in reasons
    assert "attention dropout 0.1 is not fused" in reasons
    qb = q.bfloat16()
    assert any("bf16" in r for r in can_run_triton(qb, qb, qb))


def test_explicit_backend_that_cannot_run_raises_with_every_reason():
    q, k, v, _ = _qkv(shape=(1, 2, 3, 5, 2, 40))
    with pytest.raises(ValueError, match=r"backend 'triton' cannot run: .*head_dim 40"):
        window_attention(q, k, v, (2, 3, 5), backend="triton")
    with pytest.raises(ValueError, match=r"backend 'cuda' cannot run: lfvila._C"):
        window_attention(q, k, v, (2, 3, 5), backend="cuda")


def test_auto_on_cpu_uses_reference_and_logs_reason(caplog, monkeypatch):
    monkeypatch.setattr(shared_dispatch, "_logged", set())
    q, k, v, _ = _qkv()
    with caplog.at_level(logging.DEBUG, logger="lfvila.kernels"):
        out = window_attention(q, k, v, (2, 3, 5), backend="auto")
    torch.testing.assert_close(out, window_attention_ref(q, k, v, (2, 3, 5)), rtol=0, atol=0)
    assert "auto chose 'reference'" in caplog.text
    assert "CPU tensors use the reference" in caplog.text


def test_env_override_forces_backend(monkeypatch):
    q, k, v, _ = _qkv(shape=(1, 2, 3, 5, 2, 40))
    monkeypatch.setenv("LFVILA_KERNEL_BACKEND", "triton")
    with pytest.raises(ValueError, match="backend 'triton' cannot run"):
        window_attention(q, k, v, (2, 3, 5))
    monkeypatch.setenv("LFVILA_KERNEL_BACKEND", "bogus")
    with pytest.raises(ValueError, match="LFVILA_KERNEL_BACKEND='bogus'"):
        window_attention(q, k, v, (2, 3, 5))


def test_window_attention_module_names_and_no_bias_padding():
    module = WindowAttention3D(16, (2, 3, 5), 2, qkv_bias=False, backend="reference").double()
    names = set(module.state_dict())
    assert {
        "qkv.weight",
        "proj.weight",
        "proj.bias",
        "relative_position_bias_table",
        "relative_position_index",
    } == names
    assert module.relative_position_bias_table.shape == (135, 2)
    # with no qkv bias, Video-Swin's zero padding gives zero keys and values (not masked keys)
    x = torch.randn(1, 3, 4, 7, 16, dtype=torch.float64)
    heads, d = 2, 8
    q, k, v = module.qkv(x).view(1, 3, 4, 7, 3, heads, d).unbind(4)
    zeros = torch.zeros(heads, d, dtype=torch.float64)
    o = window_attention_ref(
        q, k, v, (2, 3, 5), (0, 1, 2), module.relative_position_bias_table, pad_kv=(zeros, zeros)
    )
    torch.testing.assert_close(module(x, (0, 1, 2)), module.proj(o.reshape(1, 3, 4, 7, 16)))


def test_window_attention_module_attention_dropout_runs_reference():
    module = WindowAttention3D(16, (2, 3, 5), 2, attn_drop=0.5)
    x = torch.randn(1, 2, 3, 5, 16)
    module.train()
    a, b = module(x), module(x)
    assert not torch.equal(a, b)  # dropout is active in training
    module.eval()
    torch.testing.assert_close(module(x), module(x), rtol=0, atol=0)


def test_window_attention_module_compiles_on_reference_path():
    module = WindowAttention3D(16, (2, 3, 5), 2, backend="reference")
    x = torch.randn(2, 4, 6, 10, 16, requires_grad=True)
    compiled = torch.compile(module, fullgraph=True)
    out = compiled(x, (0, 1, 2))
    expected = module(x, (0, 1, 2))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    (gx,) = torch.autograd.grad(out.sum(), x)
    (gx_eager,) = torch.autograd.grad(expected.sum(), x)
    torch.testing.assert_close(gx, gx_eager, rtol=1e-4, atol=1e-5)
