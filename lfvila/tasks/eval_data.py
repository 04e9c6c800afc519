"""Evaluation data with unreadable videos (`eval.on_bad_video`, issue 21).

Before any model work, every evaluation item is planned: its video files opened and probed
(header and frame count; no frame decoded), in a few threads. An item whose video cannot be read
then either stops the run ('error': one line per unreadable file with its reason and the items
it serves, and a hint; exit 2, no traceback) or is left out of the evaluation ('skip': the
dataset serves the other items, and the evaluation's metrics count the left-out ones as misses).
A video that opens but fails only when decoded is caught later: 'error' stops the evaluation
with one line (`lfvila.training.loop.evaluate`), 'skip' serves the item as zeros flagged
`skipped`, also counted as a miss.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor

from ..data import BadEvaluationVideos, VideoDecodeError

logger = logging.getLogger("lfvila")

COUNTED_AS = {
    "retrieval": "a miss at the worst rank (N) as a query and as the answer; R@K counts it as a "
    "miss; the left-out videos are not candidates",
    "accuracy": "a wrong answer",
    "losses": "left out of the averages (an item whose video fails only at its decode enters "
    "them with a zero video)",
}


class SkippedItems:
    """What an evaluation left out (found by the scan) or served as zeros (failed at its decode),
    for its metrics and for metrics.json."""

    skipped: list = ()  # an immutable default; `with_skipped` sets the instance's list
    """[{item, where, video, reason}] left out before the run."""
    late: list = ()
    """Positions served flagged `skipped` at the last evaluation (failed at the decode)."""
    counted_as = ""

    def with_skipped(self, skipped: list):
        self.skipped, self.late = list(skipped), []
        return self

    def note_late(self, flags) -> None:
        """Remember the positions the last evaluation's rows flagged (flags: (N,) or None)."""
        self.late = [] if flags is None else flags.nonzero().flatten().tolist()

    def skipped_report(self) -> dict | None:
        """metrics.json's entry: the skipped items and how they were counted, or None."""
        if not self.skipped and not self.late:
            return None
        dataset = getattr(self.loader, "dataset", None)
        late = []
        for pos in self.late:
            record = dataset.record_of(pos) if dataset is not None else pos
            where = dataset._where(record) if dataset is not None else f"item {pos}"
            late.append({"item": record, "where": where, "video": None,
                         "reason": "failed at its decode (the log names the file)"})  # fmt: skip
        return {"counted_as": self.counted_as, "items": [*self.skipped, *late]}


def skipped_report(evaluations) -> dict:
    """{evaluation name: its skipped items and how they were counted}; {} when none."""
    out = {}
    for ev in evaluations:
        report = ev.skipped_report() if hasattr(ev, "skipped_report") else None
        if report is not None:
            out[ev.name] = report
    return out


def scan(dataset, workers: int | None = None) -> list[dict]:
    """Plan every item (files opened and probed, nothing decoded); the unreadable ones as
    [{item, where, video, reason}] in item order."""

    def plan(i: int):
        try:
            dataset.item(dataset.record_of(i), decode=False)
        except VideoDecodeError as exc:
            record = dataset.record_of(i)
            return {"item": record, "where": dataset._where(record), "video": exc.path,
                    "reason": exc.reason}  # fmt: skip
        return None

    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:  # I/O bound; PyAV releases the GIL
        found = pool.map(plan, range(len(dataset)))
    return [bad for bad in found if bad is not None]


def prepare(dataset, name: str, key: str, mode: str) -> list[dict]:
    """Scan the evaluation `name` (annotations from config key `key`) and apply `mode`:
    'error' raises BadEvaluationVideos listing each unreadable file once; 'skip' narrows the
    dataset to the readable items, logs one line per file, and returns the skipped items."""
    bad = scan(dataset)
    if not bad:
        return []
    by_file: dict[str, tuple[str, list[str]]] = {}
    for b in bad:
        by_file.setdefault(b["video"], (b["reason"], []))[1].append(b["where"])
    if mode == "error":
        lines = [f"evaluation {name} ({key}): {len(by_file)} unreadable video file(s), "
                 f"{len(bad)} of {len(dataset)} items:"]  # fmt: skip
        for path, (reason, where) in by_file.items():
            shown = ", ".join(where[:3]) + (f" +{len(where) - 3}" if len(where) > 3 else "")
            lines.append(f"  {path}: {reason} ({shown})")
        lines.append(
            "  Replace or remove those items, or set eval.on_bad_video=skip to evaluate the rest "
            "(each skipped item counts as a miss; metrics.json lists them)."
        )
        raise BadEvaluationVideos("\n".join(lines))
    for path, (reason, where) in by_file.items():
        logger.warning(
            "unreadable video %s (%s): evaluation %s skips %s", path, reason, name,
            ", ".join(where),
        )  # fmt: skip
    skipped = {b["item"] for b in bad}
    dataset.keep_items([dataset.record_of(i) for i in range(len(dataset))
                        if dataset.record_of(i) not in skipped])  # fmt: skip
    logger.warning(
        "evaluation %s: %d of %d items skipped for unreadable videos; each counts as a miss "
        "(eval.on_bad_video=skip)", name, len(skipped), len(dataset) + len(skipped),
    )  # fmt: skip
    return bad
