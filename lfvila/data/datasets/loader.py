"""Loading batches: `build_dataset` (annotations -> the dataset of a kind), `build_loader` (a
dataset -> batches, PyAV in DataLoader workers or DALI on the GPU) and `Loader`, which sums the
bad-video counts that travel with the batches."""

from __future__ import annotations

import collections
import logging
import os

import torch
from torch.utils.data import DataLoader

from ..annotations import read_jsonl
from .base import DataOptions, VideoTextDataset
from .downstream import (
    ActNetQADataset,
    How2QADataset,
    RetrievalDataset,
    VideoClassificationDataset,
    ViolinDataset,
)
from .pretrain import PretrainDataset
from .replacement import FAILURE_KINDS, replacement_summary
from .samplers import EpochSampler, ExactDistributedSampler, GlobalBatchSampler

logger = logging.getLogger(__name__)

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
        from ..video import can_use_dali

        reasons = can_use_dali(None, "cuda")
        if not reasons:
            from ..dali import DaliLoader

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
