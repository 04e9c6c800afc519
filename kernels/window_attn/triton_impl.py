"""Launchers of the Triton window-attention kernels: `fwd(...) -> (o, lse)` and
`bwd(...) -> (dq, dk, dv, dbias, dk_pad, dv_pad)`; no autograd here (function.py owns that).

The kernels live by stage: row geometry and score tiles (triton_rows), the forward (triton_fwd),
the fused backward for windows that fit one tile (triton_bwd_fused), the two-pass backward for
bigger ones (triton_bwd_two_pass) and the bias-gradient reductions (triton_bias). This module
chooses the tiling and the launch settings, allocates and launches.

- The bias is one dense operand (heads or 1, NP, NP), contiguous, in fp32 or the inputs' dtype
  (bias.py builds it from a table or a user's bias); its gradient comes back in the same shape
  and dtype, summed over heads for a broadcast (1, NP, NP) bias.
- q, k and v share one set of strides (the separate tensors of the public API, or the three
  views of the module's packed qkv); the gradients share another, so the backward can write
  dq, dk, dv straight into one packed (B, T, H, W, 3, heads, D) buffer.
- Backward is deterministic and makes at most two passes over the scores: NP <= BLOCK_BWD: one
  fused kernel; NP > BLOCK_BWD: the dq/bias pass, then the dk/dv pass. The bias gradient is a
  reduction over batch and windows: programs sum their dS tiles in registers over a fixed chunk
  of windows and store partial sums, which `reduce_bias_partials` sums in a fixed order. No
  float atomics anywhere.
- Launch settings are pinned per shape (`fwd_launch`, `bwd_launch`, `dq_bias_launch`), so every
  process runs the same code and results are bitwise reproducible across processes.
  `LFVILA_AUTOTUNE=1` makes the forward autotune instead (opt-in; the choice can then differ
  between processes).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os

import torch
import triton

from .._buffers import alloc
from .._triton_utils import PROGRAMS_PER_SM, dot_precision, parallel_target
from . import triton_bias
from .geometry import WindowGeometry, window_geometry
from .triton_bwd_fused import _bwd_fused_kernel
from .triton_bwd_two_pass import (
    DQ_KEYS_PER_PART,
    DQ_TILE_ELEMENTS,
    DQ_WHOLE_WINDOW_ROWS,
    _bwd_dkdv_kernel,
    _bwd_dq_bias_kernel,
)
from .triton_fwd import FWD_BLOCK, _fwd_kernel, _fwd_kernel_autotuned, fwd_launch

LOG2E = 1.4426950408889634
BWD_BLOCK = 64
# Programs of the fused backward that fit one SM at once: ptxas gives it about 240 registers at
# 4 warps (BENCHMARKS.md, compile report), so 65536 / (240 * 128) = 2. Its chunk count aims at
# one full wave of resident programs rather than the generic 4 per SM: every extra chunk is
# another (BLOCK, BLOCK) partial to store and reduce, and a second wave leaves a tail.
FUSED_BWD_RESIDENT_PER_SM = 2


@functools.lru_cache(maxsize=256)
def layout_constants(geom: WindowGeometry, head_dim: int) -> dict:
    """The kernels' constexpr arguments for one geometry (cached: built once per shape)."""
    return dict(
        N=geom.tokens,
        NP=geom.padded_tokens,
        T=geom.size[0],
        H=geom.size[1],
        W=geom.size[2],
        NWT=geom.grid[0],
        NWH=geom.grid[1],
        NWW=geom.grid[2],
        WT=geom.window[0],
        WH=geom.window[1],
        WW=geom.window[2],
        ST=geom.shift[0],
        SH=geom.shift[1],
        SW=geom.shift[2],
        HEAD_DIM=head_dim,
        SHIFTED=geom.shifted,
    )


def bwd_launch(
    block: int, head_dim: int, dtype: torch.dtype, np_rows: int, has_pad: bool = False
) -> dict:
    """Pinned launch settings of the fused backward (np_rows <= block) and of the dk/dv pass,
    no autotuning: the config must not change run to run. From the sm_90a compile report under
    Triton 3.8 and 3.6 (BENCHMARKS.md):

    - wider heads carry four (BLOCK, D) operand tiles: 8 warps keep them in registers;
    - pipeline stages hold those four tiles each; capped so the kernel fits Hopper's 227 KiB of
      shared memory (fp32 at head_dim 128 would need 384 KiB with three stages);
    - the fused backward with pad vectors (padded maps) holds the pad path's tiles beside the
      program's bias tile and its bias-gradient sum: 4 warps spill there, 8 unpipelined do not;
    - the dk/dv pass over 512-row windows at head_dim >= 64 spills with two stages, not one.
    """
    stage_bytes = 4 * block * head_dim * torch.tensor([], dtype=dtype).element_size()
    warps = 4 if head_dim <= 32 and dtype != torch.float32 else 8
    stages = max(1, min(2, (128 * 1024) // stage_bytes))
    if np_rows <= block and has_pad:
        warps, stages = 8, 1
    if np_rows > block and np_rows >= 512 and head_dim >= 64:
        stages = 1
    return dict(num_warps=warps, num_stages=stages)


def dq_block(np_rows: int, block: int) -> int:
    """Query rows per program of the dq/bias pass: (rows x NP) fp32 tiles of DQ_TILE_ELEMENTS."""
    return max(16, min(block, DQ_TILE_ELEMENTS // np_rows))


def dq_key_split(np_rows: int, head_dim: int, shifted: bool) -> int:
    """Key parts the dq/bias pass takes one after the other (then its bias rows live in memory).

    A pinned choice from the sm_90a compile report (BENCHMARKS.md). Whole windows keep the bias
    rows in registers: every window up to DQ_WHOLE_WINDOW_ROWS rows (L0-L4, Video-Swin's 2x7x7)
    and LF-VILA's L5 (NP 512, head_dim 32, never shifted). At NP 512 with head_dim 64 the whole
    window spills at every warp count, and shifted at head_dim 32 (Video-Swin's 8x7x7) sits at
    the register limit, so those take parts of DQ_KEYS_PER_PART keys. Parts cost L2 traffic:
    each adds its dS rows into memory, as many bytes per window as the part's K and V at
    head_dim 32.
    """
    if np_rows <= DQ_WHOLE_WINDOW_ROWS or (np_rows * head_dim <= 512 * 32 and not shifted):
        return 1
    return np_rows // DQ_KEYS_PER_PART


def dq_bias_launch(block_q: int, np_rows: int, head_dim: int, parts: int) -> dict:
    """The dq/bias pass holds (BLOCK_Q, keys) fp32 tiles (scores, bias, dP, dS, the bias-gradient
    sum) and the keys and values of a window (or of a part of one); past NP = 128, or at head
    dims over 32, it needs 8 warps to stay out of spills. Then an explicit register ceiling at
    the hardware's 255: left to itself ptxas squeezes some of these variants into 128 registers
    (two blocks per SM) and spills (compile report, BENCHMARKS.md)."""
    warps = 4 if np_rows <= 128 and head_dim <= 32 else 8
    return dict(num_warps=warps, num_stages=1, maxnreg=255 if warps == 8 else None)


def _programs(
    units: int, per_unit_programs: int, device: torch.device, per_sm: int | None = None
) -> int:
    """How many programs to spread `units` over (each also spans `per_unit_programs` others):
    enough for `per_sm` resident programs per SM (default PROGRAMS_PER_SM, 4), a fixed number
    per (shape, device), so the reduction order and hence the bits never change."""
    target = parallel_target(device, per_sm or PROGRAMS_PER_SM)
    return max(1, min(units, math.ceil(target / per_unit_programs)))


def _autotune_requested() -> bool:
    return os.environ.get("LFVILA_AUTOTUNE", "0") not in ("", "0")


def _shared_strides(q, k, v):
    """q, k, v with one common stride set (copies only when they differ: rare)."""
    if q.stride() == k.stride() == v.stride():
        return q, k, v
    return q.contiguous(), k.contiguous(), v.contiguous()


def _strides5(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(x.stride()[:5])


def _on_device(x: torch.Tensor):
    """Launch on x's GPU (Triton uses the current device), or nothing on CPU (interpreter)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _side(q, bias, k_pad):
    """The optional operands (a dummy pointer when absent) and their strides: the bias's head
    stride (0 for a (1, NP, NP) bias broadcast over heads) and the pad vectors' head stride."""
    tensors = (
        bias if bias is not None else q,
        k_pad if k_pad is not None else q,
    )
    bias_head_stride = bias.stride(0) if bias is not None and bias.shape[0] > 1 else 0
    return tensors, (bias_head_stride, k_pad.stride(0) if k_pad is not None else 0)


def fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
    k_pad: torch.Tensor | None, v_pad: torch.Tensor | None, window_size: tuple[int, int, int],
    shift_size: tuple[int, int, int], scale: float, mask_value: float, block: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Forward. q, k, v: (B, T, H, W, heads, D) with unit stride in D (views of one packed
    (B, T, H, W, 3, heads, D) tensor are read in place). bias: (heads or 1, NP, NP) contiguous.

    Returns o (B, T, H, W, heads, D) contiguous in q's dtype and lse (B, T, H, W, heads) fp32,
    the log2-sum-exp2 of each query's scaled scores (saved for backward). One launch.
    """
    B, T, H, W, heads, D = q.shape
    q, k, v = _shared_strides(q, k, v)
    geom = window_geometry((T, H, W), window_size, shift_size)
    blk = block or FWD_BLOCK
    consts = layout_constants(geom, D)
    np_rows = consts["NP"]
    total_windows = B * geom.num_windows
    units = triton.cdiv(total_windows * np_rows, blk)
    o = alloc(q.shape, q.dtype, q.device)
    lse = alloc(q.shape[:-1], torch.float32, q.device)
    programs = _programs(units, heads, q.device)
    per_program = triton.cdiv(units, programs)
    programs = triton.cdiv(units, per_program)
    (bias_t, kpad_t), strides = _side(q, bias, k_pad)
    kernel = _fwd_kernel_autotuned if _autotune_requested() else _fwd_kernel
    launch = {} if _autotune_requested() else fwd_launch(np_rows, blk, D, q.dtype)
    with _on_device(q):
        kernel[(heads, programs)](
            q, k, v, bias_t, kpad_t, v_pad if v_pad is not None else q, o, lse, *_strides5(q),
            *strides, total_windows, units, per_program, heads, scale * LOG2E,
            mask_value * LOG2E, BLOCK=blk, NJ=max(1, np_rows // blk), HAS_BIAS=bias is not None,
            HAS_PAD_KV=k_pad is not None, DOT_PRECISION=dot_precision(q.dtype), **consts,
            **launch,
        )  # fmt: skip
    return o, lse


def bwd(
    do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
    lse: torch.Tensor, bias: torch.Tensor | None, k_pad: torch.Tensor | None,
    v_pad: torch.Tensor | None, window_size: tuple[int, int, int],
    shift_size: tuple[int, int, int], scale: float, mask_value: float, block: int | None = None,
    chunks: int | None = None,
    grads_out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    key_split: int | None = None,
    scratch: dict | None = None,
):  # fmt: skip
    """Backward: returns (dq, dk, dv, dbias, dk_pad, dv_pad); absent inputs give None.

    Deterministic: every gradient is either written once or reduced in a fixed order.
    dbias has bias's shape and dtype ((heads or 1, NP, NP); padding lanes 0).
    `grads_out`: (dq, dk, dv) tensors of q's shape sharing one stride set (e.g. the three views of
    a packed (B, T, H, W, 3, heads, D) gradient) to write into instead of allocating.
    `block`, `chunks` and `key_split` (key parts in the dq/bias pass) override the tiling (tests
    use them to force each code path).
    `scratch`: a dict that receives the two-pass path's intermediate `delta` (rowsum(dO * O) per
    query, fp32, lse's shape, as pass 1 wrote it for pass 2), for the GPU bisect's check of it;
    the fused path computes delta in registers and adds nothing. None (the default) changes
    nothing.
    Launches: 1 (fused) or 2 (two-pass) kernels, plus 1 to reduce the bias partials.
    """
    B, T, H, W, heads, D = q.shape
    q, k, v = _shared_strides(q, k, v)
    geom = window_geometry((T, H, W), window_size, shift_size)
    blk = block or BWD_BLOCK
    consts = layout_constants(geom, D)
    np_rows = consts["NP"]
    total_windows = B * geom.num_windows
    do = do.contiguous()
    if grads_out is None:
        dq, dk, dv = (alloc(q.shape, q.dtype, q.device) for _ in range(3))
    else:
        dq, dk, dv = grads_out
        if not dq.stride() == dk.stride() == dv.stride():
            raise ValueError("grads_out: dq, dk and dv must share one stride set")
    has_bias, has_pad = bias is not None, k_pad is not None
    (bias_t, kpad_t), small = _side(q, bias, k_pad)
    side = (bias_t, kpad_t, v_pad if has_pad else q)
    strides = (*_strides5(q), *_strides5(dq), *small)
    scalars = (scale, scale * LOG2E, mask_value * LOG2E)
    flags = dict(
        HAS_PAD_KV=has_pad, HAS_BIAS=has_bias, DOT_PRECISION=dot_precision(q.dtype), **consts
    )
    f32 = dict(dtype=torch.float32, device=q.device)
    with _on_device(q):
        if np_rows <= blk:
            units = triton.cdiv(total_windows * np_rows, blk)
            n_chunks = chunks or _programs(units, heads, q.device, FUSED_BWD_RESIDENT_PER_SM)
            per_chunk = triton.cdiv(units, n_chunks)
            n_chunks = triton.cdiv(units, per_chunk)
            db_part = alloc((n_chunks, heads, blk, blk), **f32) if has_bias else q
            pad_part = alloc((n_chunks, 2, heads, D), **f32) if has_pad else q
            _bwd_fused_kernel[(heads, n_chunks)](
                q, k, v, *side, do, o, lse, dq, dk, dv, db_part, pad_part, *strides,
                total_windows, heads, per_chunk, *scalars, BLOCK=blk, **flags,
                **bwd_launch(blk, D, q.dtype, np_rows, has_pad),
            )  # fmt: skip
            packed = blk // np_rows
        else:
            nj = np_rows // blk
            bq = dq_block(np_rows, blk)
            nqb = np_rows // bq
            n_chunks = chunks or _programs(total_windows, heads * nqb, q.device)
            per_chunk = triton.cdiv(total_windows, n_chunks)
            n_chunks = triton.cdiv(total_windows, per_chunk)
            parts = key_split or dq_key_split(np_rows, D, geom.shifted)
            delta = alloc(lse.shape, **f32)
            db_part = alloc((n_chunks, heads, np_rows, np_rows), **f32) if has_bias else q
            _bwd_dq_bias_kernel[(heads, nqb, n_chunks)](
                q, k, v, *side, do, o, lse, delta, dq, db_part, *strides, total_windows, heads,
                per_chunk, *scalars, BLOCK_Q=bq, KEY_SPLIT=parts, **flags,
                **dq_bias_launch(bq, np_rows, D, parts),
            )  # fmt: skip
            pad_part = alloc((total_windows * nj, 2, heads, D), **f32) if has_pad else q
            _bwd_dkdv_kernel[(heads, total_windows * nj)](
                q, k, v, *side, do, lse, delta, dk, dv, pad_part, *strides, total_windows, heads,
                *scalars, BLOCK=blk, NJ=nj, **flags, **bwd_launch(blk, D, q.dtype, np_rows),
            )  # fmt: skip
            packed = 1
            if scratch is not None:
                scratch["delta"] = delta
    dbias = dk_pad = dv_pad = None
    if has_bias:
        dbias = triton_bias.reduce_bias_partials(db_part, np_rows, packed)  # (heads, NP, NP)
        if bias.shape[0] == 1 and heads > 1:
            dbias = dbias.sum(0, keepdim=True)  # broadcast bias: a fixed-order sum over heads
        dbias = dbias.to(bias.dtype)
    if has_pad:
        # (programs, 2, heads, D) partial sums -> (heads, D) each, in a fixed order
        dk_pad = pad_part[:, 0].sum(0).to(k_pad.dtype)
        dv_pad = pad_part[:, 1].sum(0).to(v_pad.dtype)
    return dq, dk, dv, dbias, dk_pad, dv_pad
