"""All-gather of a batch across ranks, with the gradient of a loss every rank computes alike.

Every rank gathers the global batch and computes the same global loss (LF-VILA, SPEC.md §7.2),
so the gradient of that loss w.r.t. a rank's own rows is its slice of the gathered gradient:
backward returns that slice, and each rank's input gradient equals the single-process gradient
on the concatenated batch. (LF-VILA's SyncFunction instead all-reduces the gradient first, which
multiplies it by the world size; its trainer relied on DeepSpeed's averaging to undo that. A
training loop that averages gradients over ranks must therefore scale a gathered loss by the
world size before backward.)
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class _GatherBatch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        world = dist.get_world_size(group)
        ctx.rank, ctx.rows = dist.get_rank(group), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad):
        start = ctx.rank * ctx.rows
        return grad[start : start + ctx.rows], None


def gather_batch(
    x: torch.Tensor, process_group=None, check_sizes: bool | None = None
) -> torch.Tensor:
    """(n, ...) on each rank -> (world * n, ...) in rank order, differentiable.

    Every rank must pass the same n. `check_sizes=True` all-gathers the sizes first and raises
    ValueError when they differ: that reads a device value on the host (a sync, and no CUDA
    graph capture). The default (None) checks only CPU tensors (gloo), where it costs no device
    sync; CUDA tensors are trusted (shapes only), so the gather stays sync-free and capturable.
    """
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("process_group was given but torch.distributed is not initialised")
    if check_sizes is None:
        check_sizes = x.device.type == "cpu"
    if check_sizes:
        world = dist.get_world_size(process_group)
        sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world)]
        dist.all_gather(sizes, torch.tensor([x.shape[0]], device=x.device), group=process_group)
        sizes = [int(s) for s in sizes]
        if len(set(sizes)) != 1:
            raise ValueError(f"every rank must pass the same batch size to the loss, got {sizes}")
    return _GatherBatch.apply(x, process_group)
