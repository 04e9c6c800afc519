"""End to end: HD-VILA-style metadata, transcripts and raw videos -> `prepare longform` ->
`prepare videos` -> `prepare check` -> `lfvila pretrain` runs on the result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from lfvila.cli import main

from .conftest import record, write_jsonl, write_numbered_video

ROOT = Path(__file__).resolve().parents[2]


def test_prepared_data_trains_pretrain(tmp_path, capsys):
    raw = tmp_path / "raw"
    videos = [f"e2evideo{i:03d}" for i in range(4)]
    for video_id in videos:
        write_numbered_video(raw / f"{video_id}.mp4", 300, 30)  # 10 s
    # 5 contiguous 2 s clips per video, one of them listed out of order
    meta = write_jsonl(
        tmp_path / "hdvila_part0.jsonl",
        [record(v, [(k, 2.0 * k, 2.0 * k + 2.0) for k in (0, 2, 1, 3, 4)]) for v in videos],
    )
    trans = write_jsonl(
        tmp_path / "transcripts.jsonl",
        [{"clip_id": f"{v}.{k}.mp4", "text": f"clip {k} of {v}"} for v in videos for k in range(5)],
    )
    data = tmp_path / "data"
    run = ["prepare", "longform", "--metadata", str(meta), "--transcripts", str(trans)]
    assert main([*run, "--out", str(data)]) == 0
    runs = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    assert [len(r) for r in runs] == [5, 5, 5, 5]

    clips = data / "clips"
    run = ["prepare", "videos", "--source", str(raw), "--metadata", str(meta), "--out", str(clips)]
    assert main([*run, "--height", "96", "--annotations", str(data / "train.jsonl")]) == 0
    assert "20 written" in capsys.readouterr().out

    run = ["prepare", "check", "--annotations", str(data / "train.jsonl"), "--video-root"]
    run += [str(clips), "--frames-per-clip", "4", "--bad-ids", str(tmp_path / "bad.txt")]
    assert main([*run, "--report", str(tmp_path / "check.json")]) == 0
    assert (tmp_path / "bad.txt").read_text() == ""

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "lfvila", "pretrain", "--config", "configs/tiny.yaml"]
    cmd += ["--output-dir", str(out), f"data.root={data}", "data.train=train.jsonl"]
    cmd += ["data.val=null", "data.val_retrieval=null", "data.video_root=clips"]
    cmd += ["train.max_steps=2", "train.batch_size=2", "eval.before_training=false"]
    cmd += ["data.workers=0", "train.log_every=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRITON_INTERPRET": "1"}
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [s for s in steps if "loss" in s and "eval" not in s]
    assert [s["step"] for s in train] == [1, 2] and all(s["loss"] == s["loss"] for s in train)
    assert (out / "model.safetensors").is_file()
    assert "videos replaced: 0" in (out / "log.txt").read_text()
