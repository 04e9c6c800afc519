"""`lfvila demo`, shortened by overrides, end to end: the demo data generated into a given folder
(once; a second run reuses it), training, retrieval before and after, metrics.json and the two
plots, and the demo's own output folder replaced on a rerun."""

from __future__ import annotations

import json

import pytest

from .conftest import lfvila

SHORT = ["train.max_steps=4", "train.eval_every=2", "train.log_every=2", "train.batch_size=8",
         "eval.batch_size=16"]  # fmt: skip
SMALL_DATA = {"LFVILA_DEMO_VIDEOS": "48"}  # 48 training videos (+ the 48 held out): quick


def test_demo_shortened_end_to_end(tmp_path):
    data, run = tmp_path / "demo-data", tmp_path / "demo"
    result = lfvila("demo", "--output-dir", run, "--data-dir", data, *SHORT, env=SMALL_DATA)
    assert (data / "COMPLETE").is_file() and len(list((data / "whole").glob("*.mp4"))) == 48 + 48
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("R@1", "R@5", "R@10", "MdR", "chance_R@1"):
        assert isinstance(metrics[key], float), key
    assert metrics["chance_R@1"] == pytest.approx(100 / 48)
    assert metrics["videos"] == 48 and metrics["steps"] == 4 and metrics["before"] is not None
    for png in ("losses.png", "retrieval.png"):
        assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = result.stdout
    assert "zero-shot paragraph-to-video retrieval on 48 held-out videos" in out
    assert "R@1 is" in out and "x chance after 4 steps" in out
    assert "generating 96 videos" in result.stderr
    evals = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in evals if x.get("eval") == "retrieval"] == [0, 2, 4]

    again = lfvila(
        "demo", "--output-dir", run, "--data-dir", data, *SHORT[:1], "train.eval_every=0",
        "train.batch_size=8", "eval.before_training=false", env=SMALL_DATA,
    )  # fmt: skip
    assert "(cached)" in again.stderr  # the data is generated once
    assert json.loads((run / "metrics.json").read_text())["before"] is None


def test_demo_refuses_a_folder_it_did_not_write(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    result = lfvila("demo", "--output-dir", tmp_path, check=False)
    assert result.returncode == 2 and "is not a demo run" in result.stderr
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_demo_takes_an_existing_empty_folder(tmp_path):
    """`mkdir out && lfvila demo --output-dir out` just works (issue 21)."""
    from lfvila.jobs.demo import MARKER, _fresh_run_dir

    out = tmp_path / "out"
    out.mkdir()
    _fresh_run_dir(out)
    assert (out / MARKER).is_file()
    _fresh_run_dir(out)  # and its own output is replaced on a rerun
    assert [p.name for p in out.iterdir()] == [MARKER]
