"""The kernel self-check (lfvila.kernels.self_check, the first-call check, fallbacks): a correct
kernel passes, a wrong one (a patched launcher) is caught, named, and either stops the run or is
replaced by the reference. CPU: the Triton interpreter, fp32."""

from __future__ import annotations

import logging
import pathlib

import pytest
import torch

from lfvila.kernels import (
    KernelMismatchError,
    WindowAttention3D,
    _self_check,
    check_calls,
    record_fused_calls,
    self_check,
    set_first_call_check,
    window_attention,
    window_attention_ref,
)
from lfvila.kernels._backend import interpreter_enabled
from lfvila.kernels.window_attn import triton_impl

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(
    DEVICE == "cpu" and not interpreter_enabled(), reason="needs a GPU or the Triton interpreter"
)


@pytest.fixture(autouse=True)
def _fresh_state():
    _self_check.reset()
    set_first_call_check(None)
    yield
    _self_check.reset()
    set_first_call_check(None)


def _wrong_dq(monkeypatch, factor=1.05):
    """A backward whose dq is off by a few percent (of the kind issue 18 met on the GPU)."""
    bwd = triton_impl.bwd
    calls = []

    def wrong(*args, **kwargs):
        calls.append(1)
        dq, *rest = bwd(*args, **kwargs)
        return (dq * factor, *rest)

    monkeypatch.setattr(triton_impl, "bwd", wrong)
    return calls


def _module(shift=(0, 1, 2)):
    torch.manual_seed(0)
    module = WindowAttention3D(32, (2, 3, 5), 2, backend="triton").to(DEVICE)
    x = torch.randn(2, 4, 6, 10, 32, device=DEVICE)
    return module, x


class _Shifted(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.attn, _ = _module()

    def forward(self, x):
        return self.attn(x, (0, 1, 2))


def test_self_check_passes_a_correct_kernel_and_names_the_module():
    model = _Shifted().to(DEVICE)
    x = torch.randn(2, 4, 6, 10, 32, device=DEVICE)
    results = self_check(model, x)
    assert len(results) == 1 and results[0].ok, results[0].message
    call = results[0].call
    assert results[0].modules == ["attn"]
    assert call.op == "window_attention" and call.shape == (2, 4, 6, 10, 2, 16)
    assert call.param("shift") == (0, 1, 2) and call.param("table_dtype") == torch.float32
    assert "attn: window_attention (2, 4, 6, 10, 2, 16) float32" in results[0].summary()
    assert 0 < results[0].worst <= 1


def test_self_check_catches_a_wrong_kernel_and_raises_naming_it(monkeypatch):
    _wrong_dq(monkeypatch)
    model = _Shifted().to(DEVICE)
    x = torch.randn(2, 4, 6, 10, 32, device=DEVICE)
    with pytest.raises(KernelMismatchError) as info:
        self_check(model, x)
    text = str(info.value)
    assert "attn: window_attention (2, 4, 6, 10, 2, 16) float32" in text
    assert "dq: max|out-truth|" in text and "kernels.on_mismatch=fallback" in text
    assert "dk:" not in text  # only what is wrong is named


def test_fallback_sends_the_call_to_the_reference(monkeypatch, caplog):
    calls = _wrong_dq(monkeypatch)
    model = _Shifted().to(DEVICE)
    x = torch.randn(2, 4, 6, 10, 32, device=DEVICE)
    with caplog.at_level(logging.WARNING, logger="lfvila.kernels"):
        results = self_check(model, x, on_mismatch="fallback")
    assert not results[0].ok and "on_mismatch=fallback" in caplog.text
    assert len(_self_check.fallback_calls()) == 1
    # later calls of that kind, at any batch, run the reference: the kernel is not launched
    launched = len(calls)
    xr = torch.randn(3, 4, 6, 10, 32, device=DEVICE, requires_grad=True)
    out = model(xr)
    out.sum().backward()
    assert len(calls) == launched
    with torch.no_grad():
        ref = model.attn.__class__(32, (2, 3, 5), 2, backend="reference").to(DEVICE)
        ref.load_state_dict(model.attn.state_dict())
        torch.testing.assert_close(out, ref(xr, (0, 1, 2)), rtol=0, atol=0)
    # an unshifted call is another kind: still fused
    model.attn(xr, (0, 0, 0)).sum().backward()
    assert len(calls) == launched + 1


def test_first_call_check_runs_once_per_kind(monkeypatch):
    checked = []
    real = _self_check.check_call

    def counting(call, *args, **kwargs):
        checked.append(call)
        return real(call, *args, **kwargs)

    monkeypatch.setattr(_self_check, "check_call", counting)
    set_first_call_check("error")
    module, x = _module()
    for _ in range(2):
        module(x, (0, 1, 2))
    module(x[:1], (0, 1, 2))  # another batch: the same kind
    assert len(checked) == 1
    module(x, (0, 0, 0))
    assert len(checked) == 2


def test_first_call_check_error_and_fallback(monkeypatch):
    _wrong_dq(monkeypatch)
    module, x = _module()
    set_first_call_check("error")
    with pytest.raises(KernelMismatchError, match="dq"):
        module(x, (0, 1, 2))
    _self_check.reset()
    set_first_call_check("fallback")
    q, k, v = (torch.randn(1, 4, 6, 10, 2, 16, device=DEVICE) for _ in range(3))
    table = torch.randn(135, 2, device=DEVICE)
    out = window_attention(q, k, v, (2, 3, 5), (0, 1, 2), table, backend="triton")
    ref = window_attention_ref(q, k, v, (2, 3, 5), (0, 1, 2), table)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_record_and_check_the_loss_kernels():
    from lfvila.kernels import contrastive_loss, mtc_loss

    a = torch.nn.functional.normalize(torch.randn(6, 32, device=DEVICE), dim=-1)
    feats = torch.nn.functional.normalize(torch.randn(3, 4, 32, device=DEVICE), dim=-1)
    with record_fused_calls() as calls:
        contrastive_loss(a, a.flip(0), backend="triton")
        mtc_loss(feats, feats.flip(1), generator=torch.Generator().manual_seed(0), backend="triton")
    assert [c.op for c, _ in calls] == ["contrastive_loss", "mtc_loss"]
    results = check_calls(calls)
    assert all(r.ok for r in results), [r.message for r in results]


def test_env_variable_turns_the_first_call_check_on(monkeypatch, caplog):
    monkeypatch.setenv("LFVILA_KERNEL_SELF_CHECK", "fallback")
    assert _self_check._env_mode() == "fallback"
    monkeypatch.setenv("LFVILA_KERNEL_SELF_CHECK", "bogus")
    with caplog.at_level(logging.WARNING, logger="lfvila.kernels"):
        assert _self_check._env_mode() is None
    assert "is not one of" in caplog.text


@pytest.mark.gpu
def test_self_check_passes_on_lfvila_stage1_video_encoder_gpu():
    """Every fused call of the full-size stage-1 video encoder under bf16 autocast (the packed
    qkv path, fp32 tables, shifted and not, every layer) matches the reference on this GPU."""
    from lfvila.config import load_config
    from lfvila.model.video_swin import VideoEncoder

    root = pathlib.Path(__file__).resolve().parents[2]
    cfg = load_config(root / "configs" / "pretrain_stage1.yaml").model.video
    torch.manual_seed(0)
    encoder = VideoEncoder(cfg).cuda().eval()
    video = torch.randn(2, 3, cfg.num_frames, *cfg.input_size, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        results = self_check(encoder, video, False, on_mismatch=None)
    assert len(results) >= 10  # L0-L5, shifted and not (L5 is never shifted; L3 == L4)
    bad = [r.summary() + "\n    " + r.message for r in results if not r.ok]
    assert not bad, "\n".join(bad)
