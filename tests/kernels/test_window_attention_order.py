"""Order- and initialisation-dependence harness for the window-attention kernels (CPU, cheap).

Every launch runs its programs reversed or shuffled and twice over, and every launcher buffer
starts as NaN (`poisoned_buffers`), on shifted windows with a bias table, at shapes where each
kernel's loop runs more than once per program (persistent forward units, fused-backward chunks,
dq/bias-pass windows, key parts). Results are checked against the reference by the error-ratio
rule, the forward's saved log-sum-exp too. The interpreter still runs one program at a time: this
keeps out bugs that depend on program order or on what a buffer held before, not GPU races or
compiler bugs (see program_order.py).
"""

from __future__ import annotations

import math

import pytest
import torch
import triton
import triton.language as tl

from lfvila.kernels._backend import interpreter_enabled
from lfvila.kernels._buffers import alloc, poisoned_buffers
from lfvila.kernels.testing import assert_error_ratio, no_tf32, window_attention_inputs
from lfvila.kernels.window_attn import triton_impl, window_attention_lse_ref
from lfvila.kernels.window_attn.bias import gather_table
from lfvila.kernels.window_attn.geometry import window_geometry

from .program_order import scrambled_programs
from .window_checks import check_against_reference, launcher_run, public_api_run

pytestmark = pytest.mark.skipif(
    not interpreter_enabled(), reason="the harness reorders the Triton interpreter's programs"
)

# (B, T, H, W, heads, D), window, shift; all shifted, all with a table and pad vectors.
CASES = {
    # NP 32: two windows per 64-row unit; the forward walks 3 units per program, the fused
    # backward several units per chunk, padding tokens on every axis
    "packed": ((2, 4, 6, 10, 3, 16), (2, 3, 5), (0, 1, 2)),
    # NP 128: forward online softmax over 2 key blocks and 2 units per program; the dq/bias
    # pass walks 4 windows per chunk; dk/dv over 2 query blocks; temporal shift too
    "multi-tile": ((2, 4, 6, 7, 2, 16), (4, 3, 7), (1, 1, 3)),
}


@pytest.mark.parametrize("order", ["reversed", "shuffled"])
@pytest.mark.parametrize("case", list(CASES))
def test_window_attention_is_order_independent(case, order):
    shape, window, shift = CASES[case]
    inp = window_attention_inputs(shape, window, torch.float32, "cpu", seed=len(case))
    with scrambled_programs(order, seed=7, repeat=2) as state, poisoned_buffers():
        check_against_reference(
            inp, window, shift, "effective", public_api_run(inp, window, shift, "effective")
        )
    assert state["launches"] >= 4  # forward, backward and the two bias reductions all ran


@pytest.mark.parametrize("order", ["reversed", "shuffled"])
def test_dq_bias_key_parts_are_order_independent(order):
    """The key-parts path adds each part's dS rows into the program's own slice of the bias
    partials across windows (read-modify-write): the one place a program reads what it wrote."""
    shape, window, shift = CASES["multi-tile"]
    inp = window_attention_inputs(shape, window, torch.float32, "cpu", seed=3)
    run = launcher_run(inp, window, shift, key_split=2)
    with scrambled_programs(order, seed=11, repeat=2), poisoned_buffers():
        check_against_reference(inp, window, shift, "effective", run)


@pytest.mark.parametrize("case", list(CASES))
def test_forward_lse_matches_the_reference_logsumexp(case):
    """The statistics the backward recomputes P from, checked on their own (log2 units)."""
    shape, window, shift = CASES[case]
    inp = window_attention_inputs(shape, window, torch.float32, "cpu", seed=5)
    q, k, v, table = inp["q"], inp["k"], inp["v"], inp["rel_pos_bias"]
    scale = shape[-1] ** -0.5
    bias = gather_table(table, window_geometry(shape[1:4], window, shift))
    with scrambled_programs("shuffled", seed=3), poisoned_buffers():
        _, lse = triton_impl.fwd(q, k, v, bias, *inp["pad_kv"], window, shift, scale, -100.0)
    with no_tf32():
        f64 = [x.double() for x in (q, k, table, *inp["pad_kv"])]
        truth = window_attention_lse_ref(
            f64[0], f64[1], window, shift, f64[2], scale, (f64[3], f64[4])
        )
        pt = window_attention_lse_ref(q, k, window, shift, table, scale, inp["pad_kv"])
    assert_error_ratio(lse * math.log(2.0), truth, pt, "lse")


# --------------------------------------------------------------------------- the harness itself


@triton.jit
def _last_writer(OUT):
    tl.store(OUT, tl.program_id(0))


@triton.jit
def _increment(OUT):
    tl.store(OUT, tl.load(OUT) + 1)


@triton.jit
def _write_even(OUT, n, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK) * 2
    tl.store(OUT + i, i.to(tl.float32), mask=i < n)


def test_harness_reorders_and_repeats_programs():
    out = torch.zeros(1, dtype=torch.int32)
    _last_writer[(8,)](out)
    assert out.item() == 7  # the interpreter's own order: the last program wins
    with scrambled_programs("reversed") as state:
        _last_writer[(8,)](out)
    assert out.item() == 0 and state["launches"] == 1
    seen = set()
    for seed in range(4):
        with scrambled_programs("shuffled", seed=seed):
            _last_writer[(8,)](out)
        seen.add(out.item())
    assert len(seen) > 1
    with scrambled_programs("reversed", repeat=2):
        _increment[(1,)](out.zero_())
    assert out.item() == 2
    _last_writer[(8,)](out)  # patches undone
    assert out.item() == 7


def test_poisoned_buffers_expose_elements_no_program_writes():
    with poisoned_buffers():
        buf = alloc((8,), torch.float32, "cpu")
        assert torch.isnan(buf).all()
        _write_even[(1,)](buf, 8, BLOCK=4)
    assert torch.isnan(buf[1::2]).all() and not torch.isnan(buf[::2]).any()
    assert alloc((2,), torch.int32, "cpu").dtype == torch.int32  # outside: plain torch.empty
