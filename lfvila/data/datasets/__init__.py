"""Datasets for pre-training and every downstream task, and the loader factory.

- `base`: `VideoTextDataset` (plan an item's frames and crop, decode, encode its text) and
  `DataOptions`.
- `replacement`: the bad-video replacement policy every dataset follows, its errors
  (`TooManyBadVideos`, `BadEvaluationVideos`), counts (`FAILURE_KINDS`, `replacement_summary`)
  and the clip exclusions of `data.exclude`.
- `pretrain`: `PretrainDataset`; `downstream`: the task datasets (retrieval, How2QA, VIOLIN,
  ActivityNet-QA, video classification); `span`: How2QA's temporal span labels.
- `samplers`: global-batch training order, exact evaluation split, epoch wrapper.
- `loader`: `build_dataset`, `build_loader` and `Loader`.

May import the rest of `lfvila.data` (decoding, sampling, augmentation, text, annotations), torch
and numpy; nothing from training, tasks or above. Re-exports only.
"""

from .base import DataOptions, VideoPlan, VideoTextDataset, scale_box, video_file
from .downstream import (
    ActNetQADataset,
    How2QADataset,
    RetrievalDataset,
    VideoClassificationDataset,
    ViolinDataset,
)
from .loader import DATASETS, Loader, build_dataset, build_loader
from .pretrain import PretrainDataset
from .replacement import (
    FAILURE_KINDS,
    BadEvaluationVideos,
    BadVideoReplacement,
    ClipExclusions,
    TooManyBadVideos,
    failure_kind,
    replacement_summary,
)
from .samplers import EpochSampler, ExactDistributedSampler, GlobalBatchSampler
from .span import how2qa_span_labels

__all__ = [
    "DATASETS",
    "FAILURE_KINDS",
    "ActNetQADataset",
    "BadEvaluationVideos",
    "BadVideoReplacement",
    "ClipExclusions",
    "DataOptions",
    "EpochSampler",
    "ExactDistributedSampler",
    "GlobalBatchSampler",
    "How2QADataset",
    "Loader",
    "PretrainDataset",
    "RetrievalDataset",
    "TooManyBadVideos",
    "VideoClassificationDataset",
    "VideoPlan",
    "VideoTextDataset",
    "ViolinDataset",
    "build_dataset",
    "build_loader",
    "failure_kind",
    "how2qa_span_labels",
    "replacement_summary",
    "scale_box",
    "video_file",
]
