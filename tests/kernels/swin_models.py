"""Small Swin-family models of each library for the patch tests (CPU and GPU): awkward maps on
purpose (windows that do not divide them, a map shorter than its window, shifted and unshifted
blocks), with biases and logit scales drawn large enough to matter, and the run that compares a
patched model with its unpatched self by the error-ratio rule."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from lfvila.kernels import (
    patch_hf_swin,
    patch_timm_swin,
    patch_torchvision_swin,
    patch_torchvision_swin3d,
)
from lfvila.kernels.testing import GRADIENT, assert_error_ratio, error_report, no_tf32

# Every 2D case has maps (10, 6) then (5, 3) with window 4 (HF: (10, 10) then (5, 5): its
# SwinLayer shrinks a window to a map's short side and fails). transformers' eager attention
# takes its softmax in fp32 even in an fp64 model, so "hf-v1-eager"'s truth is only fp32-exact
# there: "hf-v1-sdpa" is the case with an fp64 truth.
CASES = ("timm-v1", "timm-v2", "tv-v1", "tv-v2", "hf-v1-eager", "hf-v1-sdpa", "hf-v2", "tv-3d")
LIBRARY = {"timm": "timm", "tv": "torchvision", "hf": "transformers"}
PATCH = {"timm": patch_timm_swin, "tv": patch_torchvision_swin, "hf": patch_hf_swin}
ATTENTION_LAYERS = 4  # per 2D model: 2 stages x 2 blocks


def build(case: str, head_dim: int = 16, attn_drop: float = 0.0, seed: int = 0):
    """(model, input) of a case, fp32, eval mode. `head_dim` 16 unless a test wants another."""
    pytest.importorskip(LIBRARY[case.split("-")[0]])
    torch.manual_seed(seed)
    heads = 2
    dim = heads * head_dim
    if case.startswith("timm"):
        from timm.models.swin_transformer import SwinTransformer
        from timm.models.swin_transformer_v2 import SwinTransformerV2

        cls = SwinTransformer if case == "timm-v1" else SwinTransformerV2
        model = cls(img_size=(40, 24), patch_size=4, embed_dim=dim, depths=(2, 2),
                    num_heads=(heads, 2 * heads), window_size=4, num_classes=5,
                    attn_drop_rate=attn_drop)  # fmt: skip
        x = torch.randn(2, 3, 40, 24)
    elif case in ("tv-v1", "tv-v2"):
        from torchvision.models import swin_transformer as tv

        extra = {} if case == "tv-v1" else dict(
            block=tv.SwinTransformerBlockV2, downsample_layer=tv.PatchMergingV2
        )  # fmt: skip
        model = tv.SwinTransformer(patch_size=[4, 4], embed_dim=dim, depths=[2, 2],
                                   num_heads=[heads, 2 * heads], window_size=[4, 4],
                                   num_classes=5, attention_dropout=attn_drop, **extra)  # fmt: skip
        x = torch.randn(2, 3, 40, 24)
    elif case == "tv-3d":
        from torchvision.models.video.swin_transformer import SwinTransformer3d

        model = SwinTransformer3d(patch_size=[2, 4, 4], embed_dim=dim, depths=[2, 2],
                                  num_heads=[heads, 2 * heads], window_size=[2, 4, 4],
                                  num_classes=5, attention_dropout=attn_drop)  # fmt: skip
        x = torch.randn(2, 3, 6, 24, 20)  # maps (3, 6, 5), (3, 3, 3): padding and clamping
    else:
        import transformers as hf

        v2 = case == "hf-v2"
        config_cls = hf.Swinv2Config if v2 else hf.SwinConfig
        config = config_cls(image_size=40, patch_size=4, embed_dim=dim, depths=[2, 2],
                            num_heads=[heads, 2 * heads], window_size=4, num_labels=5,
                            attention_probs_dropout_prob=attn_drop)  # fmt: skip
        model_cls = hf.Swinv2ForImageClassification if v2 else hf.SwinForImageClassification
        impl = "sdpa" if case.endswith("sdpa") else "eager"
        model = model_cls._from_config(config, attn_implementation=impl)
        x = torch.randn(2, 3, 40, 40)
    _spice(model)
    return model.eval(), x


def build_full(case: str):
    """(model, input): the real tiny models, random weights (nothing downloads): Swin-T at 224
    (window 7), Swin-V2-T at 256 (window 8), video Swin-T at 16 x 112 x 112; batch 2."""
    pytest.importorskip(LIBRARY[case.split("-")[0]])
    torch.manual_seed(0)
    size = 256 if case.endswith("v2") else 224
    if case.startswith("timm"):
        import timm

        name = "swin_tiny_patch4_window7_224" if case == "timm-v1" else "swinv2_tiny_window8_256"
        model = timm.create_model(name, pretrained=False)
    elif case == "tv-3d":
        from torchvision.models.video import swin3d_t

        model, size = swin3d_t(), None
    elif case.startswith("tv"):
        from torchvision import models

        model = models.swin_t() if case == "tv-v1" else models.swin_v2_t()
    else:
        import transformers as hf

        if case == "hf-v2":
            config = hf.Swinv2Config(image_size=256, window_size=8)
            model = hf.Swinv2ForImageClassification._from_config(config)
        else:
            impl = "sdpa" if case.endswith("sdpa") else "eager"
            model = hf.SwinForImageClassification._from_config(
                hf.SwinConfig(), attn_implementation=impl
            )
    _spice(model)
    x = torch.randn(2, 3, 16, 112, 112) if size is None else torch.randn(2, 3, size, size)
    return model.eval(), x


def shifted_layer(case: str):
    """(layer, run): one shifted 2D layer (dim 32, 2 heads, window 4, shift 2, an 8 x 8 map) and
    `run(layer, x)`: x (1, 8, 8, 32) -> its attention output (HF: the whole layer's)."""
    pytest.importorskip(LIBRARY[case.split("-")[0]])
    torch.manual_seed(0)
    if case in ("timm-v1", "timm-v2"):
        from timm.models.swin_transformer import SwinTransformerBlock
        from timm.models.swin_transformer_v2 import SwinTransformerV2Block

        cls = SwinTransformerBlock if case == "timm-v1" else SwinTransformerV2Block
        layer = cls(32, input_resolution=(8, 8), num_heads=2, window_size=4, shift_size=2)
        return layer.eval(), lambda m, x: m._attn(x)
    if case in ("tv-v1", "tv-v2"):
        from torchvision.models import swin_transformer as tv

        cls = tv.ShiftedWindowAttention if case == "tv-v1" else tv.ShiftedWindowAttentionV2
        return cls(32, [4, 4], [2, 2], 2).eval(), lambda m, x: m(x)
    import transformers as hf
    from transformers.models.swin.modeling_swin import SwinLayer
    from transformers.models.swinv2.modeling_swinv2 import Swinv2Layer

    v2 = case == "hf-v2"
    config = (hf.Swinv2Config if v2 else hf.SwinConfig)(window_size=4, embed_dim=32)
    config._attn_implementation = "sdpa"  # eager: an fp32 softmax even for fp64 inputs
    layer = (Swinv2Layer if v2 else SwinLayer)(config, 32, (8, 8), 2, shift_size=2)
    return layer.eval(), lambda m, x: m(x.reshape(1, 64, 32), (8, 8))[0]


def _spice(model: torch.nn.Module) -> None:
    """Tables and qkv biases of unit scale, logit scales up to the clamp: make them matter."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "relative_position_bias_table" in name or name.endswith(
                ("qkv.bias", "q_bias", "v_bias", "proj.bias", "query.bias", "value.bias")
            ):
                p.copy_(torch.randn(p.shape, generator=gen))
            elif name.endswith("logit_scale"):
                p.uniform_(math.log(2.0), math.log(150.0), generator=gen)


def patch(case: str, model, backend: str):
    family = case.split("-")[0]
    if case == "tv-3d":
        return patch_torchvision_swin3d(model, backend=backend)
    return PATCH[family](model, backend=backend)


def logits(model, x):
    out = model(x)
    return out if isinstance(out, torch.Tensor) else out.logits


def compare(
    case: str,
    backend: str,
    dtype=torch.float32,
    device="cpu",
    batch: int | None = None,
    full: bool = False,
):
    """Patched vs unpatched, by the error-ratio rule: truth = the unpatched model in fp64, pt =
    unpatched in `dtype`, out = patched in `dtype`; logits, the input's and every parameter's
    gradient under one random upstream gradient. Returns the patched model."""
    model, x = build_full(case) if full else build(case)
    if batch is not None:
        x = x[:batch]
    x = x.to(device)
    runs = {}
    for key, m_dtype, patched in (("truth", torch.float64, False), ("pt", dtype, False),
                                  ("out", dtype, True)):  # fmt: skip
        m = copy.deepcopy(model).to(device=device, dtype=m_dtype)
        if patched:
            m = patch(case, m, backend)
        xi = x.to(m_dtype).requires_grad_()
        with no_tf32():
            runs[key] = (m, xi, logits(m, xi))
    g = torch.randn_like(runs["truth"][2])
    grads = {}
    for key, (m, xi, out) in runs.items():
        params = [p for _, p in m.named_parameters()]
        got = torch.autograd.grad(out, [xi, *params], g.to(out.dtype), allow_unused=True)
        grads[key] = [torch.zeros_like(p) if d is None else d for d, p in zip(got, [xi, *params])]
    out, truth, pt = (runs[k][2] for k in ("out", "truth", "pt"))
    assert_error_ratio(out, truth, pt, f"{case} logits")
    names = ["input", *(n for n, _ in model.named_parameters())]
    scale = max(t.abs().max().item() for t in grads["truth"])
    failures = []
    for name, o, t, p in zip(names, grads["out"], grads["truth"], grads["pt"]):
        # A gradient that vanishes in exact arithmetic (HF Swin's key bias: softmax ignores a
        # shift shared by a row's scores) is rounding noise in all three runs: it is held to 8
        # ulps of `dtype` at the model's largest gradient instead of to its own noise.
        if t.abs().max().item() <= 1e-9 * scale:
            bound = 8 * torch.finfo(dtype).eps * scale
            ok = (o.double() - t).abs().max().item() <= bound
            msg = f"vanishing gradient: max |out| {o.abs().max().item():.3e} > {bound:.3e}"
        else:
            ok, msg = error_report(o, t, p, **GRADIENT)
        if not ok:
            failures.append(f"{case} grad of {name}: {msg}")
    assert not failures, "\n".join(failures)
    return runs["out"][0]
