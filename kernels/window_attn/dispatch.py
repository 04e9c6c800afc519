"""Public `window_attention` and `window_attention_qkv`: backend choice with reasons, the bias
operand, the self-check's verdict (input validation: validation.py; the module: module.py).

The bias is a relative-position table (`rel_pos_bias`, Video-Swin's) or any dense per-head
bias (`attn_bias`); the fused kernels take either as one dense (heads or 1, NP, NP) operand
(bias.py). Every fused call goes through the self-check's verdict (`_self_check.verdict`): on a
GPU a new call signature is checked against the reference before the kernel is trusted, and a
signature that fails runs on SDPA from then on (`fallback_backend`).

Backends: "reference" (pure PyTorch, `window_attention_ref`), "triton" (fused forward and
backward; on CPU only under TRITON_INTERPRET=1), "cuda" (lfvila._C; no window-attention kernel
there yet), "sdpa" (the reference's partition, then one `F.scaled_dot_product_attention`; sdpa.py),
"auto". On a GPU `auto` asks the measured table first (auto_table.py: GPU, dtype, window tokens
-> backend; fused up to 64 tokens, sdpa above where the table has no entry), then PRIORITY, and
takes the first that has no reasons against it; CPU tensors always get the reference (the
interpreter runs only when asked for by name). `LFVILA_KERNEL_BACKEND` overrides `auto`. An
explicit request that cannot run raises ValueError listing every reason; it never falls back
silently. `explain_window_backend` says what `auto` would run and why.
"""

from __future__ import annotations

import torch

from .. import _self_check
from .._backend import ext_missing_reason, load_ext
from .._dispatch import choose_backend, explain_backend, triton_device_reasons
from . import auto_table
from .bias import padded_bias, table_bias
from .function import WindowAttentionFunction, WindowAttentionQKVFunction
from .geometry import WindowGeometry, window_geometry
from .reference import window_attention_ref
from .sdpa import window_attention_sdpa
from .validation import validate_inputs

# `auto`'s order after the measured table's first candidate (auto_table.py)
PRIORITY = ("triton", "cuda", "sdpa", "reference")
FUSED = ("triton", "cuda")
HEAD_DIMS = (16, 32, 64, 128)
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
SDPA_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def can_run_triton(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0
) -> list[str]:
    """Reasons the Triton kernels cannot run these inputs; empty when they can."""
    reasons = triton_device_reasons(q, DTYPES)
    if q.shape[-1] not in HEAD_DIMS:
        reasons.append(f"head_dim {q.shape[-1]} not in {HEAD_DIMS}")
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.stride(-1) != 1:
            reasons.append(f"{name}.stride(-1) is {x.stride(-1)}, not 1 (call .contiguous())")
    if q.shape[0] == 0:
        reasons.append("empty batch")
    if dropout_p > 0.0:
        reasons.append(f"attention dropout {dropout_p} is not fused")
    return reasons


def can_run_cuda(q: torch.Tensor, *args, **kwargs) -> list[str]:
    """Reasons the csrc kernel cannot run; it does not exist yet (a later issue adds it)."""
    if (reason := ext_missing_reason()) is not None:
        return [reason]
    if not hasattr(load_ext()[0], "window_attn_fwd"):
        return ["lfvila._C has no window-attention kernel yet"]
    return [] if q.is_cuda else [f"device {q.device.type} is not cuda"]


def can_run_sdpa(q: torch.Tensor, *args, **kwargs) -> list[str]:
    """Reasons `F.scaled_dot_product_attention` cannot run these inputs; empty when it can."""
    if q.dtype not in SDPA_DTYPES:
        names = ", ".join(str(d).replace("torch.", "") for d in SDPA_DTYPES)
        return [f"dtype {str(q.dtype).replace('torch.', '')} not in ({names})"]
    return []


def _backend_args(backend: str, q, k, v, dropout_p, geom: WindowGeometry):
    checks = {
        "triton": lambda: can_run_triton(q, k, v, dropout_p),
        "cuda": lambda: can_run_cuda(q),
        "sdpa": lambda: can_run_sdpa(q),
        "reference": lambda: [],
    }
    where = (q.device.type, q.device.index or 0, q.dtype, geom.tokens)
    return dict(
        op="window_attention", backend=backend, x=q, checks=checks, priority=PRIORITY,
        auto=lambda: auto_table.preferred_backend(*where),
        auto_reason=lambda: auto_table.preferred_reason(*where),
    )  # fmt: skip


def _choose_backend(backend: str, q, k, v, dropout_p, geom: WindowGeometry) -> str:
    return choose_backend(**_backend_args(backend, q, k, v, dropout_p, geom))


def explain_window_backend(
    q: torch.Tensor,
    window_size: tuple[int, int, int],
    shift_size: tuple[int, int, int] = (0, 0, 0),
    backend: str = "auto",
    dropout_p: float = 0.0,
) -> tuple[str, str]:
    """(backend, reason): what `window_attention(q, q, q, window_size, shift_size,
    backend=backend)` would run (before the self-check's verdict on a fused call), and why.

    q: (B, T, H, W, heads, D) or a probe of that shape, dtype and device (an expanded
    `torch.empty(1, 1, 1, 1, heads, D).expand(...)` costs no memory)."""
    geom = window_geometry(q.shape[1:4], tuple(window_size), tuple(shift_size))
    return explain_backend(**_backend_args(backend, q, q, q, dropout_p, geom))


def fallback_backend(call) -> str:
    """Where a fused call that failed its self-check runs from then on: "sdpa" where SDPA can run
    its signature (a GPU; the fastest correct route on the 2026-12-04 H200 from 120 tokens up),
    else the reference (the CPU's fastest route, and the one STYLE.md gives CPU tensors).
    `call` is a `_self_check.FusedCall` (its shape may be empty: torch.compile decides on the
    call's settings)."""
    if call.device.type == "cpu":
        return "reference"
    probe = torch.empty((), dtype=call.dtype, device="meta")
    return "reference" if can_run_sdpa(probe) else "sdpa"


def window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window_size: tuple[int, int, int],
    shift_size: tuple[int, int, int] = (0, 0, 0),
    rel_pos_bias: torch.Tensor | None = None,
    scale: float | None = None,
    pad_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    mask_value: float = -100.0,
    backend: str = "auto",
    clamped_index: str = "effective",
    dropout_p: float = 0.0,
    attn_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """3D (shifted) window attention with an additive bias, fused where possible.

    Args:
        q, k, v: (B, T, H, W, heads, D) fp16/bf16/fp32, heads-last, same shape, dtype and device;
            any T/H/W (padded to window multiples internally, never materialised by the kernel).
            A 2D map is T = 1 (window (1, Wh, Ww)).
        window_size: (Wt, Wh, Ww). An axis whose map size is <= its window uses the map size as
            window and shift 0 (Video-Swin's rule).
        shift_size: Swin's cyclic shift, 0 <= shift < window. Pairs of tokens from different
            pre-shift regions get `mask_value` added (Video-Swin: -100), computed in-kernel.
        rel_pos_bias: ((2Wt-1)(2Wh-1)(2Ww-1), heads) table with Video-Swin's indexing (SPEC §4.4)
            for the configured window; a clamped window's offsets map into it with the configured
            strides (SPEC Decision 4e). Gathered into a dense bias once per call; its gradient is
            folded back into the table in a fixed order (deterministic).
        scale: multiplies q·kᵀ, default D ** -0.5.
        pad_kv: (k_pad, v_pad), each (heads, D): key and value of padding tokens (Video-Swin pads
            x before its qkv projection, so they equal the projection bias). They take part in
            attention and receive gradients. None masks padding keys out.
        mask_value: the shift-mask value.
        backend: "auto", "triton", "cuda", "sdpa" or "reference" (see the module docstring).
        clamped_index: "effective" (Decision 4e), or "legacy" to reproduce Video-Swin's and
            torchvision's `relative_position_index[:N, :N]` slice for clamped windows.
        dropout_p: attention-probability dropout; not fused (the reference or sdpa run it).
        attn_bias: any additive bias over the window's token pairs instead of a table:
            (heads, N, N), or (1, N, N) broadcast over heads, fp32 or q's dtype, N the tokens of
            the effective window (row n = t * Wh * Ww + h * Ww + w). Swin-V2's continuous
            position bias, a learned bias, ALiBi-like terms. Its gradient is computed (dense,
            deterministic).

    Returns:
        (B, T, H, W, heads, D) in q's dtype.

    Backward of the fused path is deterministic: bitwise-identical gradients run to run; the
    sdpa path's is where PyTorch's chosen kernel is (sdpa.py). On a GPU each new call signature
    of a fused backend is first checked against the reference (`_self_check`; off with
    LFVILA_KERNEL_SELF_CHECK=off); a mismatch sends that signature to sdpa (the reference on the
    CPU), with a warning.
    """
    geom = validate_inputs(
        q, k, v, window_size, shift_size, rel_pos_bias, attn_bias, scale, pad_kv, mask_value,
        clamped_index,
    )  # fmt: skip
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    chosen = _choose_backend(backend, q, k, v, dropout_p, geom)
    if chosen in FUSED:
        chosen = _verdict(q, q.stride(), geom, rel_pos_bias, attn_bias, pad_kv, False, scale,
                          mask_value, clamped_index, chosen)  # fmt: skip
    if chosen == "reference":
        return window_attention_ref(
            q, k, v, geom.window_cfg, shift_size, rel_pos_bias, scale, pad_kv, mask_value,
            clamped_index, dropout_p, attn_bias,
        )  # fmt: skip
    if chosen == "sdpa":
        return window_attention_sdpa(q, k, v, geom, rel_pos_bias, attn_bias, scale, pad_kv,
                                     mask_value, clamped_index, dropout_p)  # fmt: skip
    k_pad, v_pad = (p.contiguous() for p in pad_kv) if pad_kv is not None else (None, None)
    bias = _dense_bias(rel_pos_bias, attn_bias, geom, clamped_index)
    return WindowAttentionFunction.apply(
        q, k, v, bias, k_pad, v_pad, geom.window_cfg, geom.shift, scale, float(mask_value), chosen
    )


def window_attention_qkv(
    qkv: torch.Tensor,
    window_size: tuple[int, int, int],
    shift_size: tuple[int, int, int] = (0, 0, 0),
    rel_pos_bias: torch.Tensor | None = None,
    scale: float | None = None,
    pad_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    mask_value: float = -100.0,
    backend: str = "auto",
    clamped_index: str = "effective",
    dropout_p: float = 0.0,
    attn_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """`window_attention` on a packed qkv: (B, T, H, W, 3, heads, D), e.g. one qkv projection's
    output viewed as such. Same arguments and result as `window_attention(*qkv.unbind(4), ...)`.

    On the fused path the kernels read q, k and v in place and the backward writes the packed
    gradient directly (no stack of dq, dk, dv).
    """
    if not isinstance(qkv, torch.Tensor) or qkv.dim() != 7 or qkv.shape[4] != 3:
        got = tuple(qkv.shape) if isinstance(qkv, torch.Tensor) else type(qkv).__name__
        raise ValueError(f"qkv must have shape (B, T, H, W, 3, heads, head_dim), got {got}")
    q, k, v = qkv.unbind(4)
    geom = validate_inputs(
        q, k, v, window_size, shift_size, rel_pos_bias, attn_bias, scale, pad_kv, mask_value,
        clamped_index,
    )  # fmt: skip
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    chosen = _choose_backend(backend, q, k, v, dropout_p, geom)
    if chosen in FUSED:
        chosen = _verdict(q, qkv.stride(), geom, rel_pos_bias, attn_bias, pad_kv, True, scale,
                          mask_value, clamped_index, chosen)  # fmt: skip
    if chosen == "reference":
        return window_attention_ref(
            q, k, v, geom.window_cfg, shift_size, rel_pos_bias, scale, pad_kv, mask_value,
            clamped_index, dropout_p, attn_bias,
        )  # fmt: skip
    if chosen == "sdpa":
        return window_attention_sdpa(q, k, v, geom, rel_pos_bias, attn_bias, scale, pad_kv,
                                     mask_value, clamped_index, dropout_p)  # fmt: skip
    k_pad, v_pad = (p.contiguous() for p in pad_kv) if pad_kv is not None else (None, None)
    bias = _dense_bias(rel_pos_bias, attn_bias, geom, clamped_index)
    return WindowAttentionQKVFunction.apply(
        qkv, bias, k_pad, v_pad, geom.window_cfg, geom.shift, scale, float(mask_value), chosen
    )


def _dense_bias(table, attn_bias, geom: WindowGeometry, clamped_index: str):
    """The kernels' (heads or 1, NP, NP) bias operand, or None (autograd flows through)."""
    if table is not None:
        return table_bias(table, geom, clamped_index)
    if attn_bias is not None:
        return padded_bias(attn_bias, geom)
    return None


def bias_kind(table, attn_bias) -> str:
    """ "table", "dense", "dense-broadcast" or "none": part of a call's signature."""
    if table is not None:
        return "table"
    if attn_bias is None:
        return "none"
    return "dense-broadcast" if attn_bias.shape[0] == 1 and attn_bias.dim() == 3 else "dense"


def _verdict(q, strides, geom, table, attn_bias, pad_kv, packed, scale, mask_value, ci, chosen):
    """The self-check's say on a fused call: the signature (everything that selects a compiled
    kernel, the batch included) and `chosen`, or its fallback route after a mismatch
    (`fallback_backend`: sdpa, or the reference on the CPU)."""
    bias = table if table is not None else attn_bias
    params = dict(
        bias=bias_kind(table, attn_bias), bias_dtype=bias.dtype if bias is not None else None,
        clamped_index=ci, mask_value=float(mask_value), packed=bool(packed),
        pad_dtype=pad_kv[0].dtype if pad_kv is not None else None, scale=float(scale),
        shift=geom.shift, window=geom.window_cfg,
    )  # fmt: skip
    return _self_check.verdict(
        "window_attention", q.shape, q.dtype, q.device, params, tuple(strides), chosen
    )
