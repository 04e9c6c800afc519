"""LF-VILA's text side: BERT split into sentence, paragraph and cross-modal layers (SPEC.md §6).

`TextEncoder` wraps transformers' `BertModel` as `.bert` (so its state dict reads BERT
checkpoints: `bert.embeddings.*`, `bert.encoder.layer.{i}.*`, `bert.pooler.*`) and runs one slice
of its layers at a time:

- sentences: ids (B, M, L) -> embeddings (word + position 0..L-1 + type 0) -> layers
  0..num_local_layers-1 on (B·M, L) -> (B, M, L, C); the sentence feature is each [CLS];
- paragraph: the flattened (B, M·L, C) after `SentEmbedding` (position 0..M·L-1 + segment =
  sentence index, LayerNorm, dropout), with the global token (the mean of the M sentence [CLS]
  vectors after SentEmbedding, padded sentences included) prepended -> layers up to
  stage1_layers -> (B, 1 + M·L, C); the paragraph feature is token 0;
- cross-modal: [paragraph ; video tokens] through the remaining layers, then the pooler.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import nn

from ..config import TextEncoderConfig


def _attn_implementation(cfg: TextEncoderConfig) -> str:
    if cfg.attn_implementation != "auto":
        return cfg.attn_implementation
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def bert_config(cfg: TextEncoderConfig, num_layers: int):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=cfg.num_attention_heads,
        intermediate_size=cfg.intermediate_size,
        hidden_act="gelu",
        hidden_dropout_prob=cfg.hidden_dropout_prob,
        attention_probs_dropout_prob=cfg.attention_probs_dropout_prob,
        max_position_embeddings=cfg.max_position_embeddings,
        type_vocab_size=cfg.type_vocab_size,
        layer_norm_eps=cfg.layer_norm_eps,
        attn_implementation=_attn_implementation(cfg),
    )


def init_like_bert(module: nn.Module, std: float) -> None:
    """BERT's `_init_weights` on a head: every Linear N(0, std²) with zero bias, LayerNorm 1 / 0.

    The original builds its heads (`cls`, `seq_relationship`, `classifier`, `span_classifier`)
    inside `BertPreTrainedModel` subclasses whose `post_init` applies this init to every
    submodule; ours sit beside transformers' `BertModel`, whose own `post_init` does not reach
    them, so they are initialised here (std = `initializer_range`, 0.02).
    """
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class SentEmbedding(nn.Module):
    """Paragraph position and sentence-segment embeddings added to the flattened sentences."""

    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.segment_embeddings = nn.Embedding(cfg.sent_type_vocab_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)
        self.register_buffer(
            "position_ids", torch.arange(cfg.max_position_embeddings)[None], persistent=True
        )

    def forward(self, hidden: torch.Tensor, sentences: int) -> torch.Tensor:
        """hidden: (B, M·L, C) -> (B, M·L, C); segment id = sentence index."""
        length = hidden.shape[1]
        positions = self.position_ids[:, :length]
        segments = torch.arange(sentences, device=hidden.device).repeat_interleave(
            length // sentences
        )
        x = hidden + self.position_embeddings(positions) + self.segment_embeddings(segments)[None]
        return self.dropout(self.norm(x))


class TextEncoder(nn.Module):
    """transformers' BertModel, run by slices of layers (see the module docstring)."""

    def __init__(self, cfg: TextEncoderConfig, num_layers: int):
        super().__init__()
        from transformers import BertModel

        self.cfg = cfg
        self.bert = BertModel(bert_config(cfg, num_layers), add_pooling_layer=True)

    def _mask(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The attention mask the layers take for a (N, S) 0/1 key mask.

        eager / sdpa: the original's additive mask (1 - mask) * -10000 of shape (N, 1, 1, S) in
        the hidden states' dtype; both add it to the scores (eager: `scores + mask`; sdpa:
        `attn_mask=` of F.scaled_dot_product_attention). A fully masked row (an absent sentence)
        then shifts every score by the same -10000 and attends over all positions, as in the
        original, whose padded sentences' [CLS] enter the paragraph mean (SPEC §15.2 #6); a
        boolean mask would give such rows zeros under sdpa and disagree with eager.
        flash_attention_2 takes only a 0/1 padding mask: all-zero rows become all ones, which is
        the same softmax (a constant added to every score of a row cancels). Flash also returns
        zeros at padded query positions where eager computes them; those are keys masked in every
        later layer and never read by a loss, so the features agree.
        """
        if self.bert.config._attn_implementation == "flash_attention_2":
            absent = ~mask.bool().any(dim=-1, keepdim=True)  # (N, 1)
            return torch.where(absent, torch.ones_like(mask), mask)
        return (1.0 - mask.to(hidden.dtype))[:, None, None, :] * -10000.0  # (N, 1, 1, S)

    def run_layers(
        self, hidden: torch.Tensor, mask: torch.Tensor, start: int, stop: int
    ) -> torch.Tensor:
        """Layers start..stop-1 on hidden (N, S, C) with a (N, S) 0/1 key mask."""
        attention_mask = self._mask(hidden, mask)
        for layer in self.bert.encoder.layer[start:stop]:
            hidden = layer(hidden, attention_mask=attention_mask)
        return hidden

    def encode_sentences(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids, mask: (B, M, L) -> (B, M, L, C) after the sentence layers."""
        b, m, length = ids.shape
        hidden = self.bert.embeddings(input_ids=ids.reshape(b * m, length))
        hidden = self.run_layers(hidden, mask.reshape(b * m, length), 0, self.cfg.num_local_layers)
        return hidden.view(b, m, length, -1)

    def encode_paragraph(
        self, tokens: torch.Tensor, global_token: torch.Tensor, mask: torch.Tensor
    ):
        """tokens (B, M·L, C) after SentEmbedding, global_token (B, C), mask (B, M·L)
        -> (B, 1 + M·L, C) after the paragraph layers."""
        hidden = torch.cat([global_token[:, None], tokens], dim=1)
        mask = torch.cat([mask.new_ones(mask.shape[0], 1), mask], dim=1)
        return self.run_layers(hidden, mask, self.cfg.num_local_layers, self.cfg.stage1_layers)

    def encode_cross(self, tokens: torch.Tensor, mask: torch.Tensor):
        """tokens (B, S, C) = [paragraph ; video], mask (B, S) -> (hidden (B, S, C), pooled)."""
        hidden = self.run_layers(tokens, mask, self.cfg.stage1_layers, len(self.bert.encoder.layer))
        return hidden, self.bert.pooler(hidden)


class TextEncoderForPretraining(TextEncoder):
    """Adds the MLM head `cls` (decoder bias shared with `cls.predictions.bias`, decoder weight
    not tied to the word embeddings) and the VTM head `seq_relationship`, both initialised as
    BERT's `_init_weights` (`init_like_bert`), as in the original."""

    def __init__(self, cfg: TextEncoderConfig, num_layers: int):
        super().__init__(cfg, num_layers)
        from transformers.models.bert.modeling_bert import BertOnlyMLMHead

        self.cls = BertOnlyMLMHead(self.bert.config)
        self.cls.predictions.decoder.bias = self.cls.predictions.bias
        self.seq_relationship = nn.Linear(cfg.hidden_size, 2)
        init_like_bert(self.cls, self.bert.config.initializer_range)
        init_like_bert(self.seq_relationship, self.bert.config.initializer_range)


class TextEncoderForMultichoice(TextEncoder):
    """How2QA heads: `classifier` (1 logit per candidate) and the per-frame `span_classifier`."""

    def __init__(self, cfg: TextEncoderConfig, num_layers: int):
        super().__init__(cfg, num_layers)
        self.classifier = nn.Linear(cfg.hidden_size, 1)
        self.span_classifier = nn.Linear(cfg.hidden_size, 2)
        init_like_bert(self.classifier, self.bert.config.initializer_range)
        init_like_bert(self.span_classifier, self.bert.config.initializer_range)


class TextEncoderForClassification(TextEncoder):
    """VIOLIN / ActivityNet-QA head: `classifier` (num_classes logits) on the pooled output."""

    def __init__(self, cfg: TextEncoderConfig, num_layers: int, num_classes: int):
        super().__init__(cfg, num_layers)
        self.classifier = nn.Linear(cfg.hidden_size, num_classes)
        init_like_bert(self.classifier, self.bert.config.initializer_range)
