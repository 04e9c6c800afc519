"""3D (shifted) window attention with an additive bias (a relative-position table or any dense
bias): reference, Triton kernels, dispatch, the self-check of a fused call, and the Swin-family
patches (timm, torchvision, transformers)."""

from . import check  # noqa: F401  (registers the window-attention self-check)
from .dispatch import (
    PRIORITY,
    can_run_cuda,
    can_run_sdpa,
    can_run_triton,
    explain_window_backend,
    window_attention,
    window_attention_qkv,
)
from .module import WindowAttention3D
from .patches import (
    patch_hf_swin,
    patch_timm_swin,
    patch_torchvision_swin,
    patch_torchvision_swin3d,
    unpatch_swin,
)
from .reference import relative_position_index, window_attention_lse_ref, window_attention_ref

__all__ = [
    "PRIORITY",
    "WindowAttention3D",
    "can_run_cuda",
    "can_run_sdpa",
    "can_run_triton",
    "explain_window_backend",
    "patch_hf_swin",
    "patch_timm_swin",
    "patch_torchvision_swin",
    "patch_torchvision_swin3d",
    "relative_position_index",
    "window_attention",
    "window_attention_lse_ref",
    "window_attention_qkv",
    "window_attention_ref",
    "unpatch_swin",
]
