"""Package layout, import hygiene and the command line."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import torch

import lfvila
import lfvila.kernels
from lfvila.cli import main
from lfvila.jobs.attention_demo import format_result, run_attention_demo
from lfvila.model.shapes import AttentionLayer

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_kernels_package_resolves_into_the_kernels_folder():
    assert pathlib.Path(lfvila.kernels.__file__).resolve() == ROOT / "kernels" / "__init__.py"
    assert pathlib.Path(lfvila.__file__).resolve() == ROOT / "lfvila" / "__init__.py"


def test_import_without_optional_dependencies():
    """With triton, DALI and lfvila._C unimportable, lfvila imports and the tiny model runs."""
    code = """
import sys
for name in ("triton", "nvidia", "nvidia.dali", "lfvila._C"):
    sys.modules[name] = None
import torch
import lfvila, lfvila.kernels
from lfvila.kernels import WindowAttention3D, can_run_triton
m = WindowAttention3D(16, (2, 3, 5), 2)
out = m(torch.randn(1, 3, 4, 7, 16), (0, 1, 2))
assert out.shape == (1, 3, 4, 7, 16) and torch.isfinite(out).all()
q = torch.randn(1, 2, 3, 5, 2, 16)
print(can_run_triton(q, q, q)[0])
from lfvila.config import load_config
from lfvila.model import build_model
cfg = load_config("configs/tiny.yaml")
model = build_model(cfg)
v = cfg.model.video
video = torch.randn(1, 3, v.num_frames, *v.input_size)
ids = torch.randint(1000, 2000, (1, cfg.model.text.max_sentences, cfg.model.text.max_tokens))
loss = model(video, ids, torch.ones_like(ids), mtc_generator=torch.Generator().manual_seed(0)).loss
assert torch.isfinite(loss)
assert "triton" not in sys.modules or sys.modules["triton"] is None
"""
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert "triton not importable" in result.stdout


def test_cli_help_and_bad_layer(capsys):
    result = subprocess.run(
        [sys.executable, "-m", "lfvila", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0
    for command in ("pretrain", "evaluate", "demo", "attention-check"):
        assert command in result.stdout
    assert main(["attention-check", "--layer", "L9"]) == 2
    assert "unknown layer 'L9'" in capsys.readouterr().err


def test_attention_demo_on_a_tiny_layer():
    """The demo's code path end to end (the real shapes take minutes in the interpreter)."""
    tiny = AttentionLayer("tiny", (4, 6, 10), heads=2, window=(2, 3, 5), head_dim=16)
    result = run_attention_demo(tiny, repeats=1, device="cpu", log=lambda msg: None)
    assert result.ok, (result.errors, result.sdpa_errors)
    assert result.dtype == torch.float32
    assert set(result.timings_ms) == {"reference", "sdpa", "fused"}
    text = format_result(result)
    assert "layer tiny" in text and "error-ratio rule" in text and ": yes" in text
    # the CPU's auto choice, with its reason
    assert "auto runs: reference (CPU tensors use the reference" in text


def test_setup_installs_every_package():
    """A non-editable install ships every folder of Python files (lfvila.training and
    lfvila.tasks were missing from a hand-written list)."""
    import ast

    tree = ast.parse((ROOT / "setup.py").read_text())
    assert any(
        isinstance(n, ast.Call) and getattr(n.func, "id", "") == "find_packages"
        for n in ast.walk(tree)
    )
    from setuptools import find_packages

    found = {"lfvila", *(f"lfvila.{p}" for p in find_packages(str(ROOT / "lfvila")))}
    folders = {
        "lfvila." + str(d.relative_to(ROOT / "lfvila")).replace("/", ".")
        for d in (ROOT / "lfvila").rglob("*")
        if d.is_dir() and any(d.glob("*.py")) and "__pycache__" not in d.parts
    }
    assert folders <= found, folders - found
    # and the data files read at import (the auto table of window attention)
    assert '"lfvila.kernels.window_attn": ["auto_table.json"]' in (ROOT / "setup.py").read_text()


def test_suite_collects_and_skips_without_optional_packages():
    """The GPU image has no PyAV, DALI, DeepSpeed or flash-attn: every test module must still
    collect there (modules that need one skip), so `pytest tests -m gpu` runs at all."""
    blocked = ("av", "nvidia.dali", "deepspeed", "flash_attn", "xformers")
    code = f"""
import sys
for name in {blocked!r}:
    sys.modules[name] = None
import pytest
sys.exit(pytest.main(["tests", "-m", "gpu", "--collect-only", "-q", "-p", "no:cacheprovider"]))
"""
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
        timeout=600,
    )  # fmt: skip
    tail = result.stdout[-3000:] + result.stderr[-2000:]
    assert result.returncode == 0, tail
    assert "error" not in result.stdout.lower().split("\n")[-2], tail
    assert "test_window_attention_gpu_full_shapes" in result.stdout, tail
