"""The LF-VILA model: HTWA video encoder (`video_swin`), split BERT text encoder (`text`),
pre-training (`pretrain`) and task models (`tasks`), weight import and conversion (`convert`),
saving and loading run folders (`pretrained`), FLOPs (`flops`) and the window-attention shapes
of its layers (`shapes`).

May import `lfvila.config`, `lfvila.kernels`, torch and einops (transformers and safetensors
where used); never data, training, tasks, jobs, retrieval or the command line.
"""

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
