"""The LF-VILA model: HTWA video encoder, split BERT text encoder, pre-training and task models."""

from .pretrain import LFVILA, DualEncoderBase, PretrainOutput, TextFeatures, VideoTokenPos
from .pretrained import from_pretrained, load_pretrained_config, save_pretrained
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
    "DualEncoderBase",
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
    "from_pretrained",
    "load_pretrained_config",
    "pool_video",
    "save_pretrained",
]
