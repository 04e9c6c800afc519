"""Analytic FLOP counts (2 per multiply-add) for throughput and model-FLOPs-utilisation logs.

Forward FLOPs of one sample; a training step counts 3x (forward + backward of activations and
weights), the usual convention for MFU. Window attention counts 4·N·w·C per block (QKᵀ and AV);
linear layers 2·tokens·in·out. Embedding lookups, norms and softmax are left out.
"""

from __future__ import annotations

import math

from lfvila.kernels.window_attn.geometry import window_geometry

from ..config import ModelConfig

# Dense bf16 peaks (TFLOP/s) by GPU name fragment; MFU is omitted for GPUs not listed.
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0}


def video_encoder_flops(cfg: ModelConfig, with_local: bool = True) -> float:
    v = cfg.video
    t = math.ceil(v.num_frames / v.patch_size[0])
    h, w = (math.ceil(s / p) for s, p in zip(v.input_size, v.patch_size[1:]))
    dims = v.dims()
    flops = 2.0 * t * h * w * dims[0] * v.in_chans * math.prod(v.patch_size)
    local_layer = next(
        (i for i, win in enumerate(v.window_size) if win[0] > v.local_window), len(dims)
    )
    for i, depth in enumerate(v.depths):
        c = dims[i]
        geom = window_geometry((t, h, w), v.window_size[i])
        tokens = math.prod(geom.padded)  # padding tokens are computed too
        if i == local_layer and with_local:
            flops += 2.0 * t * math.ceil(h / 2) * math.ceil(w / 2) * 4 * c * dims[-1]
        per_block = 2.0 * tokens * c * c * (4 + 2 * v.mlp_ratio) + 4.0 * tokens * geom.tokens * c
        flops += depth * per_block
        if i in v.downsample_stages:
            h, w = math.ceil(h / 2), math.ceil(w / 2)
            flops += 2.0 * t * h * w * 4 * c * 2 * c
    return flops


def _bert_layers(tokens: int, seq: int, layers: int, hidden: int, ff: int) -> float:
    return layers * tokens * (2.0 * (4 * hidden * hidden + 2 * hidden * ff) + 4.0 * seq * hidden)


def text_flops(cfg: ModelConfig, video_tokens: int = 0) -> float:
    t = cfg.text
    h, ff = t.hidden_size, t.intermediate_size
    m, length = t.max_sentences, t.max_tokens
    flops = _bert_layers(m * length, length, t.num_local_layers, h, ff)
    para = 1 + m * length
    flops += _bert_layers(para, para, t.stage1_layers - t.num_local_layers, h, ff)
    if video_tokens:
        cross = para + video_tokens
        flops += _bert_layers(cross, cross, t.num_hidden_layers - t.stage1_layers, h, ff)
    return flops


def flops_per_sample(cfg: ModelConfig) -> float:
    """Forward FLOPs of one sample of the model `cfg` describes (stage-1 pre-training: the
    video encoder with its tap, the sentence and paragraph layers and the projections; the
    cross-modal layers where the model has them, once per answer candidate for How2QA)."""
    from .pretrain import tokens_per_frame

    tap = cfg.task == "pretrain" and cfg.stage == 1 and cfg.loss.use_mtc
    video = video_encoder_flops(cfg, with_local=tap and cfg.mtc_features == "local")
    cross_tokens = cfg.video.num_frames * tokens_per_frame(cfg) if cfg.uses_cross_modal else 0
    text = text_flops(cfg, cross_tokens) if cfg.task != "video_classification" else 0.0
    if cfg.task == "multichoice_qa":  # every candidate paragraph runs with the video tokens
        text *= cfg.num_candidates
    proj = 2.0 * 4 * cfg.video.dims()[-1] * cfg.projection_dim
    return video + text + proj


def peak_tflops(device_name: str) -> float | None:
    for fragment, peak in PEAK_BF16_TFLOPS.items():
        if fragment in device_name:
            return peak
    return None
