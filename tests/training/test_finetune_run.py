"""`lfvila finetune` and `lfvila evaluate` for every task config in configs/, end to end on the
generated demo data (each task's annotations in the original layout) from tiny stage-1 and
stage-2 runs: the run directory, the best export, evaluation of the exported weights, bad labels
and candidate counts named before any step, and distributed evaluation counting every item
once."""

from __future__ import annotations

import json
import re

import pytest
import torch
import yaml
from safetensors.torch import load_file

from lfvila.cli import main
from lfvila.config import load_config
from lfvila.tasks import HEADLINE

from .conftest import ROOT, TINY_RUN, lfvila, torchrun

TASK_CONFIGS = sorted(
    p.stem
    for p in (ROOT / "configs").glob("*.yaml")
    if load_config(p).model.task != "pretrain" and p.stem not in ("demo_finetune",)
)
CROSS_MODAL = ("multichoice_qa", "qa_classification")


def _overlay(tmp_path, stage: int = 1) -> dict:
    """TINY_RUN's architecture as an overlay over a task config: the task keeps its own clips,
    sentences, classes and candidates; 14-token sentences fit the demo's questions."""
    model = yaml.safe_load(yaml.safe_dump(TINY_RUN["model"]))
    del model["video"]["num_clips"], model["text"]["max_sentences"]
    model["text"]["max_tokens"] = 14
    return {
        "model": model,
        "data": {"workers": 0},
        "train": {
            "zero_stage": 0,
            "batch_size": 4,
            "max_steps": 2,
            "lr": 1e-3,
            "warmup_epochs": 0.25,
            "schedule": "cosine",
            "log_every": 1,
            "eval_every": 1,
            "checkpoint_every": 0,
        },
        "eval": {"batch_size": 4, "before_training": True},
    }


@pytest.fixture(scope="module")
def weights(tiny_data, tmp_path_factory):
    """Tiny stage-1 and stage-2 pre-training runs (2 steps each) on the demo data."""
    tmp = tmp_path_factory.mktemp("pretrained")
    base = yaml.safe_load(yaml.safe_dump(TINY_RUN))
    base["data"]["root"] = str(tiny_data)
    base["model"]["text"]["max_tokens"] = 14
    base["train"].update(max_steps=2, eval_every=0)
    base["eval"]["before_training"] = False
    config = tmp / "pretrain.yaml"
    config.write_text(yaml.safe_dump(base))
    runs = {1: tmp / "stage1", 2: tmp / "stage2"}
    assert main(["pretrain", "--config", str(config), "--output-dir", str(runs[1])]) == 0
    stage2 = ["model.stage=2", f"init.weights={runs[1]}"]
    assert main(["pretrain", "--config", str(config), "--output-dir", str(runs[2]), *stage2]) == 0
    overlay = tmp / "overlay.yaml"
    overlay.write_text(yaml.safe_dump(_overlay(tmp)))
    return runs, overlay


def _configs(name: str, overlay) -> list[str]:
    return ["--config", str(ROOT / "configs" / f"{name}.yaml"), "--config", str(overlay)]


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line]


@pytest.mark.parametrize("name", TASK_CONFIGS)
def test_every_task_config_finetunes_and_evaluates(name, weights, tiny_data, tmp_path):
    runs, overlay = weights
    cfg = load_config([ROOT / "configs" / f"{name}.yaml", overlay])
    pretrained = runs[2] if cfg.model.task in CROSS_MODAL else runs[1]
    run = tmp_path / "run"
    args = [*_configs(name, overlay), "--weights", str(pretrained), f"data.root={tiny_data}"]
    assert main(["finetune", *args, "--output-dir", str(run)]) == 0

    final = json.loads((run / "metrics.json").read_text())
    evaluation, metric = HEADLINE[cfg.model.task]
    assert final[evaluation]["items"] == 6  # every held-out item once
    assert 0.0 <= final[evaluation][metric] <= 100.0
    history = [x for x in _jsonl(run / "metrics.jsonl") if x.get("eval") == evaluation]
    assert [x["step"] for x in history] == [0, 1, 2]
    if cfg.model.task == "multichoice_qa":  # the loss's parts are logged, not just the total
        train = [x for x in _jsonl(run / "metrics.jsonl") if "eval" not in x]
        assert {"loss", "ce", "span"} <= set(train[0])
        weight = cfg.model.loss.span_loss_weight
        assert train[0]["loss"] == pytest.approx(train[0]["ce"] + weight * train[0]["span"])
    best = json.loads((run / "best" / "metrics.json").read_text())
    values = [x[metric] for x in history]
    assert best["metric"] == f"{evaluation}/{metric}" and best["value"] == max(values)
    assert best["step"] == history[values.index(max(values))]["step"]  # the first best kept
    assert (run / "best" / "model.safetensors").is_file() and (
        run / "best" / "config.yaml"
    ).is_file()

    # the exported final weights evaluate to the run's final numbers, loading strictly
    out = tmp_path / "evaluate"
    assert main(["evaluate", *args, "--weights", str(run), "--output-dir", str(out)]) == 0
    again = json.loads((out / "metrics.json").read_text())
    assert again[evaluation] == pytest.approx(final[evaluation], abs=1e-6)


def test_finetuning_moves_every_parameter_and_keeps_the_pretrained_start(
    weights, tiny_data, tmp_path
):
    """Fine-tuning is end to end (SPEC §9): the video encoder changes too; the step-0 best is
    the pre-trained model with its (new) head."""
    runs, overlay = weights
    run = tmp_path / "run"
    args = [*_configs("actnet_ret", overlay), "--weights", str(runs[1]), f"data.root={tiny_data}"]
    assert main(["finetune", *args, "--output-dir", str(run), "eval.metric=none"]) == 0
    assert not (run / "best").exists()  # eval.metric=none: no best export
    before, after = (
        load_file(str(runs[1] / "model.safetensors")),
        load_file(str(run / "model.safetensors")),
    )
    for key in (
        "video_encoder.patch_embed.proj.weight",
        "text_encoder.bert.embeddings.word_embeddings.weight",
    ):
        assert not torch.equal(before[key], after[key]), key
    assert "video_local_proj.weight" in before and "video_local_proj.weight" not in after


BAD_LABELS = {
    # lvu_relationship's demo labels are motions 0..3: 2 classes leave ids 2 and 3 out of range
    "class id": ("lvu_relationship_cls", ["model.num_classes=2"], "field 'recipe_type'"),
    "candidates": ("how2_qa", ["model.num_candidates=3"], "field 'text_a' has 4 answers"),
    "format": ("violin_qa", ["data.format=auto"], "data.format: model.task qa_classification"),
}


@pytest.mark.parametrize("case", list(BAD_LABELS))
def test_bad_labels_are_one_clear_line_before_any_step(case, weights, tiny_data, tmp_path, capsys):
    runs, overlay = weights
    name, overrides, message = BAD_LABELS[case]
    run = tmp_path / "run"
    args = [*_configs(name, overlay), "--weights", str(runs[2]), f"data.root={tiny_data}"]
    assert main(["finetune", *args, "--output-dir", str(run), *overrides]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lfvila finetune: error: ") and message in err[-1], err
    if case != "format":
        assert re.search(r"\.jsonl:\d+: ", err[-1])  # file and line
    assert not (run / "checkpoints").exists()


def test_strict_loading_refuses_the_wrong_stage_and_head_less_evaluation(
    weights, tiny_data, tmp_path, capsys
):
    runs, overlay = weights
    args = [*_configs("violin_qa", overlay), f"data.root={tiny_data}"]
    # stage-1 weights lack the cross-modal layers a QA model needs
    assert (
        main(["finetune", *args, "--weights", str(runs[1]), "--output-dir", str(tmp_path / "a")])
        == 2
    )
    err = capsys.readouterr().err
    assert "weights do not match the qa_classification model" in err
    assert "text_encoder.bert.encoder.layer.3" in err
    assert "cross-modal text layers 3 are missing: these are stage-1 weights" in err
    assert "model.stage=2" in err
    # evaluating pre-training weights would score a random head: refused, with the way out
    assert (
        main(["evaluate", *args, "--weights", str(runs[2]), "--output-dir", str(tmp_path / "b")])
        == 2
    )
    assert "lack this task's heads" in capsys.readouterr().err
    # the command names pretrain vs finetune
    pre = ["--config", str(ROOT / "configs" / "violin_qa.yaml")]
    assert main(["pretrain", *pre, "--output-dir", str(tmp_path / "c")]) == 2
    assert "use `lfvila finetune`" in capsys.readouterr().err


def test_distributed_evaluation_counts_every_item_once(weights, tiny_data, tmp_path):
    """6 held-out items over 2 processes with batches of 4: ranks see 3 items each (one
    partial batch); the gathered metrics equal one process's."""
    runs, overlay = weights
    run = tmp_path / "run"
    args = [*_configs("coin_cls", overlay), f"data.root={tiny_data}"]
    assert main(["finetune", *args, "--weights", str(runs[1]), "--output-dir", str(run)]) == 0
    single = json.loads((run / "metrics.json").read_text())["classification"]
    out = tmp_path / "ddp"
    lfvila(
        "evaluate", *args, "--weights", run, "--output-dir", out,
        launcher=torchrun(2),
    )  # fmt: skip
    both = json.loads((out / "metrics.json").read_text())["classification"]
    assert both["items"] == 6
    assert both == pytest.approx(single, abs=1e-6)


def _eval_videos(name, overlay, root, n=2):
    """The video files of the first `n` evaluation items of task config `name` under `root`."""
    from lfvila.tasks import build_task
    from lfvila.training.dist import World
    from lfvila.training.metrics import setup_logging

    setup_logging(None, True)  # handlers on this test's stderr, not an earlier test's (closed)
    cfg = load_config([ROOT / "configs" / f"{name}.yaml", overlay], [f"data.root={root}"])
    _, _, evaluations = build_task(cfg, World(), train=False)
    dataset = evaluations[0].loader.dataset
    return [dataset.item(i, decode=False)["plan"].files[0][0] for i in range(n)]


@pytest.fixture
def spoiled_eval(tiny_data, tmp_path):
    """A copy of the demo data whose first two evaluation videos of a task are empty / gone."""
    import shutil

    def spoil(name, overlay):
        root = tmp_path / f"data_{name}"
        shutil.copytree(tiny_data, root)
        empty, gone = (__import__("pathlib").Path(p) for p in _eval_videos(name, overlay, root))
        empty.write_bytes(b"")
        gone.unlink()
        return root, empty, gone

    return spoil


EVAL_TASKS = {"actnet_ret": ("retrieval", "t2v_R@1", 1), "violin_qa": ("qa", "acc", 2)}


@pytest.mark.parametrize("name", list(EVAL_TASKS))
def test_unreadable_evaluation_videos_stop_before_any_model_work(
    name, weights, spoiled_eval, tmp_path, capsys
):
    runs, overlay = weights
    root, empty, gone = spoiled_eval(name, overlay)
    stage = EVAL_TASKS[name][2]
    args = [*_configs(name, overlay), f"data.root={root}", "--weights", str(runs[stage])]
    out = tmp_path / "run"
    assert main(["finetune", *args, "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "unreadable video file(s), 2 of 6 items" in err
    assert f"  {empty}: empty file (" in err and f"  {gone}: file not found (" in err
    assert "eval.on_bad_video=skip" in err
    assert not (out / "checkpoints").exists()


@pytest.mark.parametrize("name", list(EVAL_TASKS))
def test_unreadable_evaluation_videos_skipped_count_as_misses(
    name, weights, spoiled_eval, tmp_path
):
    runs, overlay = weights
    root, empty, gone = spoiled_eval(name, overlay)
    evaluation, metric, stage = EVAL_TASKS[name]
    run = tmp_path / "run"
    args = [*_configs(name, overlay), f"data.root={root}", "eval.on_bad_video=skip"]
    assert main(["finetune", *args, "--weights", str(runs[stage]), "--output-dir", str(run)]) == 0
    final = json.loads((run / "metrics.json").read_text())
    assert final[evaluation]["items"] == 6 and final[evaluation]["skipped"] == 2
    assert final[evaluation][metric] <= 100.0 * 4 / 6 + 1e-9  # two sure misses of six
    report = final["skipped_items"][evaluation]
    assert {i["video"] for i in report["items"]} == {str(empty), str(gone)}
    assert {i["reason"] for i in report["items"]} == {"empty file", "file not found"}
    assert report["counted_as"]
    if evaluation == "retrieval":
        assert final[evaluation]["t2v_MdR"] <= 6 and final[evaluation]["t2v_MnR"] >= 2 * 6 / 6


@pytest.mark.parametrize("mode", ["error", "skip"])
def test_a_video_failing_only_at_its_decode(
    mode, weights, tiny_data, tmp_path, monkeypatch, capsys
):
    """Opens and probes fine, fails when decoded (the scan cannot see it): 'error' stops the
    evaluation with one line; 'skip' serves it as zeros, counted as a miss."""
    from lfvila.data import VideoDecodeError
    from lfvila.data.datasets import base

    runs, overlay = weights
    bad = _eval_videos("actnet_ret", overlay, tiny_data, n=1)[0]
    real = base.read_frames

    def failing(path, indices, backend):
        if str(path) == str(bad):
            raise VideoDecodeError(path, "corrupt or truncated: planted decode failure")
        return real(path, indices, backend)

    monkeypatch.setattr(base, "read_frames", failing)
    args = [*_configs("actnet_ret", overlay), f"data.root={tiny_data}", "--weights", str(runs[1]),
            f"eval.on_bad_video={mode}", "--output-dir", str(tmp_path / "out")]  # fmt: skip
    code = main(["evaluate", *args])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if mode == "error":
        assert code == 2 and f"evaluation retrieval: unreadable video {bad}" in err
        return
    assert code == 0
    final = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert final["retrieval"]["skipped"] == 1 and final["retrieval"]["items"] == 6
    (item,) = final["skipped_items"]["retrieval"]["items"]
    assert item["item"] == 0 and "failed at its decode" in item["reason"]
