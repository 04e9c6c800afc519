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
