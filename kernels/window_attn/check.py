"""The window-attention self-check: the signature of a fused call and its check against the
reference (registered with lfvila.kernels._self_check, which imports nothing of this package)."""

from __future__ import annotations

import torch

from .. import _self_check
from ..testing import GRADIENT, OUTPUT, window_attention_inputs
from .dispatch import fallback_backend, window_attention, window_attention_qkv
from .geometry import window_geometry
from .reference import window_attention_ref


def _bias_inputs(call, inp, gen):
    """(table, dense) of the call's bias kind, in its bias dtype."""
    p = dict(call.params)
    kind, dtype = p["bias"], p["bias_dtype"]
    if kind == "table":
        return inp["rel_pos_bias"].to(dtype), None
    if kind == "none":
        return None, None
    n = window_geometry(call.shape[1:4], p["window"], p["shift"]).tokens
    heads = call.shape[-2] if kind == "dense" else 1
    dense = torch.randn(heads, n, n, generator=gen, dtype=torch.float64)
    return None, dense.to(dtype=dtype, device=call.device)


def check_window_attention(call: _self_check.FusedCall, seed: int) -> dict:
    """{name: (fused, truth, pt, rule)} for the output and every gradient of `call`."""
    p = dict(call.params)
    window, shift = p["window"], p["shift"]
    inp = window_attention_inputs(call.shape, window, call.dtype, call.device, seed=seed)
    table, dense = _bias_inputs(call, inp, torch.Generator().manual_seed(seed + 2))
    pad = tuple(x.to(p["pad_dtype"]) for x in inp["pad_kv"]) if p["pad_dtype"] else None
    base = {"q": inp["q"], "k": inp["k"], "v": inp["v"], "table": table, "bias": dense}
    if pad is not None:
        base.update(k_pad=pad[0], v_pad=pad[1])
    g = torch.randn(call.shape, generator=torch.Generator().manual_seed(seed + 1))
    g = g.to(call.device)
    kwargs = dict(scale=p["scale"], mask_value=p["mask_value"], clamped_index=p["clamped_index"])
    leaf = _self_check.leaf

    def run(dtype, fused: bool):
        """dtype None: every input as the call has it (the fused run and `pt`); else all cast."""
        x = {n: leaf(t, dtype) for n, t in base.items()}
        common = dict(pad_kv=(x["k_pad"], x["v_pad"]) if pad is not None else None, **kwargs)
        if not fused:
            out = window_attention_ref(x["q"], x["k"], x["v"], window, shift, x["table"],
                                       attn_bias=x["bias"], **common)  # fmt: skip
            return out, _self_check.grads(out, x, g)
        if p["packed"]:
            qkv = torch.stack([x["q"], x["k"], x["v"]], dim=4)
            qkv = leaf(qkv, strides=call.strides)
            out = window_attention_qkv(qkv, window, shift, x["table"], attn_bias=x["bias"],
                                       backend="triton", **common)  # fmt: skip
            rest = {n: t for n, t in x.items() if n not in "qkv"}
            got = _self_check.grads(out, {"qkv": qkv, **rest}, g)
            dq, dk, dv = got.pop("qkv").unbind(4)
            return out, {"q": dq, "k": dk, "v": dv, **got}
        for name in "qkv":
            x[name] = leaf(x[name], strides=call.strides)
        out = window_attention(x["q"], x["k"], x["v"], window, shift, x["table"],
                               attn_bias=x["bias"], backend="triton", **common)  # fmt: skip
        return out, _self_check.grads(out, x, g)

    truth_dtype = torch.float64 if call.dtype == torch.float32 else torch.float32
    truth, pt, out = run(truth_dtype, False), run(None, False), run(None, True)
    pairs = {"output": (out[0], truth[0], pt[0], OUTPUT)}
    for name in out[1]:
        label = {"q": "dq", "k": "dk", "v": "dv", "table": "dtable", "bias": "dbias"}.get(name)
        pairs[label or f"d{name}"] = (out[1][name], truth[1][name], pt[1][name], GRADIENT)
    return pairs


_self_check.register_check("window_attention", check_window_attention, fallback_backend)
