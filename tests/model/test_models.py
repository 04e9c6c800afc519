"""The LF-VILA models: full-size shapes on the meta device, tiny models forward and backward on
CPU, frozen and trainable parameters, attention backends, and SPEC Decision 1 (mtc_features)."""

from __future__ import annotations

import copy
import math
import pathlib

import pytest
import torch

from lfvila.config import load_config
from lfvila.kernels.testing import GRADIENT, OUTPUT, error_report
from lfvila.kernels.window_attn.geometry import window_geometry
from lfvila.model import LFVILA, build_model

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny.yaml"

# SPEC §4.6: (map T x H x W, window, tokens per window, windows per sample) per layer
SPEC_LAYERS = [
    ((32, 24, 40), (2, 3, 5), 30, 1024),
    ((32, 12, 20), (4, 3, 5), 60, 128),
    ((32, 6, 10), (8, 3, 5), 120, 16),
    ((32, 6, 10), (16, 3, 5), 240, 8),
    ((32, 6, 10), (16, 3, 5), 240, 8),
    ((32, 3, 5), (32, 3, 5), 480, 1),
]


def test_full_size_shapes_on_the_meta_device():
    cfg = load_config().model
    with torch.device("meta"):
        model = LFVILA(cfg)
    maps = []
    hooks = [layer.register_forward_pre_hook(lambda m, args: maps.append(tuple(args[0].shape[1:4])))
             for layer in model.video_encoder.layers]  # fmt: skip
    features = model.video_encoder(torch.empty(2, 3, 32, 192, 320, device="meta"))
    for h in hooks:
        h.remove()
    for i, (size, window, tokens, windows) in enumerate(SPEC_LAYERS):
        geom = window_geometry(maps[i], cfg.video.window_size[i])
        assert maps[i] == size and geom.window == window, f"L{i}"
        assert geom.tokens == tokens and geom.num_windows == windows, f"L{i}"
    assert window_geometry(maps[5], cfg.video.window_size[5], (0, 1, 2)).shift == (
        0,
        0,
        0,
    )  # L5 global
    assert features.final.shape == (2, 32, 3, 5, 1024) and features.local.shape == (
        2,
        32,
        3,
        5,
        1024,
    )
    assert model.video_encoder.local_layer == 3  # the tap sits before L3 (SPEC §4.7)
    tokens, clips, video = model.pool(features.final)
    assert clips.shape == (2, 4, 1024) and video.shape == (2, 1024)
    assert tokens.flatten(1, 2).shape == (2, 192, 1024)  # the cross-modal video input
    params = sum(p.numel() for p in model.video_encoder.parameters())
    assert abs(params - 88e6) / 88e6 < 0.02, params  # SPEC §4.8 estimate: about 88M
    assert all(p.device.type == "meta" for p in model.parameters())  # nothing allocated


def test_full_size_state_dict_keys_follow_spec_13():
    with torch.device("meta"):
        keys = set(LFVILA(load_config(None, ["model.stage=2"]).model).state_dict())
    expected = [
        "video_encoder.patch_embed.proj.weight",
        "video_encoder.layers.2.blocks.13.attn.relative_position_bias_table",
        "video_encoder.layers.5.blocks.1.attn.relative_position_index",
        "video_encoder.layers.4.downsample.reduction.weight",
        "video_encoder.norm_local.weight",
        "video_encoder.local_feat_proj.reduction.weight",
        "text_encoder.bert.encoder.layer.23.attention.self.query.weight",
        "text_encoder.bert.pooler.dense.weight",
        "text_encoder.cls.predictions.decoder.weight",
        "text_encoder.cls.predictions.bias",
        "text_encoder.seq_relationship.weight",
        "sent_embedding.segment_embeddings.weight",
        "video_token_pos.s_pos_embed",
        "video_local_proj.weight",
        "text_global_proj.bias",
    ]
    assert not [k for k in expected if k not in keys]
    table = "video_encoder.layers.5.blocks.0.attn.relative_position_bias_table"
    with torch.device("meta"):
        model = LFVILA(load_config().model)
    assert tuple(model.state_dict()[table].shape) == (2835, 32)


def _inputs(cfg, batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    v, t = cfg.video, cfg.text
    video = torch.randn(batch, 3, v.num_frames, *v.input_size, generator=gen)
    ids = torch.randint(1000, 2000, (batch, t.max_sentences, t.max_tokens), generator=gen)
    mask = torch.ones_like(ids)
    mask[-1, -1, t.max_tokens // 2 :] = 0  # a short sentence
    return video, ids, mask


def _run(model, cfg, batch=2):
    video, ids, mask = _inputs(cfg, batch)
    task = cfg.task
    if task == "pretrain" and cfg.stage == 1:
        return model(video, ids, mask, mtc_generator=torch.Generator().manual_seed(1))
    if task == "pretrain":
        labels = torch.full_like(ids, -100)
        labels[:, 0, 1] = ids[:, 0, 1]
        return model(video, ids, mask, mlm_labels=labels)
    if task == "retrieval":
        return model(video, ids, mask)
    if task == "multichoice_qa":
        k = cfg.num_candidates
        expand = lambda x: x[:, None].expand(batch, k, *x.shape[1:])  # noqa: E731
        span = torch.zeros(batch, cfg.video.num_frames, dtype=torch.long)
        span[:, 2:5] = 1
        return model(
            video, expand(ids), expand(mask), answer=torch.arange(batch) % k, span_labels=span
        )
    if task == "qa_classification":
        return model(video, ids, mask, labels=torch.arange(batch) % cfg.num_classes)
    return model(video, labels=torch.arange(batch) % cfg.num_classes)


# Parameters a model holds for checkpoint compatibility but its forward never reaches (frozen ones
# included): the independent expectation for `unused_parameters()`.
TAP = ("video_encoder.local_feat_proj", "video_encoder.norm_local")
STAGE2_HEADS = ("text_encoder.bert.pooler", "text_encoder.cls", "text_encoder.seq_relationship")
STAGE1_PROJ = ("video_global_proj", "text_global_proj")
LOCAL_PROJ = ("video_local_proj", "text_local_proj")
UNUSED = {
    "pretrain-1": STAGE2_HEADS,
    "pretrain-1-final": (*STAGE2_HEADS, *TAP),
    "pretrain-1-no-mtc": (*STAGE2_HEADS, *TAP, *LOCAL_PROJ),
    "pretrain-2": (*TAP, *LOCAL_PROJ, *STAGE1_PROJ),  # frozen; stage-1 features only
    "pretrain-2-no-mlm": (*TAP, *LOCAL_PROJ, *STAGE1_PROJ, "text_encoder.cls"),
    "retrieval": (*TAP, "text_encoder.bert.pooler"),
    "multichoice_qa": TAP,
    "multichoice_qa-no-span": (*TAP, "text_encoder.span_classifier"),
    "qa_classification": TAP,
    "video_classification": (*TAP, "video_frame_proj"),
}
TASKS = {
    "pretrain-1": ["model.stage=1"],
    "pretrain-1-final": ["model.stage=1", "model.mtc_features=final"],
    "pretrain-1-no-mtc": ["model.stage=1", "model.loss.use_mtc=false"],
    "pretrain-2": ["model.stage=2"],
    "pretrain-2-no-mlm": ["model.stage=2", "model.loss.use_mlm=false"],
    "retrieval": ["model.task=retrieval"],
    "multichoice_qa": ["model.task=multichoice_qa"],
    "multichoice_qa-no-span": ["model.task=multichoice_qa", "model.loss.use_span_loss=false"],
    "qa_classification": ["model.task=qa_classification", "model.num_classes=3"],
    "video_classification": ["model.task=video_classification", "model.num_classes=5"],
}


def _no_grad(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad and p.grad is None}


@pytest.mark.parametrize("name", list(TASKS))
def test_tiny_model_forward_backward(name):
    """One training step's backward reaches every trainable parameter except exactly those
    `unused_parameters()` names, which match the UNUSED table; frozen parameters get none. With
    every parameter made trainable, the unreached ones are exactly `unused_parameters()` too
    (this checks the frozen entries, stage 2's projections and tap)."""
    cfg = load_config(TINY, TASKS[name]).model
    torch.manual_seed(0)
    model = build_model(cfg).train()
    unused = model.unused_parameters()
    names = [n for n, _ in model.named_parameters()]
    prefixes = UNUSED[name]
    assert all(any(n.startswith(p + ".") for n in names) for p in prefixes), "table typo"
    assert unused == {n for n in names if n.startswith(tuple(p + "." for p in prefixes))}

    out = _run(model, cfg)
    assert out.loss.dim() == 0 and math.isfinite(out.loss.item())
    out.loss.backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert _no_grad(model) == unused & trainable
    for param_name, p in model.named_parameters():
        if not p.requires_grad:
            assert p.grad is None, f"frozen {param_name} got a gradient"
        elif p.grad is not None:
            assert torch.isfinite(p.grad).all(), f"{param_name}: non-finite gradient"

    for p in model.parameters():
        p.grad = None
        p.requires_grad_(True)
    _run(model, cfg).loss.backward()
    assert _no_grad(model) == unused


def test_stage2_freezes_what_spec_lists_and_keeps_the_swin_in_eval():
    cfg = load_config(TINY, ["model.stage=2"]).model
    model = LFVILA(cfg).train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    frozen_prefixes = (
        "video_encoder.",
        "video_local_proj",
        "text_local_proj",
        "video_global_proj",
        "text_global_proj",
        "sent_embedding.",
        "text_encoder.bert.embeddings.",
    )
    assert not [n for n in trainable if n.startswith(frozen_prefixes)]
    for i in range(cfg.text.num_hidden_layers):
        layer_params = [
            n
            for n, _ in model.named_parameters()
            if n.startswith(f"text_encoder.bert.encoder.layer.{i}.")
        ]
        assert all((n in trainable) == (i >= cfg.text.stage1_layers) for n in layer_params), i
    heads = {
        "text_encoder.seq_relationship.weight",
        "text_encoder.cls.predictions.decoder.weight",
        "video_token_pos.t_pos_embed",
        "text_encoder.bert.pooler.dense.weight",
    }
    assert heads <= trainable
    assert not model.video_encoder.training and model.text_encoder.training  # text dropout stays on


def test_stage2_vtm_only_without_mlm():
    """Decision 4b: stage 2 also runs with use_mlm false (the original crashed)."""
    cfg = load_config(TINY, ["model.stage=2", "model.loss.use_mlm=false"]).model
    out = _run(LFVILA(cfg), cfg)
    assert out.mlm is None and torch.isfinite(out.vtm)
    torch.testing.assert_close(out.loss, cfg.loss.vtm_weight * out.vtm)


def test_mtc_features_local_and_final():
    """Decision 1: 'local' takes MTC clip features from the tap (whose parameters then get
    gradients); 'final' pools them from the final map, whose clip means form the video feature."""
    grads, losses = {}, {}
    for mode in ("local", "final"):
        cfg = load_config(
            TINY, [f"model.mtc_features={mode}", "model.video.drop_path_rate=0.0"]
        ).model
        torch.manual_seed(0)
        model = LFVILA(cfg).eval()
        out = _run(model, cfg)
        out.loss.backward()
        grads[mode] = model.video_encoder.local_feat_proj.reduction.weight.grad
        losses[mode] = (out.vpc.detach(), out.mtc.detach())
    assert grads["local"] is not None and grads["local"].abs().sum() > 0
    assert grads["final"] is None
    torch.testing.assert_close(losses["local"][0], losses["final"][0])  # same VPC
    assert not torch.allclose(losses["local"][1], losses["final"][1])  # different MTC

    captured = {}
    cfg = load_config(TINY, ["model.mtc_features=final"]).model
    torch.manual_seed(0)
    model = LFVILA(cfg).eval()
    model.video_local_proj.register_forward_pre_hook(
        lambda m, a: captured.setdefault("clips", a[0])
    )
    model.video_global_proj.register_forward_pre_hook(
        lambda m, a: captured.setdefault("video", a[0])
    )
    _run(model, cfg)
    torch.testing.assert_close(captured["clips"].mean(1), captured["video"])


def test_tiny_model_triton_backend_equals_reference():
    """The whole tiny stage-1 model with window attention on the Triton kernels (interpreter on
    CPU) against the reference backend, loss and every parameter gradient (error-ratio rule,
    truth = the reference model in fp64)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    base = ["model.video.drop_path_rate=0.0"]
    indices = dict(
        keys=torch.tensor([[0, 1]]), values=torch.tensor([[1, 0]]), other=torch.tensor([1])
    )
    indices = {k: v.to(device) for k, v in indices.items()}
    results = {}
    runs = (
        ("truth", "reference", torch.float64),
        ("pt", "reference", torch.float32),
        ("out", "triton", torch.float32),
    )
    for name, backend, dtype in runs:
        cfg = load_config(TINY, [*base, f"model.video.attention_backend={backend}"]).model
        torch.manual_seed(0)
        model = LFVILA(cfg).to(device, dtype).eval()
        video, ids, mask = (x.to(device) for x in _inputs(cfg, batch=1))
        out = model(video.to(dtype), ids, mask, mtc_indices=indices)
        out.loss.backward()
        results[name] = (
            out.loss.detach(),
            {n: p.grad for n, p in model.named_parameters() if p.grad is not None},
        )
    ok, msg = error_report(
        results["out"][0].reshape(1),
        results["truth"][0].reshape(1),
        results["pt"][0].reshape(1),
        **OUTPUT,
    )
    assert ok, f"loss: {msg}"
    failures = []
    for name, grad in results["out"][1].items():
        ok, msg = error_report(grad, results["truth"][1][name], results["pt"][1][name], **GRADIENT)
        if not ok:
            failures.append(f"{name}: {msg}")
    assert not failures, "\n".join(failures[:5])
    assert "video_encoder.layers.0.blocks.1.attn.relative_position_bias_table" in results["out"][1]


def test_stage1_features_equal_the_forward_and_carry_to_stage2():
    """`video_features` / `text_features` are the stage-1 forward's features; a stage-2 model
    loaded with the stage-1 weights (the shared keys) gives the same ones."""
    from lfvila.model.convert import load_weights

    cfg1 = load_config(TINY).model
    torch.manual_seed(0)
    stage1 = LFVILA(cfg1).eval()
    video, ids, mask = _inputs(cfg1)
    ids[0, -1], mask[0, -1] = 0, 0  # an absent sentence
    with torch.no_grad():
        out = stage1(video, ids, mask, mtc_generator=torch.Generator().manual_seed(1))
        v1, t1 = stage1.video_features(video), stage1.text_features(ids, mask)
    assert v1.shape == (2, cfg1.projection_dim) and t1.shape == (2, cfg1.projection_dim)
    torch.testing.assert_close(v1, out.video_feat, rtol=0, atol=0)
    torch.testing.assert_close(t1, out.text_feat, rtol=0, atol=0)
    torch.testing.assert_close(v1.norm(dim=-1), torch.ones(2))

    torch.manual_seed(1)  # different random init, overwritten by the stage-1 weights
    stage2 = LFVILA(load_config(TINY, ["model.stage=2"]).model).eval()
    report = load_weights(stage2, stage1.state_dict(), strict=False)
    assert not report.unexpected and not report.mismatched
    with torch.no_grad():
        v2, t2 = stage2.video_features(video), stage2.text_features(ids, mask)
    torch.testing.assert_close(v2, v1, rtol=0, atol=0)
    torch.testing.assert_close(t2, t1, rtol=0, atol=0)


def test_model_copies_keep_shared_mlm_bias():
    model = LFVILA(load_config(TINY, ["model.stage=2"]).model)
    head = model.text_encoder.cls.predictions
    assert head.decoder.bias is head.bias
    clone = copy.deepcopy(model).text_encoder.cls.predictions
    assert clone.decoder.bias is clone.bias


def test_flops_match_the_spec_estimate():
    from lfvila.model.flops import flops_per_sample, peak_tflops, video_encoder_flops

    cfg = load_config().model
    video = video_encoder_flops(cfg)
    assert abs(video - 0.31e12) / 0.31e12 < 0.05, video  # SPEC §14.3: about 0.31 TFLOPs per sample
    assert flops_per_sample(cfg) > video
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.0 and peak_tflops("Some GPU") is None


def test_activation_checkpointing_gives_the_same_gradients():
    grads = []
    for layers in ("[]", "[0,2,5]"):
        cfg = load_config(
            TINY, [f"model.video.checkpoint_layers={layers}", "model.video.drop_path_rate=0.0"]
        ).model
        torch.manual_seed(0)
        model = LFVILA(cfg).train()
        _run(model, cfg).loss.backward()
        grads.append(model.video_encoder.layers[0].blocks[0].mlp.fc1.weight.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_kernels_backend_overrides_auto():
    cfg = load_config(TINY, ["kernels.backend=reference"])
    model = build_model(cfg)
    assert model.kernel_backend == "reference"
    assert model.video_encoder.layers[0].blocks[0].attn.backend == "reference"
