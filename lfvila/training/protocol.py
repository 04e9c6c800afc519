"""What the training loop and a task say to each other.

A task is a small object: `task.loss(model, batch, ctx) -> LossOutput` for training, and a list
of evaluations, each `step(model, batch, ctx) -> EvalOutput` plus `metrics(rows, sums)`;
`StepContext` is what either may need besides the model and the batch. The loop
(`training.loop`) owns everything else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Protocol

import torch

from .dist import World


@dataclasses.dataclass
class StepContext:
    """What a task's loss or evaluation step may need besides the model and the batch."""

    world: World
    process_group: object = None
    """Group the contrastive features are gathered over (None: this rank's batch only)."""
    mtc_generator: torch.Generator | None = None
    """MTC sampling, seeded the same on every rank (SPEC Decision 3)."""


@dataclasses.dataclass
class LossOutput:
    loss: torch.Tensor
    """The objective as defined (what is logged)."""
    terms: dict[str, torch.Tensor]
    """Its unweighted terms, e.g. {'vpc': ..., 'mtc': ...}."""
    backward: torch.Tensor
    """What the engine differentiates. Gathered terms appear times the world size: each rank's
    gradient of a gathered loss is its slice of the global gradient, and DDP/DeepSpeed average
    over ranks (lfvila/kernels/contrastive/distributed.py)."""


@dataclasses.dataclass
class EvalOutput:
    rows: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    """Per-item results (B, ...), aligned with batch['index']; gathered in dataset order."""
    sums: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    """Scalars summed over all batches and ranks (e.g. loss x items, correct, counted)."""


class Evaluation(Protocol):
    name: str
    loader: Iterable
    """Batches with 'index'; `loader.dataset_length` items in all over the ranks."""

    def step(self, model, batch: dict, ctx: StepContext) -> EvalOutput: ...

    def metrics(self, rows: dict, sums: dict) -> dict[str, float]: ...


class Task(Protocol):
    def loss(self, model, batch: dict, ctx: StepContext) -> LossOutput: ...
