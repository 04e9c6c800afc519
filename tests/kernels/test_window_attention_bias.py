"""The bias as one dense operand: a relative-position table and a user's dense bias (per head or
broadcast over heads) through the Triton kernels (interpreter on the CPU) at every LF-VILA and
Video-Swin window geometry on reduced maps, shifted and not, with pad vectors and with padding
keys masked, against the independent reference by the error-ratio rule; their equivalence, the
bitwise-repeatable dense gradient, and the argument errors."""

from __future__ import annotations

import pytest
import torch

from lfvila.kernels import WindowAttention3D, window_attention, window_attention_ref
from lfvila.kernels.testing import window_attention_inputs
from lfvila.kernels.window_attn.geometry import window_geometry
from lfvila.kernels.window_attn.reference import window_slots

from ..helpers import grads, leaves
from .window_checks import check_against_reference, public_api_run

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# name: (map (T, H, W), window, shift, heads, head_dim). Maps a little bigger than one or two
# windows, so every axis pads; the shifted form shifts every axis the map does not clamp.
GEOMETRIES = {
    "L0": ((3, 5, 9), (2, 3, 5), (0, 1, 2), 2, 16),  # 30 tokens, NP 32, fused backward
    "L1": ((5, 3, 7), (4, 3, 5), (0, 1, 2), 2, 16),  # 60 tokens, NP 64 (H clamped: no H shift)
    "L2": ((9, 4, 5), (8, 3, 5), (0, 1, 2), 1, 16),  # 120, NP 128: two-pass backward
    "L3": ((17, 4, 6), (16, 3, 5), (0, 1, 2), 1, 16),  # 240 tokens, NP 256
    "L5": ((20, 3, 5), (32, 3, 5), (0, 1, 2), 1, 32),  # global: clamped to 300 tokens, NP 512
    "vswin8x7x7": ((8, 8, 8), (8, 7, 7), (4, 3, 3), 1, 16),  # 392 tokens (T clamped), NP 512
    "vswin2x7x7": ((3, 8, 7), (2, 7, 7), (1, 3, 3), 2, 16),  # 98 tokens, NP 128
}
# (bias kind, shifted, pad vectors): each geometry runs all four
VARIANTS = [("table", True, True), ("table", False, False), ("dense", True, False),
            ("dense-broadcast", False, True)]  # fmt: skip


def _inputs(name, kind, dtype, pad, seed=0):
    size, window, shift, heads, d = GEOMETRIES[name]
    inp = window_attention_inputs(
        (1, *size, heads, d), window, dtype, DEVICE, seed=seed, pad_kv=pad
    )
    if kind != "table":
        n = window_geometry(size, window, shift).tokens
        gen = torch.Generator().manual_seed(seed + 7)
        dense = torch.randn(
            heads if kind == "dense" else 1, n, n, generator=gen, dtype=torch.float64
        )
        inp = dict(inp, rel_pos_bias=None, attn_bias=dense.to(dtype=dtype, device=DEVICE))
    return inp


@pytest.mark.parametrize("kind, shifted, pad", VARIANTS, ids=lambda v: str(v))
@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_window_attention_bias_kinds_at_every_geometry(name, kind, shifted, pad):
    size, window, shift, _, _ = GEOMETRIES[name]
    shift = shift if shifted else (0, 0, 0)
    inp = _inputs(name, kind, torch.float32, pad, seed=len(name))
    check_against_reference(
        inp, window, shift, "effective", public_api_run(inp, window, shift, "effective")
    )


@pytest.mark.parametrize(
    "name, kind", [("L0", "dense"), ("L2", "dense-broadcast"), ("L1", "table")]
)
def test_window_attention_bias_fp16(name, kind):
    """fp16 with a bias in the inputs' dtype (a table stays fp32, as modules keep it)."""
    size, window, shift, _, _ = GEOMETRIES[name]
    inp = _inputs(name, kind, torch.float16, True, seed=3)
    if kind == "table":
        inp["rel_pos_bias"] = inp["rel_pos_bias"].float()
    check_against_reference(
        inp, window, shift, "effective", public_api_run(inp, window, shift, "effective")
    )


def _dense_of_table(table, size, window, shift):
    """(R, heads) table -> (heads, N, N), by the reference's own index."""
    index = window_slots(window_geometry(size, window, shift))["bias_index"]
    return table[index.reshape(-1)].reshape(*index.shape, -1).permute(2, 0, 1).contiguous()


@pytest.mark.parametrize("name", ["L0", "L2"])
def test_a_table_and_its_dense_bias_give_the_same_bits(name):
    """A table and the dense bias it gathers to are the same kernel operand: the same output
    bits, and the table's gradient is the fold of the dense gradient."""
    size, window, shift, _, _ = GEOMETRIES[name]
    inp = _inputs(name, "table", torch.float32, True, seed=5)
    g = torch.randn(inp["q"].shape, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    q, k, v, table = leaves(inp["q"], inp["k"], inp["v"], inp["rel_pos_bias"])
    out_t = window_attention(q, k, v, window, shift, table, pad_kv=inp["pad_kv"], backend="triton")
    (dtable,) = grads(out_t, [table], g)
    dense = _dense_of_table(inp["rel_pos_bias"], size, window, shift).requires_grad_(True)
    out_d = window_attention(q, k, v, window, shift, pad_kv=inp["pad_kv"], backend="triton",
                             attn_bias=dense)  # fmt: skip
    (ddense,) = grads(out_d, [dense], g)
    assert torch.equal(out_t, out_d)
    index = window_slots(window_geometry(size, window, shift))["bias_index"].reshape(-1)
    folded = torch.zeros_like(dtable).index_add_(0, index.to(DEVICE), ddense.flatten(1).t())
    torch.testing.assert_close(dtable, folded, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name, kind", [("L0", "dense"), ("L2", "dense-broadcast")])
def test_dense_bias_gradients_are_bitwise_repeatable(name, kind):
    size, window, shift, _, _ = GEOMETRIES[name]
    inp = _inputs(name, kind, torch.float32, True, seed=9)
    g = torch.randn(inp["q"].shape, generator=torch.Generator().manual_seed(4)).to(DEVICE)

    def once():
        q, k, v, bias = leaves(inp["q"], inp["k"], inp["v"], inp["attn_bias"])
        out = window_attention(q, k, v, window, shift, pad_kv=inp["pad_kv"], backend="triton",
                               attn_bias=bias)  # fmt: skip
        return grads(out, [q, k, v, bias], g)

    for a, b in zip(once(), once()):
        assert torch.equal(a, b)


BAD_BIAS = {
    "both": (lambda n: dict(rel_pos_bias=torch.zeros(135, 2), attn_bias=torch.zeros(2, n, n)),
             r"give rel_pos_bias \(a relative-position table\) or attn_bias \(a dense bias\), "
             r"not both"),
    "heads": (lambda n: dict(attn_bias=torch.zeros(3, n, n)),
              r"attn_bias must have shape \(heads, N, N\) = \(2, 30, 30\) or \(1, 30, 30\) "
              r"\(N = 30 tokens of the window \(2, 3, 5\) on the 4x6x10 map\), got \(3, 30, 30\)"),
    "tokens": (lambda n: dict(attn_bias=torch.zeros(2, n, n + 1)), r"got \(2, 30, 31\)"),
    "rank": (lambda n: dict(attn_bias=torch.zeros(n, n)), r"got \(30, 30\)"),
    "dtype": (lambda n: dict(attn_bias=torch.zeros(2, n, n, dtype=torch.float64)),
              r"attn_bias must be float32 or q's dtype torch.float32, got torch.float64"),
    "device": (lambda n: dict(attn_bias=torch.zeros(2, n, n, device="meta")),
               r"attn_bias is on meta but q is on cpu"),
    "type": (lambda n: dict(attn_bias=[[0.0]]), r"attn_bias must be a tensor of shape"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_BIAS))
def test_attn_bias_errors_name_the_argument_and_the_shape(case):
    make, message = BAD_BIAS[case]
    q = torch.zeros(1, 4, 6, 10, 2, 16)
    with pytest.raises(ValueError, match=message):
        window_attention(q, q, q, (2, 3, 5), (0, 1, 2), backend="reference", **make(30))


def test_attn_bias_error_explains_a_clamped_window():
    q = torch.zeros(1, 3, 3, 5, 2, 16)  # window (8, 3, 5) clamped to (3, 3, 5): 45 tokens
    with pytest.raises(ValueError, match=r"N = 45 tokens of the window \(3, 3, 5\) on the 3x3x5 "
                                         r"map, clamped from \(8, 3, 5\)"):  # fmt: skip
        window_attention(q, q, q, (8, 3, 5), attn_bias=torch.zeros(2, 120, 120))


def test_module_state_dict_names_are_unchanged():
    """Checkpoints of WindowAttention3D (Video-Swin's names) load as before: the dense bias is
    built per call from the table, never stored."""
    module = WindowAttention3D(32, (2, 3, 5), 2)
    assert sorted(module.state_dict()) == [
        "proj.bias", "proj.weight", "qkv.bias", "qkv.weight", "relative_position_bias_table",
        "relative_position_index",
    ]  # fmt: skip
    assert module.relative_position_bias_table.shape == (135, 2)


def test_reference_adds_a_dense_bias_as_video_swin_adds_its_table():
    """The reference with attn_bias = the table's dense form equals the reference with the table
    (fp64: the same additions in the same order up to rounding)."""
    inp = window_attention_inputs((2, 4, 6, 10, 3, 8), (2, 3, 5), torch.float64, "cpu", seed=1)
    dense = _dense_of_table(inp["rel_pos_bias"], (4, 6, 10), (2, 3, 5), (0, 1, 2))
    a = window_attention_ref(
        inp["q"], inp["k"], inp["v"], (2, 3, 5), (0, 1, 2), inp["rel_pos_bias"]
    )
    b = window_attention_ref(inp["q"], inp["k"], inp["v"], (2, 3, 5), (0, 1, 2), attn_bias=dense)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
