"""Bias-gradient reductions of the window-attention backward, deterministic on every device.

- `reduce_bias_partials`: the kernels' per-program partial sums of dS, (chunks, heads, S, S) with
  S = packed * NP, summed over chunks and over the packed windows' diagonal blocks, in a fixed
  order, into the dense (heads, NP, NP) gradient of the padded bias operand.
- `dense_to_table`: that dense gradient folded over token pairs into the relative-position table
  rows (R, heads): each row sums its pairs in a fixed order (CSR of the pairs, no atomics).

One Triton launch each. On the CPU the launcher's partials are summed by torch ops (`use_kernel`
forces the kernel: tests run it under the interpreter) and the fold is `bias.fold_on_cpu`
(index_add_, sequential there, so also deterministic).
"""

from __future__ import annotations

import contextlib
import functools

import torch
import triton
import triton.language as tl

from .._buffers import alloc
from .geometry import WindowGeometry
from .reference import CPU, window_slots

# Elements of one program's tile in the partial reduction.
REDUCE_TILE_ELEMENTS = 4096


@triton.jit
def _reduce_bias_kernel(
    PART, DENSE, chunks, NP: tl.constexpr, PACKED: tl.constexpr, ROWS: tl.constexpr
):
    """dense[head, a, b] = sum over chunks c, then packed windows p, of
    part[c, head, p * NP + a, p * NP + b]. Program (row block, head): a (ROWS, NP) tile."""
    a = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    b = tl.arange(0, NP)
    head = tl.program_id(1)
    heads = tl.num_programs(1)
    S: tl.constexpr = PACKED * NP
    acc = tl.zeros([ROWS, NP], tl.float32)
    for c in range(0, chunks):
        base = PART + (c * heads + head).to(tl.int64) * S * S
        for p in tl.static_range(PACKED):
            acc += tl.load(base + (p * NP + a)[:, None] * S + (p * NP + b)[None, :])
    tl.store(DENSE + head.to(tl.int64) * NP * NP + a[:, None] * NP + b[None, :], acc)


def _on_device(x: torch.Tensor):
    """Launch on x's GPU (Triton uses the current device), or nothing on CPU (interpreter)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def reduce_bias_partials(
    part: torch.Tensor, np_rows: int, packed: int | None = None, use_kernel: bool | None = None
) -> torch.Tensor:
    """(chunks, heads, S, S) partial dS sums, S = packed * NP with `packed` windows
    block-diagonally, -> (heads, NP, NP) contiguous fp32: the sum over chunks and over the packed
    windows' diagonal blocks, in a fixed order."""
    chunks, heads, s, _ = part.shape
    packed = packed or s // np_rows
    if not (part.is_cuda if use_kernel is None else use_kernel):
        blocks = part.view(chunks, heads, packed, np_rows, packed, np_rows)
        # (chunks, heads, NP, NP, packed) -> sum over chunks and packed windows
        return blocks.diagonal(dim1=2, dim2=4).sum(dim=(0, -1)).contiguous()
    dense = alloc((heads, np_rows, np_rows), part.dtype, part.device)
    rows = max(1, min(np_rows, REDUCE_TILE_ELEMENTS // np_rows))
    with _on_device(part):
        _reduce_bias_kernel[(np_rows // rows, heads)](
            part, dense, chunks, NP=np_rows, PACKED=packed, ROWS=rows
        )
    return dense


@functools.lru_cache(maxsize=32)
def _bias_pairs(geom: WindowGeometry, np_rows: int, device: torch.device):
    """Real pairs of the padded (NP, NP) bias grouped by table row (CSR): row_ptr (R+1,) and cols
    (N*N,) int32 positions a * NP + b, and the most pairs in a row."""
    n = geom.tokens
    index = window_slots(geom)["bias_index"].reshape(-1)  # (N*N,) table row of pair (a, b)
    a = torch.arange(n, device=CPU)
    positions = (a[:, None] * np_rows + a[None, :]).reshape(-1)
    order = torch.argsort(index, stable=True)
    counts = torch.bincount(index, minlength=geom.table_rows)
    row_ptr = torch.zeros(geom.table_rows + 1, dtype=torch.long, device=CPU)
    row_ptr[1:] = torch.cumsum(counts, 0)
    return (
        row_ptr.to(device, torch.int32),
        positions[order].to(device, torch.int32),
        int(counts.max()),
    )


@triton.jit
def _fold_bias_kernel(
    DENSE, ROW_PTR, COLS, TABLE, dense_head_stride, rows, max_count, s_tr, s_th,
    BLOCK_R: tl.constexpr,
):  # fmt: skip
    """table[r, head] = sum of dense[head, pairs of row r], summed in a fixed order (no atomics)."""
    pid = tl.program_id(0)
    head = tl.program_id(1)
    r = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    in_range = r < rows
    start = tl.load(ROW_PTR + r, mask=in_range, other=0)
    count = tl.load(ROW_PTR + r + 1, mask=in_range, other=0) - start
    acc = tl.zeros([BLOCK_R], tl.float32)
    for k in range(0, max_count):
        live = k < count
        col = tl.load(COLS + start + k, mask=live, other=0)
        acc += tl.load(DENSE + head * dense_head_stride + col, mask=live, other=0.0)
    tl.store(TABLE + r * s_tr + head * s_th, acc, mask=in_range)


def dense_to_table(dense: torch.Tensor, geom: WindowGeometry) -> torch.Tensor:
    """Fold a (heads, NP, NP) fp32 gradient of the padded dense bias into the (R, heads) table:
    only real pairs (a, b < N) count, each row summed over its pairs in a fixed order (no
    atomics, unlike index_add_ on a GPU). One launch; `bias.fold_on_cpu` is the CPU's fold."""
    heads, np_rows = dense.shape[0], dense.shape[-1]
    dense = dense.reshape(heads, np_rows * np_rows).contiguous()
    row_ptr, cols, max_count = _bias_pairs(geom, np_rows, dense.device)
    table = alloc((geom.table_rows, heads), dense.dtype, dense.device)
    block_r = 128
    with _on_device(dense):
        _fold_bias_kernel[(triton.cdiv(geom.table_rows, block_r), heads)](
            dense, row_ptr, cols, table, dense.stride(0), geom.table_rows, max_count,
            table.stride(0), table.stride(1), BLOCK_R=block_r,
        )  # fmt: skip
    return table
