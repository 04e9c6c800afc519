"""The run's kernel self-check (lfvila/training/kernel_check.py) end to end: `lfvila pretrain`
with the Triton kernels (the interpreter here) checks every fused call of the model before its
first step; a wrong kernel (a patched launcher) stops the run naming the layer, shape and error,
or with kernels.on_mismatch=fallback runs those layers on the reference and says so."""

from __future__ import annotations

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


def test_mismatch_stops_the_run_naming_the_layer(tiny_config, tmp_path, monkeypatch, capsys):
    _patch_bwd(monkeypatch)
    out = tmp_path / "run"
    code = main(["pretrain", "--config", str(tiny_config), "--output-dir", str(out), *FUSED])
    err = capsys.readouterr().err
    assert code == 3, err
    assert "fused kernel mismatch on this machine" in err
    assert "video_encoder.layers.0.blocks.1.attn: window_attention (1, 8, 12, 20, 1, 16)" in err
    assert "dq: max|out-truth|" in err and "kernels.on_mismatch=fallback" in err
    assert not (out / "checkpoints").exists() and "Traceback" not in err


def test_mismatch_with_fallback_runs_those_layers_on_the_reference(
    tiny_config, tmp_path, monkeypatch
):
    launches = _patch_bwd(monkeypatch)
    out = tmp_path / "run"
    args = ["pretrain", "--config", str(tiny_config), "--output-dir", str(out), *FUSED]
    assert main([*args, "kernels.on_mismatch=fallback"]) == 0
    log = (out / "log.txt").read_text()
    assert "disagrees with the reference" in log and "on_mismatch=fallback" in log
    assert "run on the reference backend (kernels.on_mismatch=fallback)" in log
    checked = len(launches)
    assert checked > 0  # the check ran the (wrong) fused backward, the step did not
    assert (out / "model.safetensors").is_file()
    assert len(_self_check.fallback_calls()) == checked
