"""The Swin-family patches on a GPU (skipped without CUDA; benchmarks/gpu_check.sh --swin runs
them): the compiled Triton kernels inside each library's models in bf16 and fp16, logits and
every gradient by the error-ratio rule against the unpatched model (fp64 truth, the unpatched
model in the same dtype as the yardstick); the small awkward models of the CPU tests and the
real Swin-T / Swin-V2-T."""

from __future__ import annotations

import pytest
import torch

from .swin_models import CASES, compare

pytestmark = pytest.mark.gpu
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("case", CASES)
def test_swin_patch_gpu_small_models(case, dtype):
    """Padding, a map shorter than its window, shifted and unshifted blocks, batch 2."""
    compare(case, "triton", DTYPES[dtype], "cuda")


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("case", ["timm-v1", "timm-v2", "tv-v1", "tv-v2", "hf-v1-sdpa", "hf-v2"])
def test_swin_patch_gpu_tiny_models(case, dtype):
    """Swin-T 224 and Swin-V2-T 256 of each library, batch 2."""
    compare(case, "triton", DTYPES[dtype], "cuda", full=True)


def test_swin_patch_gpu_video_swin3d_t():
    compare("tv-3d", "triton", torch.bfloat16, "cuda", full=True)
