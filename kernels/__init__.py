"""lfvila.kernels: fused kernels for LF-VILA, each with a pure-PyTorch reference.

Needs only torch (and einops); Triton and the compiled `lfvila._C` are imported where used, and a
missing one becomes a reason string (see `can_run_triton`), never an ImportError at import time.

Public API:
    window_attention(q, k, v, window_size, shift_size, rel_pos_bias, scale, pad_kv, mask_value,
        backend) -> Tensor          fused 3D (shifted) window attention with relative position bias
    window_attention_ref(...)       its pure-PyTorch specification
    WindowAttention3D               drop-in Video-Swin attention module on the fused path
    patch_torchvision_swin3d(model) run torchvision's video Swin attention on the fused path
"""

from .window_attn import (
    WindowAttention3D,
    can_run_cuda,
    can_run_triton,
    patch_torchvision_swin3d,
    relative_position_index,
    window_attention,
    window_attention_ref,
)

__all__ = [
    "WindowAttention3D",
    "can_run_cuda",
    "can_run_triton",
    "patch_torchvision_swin3d",
    "relative_position_index",
    "window_attention",
    "window_attention_ref",
]
