"""Evaluation: every evaluation of a task over its whole dataset, each item exactly once and in
dataset order over the ranks (SPEC Decision 4c)."""

from __future__ import annotations

import torch

from ..data import BadEvaluationVideos, VideoDecodeError
from .protocol import StepContext


@torch.no_grad()
def evaluate(engine, evaluations: list, ctx: StepContext) -> dict[str, dict[str, float]]:
    """Every evaluation over its whole dataset: rows gathered by item index (each exactly once),
    sums added over ranks; returns {evaluation name: metrics}."""
    model = engine.module
    was_training = model.training
    model.eval()
    results = {}
    try:
        for ev in evaluations:
            rows, index, sums = {}, [], {}
            try:
                for batch in ev.loader:
                    batch = engine.prepare(batch)
                    with engine.autocast():
                        out = ev.step(model, batch, ctx)
                    index.append(batch["index"].cpu())
                    for key, value in out.rows.items():
                        rows.setdefault(key, []).append(value.float().cpu())
                    if "skipped" in batch:  # eval.on_bad_video=skip: items served as zeros
                        rows.setdefault("skipped", []).append(batch["skipped"].float().cpu())
                    for key, value in out.sums.items():
                        sums[key] = sums.get(key, 0.0) + value.detach().double().cpu()
            except VideoDecodeError as exc:  # eval.on_bad_video=error: one line, no traceback
                raise BadEvaluationVideos(
                    f"evaluation {ev.name}: unreadable video {exc.path} ({exc.reason}). Replace "
                    "or remove its item, or set eval.on_bad_video=skip to evaluate the rest (it "
                    "then counts as a miss)."
                ) from None
            length = ev.loader.dataset_length
            idx = torch.cat(index) if index else torch.zeros(0, dtype=torch.long)
            gathered = {}
            for key in sorted(rows) or []:
                gathered[key] = ctx.world.gather_rows(torch.cat(rows[key]), idx, length)
            if not rows:  # still check that every item was seen once
                ctx.world.gather_rows(torch.zeros(len(idx), 0), idx, length)
            keys = sorted(sums)
            totals = (
                ctx.world.sum(torch.stack([torch.as_tensor(sums[k]) for k in keys])) if keys else []
            )
            results[ev.name] = ev.metrics(gathered, dict(zip(keys, [float(t) for t in totals])))
    finally:
        model.train(was_training)
    return results
