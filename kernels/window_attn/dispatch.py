"""Public `window_attention`: input validation, backend choice with reasons, and the module.

Backends: "reference" (pure PyTorch, `window_attention_ref`), "triton" (fused forward and
backward; on CPU only under TRITON_INTERPRET=1), "cuda" (lfvila._C; no window-attention kernel
there yet), "auto". `auto` takes the first backend of PRIORITY that has no reasons against it;
CPU tensors always get the reference (the interpreter runs only when asked for by name).
`LFVILA_KERNEL_BACKEND` overrides `auto`. An explicit request that cannot run raises ValueError
listing every reason; it never falls back silently.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .. import _self_check
from .._backend import ext_missing_reason, load_ext
from .._dispatch import choose_backend, triton_device_reasons
from .function import WindowAttentionFunction, WindowAttentionQKVFunction
from .geometry import window_geometry
from .reference import relative_position_index, window_attention_ref

PRIORITY = ("triton", "cuda", "reference")
HEAD_DIMS = (16, 32, 64, 128)
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
CLAMPED_INDEX = ("effective", "legacy")


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


def _choose_backend(backend: str, q, k, v, dropout_p) -> str:
    checks = {
        "triton": lambda: can_run_triton(q, k, v, dropout_p),
        "cuda": lambda: can_run_cuda(q),
        "reference": lambda: [],
    }
    return choose_backend("window_attention", backend, q, checks, PRIORITY)


def _triple(name: str, value, minimum: int) -> tuple[int, int, int]:
    ok = isinstance(value, Sequence) and len(value) == 3
    ok = ok and all(isinstance(x, int) and not isinstance(x, bool) and x >= minimum for x in value)
    if not ok:
        bound = "positive" if minimum > 0 else "non-negative"
        raise ValueError(f"{name} must be 3 {bound} ints (t, h, w), got {value!r}")
    return tuple(value)  # type: ignore[return-value]


def _validate(q, k, v, window_size, shift_size, rel_pos_bias, scale, pad_kv, mask_value, ci):
    if not isinstance(q, torch.Tensor) or q.dim() != 6:
        got = tuple(q.shape) if isinstance(q, torch.Tensor) else type(q).__name__
        raise ValueError(f"q must have shape (B, T, H, W, heads, head_dim), got {got}")
    if not q.is_floating_point():
        raise ValueError(f"q must be a floating tensor, got {q.dtype}")
    if any(s == 0 for s in q.shape[1:]):
        raise ValueError(f"q has an empty dimension: shape {tuple(q.shape)}")
    for name, x in (("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor) or x.shape != q.shape:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{name} must have q's shape {tuple(q.shape)}, got {got}")
        if x.dtype != q.dtype:
            raise ValueError(f"{name} has dtype {x.dtype} but q has {q.dtype}")
        if x.device != q.device:
            raise ValueError(f"{name} is on {x.device} but q is on {q.device}")
    window = _triple("window_size", window_size, 1)
    shift = _triple("shift_size", shift_size, 0)
    for axis in range(3):
        if shift[axis] >= window[axis]:
            raise ValueError(
                f"shift_size[{axis}]={shift[axis]} must be < window_size[{axis}]={window[axis]}"
            )
    heads, head_dim = q.shape[-2:]
    if rel_pos_bias is not None:
        rows = window_geometry(q.shape[1:4], window, shift).table_rows
        if not isinstance(rel_pos_bias, torch.Tensor) or tuple(rel_pos_bias.shape) != (rows, heads):
            got = (
                tuple(rel_pos_bias.shape)
                if isinstance(rel_pos_bias, torch.Tensor)
                else rel_pos_bias
            )
            raise ValueError(
                f"rel_pos_bias must have shape ((2Wt-1)(2Wh-1)(2Ww-1), heads) = ({rows}, {heads}) "
                f"for window_size {window}, got {got}"
            )
        if rel_pos_bias.device != q.device or not rel_pos_bias.is_floating_point():
            raise ValueError(f"rel_pos_bias must be a float tensor on {q.device}")
    if pad_kv is not None:
        if not isinstance(pad_kv, (tuple, list)) or len(pad_kv) != 2:
            raise ValueError("pad_kv must be a pair (k_pad, v_pad) of (heads, head_dim) tensors")
        for name, x in zip(("pad_kv[0]", "pad_kv[1]"), pad_kv):
            if not isinstance(x, torch.Tensor) or tuple(x.shape) != (heads, head_dim):
                got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise ValueError(
                    f"{name} must have shape (heads, head_dim) = ({heads}, {head_dim}), got {got}"
                )
            if x.device != q.device or not x.is_floating_point():
                raise ValueError(f"{name} must be a float tensor on {q.device}")
    for name, x in (("scale", scale), ("mask_value", mask_value)):
        if x is not None and not (isinstance(x, (int, float)) and math.isfinite(x)):
            raise ValueError(f"{name} must be a finite number, got {x!r}")
    if ci not in CLAMPED_INDEX:
        raise ValueError(f"clamped_index must be one of {CLAMPED_INDEX}, got {ci!r}")
    return window, shift


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
) -> torch.Tensor:
    """3D (shifted) window attention with relative position bias, fused where possible.

    Args:
        q, k, v: (B, T, H, W, heads, D) fp16/bf16/fp32, heads-last, same shape, dtype and device;
            any T/H/W (padded to window multiples internally, never materialised by the kernel).
        window_size: (Wt, Wh, Ww). An axis whose map size is <= its window uses the map size as
            window and shift 0 (Video-Swin's rule).
        shift_size: Swin's cyclic shift, 0 <= shift < window. Pairs of tokens from different
            pre-shift regions get `mask_value` added (Video-Swin: -100), computed in-kernel.
        rel_pos_bias: ((2Wt-1)(2Wh-1)(2Ww-1), heads) table with Video-Swin's indexing (SPEC §4.4)
            for the configured window; a clamped window's offsets map into it with the configured
            strides (SPEC Decision 4e). Its gradient is computed.
        scale: multiplies q·kᵀ, default D ** -0.5.
        pad_kv: (k_pad, v_pad), each (heads, D): key and value of padding tokens (Video-Swin pads
            x before its qkv projection, so they equal the projection bias). They take part in
            attention and receive gradients. None masks padding keys out.
        mask_value: the shift-mask value.
        backend: "auto", "triton", "cuda" or "reference" (see the module docstring).
        clamped_index: "effective" (Decision 4e), or "legacy" to reproduce Video-Swin's and
            torchvision's `relative_position_index[:N, :N]` slice for clamped windows.
        dropout_p: attention-probability dropout; > 0 runs the reference (not fused).

    Returns:
        (B, T, H, W, heads, D) in q's dtype.

    Backward of the fused path is deterministic: bitwise-identical gradients run to run.
    """
    window, shift = _validate(
        q, k, v, window_size, shift_size, rel_pos_bias, scale, pad_kv, mask_value, clamped_index
    )
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    chosen = _choose_backend(backend, q, k, v, dropout_p)
    if chosen != "reference" and _self_check.active():
        chosen = _checked_backend(q, window, shift, rel_pos_bias, pad_kv, False, scale,
                                  mask_value, clamped_index, chosen)  # fmt: skip
    if chosen == "reference":
        return window_attention_ref(
            q, k, v, window, shift, rel_pos_bias, scale, pad_kv, mask_value, clamped_index,
            dropout_p,
        )  # fmt: skip
    k_pad, v_pad = (p.contiguous() for p in pad_kv) if pad_kv is not None else (None, None)
    return WindowAttentionFunction.apply(
        q, k, v, rel_pos_bias, k_pad, v_pad, window, shift, scale, float(mask_value),
        clamped_index, chosen,
    )  # fmt: skip


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
    window, shift = _validate(
        q, k, v, window_size, shift_size, rel_pos_bias, scale, pad_kv, mask_value, clamped_index
    )
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    chosen = _choose_backend(backend, q, k, v, dropout_p)
    if chosen != "reference" and _self_check.active():
        chosen = _checked_backend(q, window, shift, rel_pos_bias, pad_kv, True, scale,
                                  mask_value, clamped_index, chosen)  # fmt: skip
    if chosen == "reference":
        return window_attention_ref(
            q, k, v, window, shift, rel_pos_bias, scale, pad_kv, mask_value, clamped_index,
            dropout_p,
        )  # fmt: skip
    k_pad, v_pad = (p.contiguous() for p in pad_kv) if pad_kv is not None else (None, None)
    return WindowAttentionQKVFunction.apply(
        qkv, rel_pos_bias, k_pad, v_pad, window, shift, scale, float(mask_value), clamped_index,
        chosen,
    )  # fmt: skip


def _checked_backend(q, window, shift, table, pad_kv, packed, scale, mask_value, ci, chosen):
    """The self-check's say on a fused call (recording, fallback, first-call check)."""
    shift = window_geometry(q.shape[1:4], window, shift, ci).shift  # 0 on clamped axes
    call = _self_check.window_attention_call(
        q.shape, q.dtype, q.device, window, shift, table.dtype if table is not None else None,
        pad_kv[0].dtype if pad_kv is not None else None, packed, scale, mask_value, ci,
    )  # fmt: skip
    return _self_check.on_fused_call(call, chosen)


class WindowAttention3D(nn.Module):
    """Video-Swin's `WindowAttention3D` on the fused path; same parameter and buffer names.

    Args:
        dim: channels C; window_size: configured (Wt, Wh, Ww); num_heads: C must divide by it.
        qkv_bias, qk_scale, attn_drop, proj_drop: as Video-Swin.
        backend: window-attention backend ("auto" by default).

    forward(x: (B, T, H, W, C), shift_size=(0, 0, 0)) -> (B, T, H, W, C). Padding tokens take
    part in attention with key/value = the qkv bias, exactly as Video-Swin's zero padding of x.
    """

    clamped_index = "effective"

    def __init__(self, dim, window_size, num_heads, qkv_bias=True, qk_scale=None,
                 attn_drop=0.0, proj_drop=0.0, backend="auto"):  # fmt: skip
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.dim, self.num_heads, self.backend = dim, num_heads, backend
        self.window_size = _triple("window_size", tuple(window_size), 1)
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        rows = window_geometry(self.window_size, self.window_size).table_rows
        self.relative_position_bias_table = nn.Parameter(torch.zeros(rows, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        index = relative_position_index(self.window_size).clone()  # never share the cached tensor
        self.register_buffer("relative_position_index", index)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, shift_size=(0, 0, 0)) -> torch.Tensor:
        o = attention_block(
            x, self.qkv, self.num_heads, self.window_size, tuple(shift_size),
            self.relative_position_bias_table, self.scale, self.backend, self.clamped_index,
            self.attn_drop if self.training else 0.0,
        )  # fmt: skip
        return self.proj_drop(self.proj(o))


def attention_block(
    x: torch.Tensor,
    qkv: nn.Linear,
    num_heads: int,
    window_size: tuple[int, int, int],
    shift_size: tuple[int, int, int],
    table: torch.Tensor | None,
    scale: float,
    backend: str,
    clamped_index: str,
    dropout_p: float,
) -> torch.Tensor:
    """x (B, T, H, W, C) -> attention output (B, T, H, W, C), before the output projection.

    Padding tokens take part with key/value = the qkv bias (zero without one), exactly as
    Video-Swin's zero padding of x before its projection. On the CPU q, k and v come from three
    GEMMs (contiguous outputs: measured faster there than one GEMM and strided views); on a GPU
    from one GEMM as one packed tensor (`window_attention_qkv`): the kernels read it in place
    and write its gradient in place. pad_kv is passed only when the map has padding tokens.
    """
    B, T, H, W, C = x.shape
    head_dim = C // num_heads
    if x.device.type == "cpu":
        weights = list(qkv.weight.chunk(3))
        biases = list(qkv.bias.chunk(3)) if qkv.bias is not None else [None] * 3
        # fold the scale into the q projection: a (C, C) multiply instead of a pass over q
        weights[0] = weights[0] * scale
        biases[0] = biases[0] * scale if biases[0] is not None else None
        scale = 1.0
        q, k, v = (
            nn.functional.linear(x, w, b).view(B, T, H, W, num_heads, head_dim)
            for w, b in zip(weights, biases)
        )
    if window_geometry((T, H, W), window_size, shift_size).has_padding:
        if qkv.bias is not None:
            _, k_pad, v_pad = qkv.bias.view(3, num_heads, head_dim)
        else:  # zero-padded x through a bias-free projection: zero keys and values
            k_pad = v_pad = x.new_zeros(num_heads, head_dim)
        pad_kv = (k_pad, v_pad)
    else:
        pad_kv = None  # no padding token: the kernels skip the pad path and its reductions
    common = dict(backend=backend, clamped_index=clamped_index, dropout_p=dropout_p)
    if x.device.type == "cpu":
        o = window_attention(q, k, v, window_size, shift_size, table, scale, pad_kv, **common)
    else:
        packed = qkv(x).view(B, T, H, W, 3, num_heads, head_dim)
        o = window_attention_qkv(packed, window_size, shift_size, table, scale, pad_kv, **common)
    return o.reshape(B, T, H, W, C)
