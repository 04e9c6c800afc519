"""LF-VILA data: frame sampling, video decoding (PyAV, DALI), augmentation, text, annotations,
datasets and loaders, and a generated demo dataset. DALI is imported only where used."""

from .annotations import AnnotationError, read_jsonl
from .augment import CropBox, augment_eval, augment_train, random_resized_crop_box
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
from .video import VideoDecodeError, can_use_dali, probe, read_frames

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
