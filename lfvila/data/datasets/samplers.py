"""The samplers: training's global-batch order, evaluation's every-item-once split over the
ranks, and the epoch-carrying wrapper that lets a resumed run skip into its epoch."""

from __future__ import annotations

import torch
from torch.utils.data import Sampler


class ExactDistributedSampler(Sampler):
    """Evaluation sampler: rank r takes items r, r + world, ...; every item exactly once over the
    ranks, none repeated or dropped (SPEC Decision 4c). Gather and reorder by item index."""

    def __init__(self, length: int, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.indices = list(range(rank, length, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class GlobalBatchSampler(Sampler):
    """Training sampler: each epoch shuffles all items with a generator seeded `seed + epoch`;
    global batch s is items [s·B·W, (s+1)·B·W) of that order and rank r takes its r-th slice of
    B. So a run sees the same global batches, in the same order, at any world size with the same
    B·W (a 2-process run equals one process at twice the batch); the last partial global batch
    is dropped. Yields this rank's indices, `num_batches · batch_size` of them per epoch."""

    def __init__(self, length: int, batch_size: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0):  # fmt: skip
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.length, self.batch_size, self.rank, self.world = length, batch_size, rank, world_size
        self.seed, self.epoch = seed, 0
        self.num_batches = length // (batch_size * world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.length, generator=gen).tolist()
        b, w = self.batch_size, self.world
        for step in range(self.num_batches):
            start = step * b * w + self.rank * b
            yield from order[start : start + b]

    def __len__(self) -> int:
        return self.num_batches * self.batch_size


class EpochSampler(Sampler):
    """Yields (epoch, index) pairs of an inner sampler, so that the random choices of an item
    (window, frames, crop) change every epoch even in persistent DataLoader workers, whose copy
    of the dataset never sees `set_epoch`. `skip(n)` drops the first n indices of the next
    iteration only (a resumed run continues inside its epoch without decoding what it skips)."""

    def __init__(self, inner: Sampler):
        self.inner, self.epoch, self._skip = inner, 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(epoch)

    def skip(self, items: int) -> None:
        self._skip = items

    def __iter__(self):
        skip, self._skip = self._skip, 0
        epoch = self.epoch
        return ((epoch, index) for i, index in enumerate(self.inner) if i >= skip)

    def __len__(self) -> int:
        return len(self.inner)
