"""LF-VILA pre-training: the stage-1 dual encoder (VPC + MTC) and the stage-2 cross-modal encoder
(MLM + VTM) (SPEC.md §7-8), with the shared pieces the task models reuse.

`LFVILA(cfg.model)` builds `.video_encoder`, `.text_encoder`, the four projections,
`.sent_embedding` and, in stage 2, `.video_token_pos`; state-dict keys follow SPEC §13.2.
Every model class also says which of its parameters its forward never reaches
(`unused_parameters()`), so that the training engine can leave them out of the optimiser and DDP.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from lfvila.kernels import contrastive_loss, gather_batch, mtc_loss

from ..config import ModelConfig
from .text import SentEmbedding, TextEncoder, TextEncoderForPretraining
from .video_swin import VideoEncoder, VideoFeatures, pool_video


class VideoTokenPos(nn.Module):
    """Spatial (1, 1, P, C) + temporal (1, T, 1, C) embeddings, then LayerNorm (SPEC §8.3)."""

    def __init__(self, dim: int, frames: int, tokens_per_frame: int):
        super().__init__()
        self.s_pos_embed = nn.Parameter(torch.empty(1, 1, tokens_per_frame, dim))
        self.t_pos_embed = nn.Parameter(torch.empty(1, frames, 1, dim))
        nn.init.normal_(self.s_pos_embed, std=0.02)
        nn.init.normal_(self.t_pos_embed, std=0.02)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, T, P, C) -> (B, T·P, C)."""
        return self.norm(tokens + self.s_pos_embed + self.t_pos_embed).flatten(1, 2)


LOCAL_TAP = ("video_encoder.local_feat_proj", "video_encoder.norm_local")
"""The clip-local tap (SPEC §4.7): reached only by stage-1 MTC under `mtc_features: local`."""


def parameters_under(model: nn.Module, prefixes) -> set[str]:
    """Full names of `model`'s parameters inside the modules named by `prefixes` (shared
    parameters once, under their first name, as `named_parameters` lists them)."""
    dotted = tuple(p + "." for p in prefixes)
    return {name for name, _ in model.named_parameters() if name.startswith(dotted)}


def tokens_per_frame(cfg: ModelConfig) -> int:
    """P of the pooled final map: (h - 1)(w - 2) for a final map of h x w tokens (6 at 3 x 5)."""
    h, w = (s // p for s, p in zip(cfg.video.input_size, cfg.video.patch_size[1:]))
    for _ in cfg.video.downsample_stages:
        h, w = (h + 1) // 2, (w + 1) // 2
    return (h - 1) * (w - 2)


@dataclasses.dataclass
class TextFeatures:
    sentences: torch.Tensor
    """(B, M, C) sentence [CLS] after the sentence layers."""
    paragraph_tokens: torch.Tensor
    """(B, 1 + M·L, C) after the paragraph layers; token 0 is the paragraph feature."""
    mask: torch.Tensor
    """(B, 1 + M·L) key mask of the paragraph tokens."""

    @property
    def paragraph(self) -> torch.Tensor:
        return self.paragraph_tokens[:, 0]


class LFVILABase(nn.Module):
    """The parts every LF-VILA model shares: text stages and video pooling."""

    cfg: ModelConfig
    video_encoder: VideoEncoder
    text_encoder: TextEncoder
    sent_embedding: SentEmbedding

    def _init_sent_embedding(self) -> None:
        """Paragraph positions start from BERT's position table (`_init_sent_embedding`)."""
        with torch.no_grad():
            self.sent_embedding.position_embeddings.weight.copy_(
                self.text_encoder.bert.embeddings.position_embeddings.weight
            )

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> TextFeatures:
        """ids, mask: (B, M, L) token ids and 0/1 mask (absent sentences all zero)."""
        b, m, length = ids.shape
        hidden = self.text_encoder.encode_sentences(ids, mask)  # (B, M, L, C)
        sentences = hidden[:, :, 0]
        flat = self.sent_embedding(hidden.reshape(b, m * length, -1), m)
        global_token = flat.view(b, m, length, -1)[:, :, 0].mean(dim=1)  # padded sentences too
        flat_mask = mask.reshape(b, m * length)
        tokens = self.text_encoder.encode_paragraph(flat, global_token, flat_mask)
        return TextFeatures(sentences, tokens, torch.cat([flat_mask.new_ones(b, 1), flat_mask], 1))

    def pool(self, feature_map: torch.Tensor):
        return pool_video(feature_map, self.cfg.video.num_clips)


class DualEncoderBase(LFVILABase):
    """LFVILABase plus the stage-1 global features (SPEC §7.1), for the models that hold
    `video_global_proj` and `text_global_proj`: pre-training (stage 2 keeps them frozen) and
    retrieval. The stage-1 forward computes its features with the same two projections."""

    video_global_proj: nn.Linear
    text_global_proj: nn.Linear

    def project_video(self, pooled: torch.Tensor) -> torch.Tensor:
        """pooled (B, C) mean of the clip features of the final map -> (B, P) L2-normalised."""
        return F.normalize(self.video_global_proj(pooled), dim=-1)

    def project_text(self, paragraph: torch.Tensor) -> torch.Tensor:
        """paragraph (B, C) token 0 after the paragraph layers -> (B, P) L2-normalised."""
        return F.normalize(self.text_global_proj(paragraph), dim=-1)

    def video_features(self, video: torch.Tensor) -> torch.Tensor:
        """video (B, 3, T, H, W) -> (B, P) L2-normalised global video features."""
        _, _, pooled = self.pool(self.video_encoder(video, with_local=False).final)
        return self.project_video(pooled)

    def text_features(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids, mask (B, M, L) -> (B, P) L2-normalised paragraph features."""
        return self.project_text(self.encode_text(ids, mask).paragraph)


@dataclasses.dataclass
class PretrainOutput:
    loss: torch.Tensor
    """The weighted total: global_weight·VPC + mtc_weight·MTC (stage 1), or
    mlm_weight·MLM + vtm_weight·VTM (stage 2)."""
    vpc: torch.Tensor | None = None
    mtc: torch.Tensor | None = None
    mlm: torch.Tensor | None = None
    vtm: torch.Tensor | None = None
    video_feat: torch.Tensor | None = None
    """(B, P) L2-normalised global video features (stage 1)."""
    text_feat: torch.Tensor | None = None
    """(B, P) L2-normalised paragraph features (stage 1)."""
    mlm_accuracy: torch.Tensor | None = None
    vtm_accuracy: torch.Tensor | None = None


class LFVILA(DualEncoderBase):
    """LF-VILA pre-training model, stage 1 or 2 (`cfg.stage`)."""

    kernel_backend = "auto"
    """Backend of the contrastive losses (`build_model` sets it from `kernels.backend`)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        video_dim, text_dim, proj = cfg.video.dims()[-1], cfg.text.hidden_size, cfg.projection_dim
        self.video_encoder = VideoEncoder(cfg.video)
        layers = cfg.text.stage1_layers if cfg.stage == 1 else cfg.text.num_hidden_layers
        self.text_encoder = TextEncoderForPretraining(cfg.text, layers)
        # Plain nn.Linear with PyTorch's default init, as the original: its projections are
        # top-level modules of LFVILA_Pretrain, outside BERT's post_init (no N(0, 0.02)).
        self.video_local_proj = nn.Linear(video_dim, proj)
        self.text_local_proj = nn.Linear(text_dim, proj)
        self.video_global_proj = nn.Linear(video_dim, proj)
        self.text_global_proj = nn.Linear(text_dim, proj)
        self.sent_embedding = SentEmbedding(cfg.text)
        self._init_sent_embedding()
        if cfg.stage == 2:
            self.video_token_pos = VideoTokenPos(
                video_dim, cfg.video.num_frames, tokens_per_frame(cfg)
            )
            self._freeze_stage_one()

    def _freeze_stage_one(self) -> None:
        """Stage 2 (SPEC §8.2): everything trained in stage 1 is frozen."""
        frozen = [self.video_encoder, self.video_local_proj, self.text_local_proj,
                  self.video_global_proj, self.text_global_proj, self.sent_embedding,
                  self.text_encoder.bert.embeddings,
                  *self.text_encoder.bert.encoder.layer[: self.cfg.text.stage1_layers]]  # fmt: skip
        for module in frozen:
            for p in module.parameters():
                p.requires_grad_(False)

    def unused_parameters(self) -> set[str]:
        """Parameters the forward never reaches under this config (they exist for the checkpoint
        layout), frozen ones included. Stage 1: the pooler and the stage-2 heads (`cls`,
        `seq_relationship`); the clip-local tap unless MTC runs on it; the local projections
        without MTC. Stage 2: the tap and the four stage-1 projections (frozen; reached only by
        `video_features` / `text_features`), and the MLM head without `use_mlm`."""
        loss = self.cfg.loss
        if self.cfg.stage == 1:
            prefixes = [
                "text_encoder.bert.pooler",
                "text_encoder.cls",
                "text_encoder.seq_relationship",
            ]
            if not (loss.use_mtc and self.cfg.mtc_features == "local"):
                prefixes += LOCAL_TAP
            if not loss.use_mtc:
                prefixes += ["video_local_proj", "text_local_proj"]
        else:
            prefixes = [*LOCAL_TAP, "video_local_proj", "text_local_proj", "video_global_proj",
                        "text_global_proj"]  # fmt: skip
            if not loss.use_mlm:
                prefixes.append("text_encoder.cls")
        return parameters_under(self, prefixes)

    def train(self, mode: bool = True):
        super().train(mode)
        if (
            self.cfg.stage == 2
        ):  # the frozen Swin stays in eval mode (DropPath off); text dropout stays
            self.video_encoder.eval()
        return self

    def forward(
        self,
        video: torch.Tensor,
        text_ids: torch.Tensor,
        text_mask: torch.Tensor,
        mlm_labels: torch.Tensor | None = None,
        process_group=None,
        mtc_generator: torch.Generator | None = None,
        mtc_indices: dict | None = None,
        backend: str | None = None,
    ) -> PretrainOutput:
        """video (B, 3, T, H, W); text_ids, text_mask (B, M, L); mlm_labels (B, M, L), -100 where
        not masked (stage 2). `process_group` gathers the contrastive features across ranks;
        `mtc_generator` / `mtc_indices` drive MTC sampling (same on every rank)."""
        backend = backend or self.kernel_backend
        if self.cfg.stage == 1:
            return self._stage1(
                video, text_ids, text_mask, process_group, mtc_generator, mtc_indices, backend
            )
        return self._stage2(video, text_ids, text_mask, mlm_labels)

    def _stage1(self, video, ids, mask, group, generator, indices, backend) -> PretrainOutput:
        cfg, loss_cfg = self.cfg, self.cfg.loss
        local_tap = loss_cfg.use_mtc and cfg.mtc_features == "local"
        vf: VideoFeatures = self.video_encoder(video, with_local=local_tap)
        _, clips, video_pooled = self.pool(vf.final)
        text = self.encode_text(ids, mask)
        video_feat, text_feat = self.project_video(video_pooled), self.project_text(text.paragraph)
        vpc = contrastive_loss(
            video_feat, text_feat, loss_cfg.temperature, process_group=group, backend=backend
        )
        total = loss_cfg.global_weight * vpc
        mtc = None
        if loss_cfg.use_mtc:
            clip_source = self.pool(vf.local)[1] if local_tap else clips
            clip_feat = F.normalize(self.video_local_proj(clip_source), dim=-1)  # (B, M, P)
            sent_feat = F.normalize(self.text_local_proj(text.sentences), dim=-1)  # (B, M, P)
            if group is not None:
                clip_feat, sent_feat = (
                    gather_batch(clip_feat, group),
                    gather_batch(sent_feat, group),
                )
            mtc = mtc_loss(
                clip_feat, sent_feat, loss_cfg.mtc_temperature, loss_cfg.num_key,
                loss_cfg.num_value, loss_cfg.num_other_neg, generator=generator, indices=indices,
                backend=backend,
            )  # fmt: skip
            total = total + loss_cfg.mtc_weight * mtc
        return PretrainOutput(total, vpc=vpc, mtc=mtc, video_feat=video_feat, text_feat=text_feat)

    def cross_modal(self, text: TextFeatures, video_tokens: torch.Tensor):
        """[paragraph ; video tokens] through the cross-modal layers: (hidden, pooled)."""
        tokens = torch.cat([text.paragraph_tokens, video_tokens], dim=1)
        mask = torch.cat([text.mask, text.mask.new_ones(video_tokens.shape[:2])], dim=1)
        return self.text_encoder.encode_cross(tokens, mask)

    def _stage2(self, video, ids, mask, mlm_labels) -> PretrainOutput:
        loss_cfg = self.cfg.loss
        b = video.shape[0]
        tokens, _, _ = self.pool(self.video_encoder(video, with_local=False).final)
        video_tokens = self.video_token_pos(tokens)  # (B, T·P, C)
        # VTM negatives: the first half of the local batch sees the previous sample's video
        half = b // 2
        if half > 0:
            rolled = torch.roll(video_tokens[:half], shifts=1, dims=0)
            video_tokens = torch.cat([rolled, video_tokens[half:]], dim=0)
        vtm_labels = torch.cat(
            [torch.zeros(half, dtype=torch.long), torch.ones(b - half, dtype=torch.long)]
        )
        vtm_labels = vtm_labels.to(video.device)
        text = self.encode_text(ids, mask)
        hidden, pooled = self.cross_modal(text, video_tokens)
        vtm_logits = self.text_encoder.seq_relationship(pooled)
        vtm = F.cross_entropy(vtm_logits.float(), vtm_labels)
        out = PretrainOutput(loss_cfg.vtm_weight * vtm, vtm=vtm)
        out.vtm_accuracy = (vtm_logits.argmax(-1) == vtm_labels).float().mean().detach()
        if loss_cfg.use_mlm and mlm_labels is not None:
            n_text = text.paragraph_tokens.shape[1] - 1
            scores = self.text_encoder.cls(hidden[half:, 1 : 1 + n_text])  # matched pairs only
            labels = mlm_labels.reshape(b, -1)[half:]
            counted = labels != -100
            # mean over masked tokens; a batch half without any is 0, not NaN
            summed = F.cross_entropy(
                scores.float().reshape(-1, scores.shape[-1]), labels.reshape(-1), ignore_index=-100,
                reduction="sum",
            )  # fmt: skip
            mlm = summed / counted.sum().clamp(min=1)
            out.mlm, out.loss = mlm, out.loss + loss_cfg.mlm_weight * mlm
            correct = (scores.argmax(-1) == labels) & counted
            out.mlm_accuracy = (correct.sum() / counted.sum().clamp(min=1)).detach()
        return out
