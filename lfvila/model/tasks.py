"""Task models (SPEC.md §9): paragraph-to-video retrieval, multiple-choice QA (How2QA, with the
temporal span loss), QA as classification (VIOLIN, ActivityNet-QA) and video classification
(COIN, LVU). Each forward returns a dataclass of the loss and the outputs; state-dict keys follow
SPEC §13.3."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from lfvila.kernels import contrastive_loss

from ..config import ModelConfig
from .pretrain import (
    LOCAL_TAP,
    DualEncoderBase,
    LFVILABase,
    VideoTokenPos,
    parameters_under,
    tokens_per_frame,
)
from .text import (
    SentEmbedding,
    TextEncoder,
    TextEncoderForClassification,
    TextEncoderForMultichoice,
)
from .video_swin import VideoEncoder


@dataclasses.dataclass
class TaskOutput:
    loss: torch.Tensor | None
    """The training loss (None without labels)."""
    logits: torch.Tensor | None = None
    video_feat: torch.Tensor | None = None
    text_feat: torch.Tensor | None = None
    terms: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    """The loss's unweighted parts where it has several (How2QA: 'ce' and 'span')."""


class LFVILAForRetrieval(DualEncoderBase):
    """Stage-1 dual encoder trained with the global contrastive loss only (SPEC §9.1); its
    features are `video_features` / `text_features` (shared with `LFVILA`)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.video_encoder = VideoEncoder(cfg.video)
        self.text_encoder = TextEncoder(cfg.text, cfg.text.stage1_layers)
        self.video_global_proj = nn.Linear(cfg.video.dims()[-1], cfg.projection_dim)
        self.text_global_proj = nn.Linear(cfg.text.hidden_size, cfg.projection_dim)
        self.sent_embedding = SentEmbedding(cfg.text)
        self._init_sent_embedding()

    kernel_backend = "auto"

    def unused_parameters(self) -> set[str]:
        """The clip-local tap and the pooler: held for the checkpoint layout only."""
        return parameters_under(self, [*LOCAL_TAP, "text_encoder.bert.pooler"])

    def forward(self, video, text_ids, text_mask, process_group=None, backend=None) -> TaskOutput:
        v, t = self.video_features(video), self.text_features(text_ids, text_mask)
        backend = backend or self.kernel_backend
        loss = contrastive_loss(
            v, t, self.cfg.loss.temperature, process_group=process_group, backend=backend
        )
        return TaskOutput(loss, video_feat=v, text_feat=t)


class _CrossModalTask(LFVILABase):
    """Shared by the QA models: video tokens + paragraph through the cross-modal layers."""

    def _build(self, cfg: ModelConfig, text_encoder: TextEncoder) -> None:
        self.cfg = cfg
        self.video_encoder = VideoEncoder(cfg.video)
        self.text_encoder = text_encoder
        self.video_token_pos = VideoTokenPos(
            cfg.video.dims()[-1], cfg.video.num_frames, tokens_per_frame(cfg)
        )
        self.sent_embedding = SentEmbedding(cfg.text)
        self._init_sent_embedding()
        self.dropout = nn.Dropout(cfg.text.hidden_dropout_prob)

    def video_tokens(self, video: torch.Tensor) -> torch.Tensor:
        tokens, _, _ = self.pool(self.video_encoder(video, with_local=False).final)
        return self.video_token_pos(tokens)  # (B, T·P, C)

    def unused_parameters(self) -> set[str]:
        """The clip-local tap (the video enters through the final map only)."""
        return parameters_under(self, LOCAL_TAP)

    def cross(self, ids, mask, video_tokens):
        text = self.encode_text(ids, mask)
        tokens = torch.cat([text.paragraph_tokens, video_tokens], dim=1)
        key_mask = torch.cat([text.mask, text.mask.new_ones(video_tokens.shape[:2])], dim=1)
        return self.text_encoder.encode_cross(tokens, key_mask)


class LFVILAForMultipleChoiceQA(_CrossModalTask):
    """How2QA (SPEC §9.2): each of K candidate paragraphs with the same video tokens; one logit per
    candidate, plus the temporal span loss on per-frame logits (max over candidates)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self._build(cfg, TextEncoderForMultichoice(cfg.text, cfg.text.num_hidden_layers))

    def unused_parameters(self) -> set[str]:
        """The tap, and `span_classifier` without `use_span_loss`."""
        unused = super().unused_parameters()
        if not self.cfg.loss.use_span_loss:
            unused |= parameters_under(self, ["text_encoder.span_classifier"])
        return unused

    def forward(self, video, text_ids, text_mask, answer=None, span_labels=None) -> TaskOutput:
        """video (B, 3, T, H, W); text_ids, text_mask (B, K, M, L); answer (B,) in [0, K);
        span_labels (B, T) 1 for frames inside the answer's time span."""
        b, k, m, length = text_ids.shape
        vt = self.video_tokens(video)
        vt_k = vt[:, None].expand(b, k, *vt.shape[1:]).reshape(b * k, *vt.shape[1:])
        hidden, pooled = self.cross(
            text_ids.reshape(b * k, m, length), text_mask.reshape(b * k, m, length), vt_k
        )
        logits = self.text_encoder.classifier(self.dropout(pooled)).view(b, k)
        if answer is None:
            return TaskOutput(None, logits=logits)
        ce = F.cross_entropy(logits.float(), answer)
        loss, terms = ce, {"ce": ce.detach()}
        if self.cfg.loss.use_span_loss and span_labels is not None:
            frames = self.cfg.video.num_frames
            video_out = (
                hidden[:, -vt.shape[1] :].reshape(b * k, frames, -1, hidden.shape[-1]).mean(2)
            )
            frame_logits = (
                self.text_encoder.span_classifier(video_out).view(b, k, frames, 2).amax(1)
            )
            span = span_loss(frame_logits, span_labels)
            loss = loss + self.cfg.loss.span_loss_weight * span
            terms["span"] = span.detach()
        return TaskOutput(loss, logits=logits, terms=terms)


def span_loss(frame_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Class-weighted per-frame CE of How2QA's temporal span (SPEC §9.2), as the original.

    frame_logits (B, T, 2); labels (B, T) in {0, 1}. Per sample, positive frames weigh
    T·0.5/N_pos and negative frames T·0.5/max(1, N_neg); the weighted CE is averaged over all
    B·T frames, `(w·ce).mean()` (not divided by Σw: with N_pos + N_neg = T each sample's
    weights sum to T, or T/2 when it has no negative frame). Returns a float32 scalar.
    """
    t = labels.shape[1]
    n_pos = labels.sum(1, keepdim=True).float()
    w_pos = t * 0.5 / n_pos.clamp(min=1)
    w_neg = t * 0.5 / (t - n_pos).clamp(min=1)
    weights = torch.where(labels.bool(), w_pos, w_neg)
    ce = F.cross_entropy(
        frame_logits.float().reshape(-1, 2), labels.reshape(-1).long(), reduction="none"
    )
    return (weights.reshape(-1) * ce).mean()


class LFVILAForQAClassification(_CrossModalTask):
    """VIOLIN (2 classes) and ActivityNet-QA (1654) as classification (SPEC §9.3-9.4)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self._build(
            cfg, TextEncoderForClassification(cfg.text, cfg.text.num_hidden_layers, cfg.num_classes)
        )

    def forward(self, video, text_ids, text_mask, labels=None) -> TaskOutput:
        """video (B, 3, T, H, W); text_ids, text_mask (B, M, L); labels (B,)."""
        _, pooled = self.cross(text_ids, text_mask, self.video_tokens(video))
        logits = self.text_encoder.classifier(self.dropout(pooled))
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        return TaskOutput(loss, logits=logits)


class LFVILAForVideoClassification(nn.Module):
    """COIN / LVU (SPEC §9.5): pooled final map -> video_global_proj -> L2 norm -> classifier.
    `video_frame_proj` exists (checkpoint layout) but is unused, as in the original."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        dim = cfg.video.dims()[-1]
        self.video_encoder = VideoEncoder(cfg.video)
        self.video_global_proj = nn.Linear(dim, cfg.projection_dim)
        self.video_frame_proj = nn.Linear(dim, cfg.projection_dim)
        self.classifier = nn.Linear(cfg.projection_dim, cfg.num_classes)
        # The original builds the projections and this classifier as plain nn.Linear outside any
        # BERT module, so they keep PyTorch's default init (no N(0, 0.02)); so do we.

    def unused_parameters(self) -> set[str]:
        """The tap and `video_frame_proj` (computed by the original, but no loss reads it)."""
        return parameters_under(self, [*LOCAL_TAP, "video_frame_proj"])

    def forward(self, video, labels=None) -> TaskOutput:
        """video (B, 3, T, H, W); labels (B,). Evaluation calls it without labels (Decision 4a)."""
        from .video_swin import pool_video

        _, _, pooled = pool_video(
            self.video_encoder(video, with_local=False).final, self.cfg.video.num_clips
        )
        feat = F.normalize(self.video_global_proj(pooled), dim=-1)
        logits = self.classifier(feat)
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        return TaskOutput(loss, logits=logits, video_feat=feat)


def build_model(cfg) -> nn.Module:
    """The model class of `cfg.task` (pre-training: `LFVILA` of `cfg.stage`).

    Takes a `ModelConfig`, or a root `Config`, whose `kernels.backend` then replaces every 'auto'
    kernel backend (window attention and the contrastive losses; "sdpa" only window attention's).
    """
    from ..config import Config
    from .pretrain import LFVILA

    backend = "auto"
    if isinstance(cfg, Config):
        backend = cfg.kernels.backend
        cfg = cfg.model
        if backend != "auto" and cfg.video.attention_backend == "auto":
            video = dataclasses.replace(cfg.video, attention_backend=backend)
            cfg = dataclasses.replace(cfg, video=video)
    classes = {
        "pretrain": LFVILA,
        "retrieval": LFVILAForRetrieval,
        "multichoice_qa": LFVILAForMultipleChoiceQA,
        "qa_classification": LFVILAForQAClassification,
        "video_classification": LFVILAForVideoClassification,
    }
    model = classes[cfg.task](cfg)
    model.kernel_backend = "auto" if backend == "sdpa" else backend  # no SDPA route for losses
    return model
