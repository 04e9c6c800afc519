"""The bias operand of the fused window-attention kernels: one dense (heads or 1, NP, NP) tensor.

The kernels take any additive bias as one dense tile source, padded from N to NP tokens (the
padding lanes are never read into a result), and return its gradient dense. Two ways in:

- `table_bias(table, geom)`: Video-Swin's relative-position table (R, heads) gathered with the
  cached (NP, NP) index of the geometry, once per call (not per window); its backward folds the
  dense gradient into table rows in a fixed order (`triton_bias.dense_to_table`: a Triton
  reduction on the GPU, index_add_ on the CPU; no atomics). Registered as the custom ops
  `lfvila::window_bias_gather` / `lfvila::window_bias_fold` so torch.compile traces through.
- `padded_bias(attn_bias, geom)`: a user's (heads, N, N) or (1, N, N) bias, zero-padded (its
  gradient is a slice: deterministic).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from .._backend import torch_ops_enabled, triton_missing_reason
from .geometry import WindowGeometry, window_geometry
from .reference import CPU, window_slots


@functools.lru_cache(maxsize=64)
def _gather_index(geom: WindowGeometry, device: torch.device) -> Tensor:
    """(NP*NP,) table row of each padded position; padding lanes take the zero offset's row (any
    valid row would do: those lanes are masked in the kernels)."""
    np_rows, n = geom.padded_tokens, geom.tokens
    index = torch.full((np_rows, np_rows), geom.table_origin, dtype=torch.long, device=CPU)
    index[:n, :n] = window_slots(geom)["bias_index"]
    return index.reshape(-1).to(device)


def _geometry(size, window, shift, clamped_index) -> WindowGeometry:
    return window_geometry(tuple(size), tuple(window), tuple(shift), clamped_index)


def gather_table(table: Tensor, geom: WindowGeometry) -> Tensor:
    """(R, heads) table -> (heads, NP, NP) contiguous in the table's dtype (no autograd)."""
    np_rows = geom.padded_tokens
    index = _gather_index(geom, table.device)
    return table.t().index_select(1, index).view(table.shape[1], np_rows, np_rows)


def fold_table(grad: Tensor, geom: WindowGeometry, dtype: torch.dtype) -> Tensor:
    """(heads, NP, NP) gradient of the gathered bias -> (R, heads) table gradient, fixed order
    (on a GPU without Triton, the sdpa backend's case: index_add_, whose CUDA kernel adds with
    atomics unless torch.use_deterministic_algorithms(True))."""
    if not grad.is_cuda or triton_missing_reason() is not None:
        # fp32 accumulation, fp64 kept (the sdpa backend's fp64 gradcheck)
        acc = grad if grad.dtype == torch.float64 else grad.float()
        return fold_on_cpu(acc, geom).to(dtype)
    from .triton_bias import dense_to_table  # a Triton fold: imported where used

    return dense_to_table(grad.float(), geom).to(dtype)


def fold_on_cpu(grad: Tensor, geom: WindowGeometry) -> Tensor:
    """index_add_ over the real pairs: sequential on the CPU, so deterministic (no Triton); runs
    on any device."""
    heads, n = grad.shape[0], geom.tokens
    pairs = grad[:, :n, :n].reshape(heads, n * n)
    index = window_slots(geom)["bias_index"].reshape(-1)
    return grad.new_zeros(geom.table_rows, heads).index_add_(0, index, pairs.t())


@torch.library.custom_op("lfvila::window_bias_gather", mutates_args=())
def _gather_op(
    table: Tensor, size: list[int], window: list[int], shift: list[int], clamped_index: str
) -> Tensor:
    return gather_table(table, _geometry(size, window, shift, clamped_index))


@_gather_op.register_fake
def _gather_fake(table, size, window, shift, clamped_index):
    np_rows = _geometry(size, window, shift, clamped_index).padded_tokens
    return table.new_empty(table.shape[1], np_rows, np_rows)


@torch.library.custom_op("lfvila::window_bias_fold", mutates_args=())
def _fold_op(
    grad: Tensor, size: list[int], window: list[int], shift: list[int], clamped_index: str,
    dtype: torch.dtype,
) -> Tensor:  # fmt: skip
    return fold_table(grad, _geometry(size, window, shift, clamped_index), dtype)


@_fold_op.register_fake
def _fold_fake(grad, size, window, shift, clamped_index, dtype):
    rows = _geometry(size, window, shift, clamped_index).table_rows
    return grad.new_empty(rows, grad.shape[0], dtype=dtype)


# Read once at import, so dynamo sees a constant (LFVILA_DISABLE_TORCH_OPS=1: plain calls).
USE_TORCH_OPS = torch_ops_enabled()


class TableBiasFunction(torch.autograd.Function):
    """(R, heads) table -> (heads, NP, NP) dense bias; backward: the fixed-order fold."""

    @staticmethod
    def forward(ctx, table, size, window, shift, clamped_index):
        args = (list(size), list(window), list(shift), clamped_index)
        ctx.args, ctx.dtype = args, table.dtype
        if USE_TORCH_OPS:
            return torch.ops.lfvila.window_bias_gather(table, *args)
        return gather_table(table, _geometry(*args))

    @staticmethod
    def backward(ctx, grad):
        if USE_TORCH_OPS:
            dtable = torch.ops.lfvila.window_bias_fold(grad.contiguous(), *ctx.args, ctx.dtype)
        else:
            dtable = fold_table(grad.contiguous(), _geometry(*ctx.args), ctx.dtype)
        return dtable, None, None, None, None


def table_bias(table: Tensor, geom: WindowGeometry, clamped_index: str) -> Tensor:
    """Video-Swin's (R, heads) table as the kernels' dense (heads, NP, NP) operand (autograd).
    `geom` and `clamped_index` are those of the call (`window_geometry(size, window, shift,
    clamped_index)`)."""
    return TableBiasFunction.apply(table, geom.size, geom.window_cfg, geom.shift, clamped_index)


def padded_bias(attn_bias: Tensor, geom: WindowGeometry) -> Tensor:
    """(heads or 1, N, N) -> (heads or 1, NP, NP) contiguous, zero-padded (autograd: a slice)."""
    pad = geom.padded_tokens - geom.tokens
    return F.pad(attn_bias, (0, pad, 0, pad)).contiguous() if pad else attn_bias.contiguous()
