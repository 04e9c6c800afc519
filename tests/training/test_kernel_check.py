"""The run's kernel self-check (lfvila/training/kernel_check.py) end to end: `lfvila pretrain`
with the Triton kernels (the interpreter here) checks every fused call of the model before its
first step; a wrong kernel (a patched launcher) is run on the reference for those layers, named
in the run's first lines and in run_dir/kernel_check.json (kernels.on_mismatch=fallback, the
default), or stops the run naming the layer, shape and error (error)."""

from __future__ import annotations

import json

import pytest

from lfvila.cli import main
from lfvila.kernels import _self_check
from lfvila.kernels._backend import interpreter_enabled
from lfvila.kernels.window_attn import triton_impl

pytestmark = pytest.mark.skipif(not interpreter_enabled(), reason="CPU run on the interpreter")

FUSED = [
    "kernels.backend=triton",
    "kernels.self_check_batch=1",
    "model.video.depths=[2,1,1,1,1,1]",  # layer 0 has a shifted block
    "model.video.embed_dim=16",  # head dims 16 and 32: the kernels take 16-128
    "train.max_steps=1",
    "data.val=null",
    "data.val_retrieval=null",
    "eval.before_training=false",
]


@pytest.fixture(autouse=True)
def _fresh():
    _self_check.reset()
    yield
    _self_check.reset()
    _self_check.set_first_call_check(_self_check._env_setting())


def _patch_bwd(monkeypatch):
    bwd, launches = triton_impl.bwd, []

    def wrong(*args, **kwargs):
        launches.append(1)
        dq, *rest = bwd(*args, **kwargs)
        return (dq * 1.05, *rest)

    monkeypatch.setattr(triton_impl, "bwd", wrong)
    return launches


def test_pretrain_checks_fused_kernels_before_the_first_step(tiny_config, tmp_path):
    out = tmp_path / "run"
    assert main(["pretrain", "--config", str(tiny_config), "--output-dir", str(out), *FUSED]) == 0
    log = (out / "log.txt").read_text()
    assert "kernel self-check: video_encoder.layers.0.blocks.1.attn: window_attention" in log
    assert "shift (0, 1, 2)" in log and "contrastive_loss" in log and "mtc_loss" in log
    assert "match the reference on the CPU" in log
    assert log.index("match the reference") < log.index("step 1")
    record = json.loads((out / "kernel_check.json").read_text())
    assert record["device"] == "the CPU" and record["on_mismatch"] == "fallback"
    assert record["checks"] and all(c["ok"] for c in record["checks"])
    assert record["fallbacks"] == []


def test_mismatch_stops_the_run_naming_the_layer(tiny_config, tmp_path, monkeypatch, capsys):
    _patch_bwd(monkeypatch)
    out = tmp_path / "run"
    args = ["pretrain", "--config", str(tiny_config), "--output-dir", str(out), *FUSED]
    code = main([*args, "kernels.on_mismatch=error"])
    err = capsys.readouterr().err
    assert code == 3, err
    assert "fused kernel mismatch on this machine" in err
    assert "video_encoder.layers.0.blocks.1.attn: window_attention (1, 8, 12, 20, 1, 16)" in err
    assert "dq: max|out-truth|" in err and "kernels.on_mismatch=fallback" in err
    assert not (out / "checkpoints").exists() and "Traceback" not in err


def test_mismatch_with_fallback_runs_those_layers_on_the_reference(
    tiny_config, tmp_path, monkeypatch
):
    """The default policy. The check runs at batch 1 (kernels.self_check_batch=1) and the step at
    the training's batch: another signature, checked on its first call during the run, so the
    wrong kernel never serves a training step."""
    launches = _patch_bwd(monkeypatch)
    out = tmp_path / "run"
    args = ["pretrain", "--config", str(tiny_config), "--output-dir", str(out), *FUSED]
    assert main(args) == 0
    log = (out / "log.txt").read_text()
    assert "disagrees with the reference" in log and "on_mismatch=fallback" in log
    summary = next(ln for ln in log.splitlines() if "run on the reference backend" in ln)
    assert "video_encoder.layers.0.blocks.1.attn: window_attention (1, 8, 12, 20, 1, 16)" in summary
    assert log.index("run on the reference backend") < log.index("step 1")
    # the run header lists each layer's backend and why (a forced backend here)
    assert "window attention L0 (8x12x20 map" in log
    assert ": triton (backend='triton' asked for)" in log
    checked = len(launches)
    assert checked > 0  # the checks ran the (wrong) fused backward, the step did not
    assert (out / "model.safetensors").is_file()
    fallbacks = _self_check.fallback_calls()
    assert len(fallbacks) == checked
    batches = {c.shape[0] for c in fallbacks if c.op == "window_attention"}
    assert 1 in batches and len(batches) == 2  # the check's batch and the training's
    record = json.loads((out / "kernel_check.json").read_text())
    assert len(record["fallbacks"]) == checked
    assert {f["route"] for f in record["fallbacks"]} == {"reference"}  # the CPU's route
    attention = [c for c in record["checks"] if c["call"].startswith("window_attention")]
    assert len(attention) == checked and not any(c["ok"] for c in attention)
    train_batch = max(batches)
    assert any(f"({train_batch}, 8, 12, 20, 1, 16)" in f["call"] for f in record["fallbacks"])
