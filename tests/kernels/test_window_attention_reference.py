"""window_attention_ref against an independent naive loop (fp64) and torchvision's module."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.video.swin_transformer import ShiftedWindowAttention3d

from lfvila.kernels import WindowAttention3D, relative_position_index, window_attention_ref
from lfvila.kernels.testing import window_attention_inputs

from ..helpers import assert_close_verbose, grads, leaves
from .naive import naive_window_attention

# (B, T, H, W, heads, D), window, shift, pad_kv, clamped_index
CASES = {
    "divisible": ((2, 4, 6, 10, 3, 8), (2, 3, 5), (0, 0, 0), True, "effective"),
    "divisible-shift": ((2, 4, 6, 10, 3, 8), (2, 3, 5), (0, 1, 2), True, "effective"),
    "pad-shift": ((1, 5, 7, 9, 3, 8), (2, 3, 5), (0, 1, 2), True, "effective"),
    "pad-masked": ((1, 5, 7, 9, 3, 8), (2, 3, 5), (0, 1, 2), False, "effective"),
    "pad-temporal-shift": ((2, 5, 4, 7, 1, 16), (2, 3, 5), (1, 1, 2), True, "effective"),
    "clamped": ((1, 3, 4, 4, 2, 8), (4, 3, 5), (2, 1, 2), True, "effective"),
    "clamped-legacy": ((1, 3, 4, 4, 2, 8), (4, 3, 5), (2, 1, 2), True, "legacy"),
    "global-L5": ((2, 4, 3, 5, 2, 8), (4, 3, 5), (0, 1, 2), True, "effective"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_window_attention_ref_matches_naive(case):
    shape, window, shift, pad, clamped = CASES[case]
    inp = window_attention_inputs(shape, window, torch.float64, seed=len(case), pad_kv=pad)
    q, k, v, table = leaves(inp["q"], inp["k"], inp["v"], inp["rel_pos_bias"])
    pad_kv = tuple(leaves(*inp["pad_kv"])) if pad else None
    kwargs = dict(rel_pos_bias=table, pad_kv=pad_kv, clamped_index=clamped)
    out = window_attention_ref(q, k, v, window, shift, **kwargs)
    expected = naive_window_attention(q, k, v, window, shift, **kwargs)
    assert_close_verbose(out, expected, atol=1e-12, rtol=1e-10, name="output")

    inputs = [q, k, v, table] + (list(pad_kv) if pad else [])
    g = torch.randn_like(out)
    names = ["dq", "dk", "dv", "dtable", "dk_pad", "dv_pad"]
    for name, got, want in zip(names, grads(out, inputs, g), grads(expected, inputs, g)):
        assert_close_verbose(got, want, atol=1e-11, rtol=1e-9, name=name)


def test_window_attention_ref_noncontiguous_inputs():
    shape, window = (2, 4, 6, 10, 2, 8), (2, 3, 5)
    inp = window_attention_inputs(shape, window, torch.float64, seed=3)
    # heads-last views of a packed qkv tensor, as a module produces them
    qkv = torch.stack([inp["q"], inp["k"], inp["v"]], dim=4)  # (B, T, H, W, 3, heads, D)
    q, k, v = qkv.unbind(4)
    assert not q.is_contiguous()
    out = window_attention_ref(
        q, k, v, window, (0, 1, 2), inp["rel_pos_bias"], pad_kv=inp["pad_kv"]
    )
    expected = naive_window_attention(
        q.contiguous(), k.contiguous(), v.contiguous(), window, (0, 1, 2), inp["rel_pos_bias"],
        pad_kv=inp["pad_kv"],
    )  # fmt: skip
    assert_close_verbose(out, expected, atol=1e-12, rtol=1e-10)


def test_window_attention_ref_shift_mask_value_matters():
    """The -100 mask is really applied: another mask value changes the result."""
    inp = window_attention_inputs((1, 4, 6, 10, 2, 8), (2, 3, 5), torch.float64, seed=5)
    a = window_attention_ref(inp["q"], inp["k"], inp["v"], (2, 3, 5), (0, 1, 2))
    b = naive_window_attention(inp["q"], inp["k"], inp["v"], (2, 3, 5), (0, 1, 2), mask_value=-1.0)
    assert (a - b).abs().max() > 1e-3


def test_window_attention_ref_gradcheck():
    inp = window_attention_inputs((1, 3, 4, 5, 2, 4), (2, 3, 3), torch.float64, seed=7)
    args = leaves(inp["q"], inp["k"], inp["v"], inp["rel_pos_bias"], *inp["pad_kv"])

    def fn(q, k, v, table, k_pad, v_pad):
        return window_attention_ref(q, k, v, (2, 3, 3), (1, 1, 1), table, pad_kv=(k_pad, v_pad))

    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("window", [(2, 3, 5), (8, 7, 7), (32, 3, 5), (1, 1, 1)])
def test_relative_position_index_matches_torchvision(window):
    tv = ShiftedWindowAttention3d(8, list(window), [0, 0, 0], num_heads=2)
    torch.testing.assert_close(
        relative_position_index(window), tv.relative_position_index, rtol=0, atol=0
    )


# (B, T, H, W, C), heads, window, shift
MODULE_CASES = {
    "unshifted": ((2, 4, 6, 10, 16), 2, (2, 3, 5), (0, 0, 0)),
    "shifted": ((1, 4, 6, 10, 16), 2, (2, 3, 5), (0, 1, 2)),
    "pad-shifted": ((2, 5, 7, 9, 24), 3, (2, 3, 5), (0, 1, 2)),
    "pad-shifted-all-axes": ((1, 5, 4, 7, 16), 4, (2, 3, 5), (1, 1, 2)),
}


@pytest.mark.parametrize("case", list(MODULE_CASES))
def test_window_attention_module_matches_torchvision(case):
    (B, T, H, W, C), heads, window, shift = MODULE_CASES[case]
    tv = ShiftedWindowAttention3d(C, list(window), list(shift), heads).double()
    with torch.no_grad():  # torchvision inits the table with std 0.02: make its effect visible
        tv.relative_position_bias_table.normal_()
        tv.qkv.bias.normal_()
    ours = WindowAttention3D(C, window, heads, backend="reference").double()
    ours.load_state_dict(tv.state_dict(), strict=True)

    x = torch.randn(B, T, H, W, C, dtype=torch.float64)
    x_tv, x_ours = leaves(x, x)
    out_tv, out_ours = tv(x_tv), ours(x_ours, shift)
    assert_close_verbose(out_ours, out_tv, atol=1e-12, rtol=1e-10, name="output")
    g = torch.randn_like(out_tv)
    params = ["qkv.weight", "qkv.bias", "proj.weight", "proj.bias", "relative_position_bias_table"]
    p_tv = [dict(tv.named_parameters())[n] for n in params]
    p_ours = [dict(ours.named_parameters())[n] for n in params]
    for name, a, b in zip(
        ["input"] + params, grads(out_ours, [x_ours] + p_ours, g), grads(out_tv, [x_tv] + p_tv, g)
    ):
        assert_close_verbose(a, b, atol=1e-11, rtol=1e-9, name=name)


def test_reference_after_a_first_call_in_inference_mode():
    """The index caches are built outside inference mode: a geometry first met under
    `torch.inference_mode()` (lfvila.Encoder) still trains afterwards in the same process."""
    from lfvila.kernels import window_attention_ref

    shape, window, shift = (
        (1, 3, 7, 11, 2, 8),
        (3, 7, 11),
        (1, 3, 5),
    )  # a geometry no other test uses
    q, k, v = (torch.randn(shape) for _ in range(3))
    table = torch.randn(5 * 13 * 21, 2)
    with torch.inference_mode():
        window_attention_ref(q, k, v, window, shift, table)
    q.requires_grad_(True)
    table.requires_grad_(True)
    window_attention_ref(q, k, v, window, shift, table).sum().backward()
    assert q.grad is not None and table.grad is not None
