"""Kernel-vs-reference checks shared by the CPU (interpreter) and GPU window-attention tests."""

from __future__ import annotations

import torch

from lfvila.kernels import window_attention, window_attention_ref
from lfvila.kernels.testing import assert_error_ratio, assert_grads_error_ratio, no_tf32

from ..helpers import grads, leaves


def _reference_grads(inp, window, shift, clamped, dtype, g):
    q, k, v, table = leaves(inp["q"], inp["k"], inp["v"], inp["rel_pos_bias"], dtype=dtype)
    pad = tuple(leaves(*inp["pad_kv"], dtype=dtype)) if inp["pad_kv"] is not None else None
    out = window_attention_ref(q, k, v, window, shift, table, pad_kv=pad, clamped_index=clamped)
    ins = [q, k, v, table] + (list(pad) if pad else [])
    return out, grads(out, ins, g.to(dtype))


def check_against_reference(inp, window, shift, clamped, run):
    """`run(q, k, v, table, pad_kv, g) -> (out, grads)` on the kernel; error-ratio rule on all."""
    dtype = inp["q"].dtype
    truth_dtype = torch.float64 if dtype == torch.float32 else torch.float32
    g = torch.randn(inp["q"].shape, generator=torch.Generator().manual_seed(1)).to(inp["q"].device)
    with no_tf32():
        truth, truth_grads = _reference_grads(inp, window, shift, clamped, truth_dtype, g)
        pt, pt_grads = _reference_grads(inp, window, shift, clamped, dtype, g)
    out, out_grads = run(g.to(dtype))
    assert out.dtype == dtype
    assert_error_ratio(out, truth, pt, "output")
    names = ["dq", "dk", "dv", "dtable", "dk_pad", "dv_pad"][: len(out_grads)]
    assert_grads_error_ratio(out_grads, truth_grads, pt_grads, names)


def public_api_run(inp, window, shift, clamped):
    def run(g):
        q, k, v, table = leaves(inp["q"], inp["k"], inp["v"], inp["rel_pos_bias"])
        pad = tuple(leaves(*inp["pad_kv"])) if inp["pad_kv"] is not None else None
        out = window_attention(
            q, k, v, window, shift, table, pad_kv=pad, backend="triton", clamped_index=clamped
        )
        return out, grads(out, [q, k, v, table] + (list(pad) if pad else []), g)

    return run
