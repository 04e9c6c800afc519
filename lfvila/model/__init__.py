"""The LF-VILA model: HTWA video encoder, split BERT text encoder, pre-training and task models."""

from .pretrain import LFVILA, PretrainOutput, TextFeatures, VideoTokenPos
from .tasks import (
    LFVILAForMultipleChoiceQA,
    LFVILAForQAClassification,
    LFVILAForRetrieval,
    LFVILAForVideoClassification,
    TaskOutput,
    build_model,
)
from .text import SentEmbedding, TextEncoder
from .video_swin import VideoEncoder, pool_video

__all__ = [
    "LFVILA",
    "LFVILAForMultipleChoiceQA",
    "LFVILAForQAClassification",
    "LFVILAForRetrieval",
    "LFVILAForVideoClassification",
    "PretrainOutput",
    "SentEmbedding",
    "TaskOutput",
    "TextEncoder",
    "TextFeatures",
    "VideoEncoder",
    "VideoTokenPos",
    "build_model",
    "pool_video",
]
