"""The Swin-family patches (timm, torchvision, transformers): the patched model is the same model,
by the error-ratio rule, on the reference backend and on the Triton kernels (interpreter on the
CPU); its state dict is unchanged and round-trips; unpatch and pickling work; a layer the kernel
cannot serve keeps its own attention with one log line."""

from __future__ import annotations

import copy
import logging
import pickle
import subprocess
import sys

import pytest
import torch

from lfvila.kernels import patch_timm_swin, patch_torchvision_swin, unpatch_swin
from lfvila.kernels.window_attn.patches import common, torchvision_swin

from . import swin_models
from .swin_models import CASES, build, compare, logits, patch

LOGGER = common.__name__


@pytest.fixture
def fused_calls(monkeypatch):
    """Counts the patches' kernel calls (both entry points)."""
    calls = []
    for module, name in ((common, "window_attention"), (common, "window_attention_qkv"),
                         (torchvision_swin, "attention_block")):  # fmt: skip
        real = getattr(module, name)

        def spy(*args, _real=real, **kwargs):
            calls.append(kwargs)
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    return calls


@pytest.mark.parametrize("case", CASES)
def test_swin_patch_equals_unpatched_reference(case, fused_calls, caplog):
    """fp32, batch 2, reference backend: logits and every gradient."""
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        compare(case, "reference")
    assert len(fused_calls) == swin_models.ATTENTION_LAYERS  # every layer took the fused path
    assert not caplog.records, caplog.text


@pytest.mark.parametrize("case", CASES)
def test_swin_patch_equals_unpatched_triton(case, caplog):
    """The Triton kernels inside each whole network (the interpreter on the CPU), batch 1."""
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        compare(case, "triton", batch=1)
    assert not caplog.records, caplog.text


@pytest.mark.parametrize("case", ["timm-v1", "timm-v2", "tv-v1", "tv-v2", "hf-v1-sdpa", "hf-v2"])
def test_swin_patch_shift_mask_value_matters(case, monkeypatch):
    """One shifted layer on an 8 x 8 map whose tokens are +u or -u by the parity of their
    pre-shift region, with keys opposed to queries and large logits: every pair within a region
    scores about -100, some pairs across regions +100, so the output depends on the exact mask
    value (-100; HF Swinv2 adds it twice: -200). fp64, reference backend, to 1e-9; the same
    with a mask of -1e9 differs."""
    layer, run = swin_models.shifted_layer(case)
    layer = layer.double()
    with torch.no_grad():
        for module in layer.modules():
            q, k = _query_key_weights(module)
            if q is None:
                continue
            for bias in _query_key_biases(module):
                bias.zero_()
            logit_scale = getattr(module, "logit_scale", None)
            if logit_scale is None:  # V1: large dot products
                k.copy_(-64.0 * q)
            else:  # V2: cosine attention at the largest logit scale (clamped to log(100))
                k.copy_(-q)
                logit_scale.fill_(10.0)
    rolled = (torch.arange(8) - 2) % 8
    region = (rolled >= 4).long() + (rolled >= 6).long()
    sign = (-1.0) ** (region[:, None] + region[None, :])
    x = sign[None, :, :, None] * torch.randn(32, dtype=torch.float64)  # (1, 8, 8, 32)
    expected = run(layer, x)
    patched = patch(case, copy.deepcopy(layer), "reference")
    torch.testing.assert_close(run(patched, x), expected, atol=1e-9, rtol=1e-9)
    real = common.window_attention

    def minus_infinity(*args, **kwargs):
        return real(*args, **dict(kwargs, mask_value=-1e9))

    monkeypatch.setattr(common, "window_attention", minus_infinity)
    monkeypatch.setattr(common, "window_attention_qkv", minus_infinity)
    assert (run(patched, x) - expected).abs().max() > 1e-3


def _query_key_biases(module):
    for name in ("q_proj", "k_proj", "query", "key"):
        if getattr(getattr(module, name, None), "bias", None) is not None:
            yield getattr(module, name).bias
    if getattr(module, "q_bias", None) is not None:
        yield module.q_bias
    elif hasattr(module, "qkv") and module.qkv.bias is not None:
        yield module.qkv.bias[: 2 * module.qkv.bias.numel() // 3]


def _query_key_weights(module):
    """(q, k) weights of a module's attention (thirds of a packed qkv), or (None, None)."""
    for q_name, k_name in (("q_proj", "k_proj"), ("query", "key")):
        if hasattr(module, q_name) and hasattr(module, k_name):
            return getattr(module, q_name).weight, getattr(module, k_name).weight
    if hasattr(module, "qkv") and hasattr(module, "num_heads"):
        q, k, _ = module.qkv.weight.chunk(3)
        return q, k
    return None, None


@pytest.mark.parametrize("case", ["timm-v2", "tv-v1", "hf-v1-eager"])
def test_swin_patch_keeps_state_dict_and_unpatches(case):
    """Names and values unchanged; each loads the other's state dict; unpatch restores the
    classes and the bitwise outputs; patching twice only updates the backend."""
    model, x = build(case)
    expected = logits(model, x)
    patched = patch(case, copy.deepcopy(model), "reference")
    assert list(patched.state_dict()) == list(model.state_dict())
    assert dict(patched.named_parameters()).keys() == dict(model.named_parameters()).keys()
    fused = [m for m in patched.modules() if type(m).__name__.startswith("Fused")]
    assert len(fused) == swin_models.ATTENTION_LAYERS
    # other weights (as if trained) into the patched model, and from it into an unpatched one
    other, _ = build(case, seed=5)
    patched.load_state_dict(other.state_dict())
    torch.testing.assert_close(logits(patched, x), logits(other, x), atol=1e-5, rtol=1e-5)
    plain, _ = build(case)
    plain.load_state_dict(patched.state_dict())
    assert torch.equal(logits(plain, x), logits(other, x))
    patch(case, patched, "triton")
    assert {m.__dict__[common.ATTR].backend for m in fused} == {"triton"}
    patched.load_state_dict(model.state_dict())
    unpatch_swin(patched)
    assert not any(type(m).__name__.startswith("Fused") for m in patched.modules())
    assert not any(common.ATTR in m.__dict__ for m in patched.modules())
    assert torch.equal(logits(patched, x), expected)


@pytest.mark.parametrize("case", ["timm-v1", "tv-v2", "hf-v2"])
def test_swin_patched_model_pickles(case):
    model, x = build(case)
    patched = patch(case, model, "reference")
    clone = pickle.loads(pickle.dumps(patched))
    assert type(clone) is type(patched)
    assert sum(type(m).__name__.startswith("Fused") for m in clone.modules()) == 4
    torch.testing.assert_close(logits(clone, x), logits(patched, x), atol=0, rtol=0)


@pytest.mark.parametrize("case", ["timm-v1", "tv-v2", "hf-v1-eager", "hf-v2"])
def test_swin_patch_keeps_own_attention_with_dropout_in_training(case, caplog):
    """Attention dropout in training: the original attention, same random stream, one log
    line per layer; in eval the fused path."""
    model, x = build(case, attn_drop=0.25)
    patched = patch(case, copy.deepcopy(model), "reference")
    model.train(), patched.train()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for _ in range(2):  # twice: still one line per layer
            torch.manual_seed(3)
            expected = logits(model, x)
            torch.manual_seed(3)
            assert torch.equal(logits(patched, x), expected)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == swin_models.ATTENTION_LAYERS, lines
    assert all("keeps its own attention: attention dropout 0.25 in training" in s for s in lines)


def test_swin_patch_refuses_head_dim_outside_the_kernel(caplog):
    model, x = build("tv-v1", head_dim=8)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        patched = patch_torchvision_swin(copy.deepcopy(model), backend="triton")
    assert not any(type(m).__name__.startswith("Fused") for m in patched.modules())
    assert len(caplog.records) == swin_models.ATTENTION_LAYERS
    assert "head_dim 8 not in (16, 32, 64, 128)" in caplog.records[0].getMessage()
    assert torch.equal(logits(patched, x), logits(model, x))


def test_timm_patch_refuses_a_foreign_mask_and_a_shifted_single_window(caplog):
    """A static attn_mask that is not Swin's keeps the block's own attention (logged at patch
    time); `always_partition` shifting a map within one window is logged at the call."""
    pytest.importorskip("timm")
    from timm.models.swin_transformer import SwinTransformer

    model, x = build("timm-v1")
    block = model.layers[0].blocks[1]
    block.attn_mask = block.attn_mask * 2
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        patched = patch_timm_swin(copy.deepcopy(model), backend="reference")
    assert "attn_mask is not Swin's -100 shift mask" in caplog.text
    assert sum(type(m).__name__.startswith("Fused") for m in patched.modules()) == 3
    torch.testing.assert_close(logits(patched, x), logits(model, x), atol=1e-5, rtol=1e-5)

    caplog.clear()
    small = SwinTransformer(img_size=16, patch_size=4, embed_dim=32, depths=(2,), num_heads=(2,),
                            window_size=4, always_partition=True).eval()  # fmt: skip
    x = torch.randn(1, 3, 16, 16)  # a 4 x 4 map: one window, shifted by 2
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        patched = patch_timm_swin(copy.deepcopy(small), backend="reference")
        out = patched(x)
    assert "shift 2 on a map of 4 (axis 0) within one window of 4" in caplog.text
    torch.testing.assert_close(out, small(x), atol=1e-5, rtol=1e-5)


def test_hf_patch_keeps_own_attention_when_weights_are_requested(caplog):
    model, x = build("hf-v2")
    patched = patch("hf-v2", copy.deepcopy(model), "reference")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        out = patched(x, output_attentions=True)
    expected = model(x, output_attentions=True)
    assert "attention weights are requested" in caplog.text
    assert len(out.attentions) == len(expected.attentions) == 2
    torch.testing.assert_close(out.logits, expected.logits, atol=1e-5, rtol=1e-5)


def test_swin_patch_rejects_models_and_backends():
    with pytest.raises(ValueError, match="no torchvision ShiftedWindowAttention"):
        patch_torchvision_swin(torch.nn.Linear(2, 2))
    model, _ = build("tv-v1")
    with pytest.raises(ValueError, match="backend must be one of"):
        patch_torchvision_swin(model, backend="fast")


def test_import_needs_no_swin_library():
    """`import lfvila.kernels` imports none of timm, torchvision, transformers."""
    code = (
        "import sys, lfvila.kernels; "
        "print([m for m in ('timm', 'torchvision', 'transformers') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


@pytest.mark.parametrize("case", ["timm-v1", "timm-v2", "tv-v1", "tv-v2", "hf-v1-sdpa", "hf-v2"])
def test_swin_patch_equals_unpatched_real_configs(case):
    """Swin-T at 224 and Swin-V2-T at 256 of each library (random weights), batch 1, fp32,
    reference backend: the real windows, heads and maps (Swin-V2-T's 8 x 8 windows on 64 ... 8)."""
    compare(case, "reference", batch=1, full=True)


# hf-v1-sdpa: transformers' eager attention takes its softmax in fp32 even for fp64 inputs
@pytest.mark.parametrize("case", ["timm-v1", "timm-v2", "tv-v1", "tv-v2", "hf-v1-sdpa", "hf-v2"])
def test_swin_patch_foreign_index_goes_as_a_dense_bias(case, fused_calls):
    """A relative_position_index that is not Swin's (here reversed): the patch hands the layer's
    own gather to the kernel as `attn_bias`. fp64, reference backend: logits and gradients."""
    model, x = build(case)
    model = model.double()
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("relative_position_index"):
                buffer.copy_(buffer.flatten().flip(0).view(buffer.shape))
    patched = patch(case, copy.deepcopy(model), "reference")
    x = x.double()
    out, expected = logits(patched, x), logits(model, x)
    assert all(
        call["attn_bias"] is not None and call["rel_pos_bias"] is None for call in fused_calls
    )
    torch.testing.assert_close(out, expected, atol=1e-9, rtol=1e-9)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, list(patched.parameters()), g, allow_unused=True)
    want = torch.autograd.grad(expected, list(model.parameters()), g, allow_unused=True)
    scale = max(b.abs().max().item() for b in want if b is not None)
    for (name, _), a, b in zip(model.named_parameters(), got, want):
        assert (a is None) == (b is None), name
        if b is not None:  # atol from the model's largest gradient: HF Swin's key bias is ~0
            torch.testing.assert_close(a, b, atol=1e-9 * scale, rtol=1e-7, msg=name)


def test_swin_patch_on_the_meta_device():
    """A model built on the meta device (weights loaded later) patches: the index and mask
    checks are left to the library's own construction."""
    pytest.importorskip("timm")
    pytest.importorskip("transformers")
    import timm
    import torchvision
    import transformers

    from lfvila.kernels import patch_hf_swin

    with torch.device("meta"):
        models = [
            (patch_timm_swin, timm.create_model("swinv2_tiny_window8_256")),
            (patch_torchvision_swin, torchvision.models.swin_t()),
            (patch_hf_swin, transformers.SwinModel(transformers.SwinConfig())),
        ]
    for patch_fn, model in models:
        patch_fn(model)
        assert sum(type(m).__name__.startswith("Fused") for m in model.modules()) == 12
