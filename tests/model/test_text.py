"""The text encoder: absent sentences under every attention implementation (SPEC §6.2, §15.2 #6)
and the heads' BERT initialisation (SPEC §8.1, §9)."""

from __future__ import annotations

import pathlib

import pytest
import torch

from lfvila.config import load_config
from lfvila.model import build_model

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny.yaml"


def _retrieval(impl: str, state=None):
    """The tiny stage-1 text side (in a retrieval model) in fp64, eval mode, dropout off."""
    cfg = load_config(TINY, ["model.task=retrieval", f"model.text.attn_implementation={impl}"])
    torch.manual_seed(0)
    model = build_model(cfg).double().eval()
    if state is not None:
        model.load_state_dict(state)
    return model, cfg.model.text


def _text_inputs(text_cfg, seed=0):
    """(3, M, L) ids and mask: sample 0 has an absent sentence (ids and mask all zero, SPEC
    §6.2), sample 1 a short sentence, sample 2 is full."""
    gen = torch.Generator().manual_seed(seed)
    m, length = text_cfg.max_sentences, text_cfg.max_tokens
    ids = torch.randint(1000, 2000, (3, m, length), generator=gen)
    mask = torch.ones_like(ids)
    ids[0, -1], mask[0, -1] = 0, 0  # absent
    mask[1, 0, length // 2 :] = 0  # partially masked
    ids[1, 0, length // 2 :] = 0
    return ids, mask


def test_absent_sentences_agree_on_eager_and_sdpa():
    """Sentence [CLS], paragraph tokens and features agree between eager and sdpa (fp64), and the
    absent sentence's outputs equal that sentence run alone with an all-ones mask: an additive
    -10000 on every key shifts the whole row and leaves the softmax unchanged (the original's
    mask), where a boolean mask gives such rows zeros under sdpa."""
    eager, text_cfg = _retrieval("eager")
    sdpa, _ = _retrieval("sdpa", eager.state_dict())
    ids, mask = _text_inputs(text_cfg)
    absent_ids = ids[:1, -1:]  # (1, 1, L)
    got = {}
    with torch.no_grad():
        for name, model in (("eager", eager), ("sdpa", sdpa)):
            got[name] = dict(
                text=model.encode_text(ids, mask),
                tokens=model.text_encoder.encode_sentences(ids, mask),  # (B, M, L, C)
                feature=model.text_features(ids, mask),
                # independent expectation: the absent sentence alone, every token attended
                alone=model.text_encoder.encode_sentences(absent_ids, torch.ones_like(absent_ids)),
            )
    tight = dict(rtol=1e-10, atol=1e-10)
    e, s = got["eager"], got["sdpa"]
    torch.testing.assert_close(s["text"].sentences, e["text"].sentences, **tight)
    torch.testing.assert_close(s["text"].paragraph, e["text"].paragraph, **tight)
    valid = e["text"].mask.bool()
    torch.testing.assert_close(
        s["text"].paragraph_tokens[valid], e["text"].paragraph_tokens[valid], **tight
    )
    torch.testing.assert_close(s["feature"], e["feature"], **tight)
    # partially masked sentences: the real tokens agree (padded queries are never read)
    real = mask.bool()
    torch.testing.assert_close(s["tokens"][real], e["tokens"][real], **tight)
    for out in (e, s):
        torch.testing.assert_close(out["tokens"][0, -1], out["alone"][0, 0], **tight)
    assert s["tokens"][0, -1].abs().sum() > 0  # not silently zero


def test_mask_is_the_original_additive_mask():
    """eager/sdpa get (1 - mask)·-10000 of shape (N, 1, 1, S) in the hidden dtype; flash gets a
    0/1 mask with all-zero rows replaced by ones."""
    model, _ = _retrieval("eager")
    encoder = model.text_encoder
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    hidden = torch.zeros(2, 3, 4, dtype=torch.bfloat16)
    got = encoder._mask(hidden, mask)
    want = torch.tensor([[0.0, 0.0, -10000.0], [-10000.0] * 3], dtype=torch.bfloat16)[:, None, None]
    assert got.dtype == torch.bfloat16 and got.shape == (2, 1, 1, 3)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    encoder.bert.config._attn_implementation = "flash_attention_2"  # flash-attn is not needed here
    flash = encoder._mask(hidden, mask)
    assert flash.tolist() == [[1, 1, 0], [1, 1, 1]]


# --------------------------------------------------------------------------------------------
# Head initialisation


def _std_is(weight: torch.Tensor, std: float) -> None:
    """The sample std within 5 standard errors of `std` (normal weights: se = std / sqrt(2n))."""
    n = weight.numel()
    se = std / (2 * n) ** 0.5
    got = weight.double().std().item()
    assert abs(got - std) < 5 * se, f"std {got:.5f}, expected {std} +- {5 * se:.5f} (n={n})"
    assert abs(weight.double().mean().item()) < 5 * std / n**0.5


HEADS = {
    # task overrides, heads initialised as BERT's _init_weights (N(0, 0.02), zero bias)
    "pretrain-2": (["model.stage=2"], ["text_encoder.seq_relationship",
                   "text_encoder.cls.predictions.transform.dense",
                   "text_encoder.cls.predictions.decoder"]),
    "multichoice_qa": (["model.task=multichoice_qa"],
                       ["text_encoder.classifier", "text_encoder.span_classifier"]),
    "qa_classification": (["model.task=qa_classification", "model.num_classes=1000"],
                          ["text_encoder.classifier"]),
}  # fmt: skip


@pytest.mark.parametrize("name", list(HEADS))
def test_heads_start_as_bert_initialises_them(name):
    """With hidden 128 PyTorch's default Linear init has std 1/sqrt(3·128) = 0.051 and a non-zero
    bias, so each check fails without the BERT init; qa_classification's 1000 x 128 head pins
    the std to within 0.2%."""
    overrides, heads = HEADS[name]
    torch.manual_seed(0)
    model = build_model(load_config(TINY, overrides).model)
    modules = dict(model.named_modules())
    for head in heads:
        linear = modules[head]
        _std_is(linear.weight.detach(), 0.02)
        assert linear.bias is not None and not linear.bias.detach().any(), f"{head}.bias"
    if name == "pretrain-2":
        norm = model.text_encoder.cls.predictions.transform.LayerNorm
        assert (norm.weight == 1).all() and not norm.bias.detach().any()
        assert (
            model.text_encoder.cls.predictions.decoder.bias
            is model.text_encoder.cls.predictions.bias
        )


def test_projections_and_video_classifier_keep_pytorch_default_init():
    """The original builds the four projections, video_frame_proj and the video classifier as
    plain nn.Linear outside BERT (no N(0, 0.02)): uniform in +-1/sqrt(fan_in), non-zero bias."""
    torch.manual_seed(0)
    pretrain = build_model(load_config(TINY).model)
    torch.manual_seed(0)
    video_cls = build_model(
        load_config(TINY, ["model.task=video_classification", "model.num_classes=500"]).model
    )
    linears = [
        *(
            getattr(pretrain, f"{m}_{s}_proj")
            for m in ("video", "text")
            for s in ("local", "global")
        ),
        video_cls.video_frame_proj,
        video_cls.classifier,
    ]
    for linear in linears:
        bound = linear.in_features**-0.5
        w = linear.weight.detach()
        assert w.abs().max() <= bound
        if w.numel() >= 4096:  # enough samples for the std
            _std_is(w, bound / 3**0.5)
        assert linear.bias.detach().abs().max() > 0
