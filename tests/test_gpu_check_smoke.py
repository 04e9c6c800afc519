"""benchmarks/gpu_check.sh in its CPU smoke mode: the GPU script is never untested code."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

from lfvila.kernels.window_attn.auto_table import load_table

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
    for provider in ("triton", "sdpa", "auto", "reference", "video-swin-eager", "sdpa-windows"):
        assert f"| {provider} |" in text
    # issue 27: auto against every route, and auto's table written from the same run
    assert "## `auto` against every route" in text
    assert "| tiny-packed-shift | 30 |" in text
    table = load_table(tmp_path / "auto_table.json")
    [smoke] = [d for d in table.devices if d.gpu == "cpu (smoke run)"]
    assert {(e.dtype, e.tokens) for e in smoke.entries} == {("float32", 30), ("float32", 84)}
    assert {d.gpu for d in table.devices} >= {"NVIDIA H200"}  # the packaged entries are kept
    assert "## The attention op" in text and "## Whole module" in text
    assert "## Contrastive losses" in text and "| N=300, d=32 | triton |" in text
    assert "## Training step" in text and "fused step >= 1.3x" in text
    assert "## Step profile (torch.profiler)" in text and "| matmul |" in text
    assert "## Activation checkpointing of the video encoder" in text
    assert "copy bandwidth" in text
    assert "## Swin family on the kernel" in text and "| swinv2-t-256 | lfvila+compile |" in text
    assert list(tmp_path.glob("gpu_tests_cpu-smoke_*.log"))


def test_gpu_check_quick_bisect_smoke_mode(tmp_path):
    """--quick --bisect: tests (collection here), the bisect table, the benchmark slice, the
    report, and no more than the 8 files a device call brings back."""
    env = dict(os.environ, PYTHON=sys.executable)
    result = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--smoke", "--quick", "--bisect",
         "--out", str(tmp_path)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) <= 8 and all((tmp_path / f).is_file() for f in files), files
    table = (tmp_path / "bisect_table.md").read_text()
    assert "| tiny-packed-shift:fp32 | ok | ok | ok |" in table
    report = next(tmp_path.glob("gpu_check_cpu-smoke_*.md")).read_text()
    assert "| triton |" in report and "| sdpa |" in report and "| auto |" in report
    assert "flex" not in report and "sdpa-windows" not in report  # the slice: library routes
    assert "auto_table.json" in files
    assert "GPU tests (limit 200 s" in result.stdout


def test_bisect_reports_wrong_and_racy_kernels(monkeypatch):
    """The bisect's cells can fail: a kernel whose dq is off, and one whose bits change run to
    run, are reported as such."""
    from benchmarks import bisect_window_attention as bisect
    from lfvila.kernels.window_attn import triton_impl

    case = bisect.parse_case("tiny-packed-shift:fp32")
    log = bisect.LaunchLog()
    assert bisect.run_case(case, "baseline", 2, "cpu", log) == "ok"
    assert any(line.startswith("_bwd_fused_kernel") for line in log.lines)
    bwd = triton_impl.bwd

    def wrong(*args, **kwargs):
        dq, *rest = bwd(*args, **kwargs)
        return (dq * 1.01, *rest)

    monkeypatch.setattr(triton_impl, "bwd", wrong)
    assert bisect.run_case(case, "baseline", 2, "cpu", log).startswith("dq ")
    calls = []

    def racy(*args, **kwargs):
        dq, *rest = bwd(*args, **kwargs)
        calls.append(1)
        return (dq + len(calls) * 1e-7, *rest)

    monkeypatch.setattr(triton_impl, "bwd", racy)
    assert bisect.run_case(case, "baseline", 2, "cpu", log).endswith(" ND")


def test_gpu_check_train_smoke_mode(tmp_path):
    """--train: only the training-step benchmarks (issue 20) and their report."""
    env = dict(os.environ, PYTHON=sys.executable)
    result = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--smoke", "--train", "--out",
         str(tmp_path)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    report = next(tmp_path.glob("gpu_check_cpu-smoke_*.md")).read_text()
    assert "## Training step" in report and "## Step profile" in report
    assert "## The attention op" not in report  # nothing else ran


def test_gpu_check_swin_smoke_mode(tmp_path):
    """--swin (issue 28): the Swin patches' GPU tests (collected here), the timm Swin and
    Swin-V2 benchmark (patched, unpatched eager and SDPA, compiled), the report; nothing else."""
    env = dict(os.environ, PYTHON=sys.executable)
    result = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--smoke", "--swin", "--out",
         str(tmp_path)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    log = next(tmp_path.glob("gpu_tests_cpu-smoke_*.log")).read_text()
    assert "test_swin_patch_gpu_tiny_models" in log and "test_window_attention_gpu" not in log
    report = next(tmp_path.glob("gpu_check_cpu-smoke_*.md")).read_text()
    assert "## Swin family on the kernel" in report
    for row in ("| swin-t-224 | timm-eager |", "| swin-t-224 | timm-sdpa |",
                "| swin-t-224 | lfvila |", "| swinv2-t-256 | lfvila+compile |"):  # fmt: skip
        assert row in report, report
    assert "## The attention op" not in report  # nothing else ran
