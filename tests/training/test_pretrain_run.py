"""`lfvila pretrain` / `lfvila evaluate` end to end on a tiny model and generated videos: the run
directory, exact resume after SIGTERM, stage 2 from a stage-1 run, evaluation of exported weights,
`from_pretrained`, and errors that name the culprit before any step."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from lfvila.cli import main
from lfvila.model import from_pretrained

from .conftest import NO_DROPOUT, ROOT, lfvila


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def _same_weights(a, b):
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def stage1_run(tiny_data, tmp_path_factory):
    """One finished tiny stage-1 run (6 steps, evaluations at 0, 3, 6)."""
    import yaml

    from .conftest import TINY_RUN

    tmp = tmp_path_factory.mktemp("stage1")
    data = yaml.safe_load(yaml.safe_dump(TINY_RUN))
    data["data"]["root"] = str(tiny_data)
    config = tmp / "tiny_run.yaml"
    config.write_text(yaml.safe_dump(data))
    run = tmp / "run"
    result = lfvila("pretrain", "--config", config, "--output-dir", run)
    return config, run, result


def test_run_directory_holds_everything(stage1_run):
    config, run, result = stage1_run
    for name in ("config.yaml", "model.safetensors", "metrics.jsonl", "metrics.json", "log.txt"):
        assert (run / name).is_file(), name
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_6"
    lines = _jsonl(run / "metrics.jsonl")
    train = [x for x in lines if "eval" not in x]
    assert [x["step"] for x in train] == [1, 2, 3, 4, 5, 6]
    for key in ("epoch", "loss", "vpc", "mtc", "lr", "samples_per_s", "data_wait"):
        assert key in train[0], key
    evals = [(x["step"], x["eval"]) for x in lines if "eval" in x]
    assert evals == [(s, e) for s in (0, 3, 6) for e in ("retrieval", "pretrain_val")]
    final = json.loads((run / "metrics.json").read_text())
    assert set(final) == {"retrieval", "pretrain_val"} and final["retrieval"]["items"] == 6
    assert "videos replaced: 0" in (run / "log.txt").read_text()


def test_from_pretrained_and_evaluate_reproduce_the_final_metrics(stage1_run, tmp_path):
    config, run, _ = stage1_run
    model = from_pretrained(run)
    weights = load_file(str(run / "model.safetensors"))
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in weights.items())
    out = tmp_path / "eval"
    lfvila("evaluate", "--config", config, "--weights", run, "--output-dir", out)
    got = json.loads((out / "metrics.json").read_text())
    want = json.loads((run / "metrics.json").read_text())
    assert got["retrieval"] == pytest.approx(want["retrieval"], abs=1e-6)
    assert got["pretrain_val"] == pytest.approx(want["pretrain_val"], rel=1e-5)


def test_sigterm_then_resume_is_bit_identical(stage1_run, tmp_path):
    """The same run, stopped by SIGTERM after step 2 and resumed, ends with the same weights,
    bit for bit, as the uninterrupted run (dropout on, a DataLoader worker, an epoch boundary
    and evaluations in between)."""
    config, straight, _ = stage1_run
    run = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "lfvila",
        "pretrain",
        "--config",
        str(config),
        "--output-dir",
        str(run),
    ]
    env = dict(__import__("os").environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and any(
            x.get("step", 0) >= 2 and "eval" not in x for x in _jsonl(metrics)
        ):
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.05)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-3000:]
    assert "resume with:" in err and "--resume" in err
    stopped_at = int((run / "checkpoints" / "latest").read_text().strip()[5:])
    assert 2 <= stopped_at < 6
    assert not (run / "model.safetensors").exists()  # not finished: nothing exported
    lfvila("pretrain", "--config", config, "--output-dir", run, "--resume")
    _same_weights(straight, run)
    steps = [x["step"] for x in _jsonl(run / "metrics.jsonl") if "eval" not in x]
    assert steps == [1, 2, 3, 4, 5, 6]  # lines after the checkpoint were dropped, then rewritten


def test_stage2_trains_from_the_stage1_run(stage1_run, tmp_path):
    config, run1, _ = stage1_run
    run = tmp_path / "stage2"
    lfvila(
        "pretrain",
        "--config",
        config,
        "--output-dir",
        run,
        "model.stage=2",
        f"init.weights={run1}",
        "train.max_steps=2",
        "train.eval_every=0",
    )
    final = json.loads((run / "metrics.json").read_text())
    assert {"mlm_acc", "vtm_acc", "mlm", "vtm"} <= set(final["pretrain_val"])
    assert final["retrieval"]["items"] == 6  # stage 2 still has stage-1 features
    # everything from stage 1 is frozen: equal to the stage-1 weights
    w1, w2 = load_file(str(run1 / "model.safetensors")), load_file(str(run / "model.safetensors"))
    frozen = [
        k for k in w1 if k.startswith(("video_encoder.", "text_global_proj", "sent_embedding"))
    ]
    assert frozen and all(torch.equal(w1[k], w2[k]) for k in frozen)
    trainable = "text_encoder.bert.encoder.layer.3.output.dense.weight"  # a cross-modal layer
    assert trainable in w2 and trainable not in w1
    # zero-shot retrieval comes from the frozen stage-1 parts: the same numbers as stage 1
    r1 = json.loads((run1 / "metrics.json").read_text())["retrieval"]
    assert final["retrieval"] == pytest.approx(r1, abs=1e-6)


BAD = {
    "unknown key": (
        ["train.shedule=cosine"],
        "unknown key 'train.shedule' (did you mean 'train.schedule'?)",
    ),
    "bad value": (["train.zero_stage=5"], "train.zero_stage must be 0, 1 or 2, got 5"),
    "bad type": (["train.batch_size=big"], "train.batch_size: expected an integer, got 'big'"),
    "missing root": (
        ["data.root=/nonexistent/data"],
        "data.root: /nonexistent/data is not a folder",
    ),
    "missing file": (["data.train=nope.jsonl"], "data.train: path"),
    "missing videos": (["data.video_root=clips"], "data.video_root: folder"),
    "missing weights": (["init.bert=bert.bin"], "init.bert: path"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_config_is_one_clear_line_before_any_step(case, tiny_config, tmp_path, capsys):
    overrides, message = BAD[case]
    run = tmp_path / "run"
    assert (
        main(["pretrain", "--config", str(tiny_config), "--output-dir", str(run), *overrides]) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lfvila pretrain: error: ") and message in err[-1], err
    assert "Traceback" not in "\n".join(err)
    assert not (run / "checkpoints").exists() and not (run / "metrics.jsonl").exists()


def test_bad_annotation_names_file_and_line(tiny_config, tiny_data, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    lines = (tiny_data / "pretrain_train.jsonl").read_text().splitlines()
    bad.write_text("\n".join([lines[0], '[{"clip_id": 3, "text": "x"}]', *lines[1:]]) + "\n")
    assert (
        main(
            [
                "pretrain",
                "--config",
                str(tiny_config),
                "--output-dir",
                str(tmp_path / "r"),
                f"data.train={bad}",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert f"{bad}:2: item 0 field 'clip_id' must be a string" in err


def test_resume_and_fresh_start_guards(stage1_run, tiny_config, tmp_path, capsys):
    _, run, _ = stage1_run
    assert main(["pretrain", "--config", str(tiny_config), "--output-dir", str(run)]) == 2
    assert "already holds checkpoints (step_6): pass --resume" in capsys.readouterr().err
    empty = tmp_path / "empty"
    assert (
        main(["pretrain", "--config", str(tiny_config), "--output-dir", str(empty), "--resume"])
        == 2
    )
    assert "--resume: no checkpoint in" in capsys.readouterr().err
    assert (
        main(
            [
                "pretrain",
                "--config",
                str(tiny_config),
                "--output-dir",
                str(run),
                "--resume",
                "train.batch_size=2",
            ]
        )
        == 2
    )
    assert "global batch of 4" in capsys.readouterr().err


def test_no_dropout_overrides_exist():
    """The equivalence tests rely on these keys (dropout off on every path)."""
    from lfvila.config import load_config

    cfg = load_config(None, NO_DROPOUT)
    assert cfg.model.video.drop_path_rate == 0.0 and cfg.model.text.hidden_dropout_prob == 0.0
