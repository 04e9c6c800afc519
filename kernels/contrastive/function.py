"""Autograd Functions over the contrastive launchers, and their torch.library ops.

`InfoNCEFunction` (deterministic backward) and `MTCFunction` (backward with float atomics: not
bitwise deterministic) call the launchers through the custom ops `lfvila::infonce_fwd/bwd` and
`lfvila::mtc_fwd/bwd`, which have fake implementations so torch.compile traces them without a
graph break; LFVILA_DISABLE_TORCH_OPS=1 (read at import) calls the launchers directly.
"""

from __future__ import annotations

import importlib

import torch
from torch import Tensor

from .._backend import torch_ops_enabled

USE_TORCH_OPS = torch_ops_enabled()


def _impl():
    return importlib.import_module("lfvila.kernels.contrastive.triton_impl")


@torch.library.custom_op("lfvila::infonce_fwd", mutates_args=())
def _infonce_fwd_op(a: Tensor, b: Tensor, log_scale: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return _impl().infonce_fwd(a, b, log_scale)


@_infonce_fwd_op.register_fake
def _(a, b, log_scale):
    f32 = dict(dtype=torch.float32)
    return a.new_empty((), **f32), a.new_empty(a.shape[0], **f32), a.new_empty(a.shape[0], **f32)


@torch.library.custom_op("lfvila::infonce_bwd", mutates_args=())
def _infonce_bwd_op(
    grad: Tensor, a: Tensor, b: Tensor, log_scale: Tensor, lse_row: Tensor, lse_col: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    return _impl().infonce_bwd(grad, a, b, log_scale, lse_row, lse_col)


@_infonce_bwd_op.register_fake
def _(grad, a, b, log_scale, lse_row, lse_col):
    return a.new_empty(a.shape), b.new_empty(b.shape), log_scale.new_empty(log_scale.shape)


@torch.library.custom_op("lfvila::mtc_fwd", mutates_args=())
def _mtc_fwd_op(
    feats: Tensor,
    keys: Tensor,
    values: Tensor,
    other: Tensor,
    temperature: float,
    num_other_neg: int,
) -> tuple[Tensor, Tensor]:
    return _impl().mtc_fwd(feats, keys, values, other, temperature, num_other_neg)


@_mtc_fwd_op.register_fake
def _(feats, keys, values, other, temperature, num_other_neg):
    rows = 2 * keys.shape[0] * keys.shape[1]
    return feats.new_empty((), dtype=torch.float32), feats.new_empty(rows, dtype=torch.float32)


@torch.library.custom_op("lfvila::mtc_bwd", mutates_args=())
def _mtc_bwd_op(
    grad: Tensor, feats: Tensor, keys: Tensor, values: Tensor, other: Tensor, lse: Tensor,
    temperature: float, num_other_neg: int,
) -> Tensor:  # fmt: skip
    return _impl().mtc_bwd(grad, feats, keys, values, other, lse, temperature, num_other_neg)


@_mtc_bwd_op.register_fake
def _(grad, feats, keys, values, other, lse, temperature, num_other_neg):
    return feats.new_empty(feats.shape)


def _call(op, launcher: str, *args):
    return op(*args) if USE_TORCH_OPS else getattr(_impl(), launcher)(*args)


class InfoNCEFunction(torch.autograd.Function):
    """loss = CE(a·bᵀ·s, diag) + CE(b·aᵀ·s, diag), s = exp(log_scale); a, b (N, d)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, a, b, log_scale):
        loss, lse_row, lse_col = _call(torch.ops.lfvila.infonce_fwd, "infonce_fwd", a, b, log_scale)
        ctx.save_for_backward(a, b, log_scale, lse_row, lse_col)
        return loss

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad):
        a, b, log_scale, lse_row, lse_col = ctx.saved_tensors
        da, db, dls = _call(
            torch.ops.lfvila.infonce_bwd, "infonce_bwd", grad, a, b, log_scale, lse_row, lse_col
        )
        return tuple(g if need else None for g, need in zip((da, db, dls), ctx.needs_input_grad))


class MTCFunction(torch.autograd.Function):
    """MTC loss over stacked features (2, B, M, d) (clips, sentences) and sampling indices."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, feats, keys, values, other, temperature, num_other_neg):
        loss, lse = _call(
            torch.ops.lfvila.mtc_fwd, "mtc_fwd", feats, keys, values, other, temperature,
            num_other_neg,
        )  # fmt: skip
        ctx.save_for_backward(feats, keys, values, other, lse)
        ctx.temperature, ctx.num_other_neg = temperature, num_other_neg
        return loss

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad):
        feats, keys, values, other, lse = ctx.saved_tensors
        dfeats = _call(
            torch.ops.lfvila.mtc_bwd, "mtc_bwd", grad, feats, keys, values, other, lse,
            ctx.temperature, ctx.num_other_neg,
        )  # fmt: skip
        return dfeats, None, None, None, None, None
