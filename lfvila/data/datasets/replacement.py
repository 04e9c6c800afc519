"""The bad-video replacement policy of every dataset (`BadVideoReplacement`, mixed into
`VideoTextDataset`), its errors and counts, and the clip exclusions of `data.exclude`.

In training an item whose video cannot be read is replaced by the first readable candidate of a
stream seeded by (seed, epoch, index); each failed decode is logged with the path and reason and
counted by kind (`FAILURE_KINDS`). In evaluation, or with `strict=True`, the error propagates
naming the file (or, under eval.on_bad_video=skip, the item is served as zeros and counted as a
miss). A frame is never silently wrong.
"""

from __future__ import annotations

import collections
import logging
import os

import numpy as np
import torch

from ..containers import VideoDecodeError
from ..sampling import REPLACEMENT_STREAM, seeded_stream

logger = logging.getLogger(__name__)
MAX_REPLACEMENTS = 100
"""Replacement candidates tried for one item before giving up (at 30% unreadable videos the
chance that 100 in a row fail is 5e-53; the bad-fraction limit stops a hopeless run first)."""
MIN_ATTEMPTS_FOR_LIMIT = 200
"""Items a process must have served before `max_bad_fraction` is judged (or the whole dataset,
when it is smaller)."""


class TooManyBadVideos(RuntimeError):
    """More than `DataOptions.max_bad_fraction` of the videos this process tried were
    unreadable: the data (or its paths) is broken, not a few files."""


# Why an item was replaced, as counted in `decode_failures` (matched on VideoDecodeError.reason).
FAILURE_KINDS = (*VideoDecodeError.KINDS, "other")


def failure_kind(reason: str) -> str:
    """The FAILURE_KINDS entry a VideoDecodeError reason belongs to (`VideoDecodeError.KINDS`
    maps the start of every reason raised in lfvila.data; "other": an unknown one)."""
    return VideoDecodeError.kind_of(reason)


class BadEvaluationVideos(ValueError):
    """Unreadable evaluation videos under eval.on_bad_video=error: one line per file and a hint
    (the CLI prints it, exit 2, no traceback)."""


class ClipExclusions:
    """A set of clip (or video) ids held as a sorted array of 64-bit hashes: 8 bytes an id,
    shared by forked workers without copy-on-write growth (a Python set of 2.5M ids would take
    ~200 MB per process). A hash collision (2^-64 per pair) could exclude an innocent clip."""

    def __init__(self, ids):
        hashes = np.fromiter((_id_hash(i) for i in ids), dtype=np.uint64)
        self.hashes = np.unique(hashes)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> ClipExclusions:
        """One id per line (blank lines ignored): `lfvila prepare check`'s *.bad_ids.txt."""
        with open(path, encoding="utf-8") as f:
            return cls(line.strip() for line in f if line.strip())

    def __len__(self) -> int:
        return len(self.hashes)

    def __contains__(self, clip_id: str) -> bool:
        h = np.uint64(_id_hash(clip_id))
        i = int(np.searchsorted(self.hashes, h))
        return i < len(self.hashes) and self.hashes[i] == h


def _id_hash(clip_id: str) -> int:
    import hashlib

    return int.from_bytes(hashlib.blake2b(clip_id.encode(), digest_size=8).digest(), "little")


class BadVideoReplacement:
    """The replacement policy of `VideoTextDataset` (its state and `with_replacement`). Uses the
    dataset's `item`, `decode`, `record_of`, `train`, `opt`, `seed`, `epoch` and `root`."""

    def _init_bad_video_state(self, records: int) -> None:
        self.failure_counts: collections.Counter = collections.Counter()
        """Decodes that failed in this process, by FAILURE_KINDS (candidates included)."""
        self.replaced_counts: collections.Counter = collections.Counter()
        """Items this process served by a replacement, by the kind of their own failure."""
        self._unreadable = bytearray(records)
        """Per item, 0 or 1 + the FAILURE_KINDS index of its video's failure in this process
        (8.5 MB for LF-VILA-8M): such items are replaced (and counted) without a decode."""
        self.items_requested = self.items_replaced = 0
        """Training items asked of this process, and how many had an unreadable video."""

    def with_replacement(
        self,
        index: int,
        decode: bool = True,
        epoch: int | None = None,
        backend: str | None = None,
    ) -> dict:
        """`item(index)`, or in training a replacement when its video cannot be decoded.

        Two counts travel with each item out of DataLoader workers (`Loader` sums them):
        `decode_failures`, the decodes that failed while serving it, per FAILURE_KINDS (its own
        video's and any bad replacement candidate's), each logged as one "unreadable video"
        warning; and `replaced`, one-hot by the kind of the item's own failure when it was served
        by a replacement (zeros otherwise), its last slot 1 when that failure was already known
        to this process (replaced without a new decode or log line). An item excluded by
        data.exclude is replaced without a decode: counted in `replaced` as 'excluded' only.

        Replacements are the candidates of a stream seeded by (seed, epoch, index), tried in
        order; candidate k is decoded with the random choices of attempt k. Items this process
        already found unreadable are skipped without a decode, which changes nothing but the
        time: the item served is a function of the seed, the epoch, the index and the files
        alone, so a resumed run serves the same replacements. When more than
        `max_bad_fraction` of the items requested from this process (judged after
        min(MIN_ATTEMPTS_FOR_LIMIT, len(dataset)) requests) had an unreadable video,
        TooManyBadVideos stops the run with the counts."""
        position, index = index, self.record_of(index)
        if not self.train and self.opt.eval_on_bad_video == "skip":
            return self._eval_item_or_skip(position, index, decode, epoch, backend)
        failures = torch.zeros(len(FAILURE_KINDS), dtype=torch.long)
        replaced = torch.zeros(len(FAILURE_KINDS) + 1, dtype=torch.long)
        epoch = self.epoch if epoch is None else epoch
        candidates = seeded_stream(self.seed, epoch, index, 0, REPLACEMENT_STREAM)
        item = index
        for k in range(MAX_REPLACEMENTS + 1):
            if k > 0:
                item = candidates.randrange(len(self))
            if self.train and not self.opt.strict and self.known_unreadable(item):
                if k == 0:  # replaced again, without a decode (or a new log line)
                    kind = FAILURE_KINDS[self._unreadable[item] - 1]
                    self.replaced_counts[kind] += 1
                    replaced[FAILURE_KINDS.index(kind)], replaced[-1] = 1, 1
                    self._count_request(replaced=True)
                continue
            try:
                out = self.item(item, k, decode, epoch, backend)
            except VideoDecodeError as exc:
                if self.opt.strict or not self.train:
                    raise
                kind = failure_kind(exc.reason)
                self._unreadable[item] = FAILURE_KINDS.index(kind) + 1
                excluded = kind == "excluded"  # never opened: not a failed decode
                if not excluded:
                    self.failure_counts[kind] += 1
                    failures[FAILURE_KINDS.index(kind)] += 1
                what = "excluded clip %s (%s)" if excluded else "unreadable video %s (%s)"
                log = logger.info if excluded else logger.warning
                if k == 0:
                    self.replaced_counts[kind] += 1
                    replaced[FAILURE_KINDS.index(kind)] = 1
                    log(what + ": item %d replaced", exc.path, exc.reason, item)
                    self._count_request(replaced=True)
                else:
                    log(what + ": replacement candidate %d for item %d passed over", exc.path,
                        exc.reason, item, index)  # fmt: skip
                continue
            if k == 0:
                self._count_request(replaced=False)
            out["decode_failures"] = failures
            out["replaced"] = replaced
            if item == index:
                out["index"] = torch.tensor(position)
            return out
        raise TooManyBadVideos(
            f"item {index} and its {MAX_REPLACEMENTS} replacement candidates are all unreadable "
            f"({self._kinds()}); check data.video_root ({self.root})"
        )

    def _eval_item_or_skip(self, position, index, decode, epoch, backend) -> dict:
        """An evaluation item under eval.on_bad_video=skip: planned (files opened and probed),
        then decoded; a video that fails only at the decode (the probe passed) is served as
        zeros with `skipped` True, and one warning names it. Planning failures raise: the
        evaluation's scan leaves those items out before the run starts."""
        out = self.item(index, 0, decode=False, epoch=epoch, backend=backend)
        out["index"] = torch.tensor(position)
        out["skipped"] = torch.tensor(False)
        out["decode_failures"] = torch.zeros(len(FAILURE_KINDS), dtype=torch.long)
        out["replaced"] = torch.zeros(len(FAILURE_KINDS) + 1, dtype=torch.long)
        if not decode:
            return out
        plan = out.pop("plan")
        try:
            out["video"] = self.decode(plan, backend)
        except VideoDecodeError as exc:
            logger.warning(
                "unreadable video %s (%s): evaluation item %d skipped (counted as a miss)",
                exc.path, exc.reason, index,
            )  # fmt: skip
            frames = sum(len(idx) for _, idx in plan.files)
            out["video"] = torch.zeros(3, frames, *self.opt.size)
            out["skipped"] = torch.tensor(True)
        return out

    def known_unreadable(self, index: int) -> bool:
        """Whether this process already failed to decode item `index`."""
        return self._unreadable[index] != 0

    def _count_request(self, replaced: bool) -> None:
        self.items_requested += 1
        self.items_replaced += int(replaced)
        asked, bad = self.items_requested, self.items_replaced
        enough = asked >= min(MIN_ATTEMPTS_FOR_LIMIT, len(self))
        if replaced and enough and bad > self.opt.max_bad_fraction * asked:
            raise TooManyBadVideos(
                f"{bad} of the {asked} items this process served ({100 * bad / asked:.0f}%) had "
                f"an unreadable video, more than data.max_bad_fraction="
                f"{self.opt.max_bad_fraction} ({self._kinds()}); check data.video_root "
                f"({self.root}) and the warnings above"
            )

    def _kinds(self) -> str:
        return ", ".join(f"{n} {k}" for k, n in self.failure_counts.most_common()) or "none"


def replacement_summary(replaced: dict, known: int, decodes: dict) -> str:
    """'videos replaced: 5 items (3 empty file, 2 cannot open; 2 of them already known
    unreadable, replaced without a new decode); unreadable decodes: 4 (2 empty file, 2 cannot
    open)': items served by a replacement, by their own video's kind, and every failed decode
    (one "unreadable video" warning each, replacement candidates included)."""
    total = int(sum(replaced.values()))
    if not total:
        return "videos replaced: 0"

    def kinds(counts):
        return ", ".join(f"{int(n)} {k}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1])
                         if n)  # fmt: skip

    text = f"videos replaced: {total} item{'s' if total != 1 else ''} ({kinds(replaced)}"
    if known:
        text += f"; {int(known)} of them already known unreadable, replaced without a new decode"
    failed = int(sum(decodes.values()))
    text += f"); unreadable decodes: {failed}"
    return text + (f" ({kinds(decodes)})" if failed else "")
