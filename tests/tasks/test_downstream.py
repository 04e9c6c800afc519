"""Downstream task pieces on hand-built inputs: top-k accuracy with ties, the headline metric,
the annotation format of each task, moving pre-training weights into every task model (strict),
BERT initialisation of the retrieval and QA models, and the demo fine-tuning overlay."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import yaml

from lfvila.config import load_config
from lfvila.model import build_model
from lfvila.model.convert import convert_bert, export_bert, initialise, load_task_weights
from lfvila.tasks import data_format, headline_metric, label_ranks, topk_accuracy

from ..training.conftest import ROOT, TINY_RUN


def test_topk_accuracy_counts_ranks_and_splits_ties():
    logits = torch.tensor(
        [
            [0.9, 0.1, 0.0, 0.2],  # true 0: best                    -> top1 1, top2 1
            [0.3, 0.5, 0.4, 0.1],  # true 0: two better               -> top1 0, top2 0, top3 1
            [0.2, 0.2, 0.2, 0.2],  # true 2: tied with 3 others       -> top1 1/4, top2 2/4
            [0.1, 0.7, 0.7, 0.0],  # true 2: tied with one, none above -> top1 1/2, top2 1
        ]
    )
    labels = torch.tensor([0, 0, 2, 2])
    better, tied = label_ranks(logits, labels)
    assert better.tolist() == [0, 2, 0, 0] and tied.tolist() == [0, 0, 3, 1]
    assert topk_accuracy(better, tied, 1) == pytest.approx(100 * (1 + 0 + 0.25 + 0.5) / 4)
    assert topk_accuracy(better, tied, 2) == pytest.approx(100 * (1 + 0 + 0.5 + 1) / 4)
    assert topk_accuracy(better, tied, 3) == pytest.approx(100 * (1 + 1 + 0.75 + 1) / 4)
    # constant logits score chance, not 100%
    flat = torch.zeros(10, 5)
    b, t = label_ranks(flat, torch.arange(10) % 5)
    assert topk_accuracy(b, t, 1) == pytest.approx(20.0)


def _cfg(name: str, *overrides: str):
    return load_config(ROOT / "configs" / f"{name}.yaml", list(overrides))


def test_headline_metric_and_direction():
    class Ev:
        def __init__(self, name):
            self.name = name

    assert headline_metric(_cfg("actnet_ret"), [Ev("retrieval")]) == ("retrieval", "t2v_R@1", True)
    assert headline_metric(_cfg("how2_qa"), [Ev("qa")]) == ("qa", "acc", True)
    assert headline_metric(_cfg("coin_cls"), [Ev("classification")]) == (
        "classification",
        "top1",
        True,
    )
    ranks = _cfg("actnet_ret", "eval.metric=retrieval/t2v_MdR")
    assert headline_metric(ranks, [Ev("retrieval")]) == ("retrieval", "t2v_MdR", False)
    assert headline_metric(_cfg("actnet_ret", "eval.metric=none"), [Ev("retrieval")]) is None
    assert headline_metric(_cfg("pretrain_stage1"), [Ev("retrieval")]) is None
    with pytest.raises(ValueError, match="eval.metric: 'qa/acc' names evaluation 'qa'"):
        headline_metric(_cfg("actnet_ret", "eval.metric=qa/acc"), [Ev("retrieval")])


def test_data_format_follows_the_task_and_refuses_a_mismatch():
    assert data_format(_cfg("actnet_ret")) == "retrieval"
    assert data_format(_cfg("how2_qa")) == "how2qa"
    assert data_format(_cfg("violin_qa")) == "violin"
    assert data_format(_cfg("actnet_qa")) == "actnet_qa"
    assert data_format(_cfg("lvu_scene_cls")) == "video_classification"
    with pytest.raises(ValueError, match="set data.format"):
        data_format(_cfg("violin_qa", "data.format=auto"))
    with pytest.raises(ValueError, match="'how2qa' annotations cannot train model.task retrieval"):
        data_format(_cfg("actnet_ret", "data.format=how2qa"))


def _tiny(task: str, stage: int = 1, **model):
    data = {"model": yaml.safe_load(yaml.safe_dump(TINY_RUN["model"]))}
    data["model"].update(task=task, stage=stage, **model)
    from lfvila.config import config_from_dict

    return build_model(config_from_dict(data))


PRETRAINING_HEADS = {"text_encoder.cls", "text_encoder.seq_relationship"}
CLIP_PROJECTIONS = {"video_local_proj", "text_local_proj"}
GLOBAL_PROJECTIONS = {"video_global_proj", "text_global_proj"}
TEXT = {"text_encoder", "sent_embedding", "text_global_proj"}
TASK_MODELS = {
    # task: (pre-training stage it starts from, extra model keys, heads left out, new heads)
    "retrieval": (1, {}, PRETRAINING_HEADS | CLIP_PROJECTIONS, set()),
    "multichoice_qa": (
        2,
        {},
        PRETRAINING_HEADS | CLIP_PROJECTIONS | GLOBAL_PROJECTIONS,
        {"text_encoder.classifier", "text_encoder.span_classifier"},
    ),
    "qa_classification": (
        2,
        {"num_classes": 7},
        PRETRAINING_HEADS | CLIP_PROJECTIONS | GLOBAL_PROJECTIONS,
        {"text_encoder.classifier"},
    ),
    "video_classification": (
        1,
        {"num_classes": 12},
        TEXT | CLIP_PROJECTIONS,
        {"classifier", "video_frame_proj"},
    ),
}


def _covers(keys: list[str], prefixes: set[str]) -> bool:
    """Every key lies under one of `prefixes`, and every prefix holds at least one key."""
    under = [{p for p in prefixes if k.startswith(p + ".")} for k in keys]
    return all(under) and set().union(*under) == prefixes if keys else not prefixes


@pytest.mark.parametrize("task", list(TASK_MODELS))
def test_pretraining_weights_load_strictly_into_every_task_model(task):
    stage, extra, left_out, new = TASK_MODELS[task]
    pretrained = _tiny("pretrain", stage).state_dict()
    model = _tiny(task, **extra)
    report = load_task_weights(model, pretrained, strict=True)
    assert _covers(report.dropped, left_out), report.dropped
    assert _covers(report.new, new), report.new
    own = model.state_dict()
    shared = [k for k in pretrained if k in own and not k.endswith("relative_position_index")]
    assert shared and all(torch.equal(own[k], pretrained[k]) for k in shared)
    # a fine-tuned model of the task reloads exactly, heads included (evaluation)
    again = load_task_weights(_tiny(task, **extra), model.state_dict(), allow_new_heads=False)
    assert again.dropped == [] and again.new == [] and again.ok
    # ... but pre-training weights alone cannot be evaluated: the heads are missing
    if new:
        with pytest.raises(ValueError, match="lack this task's heads"):
            load_task_weights(_tiny(task, **extra), pretrained, allow_new_heads=False)


def test_strict_transfer_refuses_the_wrong_stage_and_other_head_shapes():
    with pytest.raises(ValueError, match="text_encoder.bert.encoder.layer.3"):  # cross-modal
        load_task_weights(
            _tiny("qa_classification", num_classes=3), _tiny("pretrain", 1).state_dict()
        )
    coin = _tiny("video_classification", num_classes=12).state_dict()
    with pytest.raises(ValueError, match="shape mismatch: classifier.weight"):
        load_task_weights(_tiny("video_classification", num_classes=4), coin)
    loose = load_task_weights(_tiny("video_classification", num_classes=4), coin, strict=False)
    assert [k for k, _, _ in loose.report.mismatched] == ["classifier.weight", "classifier.bias"]


@pytest.mark.parametrize("task", ["retrieval", "multichoice_qa", "qa_classification"])
def test_bert_initialises_retrieval_and_qa_models_strictly(task, tmp_path):
    """A Hugging Face BERT file (with its MLM head) into models without one: strict passes,
    every BERT layer the model has is loaded."""
    from safetensors.torch import save_file

    source = _tiny("pretrain", 2)  # 4 layers and the MLM head, as a BERT file would have
    hf = {k: v for k, v in export_bert(source.state_dict()).items() if "seq_relation" not in k}
    hf["cls.seq_relationship.weight"] = torch.zeros(2, 64)  # BERT's NSP head: never loaded
    assert any(k.startswith("cls.predictions") for k in hf)
    path = tmp_path / "bert.safetensors"
    save_file({k: v.clone().contiguous() for k, v in hf.items()}, str(path))
    model = _tiny(task, **TASK_MODELS[task][1])
    report = initialise(model, bert=path, strict=True)["bert"]
    assert not report.unexpected and not report.mismatched
    own, layers = model.state_dict(), len(model.text_encoder.bert.encoder.layer)
    converted = convert_bert(hf, layers, with_mlm_head=False)
    assert all(torch.equal(own[k], v) for k, v in converted.items())
    with pytest.raises(
        ValueError, match="init.bert: the LFVILAForVideoClassification model has no"
    ):
        initialise(_tiny("video_classification", num_classes=3), bert=path, strict=True)


def test_demo_finetune_overlay_has_the_demo_architecture():
    """configs/demo_finetune.yaml repeats configs/demo.yaml's model, so that --weights runs/demo
    loads; only the cross-modal layer and the sentence length differ."""
    demo = load_config(ROOT / "configs" / "demo.yaml").model
    tuned = load_config(
        [ROOT / "configs" / "actnet_ret.yaml", ROOT / "configs" / "demo_finetune.yaml"]
    ).model
    assert dataclasses.replace(tuned.video) == demo.video
    expected = dataclasses.replace(demo.text, num_hidden_layers=4, max_tokens=14)
    assert tuned.text == expected and tuned.projection_dim == demo.projection_dim
