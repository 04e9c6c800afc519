"""AdamW parameter groups and the per-step learning-rate schedules (SPEC.md §11.2).

- Groups: weight decay on every trainable parameter except those whose name contains `bias`,
  `LayerNorm.bias`, `LayerNorm.weight`, `pos_embed` or `relative_position_bias_table` (so
  Swin's `norm1`/`norm2` weights *are* decayed, as in the original). With `freeze_pooler`
  (SPEC Decision 2) every parameter whose name contains `pooler` is left out, for every model.
  Frozen parameters (requires_grad False: stage 2's stage-1 parts) and the parameters a model's
  forward never reaches (`model.unused_parameters()`) are left out too.
- Schedules, as functions of the number of optimiser steps already taken t (the original calls
  timm's `step_update(global_step)` after each step, so step t runs with lr(t)); with T the run's
  steps and W the warm-up steps, all three start with a linear warm-up
  lr(t) = warmup_lr + t·(lr - warmup_lr)/W for t < W, then
  - `linear`: lr·(1 - 0.99·(t - W)/(T - W)), reaching 1% of lr at T (held there after T);
  - `step`: lr·decay_rate^⌊t / D⌋, D = decay_epochs·(steps per epoch) (t not shifted by W: timm);
  - `cosine`: min_lr + ½(lr - min_lr)(1 + cos(π·t/T)) for t < T, min_lr after (timm with one
    cycle, t not shifted by W).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from ..config import TrainConfig

NO_DECAY = (
    "bias",
    "LayerNorm.bias",
    "LayerNorm.weight",
    "pos_embed",
    "relative_position_bias_table",
)
LINEAR_END_RATE = 0.01
"""The `linear` schedule ends at 1% of lr (`lr_min_rate=0.01`, hard-coded in the original)."""


def excluded_parameters(model: nn.Module, freeze_pooler: bool) -> set[str]:
    """Names of the parameters the optimiser never sees: frozen, unused by the forward, and the
    pooler under `freeze_pooler`."""
    unused = set(model.unused_parameters()) if hasattr(model, "unused_parameters") else set()
    out = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or name in unused or (freeze_pooler and "pooler" in name):
            out.add(name)
    return out


def param_groups(model: nn.Module, weight_decay: float, freeze_pooler: bool) -> list[dict]:
    """Two AdamW groups (decay, no decay) over the trainable parameters; each group also lists
    its parameter `names` (DeepSpeed and torch ignore the extra key)."""
    skip = excluded_parameters(model, freeze_pooler)
    decay, no_decay = {"params": [], "names": []}, {"params": [], "names": []}
    for name, p in model.named_parameters():
        if name in skip:
            continue
        group = no_decay if any(nd in name for nd in NO_DECAY) else decay
        group["params"].append(p)
        group["names"].append(name)
    decay["weight_decay"], no_decay["weight_decay"] = weight_decay, 0.0
    groups = [g for g in (decay, no_decay) if g["params"]]
    if not groups:
        raise ValueError("the model has no trainable parameter to optimise")
    return groups


def freeze_excluded(model: nn.Module, freeze_pooler: bool) -> list[str]:
    """requires_grad False on every parameter the optimiser will not see, so that DDP and ZeRO
    need no unused-parameter search; returns their names."""
    names = excluded_parameters(model, freeze_pooler)
    for name, p in model.named_parameters():
        if name in names:
            p.requires_grad_(False)
    return sorted(names)


def build_optimizer(model: nn.Module, cfg: TrainConfig, freeze_pooler: bool):
    """torch AdamW over `param_groups`, fused (one kernel for the whole update) wherever torch
    has the fused kernel (CUDA and the CPU). DeepSpeed takes it as is: no fused-Adam JIT build.

    Fused also means the update can be skipped on the device: the engine hands it a `found_inf`
    flag for a non-finite step, so the loop never waits for the GPU to decide (issue 20)."""
    groups = param_groups(model, cfg.weight_decay, freeze_pooler)
    for g in groups:
        g.pop("names")
    params = [p for g in groups for p in g["params"]]
    fused = bool(params) and all(
        p.device.type in ("cpu", "cuda")
        and p.dtype in (torch.float32, torch.float16, torch.bfloat16)
        for p in params
    )
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused or None
    )


@dataclasses.dataclass(frozen=True)
class LRSchedule:
    """lr(t) for t optimiser steps taken (see the module docstring)."""

    name: str
    lr: float
    total_steps: int
    warmup_steps: int
    warmup_lr: float = 0.0
    decay_steps: int = 1
    decay_rate: float = 1.0
    min_lr: float = 0.0

    @classmethod
    def from_config(cls, cfg: TrainConfig, steps_per_epoch: int, total_steps: int) -> LRSchedule:
        """Warm-up and decay epochs become steps with int(), as the original's build_scheduler."""
        return cls(
            cfg.schedule,
            cfg.lr,
            total_steps,
            int(cfg.warmup_epochs * steps_per_epoch),
            cfg.warmup_lr,
            max(1, int(cfg.decay_epochs * steps_per_epoch)),
            cfg.decay_rate,
            cfg.min_lr,
        )

    def __call__(self, t: int) -> float:
        if t < self.warmup_steps:
            return self.warmup_lr + t * (self.lr - self.warmup_lr) / self.warmup_steps
        if self.name == "linear":
            span = max(1, self.total_steps - self.warmup_steps)
            done = min(1.0, (t - self.warmup_steps) / span)
            return self.lr * (1.0 - (1.0 - LINEAR_END_RATE) * done)
        if self.name == "step":
            return self.lr * self.decay_rate ** (t // self.decay_steps)
        if self.name == "cosine":
            if t >= self.total_steps:
                return self.min_lr
            cos = math.cos(math.pi * t / self.total_steps)
            return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1.0 + cos)
        raise ValueError(f"unknown schedule {self.name!r}")
