"""GPU checks of the full-size model (skipped without CUDA; benchmarks/gpu_check.sh runs them)."""

from __future__ import annotations

import pathlib

import pytest
import torch

from lfvila.config import load_config
from lfvila.kernels.testing import OUTPUT, error_report
from lfvila.model import build_model

pytestmark = pytest.mark.gpu
ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_full_size_stage1_fused_loss_matches_reference():
    """Full-size stage 1, batch 2: the bf16 loss on the fused kernels is as close to the fp32
    reference loss as the bf16 reference is (error-ratio rule), and gradients are finite."""
    gen = torch.Generator().manual_seed(0)
    video = torch.randn(2, 3, 32, 192, 320, generator=gen).cuda()
    ids = torch.randint(1000, 30000, (2, 4, 50), generator=gen).cuda()
    mask = torch.ones_like(ids)
    indices = {
        "keys": torch.tensor([[0, 1], [2, 3]]).cuda(),
        "values": torch.tensor([[1, 3], [0, 2]]).cuda(),
        "other": torch.tensor([2, 1]).cuda(),
    }
    losses = {}
    for name, backend, autocast in (
        ("truth", "reference", False),
        ("pt", "reference", True),
        ("out", "triton", True),
    ):
        cfg = load_config(
            ROOT / "configs" / "pretrain_stage1.yaml",
            [f"kernels.backend={backend}", "model.video.drop_path_rate=0.0"],
        )
        torch.manual_seed(0)
        model = build_model(cfg).cuda().eval()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            out = model(video, ids, mask, mtc_indices=indices)
        out.loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        losses[name] = out.loss.detach().float().reshape(1)
        del model
    ok, msg = error_report(losses["out"], losses["truth"], losses["pt"], **OUTPUT)
    assert ok, msg


def test_flash_attention_text_encoder_matches_eager_with_absent_sentences():
    """flash_attention_2 (all-zero mask rows given as all ones) against eager's additive -10000
    mask: sentence [CLS] and paragraph features of a batch with an absent and a short sentence,
    bf16 flash vs the fp32 eager truth within 2x the bf16 eager error (error-ratio rule)."""
    import importlib.util

    if importlib.util.find_spec("flash_attn") is None:
        pytest.skip("flash_attn is not installed")
    tiny = ROOT / "configs" / "tiny.yaml"
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 2000, (3, 2, 8), generator=gen)
    mask = torch.ones_like(ids)
    ids[0, -1], mask[0, -1] = 0, 0  # absent
    mask[1, 0, 4:] = 0  # short
    ids, mask = ids.cuda(), mask.cuda()
    state, results = None, {}
    for name, impl, dtype in (("truth", "eager", torch.float32), ("pt", "eager", torch.bfloat16),
                              ("out", "flash_attention_2", torch.bfloat16)):  # fmt: skip
        cfg = load_config(tiny, ["model.task=retrieval", f"model.text.attn_implementation={impl}"])
        model = build_model(cfg)
        state = state or model.state_dict()
        model.load_state_dict(state)
        model = model.cuda().to(dtype).eval()
        with torch.no_grad():
            text = model.encode_text(ids, mask)
        results[name] = torch.cat([text.sentences.flatten(1), text.paragraph], 1).float()
    ok, msg = error_report(results["out"], results["truth"], results["pt"], **OUTPUT)
    assert ok, msg
