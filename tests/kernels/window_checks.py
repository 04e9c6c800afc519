"""Kernel-vs-reference checks shared by the CPU (interpreter) and GPU window-attention tests.

`inp` is a `window_attention_inputs` dict, optionally with "attn_bias" (a dense (heads or 1, N, N)
bias used instead of the table: set "rel_pos_bias" to None then). Gradients are checked for
q, k, v, the bias (table or dense) and the pad vectors.
"""

from __future__ import annotations

import torch

from lfvila.kernels import window_attention, window_attention_ref
from lfvila.kernels.testing import assert_error_ratio, assert_grads_error_ratio, no_tf32
from lfvila.kernels.window_attn import triton_impl
from lfvila.kernels.window_attn.bias import fold_on_cpu, gather_table, padded_bias
from lfvila.kernels.window_attn.geometry import window_geometry

from ..helpers import grads, leaves


def _bias(inp):
    """(table, dense bias) of the inputs."""
    return inp["rel_pos_bias"], inp.get("attn_bias")


def _reference_grads(inp, window, shift, clamped, dtype, g):
    table, dense = _bias(inp)
    q, k, v, table, dense = leaves(inp["q"], inp["k"], inp["v"], table, dense, dtype=dtype)
    pad = tuple(leaves(*inp["pad_kv"], dtype=dtype)) if inp["pad_kv"] is not None else None
    out = window_attention_ref(
        q, k, v, window, shift, table, pad_kv=pad, clamped_index=clamped, attn_bias=dense
    )
    bias = table if table is not None else dense
    ins = [q, k, v] + ([bias] if bias is not None else []) + (list(pad) if pad else [])
    return out, grads(out, ins, g.to(dtype))


def check_against_reference(inp, window, shift, clamped, run):
    """`run(g) -> (out, grads)` on the kernel, grads in the order q, k, v, bias (when there is
    one: the table's or the dense bias's gradient), pad vectors; error-ratio rule on all."""
    dtype = inp["q"].dtype
    truth_dtype = torch.float64 if dtype == torch.float32 else torch.float32
    g = torch.randn(inp["q"].shape, generator=torch.Generator().manual_seed(1)).to(inp["q"].device)
    with no_tf32():
        truth, truth_grads = _reference_grads(inp, window, shift, clamped, truth_dtype, g)
        pt, pt_grads = _reference_grads(inp, window, shift, clamped, dtype, g)
    out, out_grads = run(g.to(dtype))
    assert out.dtype == dtype
    assert len(out_grads) == len(truth_grads)
    assert_error_ratio(out, truth, pt, "output")
    table, dense = _bias(inp)
    names = ["dq", "dk", "dv"] + (["dtable"] if table is not None else [])
    names += ["dbias"] if dense is not None else []
    names += ["dk_pad", "dv_pad"]
    assert_grads_error_ratio(out_grads, truth_grads, pt_grads, names[: len(out_grads)])


def public_api_run(inp, window, shift, clamped, backend="triton"):
    def run(g):
        table, dense = _bias(inp)
        q, k, v, table, dense = leaves(inp["q"], inp["k"], inp["v"], table, dense)
        pad = tuple(leaves(*inp["pad_kv"])) if inp["pad_kv"] is not None else None
        out = window_attention(
            q, k, v, window, shift, table, pad_kv=pad, backend=backend, clamped_index=clamped,
            attn_bias=dense,
        )  # fmt: skip
        bias = table if table is not None else dense
        ins = [q, k, v] + ([bias] if bias is not None else []) + (list(pad) if pad else [])
        return out, grads(out, ins, g)

    return run


def launcher_run(inp, window, shift, clamped="effective", **tiling):
    """The launchers called directly (`block`, `chunks`, `key_split` forced by `tiling`): the
    table gathered into the dense bias operand and its gradient folded back, as autograd does."""

    def run(g):
        q, k, v, table = inp["q"], inp["k"], inp["v"], inp["rel_pos_bias"]
        k_pad, v_pad = inp["pad_kv"] if inp["pad_kv"] is not None else (None, None)
        geom = window_geometry(q.shape[1:4], window, shift, clamped)
        dense = inp.get("attn_bias")
        bias = gather_table(table, geom) if table is not None else None
        bias = padded_bias(dense, geom) if dense is not None else bias
        args = (window, shift, q.shape[-1] ** -0.5, -100.0)
        fwd_tiling = {"block": tiling["block"]} if "block" in tiling else {}
        out, lse = triton_impl.fwd(q, k, v, bias, k_pad, v_pad, *args, **fwd_tiling)
        dq, dk, dv, dbias, dk_pad, dv_pad = triton_impl.bwd(
            g, q, k, v, out, lse, bias, k_pad, v_pad, *args, **tiling
        )
        got = [dq, dk, dv]
        if table is not None:
            got.append(fold_on_cpu(dbias.cpu(), geom).to(dbias.device))
        elif dense is not None:
            n = geom.tokens
            got.append(dbias[:, :n, :n])
        if k_pad is not None:
            got += [dk_pad, dv_pad]
        return out, got

    return run
