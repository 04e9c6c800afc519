"""`WindowAttentionFunction`: autograd over the window-attention launchers, and their torch ops.

The Function is generic over an implementation registered by name ("triton"; "cuda" once csrc
has a kernel): an impl exposes `fwd(q, k, v, bias, k_pad, v_pad, window_size, shift_size, scale,
mask_value) -> (o, lse)` and `bwd(do, q, k, v, o, lse, bias, k_pad, v_pad, ...) -> (dq, dk, dv,
dbias, dk_pad, dv_pad)`. `bias` is the dense (heads or 1, NP, NP) operand of bias.py (a table is
gathered into it before the Function, and its gradient folded back after, by autograd).

`WindowAttentionQKVFunction` is the same over a packed qkv (B, T, H, W, 3, heads, D): the kernels
read its three views in place and the backward writes the packed gradient directly, so autograd
never stacks dq, dk, dv (the module's path on a GPU).

For torch.compile the launchers are also registered as the custom ops `lfvila::window_attn_fwd`,
`lfvila::window_attn_bwd`, `lfvila::window_attn_fwd_qkv` and `lfvila::window_attn_bwd_qkv` with
fake (meta) implementations, so a compiled model traces through them without a graph break.
`LFVILA_DISABLE_TORCH_OPS=1` calls the launchers directly instead; the Function body is the
same either way. The variable is read once, at import.

Backward is deterministic (see triton_impl): two runs give bitwise-identical gradients.
"""

from __future__ import annotations

import importlib

import torch
from torch import Tensor

from .._backend import torch_ops_enabled
from .._buffers import alloc

_IMPL_MODULES = {"triton": "lfvila.kernels.window_attn.triton_impl"}


def _launchers(name: str):
    return importlib.import_module(_IMPL_MODULES[name])


@torch.library.custom_op("lfvila::window_attn_fwd", mutates_args=())
def _fwd_op(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    bias: Tensor | None,
    k_pad: Tensor | None,
    v_pad: Tensor | None,
    window_size: list[int],
    shift_size: list[int],
    scale: float,
    mask_value: float,
    impl: str,
) -> tuple[Tensor, Tensor]:
    return _launchers(impl).fwd(
        q, k, v, bias, k_pad, v_pad, tuple(window_size), tuple(shift_size), scale, mask_value
    )


@_fwd_op.register_fake
def _fwd_fake(q, k, v, bias, k_pad, v_pad, window_size, shift_size, scale, mask_value, impl):
    return q.new_empty(q.shape), q.new_empty(q.shape[:-1], dtype=torch.float32)


@torch.library.custom_op("lfvila::window_attn_bwd", mutates_args=())
def _bwd_op(
    do: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    lse: Tensor,
    bias: Tensor | None,
    k_pad: Tensor | None,
    v_pad: Tensor | None,
    window_size: list[int],
    shift_size: list[int],
    scale: float,
    mask_value: float,
    impl: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    grads = _launchers(impl).bwd(
        do, q, k, v, o, lse, bias, k_pad, v_pad, tuple(window_size), tuple(shift_size), scale,
        mask_value,
    )  # fmt: skip
    # Custom ops cannot return None: an absent gradient travels as an empty tensor.
    return tuple(g if g is not None else q.new_empty(0) for g in grads)


@_bwd_op.register_fake
def _bwd_fake(do, q, k, v, o, lse, bias, k_pad, v_pad, window_size, shift_size, scale, mv, im):
    def like(x):
        return x.new_empty(x.shape) if x is not None else q.new_empty(0)

    return like(q), like(k), like(v), like(bias), like(k_pad), like(v_pad)


# Read once at import, so dynamo sees a constant (LFVILA_DISABLE_TORCH_OPS=1: launchers directly).
USE_TORCH_OPS = torch_ops_enabled()


def _run_fwd(impl: str, *args):
    if USE_TORCH_OPS:
        return torch.ops.lfvila.window_attn_fwd(*args, impl)
    return _launchers(impl).fwd(*args)


def _run_bwd(impl: str, *args):
    if not USE_TORCH_OPS:
        return _launchers(impl).bwd(*args)
    grads = torch.ops.lfvila.window_attn_bwd(*args, impl)
    inputs = (*args[1:4], *args[6:9])  # q, k, v, bias, k_pad, v_pad
    return tuple(None if x is None else g for g, x in zip(grads, inputs))


class WindowAttentionFunction(torch.autograd.Function):
    """o = window_attention(q, k, v, ...) with gradients for q, k, v, the bias and pad_kv."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, q, k, v, bias, k_pad, v_pad, window_size, shift_size, scale, mask_value, impl):
        args = (list(window_size), list(shift_size), float(scale), float(mask_value))
        o, lse = _run_fwd(impl, q, k, v, bias, k_pad, v_pad, *args)
        if any(ctx.needs_input_grad[:6]):
            ctx.save_for_backward(q, k, v, o, lse, bias, k_pad, v_pad)
        ctx.args, ctx.impl = args, impl
        return o

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, do):
        q, k, v, o, lse, bias, k_pad, v_pad = ctx.saved_tensors
        grads = _run_bwd(ctx.impl, do, q, k, v, o, lse, bias, k_pad, v_pad, *ctx.args)
        grads = [g if need else None for g, need in zip(grads, ctx.needs_input_grad[:6])]
        return (*grads, None, None, None, None, None)


# Packed qkv: the module's one projection output (B, T, H, W, 3, heads, D) goes in as one tensor,
# and its gradient comes out as one tensor written in place by the kernels: autograd never has to
# stack three separate dq, dk, dv (a full extra read and write of the gradient).


def _fwd_qkv(impl, qkv, bias, k_pad, v_pad, window, shift, scale, mask_value):
    q, k, v = qkv.unbind(4)
    return _launchers(impl).fwd(
        q, k, v, bias, k_pad, v_pad, tuple(window), tuple(shift), scale, mask_value
    )


def _bwd_qkv(impl, do, qkv, o, lse, bias, k_pad, v_pad, window, shift, scale, mask_value):
    """-> (dqkv, dbias, dk_pad, dv_pad), absent inputs' gradients None."""
    dqkv = alloc(qkv.shape, qkv.dtype, qkv.device)
    _, _, _, dbias, dk_pad, dv_pad = _launchers(impl).bwd(
        do, *qkv.unbind(4), o, lse, bias, k_pad, v_pad, tuple(window), tuple(shift), scale,
        mask_value, grads_out=tuple(dqkv.unbind(4)),
    )  # fmt: skip
    return dqkv, dbias, dk_pad, dv_pad


@torch.library.custom_op("lfvila::window_attn_fwd_qkv", mutates_args=())
def _fwd_qkv_op(
    qkv: Tensor,
    bias: Tensor | None,
    k_pad: Tensor | None,
    v_pad: Tensor | None,
    window_size: list[int],
    shift_size: list[int],
    scale: float,
    mask_value: float,
    impl: str,
) -> tuple[Tensor, Tensor]:
    return _fwd_qkv(impl, qkv, bias, k_pad, v_pad, window_size, shift_size, scale, mask_value)


@_fwd_qkv_op.register_fake
def _fwd_qkv_fake(qkv, bias, k_pad, v_pad, window_size, shift_size, scale, mv, impl):
    shape = (*qkv.shape[:4], *qkv.shape[5:])
    return qkv.new_empty(shape), qkv.new_empty(shape[:-1], dtype=torch.float32)


@torch.library.custom_op("lfvila::window_attn_bwd_qkv", mutates_args=())
def _bwd_qkv_op(
    do: Tensor,
    qkv: Tensor,
    o: Tensor,
    lse: Tensor,
    bias: Tensor | None,
    k_pad: Tensor | None,
    v_pad: Tensor | None,
    window_size: list[int],
    shift_size: list[int],
    scale: float,
    mask_value: float,
    impl: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    grads = _bwd_qkv(
        impl, do, qkv, o, lse, bias, k_pad, v_pad, window_size, shift_size, scale, mask_value
    )
    return tuple(g if g is not None else qkv.new_empty(0) for g in grads)


@_bwd_qkv_op.register_fake
def _bwd_qkv_fake(do, qkv, o, lse, bias, k_pad, v_pad, window_size, shift_size, sc, mv, im):
    def like(x):
        return x.new_empty(x.shape) if x is not None else qkv.new_empty(0)

    return qkv.new_empty(qkv.shape), like(bias), like(k_pad), like(v_pad)


class WindowAttentionQKVFunction(torch.autograd.Function):
    """o = window attention over a packed qkv (B, T, H, W, 3, heads, D); gradients for the packed
    tensor (written in place, no stack), the bias and pad_kv."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, qkv, bias, k_pad, v_pad, window_size, shift_size, scale, mask_value, impl):
        args = (list(window_size), list(shift_size), float(scale), float(mask_value))
        if USE_TORCH_OPS:
            o, lse = torch.ops.lfvila.window_attn_fwd_qkv(qkv, bias, k_pad, v_pad, *args, impl)
        else:
            o, lse = _fwd_qkv(impl, qkv, bias, k_pad, v_pad, *args)
        if any(ctx.needs_input_grad[:4]):
            ctx.save_for_backward(qkv, o, lse, bias, k_pad, v_pad)
        ctx.args, ctx.impl = args, impl
        return o

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, do):
        qkv, o, lse, bias, k_pad, v_pad = ctx.saved_tensors
        inputs = (qkv, bias, k_pad, v_pad)
        if USE_TORCH_OPS:
            grads = torch.ops.lfvila.window_attn_bwd_qkv(do, *inputs[:1], o, lse, *inputs[1:],
                                                         *ctx.args, ctx.impl)  # fmt: skip
            grads = [None if x is None else g for g, x in zip(grads, inputs)]
        else:
            grads = _bwd_qkv(ctx.impl, do, qkv, o, lse, bias, k_pad, v_pad, *ctx.args)
        grads = [g if need else None for g, need in zip(grads, ctx.needs_input_grad[:4])]
        return (*grads, None, None, None, None, None)
