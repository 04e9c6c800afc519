"""The tally of the steps between two log lines, kept on the device and read in one host sync."""

from __future__ import annotations

import torch

from .checkpoint import TrainerState
from .protocol import LossOutput


class StepTally:
    """What the steps between two log lines did, kept on the device: loss terms, gradient norm,
    skipped steps and the run of non-finite steps. `flush()` reads it all in one host sync (once
    per `log_every`, at checkpoints and at the end) into the TrainerState and a log record.

    The streak is exact: `max_streak` is the longest run of non-finite steps since the last
    flush, so the stop rule (more than train.max_nonfinite in a row) sees a run that ended before
    the flush too."""

    def __init__(self, state: TrainerState, device: torch.device):
        self.state, self.device = state, device
        self.terms: dict[str, torch.Tensor] = {}
        self.steps = 0  # in the log window
        self.unread = 0  # since the counts were last read
        zero = torch.zeros((), dtype=torch.float64, device=device)
        self.grad_norm, self.nonfinite, self.overflow = zero.clone(), zero.clone(), zero.clone()
        self.streak = torch.full((), float(state.nonfinite_streak), dtype=torch.float64,
                                 device=device)  # fmt: skip
        self.max_streak = self.streak.clone()

    def add_terms(self, out: LossOutput, grad_accum: int) -> None:
        for key, value in {"loss": out.loss, **out.terms}.items():
            value = value.detach().to(self.device, torch.float64) / grad_accum
            self.terms[key] = self.terms[key] + value if key in self.terms else value

    def add_step(self, nonfinite: torch.Tensor, overflow: torch.Tensor, applied, grad_norm) -> None:
        self.steps += 1
        self.unread += 1
        nonfinite = nonfinite.to(self.device, torch.float64)
        self.nonfinite += nonfinite
        self.overflow += overflow.to(self.device, torch.float64)
        self.streak = (self.streak + 1) * nonfinite  # an applied or overflowed step ends the run
        self.max_streak = torch.maximum(self.max_streak, self.streak)
        norm = grad_norm.to(self.device, torch.float64)
        self.grad_norm += torch.where(applied.to(self.device), norm, torch.zeros_like(norm))

    def flush(self, terms: bool = True) -> dict[str, float]:
        """One host read. The non-finite and overflow counts always go into the state (and
        `last_nonfinite`, `last_max_streak`); with `terms`, also the window's averages, returned,
        and the window restarts. Without (a checkpoint or the end between logging steps), the
        loss terms stay for the next log line."""
        names = sorted(self.terms)
        packed = torch.stack(
            [*(self.terms[n] for n in names), self.grad_norm, self.nonfinite, self.overflow,
             self.streak, self.max_streak]
        ).cpu()  # fmt: skip
        *values, grad_norm, nonfinite, overflow, streak, max_streak = packed.tolist()
        self.state.nonfinite_total += int(nonfinite)
        self.state.overflow_total += int(overflow)
        self.state.nonfinite_streak = int(streak)
        self.last_nonfinite, self.last_max_streak = int(nonfinite), int(max_streak)
        self.unread = 0
        self.nonfinite, self.overflow = (
            torch.zeros_like(self.nonfinite),
            torch.zeros_like(self.overflow),
        )
        self.max_streak = self.streak.clone()
        if not terms:
            return {}
        steps = max(self.steps, 1)
        record = {n: v / steps for n, v in zip(names, values)}
        if self.steps:
            record["grad_norm"] = grad_norm / steps
        self.terms, self.steps, self.grad_norm = {}, 0, torch.zeros_like(self.grad_norm)
        return record
