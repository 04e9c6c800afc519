"""End-to-end fixtures: a small generated dataset and a tiny LF-VILA config that runs the real
`lfvila pretrain` in seconds on the CPU."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]

# The whole stage-1 code path at the smallest widths: 4 clips x 2 frames at 48x80 with 4x4
# patches (the token maps of 96x160 with 8x8 patches: 12x20 -> 6x10 -> 3x5 -> 2x3); the text
# width equals the video's last (64) so that stage 2 builds too.
TINY_RUN = {
    "model": {
        "projection_dim": 32,
        "video": {
            "num_frames": 8,
            "num_clips": 4,
            "input_size": [48, 80],
            "patch_size": [1, 4, 4],
            "embed_dim": 8,
            "depths": [1, 1, 1, 1, 1, 1],
            "num_heads": [1, 1, 2, 2, 2, 4],
            "window_size": [[2, 3, 5], [2, 3, 5], [2, 3, 5], [4, 3, 5], [4, 3, 5], [8, 3, 5]],
            "local_window": 2,
            "drop_path_rate": 0.1,
        },
        "text": {
            "hidden_size": 64,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "intermediate_size": 128,
            "num_local_layers": 2,
            "stage1_layers": 3,
            "max_sentences": 4,
            "max_tokens": 12,
        },
    },
    "data": {
        "train": "pretrain_train.jsonl",
        "val": "pretrain_val.jsonl",
        "val_retrieval": "retrieval_val.jsonl",
        "video_root": "videos",
        "retrieval_video_root": "whole",
        "workers": 0,
    },
    "init": {"bert": None, "swin": None},
    "train": {
        "batch_size": 4,
        "max_steps": 6,
        "lr": 1e-3,
        "warmup_epochs": 0.5,
        "schedule": "cosine",
        "log_every": 1,
        "eval_every": 3,
        "checkpoint_every": 0,
        "keep_checkpoints": 2,
    },
    "eval": {"batch_size": 4},
}

NO_DROPOUT = [
    "model.video.drop_path_rate=0.0",
    "model.text.hidden_dropout_prob=0.0",
    "model.text.attention_probs_dropout_prob=0.0",
]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """16 training and 6 held-out videos of 4 clips x 8 frames at 48x80 (about a second)."""
    from lfvila.data import demo

    root = tmp_path_factory.mktemp("tiny_demo_data")
    demo.generate(root, videos=16, val_videos=6, size=(48, 80), seed=1)
    return root


@pytest.fixture
def tiny_config(tiny_data, tmp_path):
    """A YAML file of TINY_RUN with data.root set; returns its path."""
    data = yaml.safe_load(yaml.safe_dump(TINY_RUN))
    data["data"]["root"] = str(tiny_data)
    path = tmp_path / "tiny_run.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def lfvila(*args, env=None, timeout=600, launcher=None, check=True):
    """Run `python -m lfvila ARGS` (or under `launcher`, e.g. torchrun) and return the result."""
    full_env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1", **(env or {}))
    cmd = [*(launcher or [sys.executable]), "-m", "lfvila", *map(str, args)]
    result = subprocess.run(
        cmd, capture_output=True, text=True, env=full_env, cwd=ROOT, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {result.returncode}\n--- stderr ---\n{result.stderr[-6000:]}"
        )
    return result


def torchrun(nproc: int = 2) -> list[str]:
    """torchrun of this interpreter's environment, standalone (a free port), `nproc` processes."""
    exe = pathlib.Path(sys.executable).parent / "torchrun"
    return [
        str(exe if exe.is_file() else shutil.which("torchrun")),
        "--standalone",
        f"--nproc_per_node={nproc}",
    ]
