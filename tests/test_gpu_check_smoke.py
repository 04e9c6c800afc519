"""benchmarks/gpu_check.sh in its CPU smoke mode: the GPU script is never untested code."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_gpu_check_smoke_mode_writes_a_report(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable)
    result = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--smoke", "--out", str(tmp_path)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    reports = list(tmp_path.glob("gpu_check_cpu-smoke_*.md"))
    assert len(reports) == 1, list(tmp_path.iterdir())
    text = reports[0].read_text()
    for provider in ("triton", "reference", "video-swin-eager", "sdpa"):
        assert f"| {provider} |" in text
    assert "## The attention op" in text and "## Whole module" in text
    assert "## Contrastive losses" in text and "| N=300, d=32 | triton |" in text
    assert "## Stage-1 training step" in text and "fused step >= 1.3x" in text
    assert "copy bandwidth" in text
    assert list(tmp_path.glob("gpu_tests_cpu-smoke_*.log"))
