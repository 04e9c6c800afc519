"""LF-VILA data: what a training or evaluation step is fed.

Frame sampling and seeded item streams (`sampling`), video files (`containers`: errors, reads,
probe) and decoding (`video`: PyAV; `dali`: DALI, imported only where used), augmentation, text,
annotations and records, the datasets and loaders (`datasets/`: the base dataset, the bad-video
replacement policy, pre-training and task datasets, samplers, `build_loader`), and a generated
demo dataset (`demo`).

May import torch, numpy and, where used, PyAV, DALI and lmdb; nothing else of lfvila (not
training, tasks, jobs, retrieval or the command line: data feeds `training`, never the other way
round).
"""

from .annotations import AnnotationError, read_jsonl
from .augment import CropBox, augment_eval, augment_train, random_resized_crop_box
from .containers import VideoDecodeError, probe
from .datasets import (
    FAILURE_KINDS,
    BadEvaluationVideos,
    DataOptions,
    ExactDistributedSampler,
    GlobalBatchSampler,
    Loader,
    TooManyBadVideos,
    build_dataset,
    build_loader,
    replacement_summary,
)
from .sampling import clip_frame_indices, clip_window_start, video_frame_indices
from .video import can_use_dali, read_frames

__all__ = [
    "AnnotationError",
    "BadEvaluationVideos",
    "DataOptions",
    "ExactDistributedSampler",
    "FAILURE_KINDS",
    "GlobalBatchSampler",
    "Loader",
    "TooManyBadVideos",
    "build_dataset",
    "build_loader",
    "read_jsonl",
    "replacement_summary",
    "CropBox",
    "VideoDecodeError",
    "augment_eval",
    "augment_train",
    "can_use_dali",
    "clip_frame_indices",
    "clip_window_start",
    "probe",
    "random_resized_crop_box",
    "read_frames",
    "video_frame_indices",
]
