"""lfvila.kernels: fused kernels for LF-VILA, each with a pure-PyTorch reference.

Needs only torch (and einops); Triton and the compiled `lfvila._C` are imported where used, and a
missing one becomes a reason string (see `can_run_triton`), never an ImportError at import time.

Public API:
    window_attention(q, k, v, window_size, shift_size, rel_pos_bias, scale, pad_kv, mask_value,
        backend, ..., attn_bias) -> Tensor
                                    fused 3D (shifted) window attention with an additive bias: a
                                    relative-position table or any dense (heads or 1, N, N) bias
                                    (backends triton, sdpa, reference; auto by a measured table)
    explain_window_backend(q, window_size, shift_size, backend) -> (backend, reason)
                                    what window_attention would run for q, and why
    window_attention_qkv(qkv, ...)  the same on a packed (B, T, H, W, 3, heads, D) qkv, whose
                                    gradient the kernels write in place (the module's path)
    window_attention_ref(...)       its pure-PyTorch specification
    WindowAttention3D               drop-in Video-Swin attention module on the fused path
    patch_timm_swin(model, backend) timm's swin_* / swinv2_* on the fused kernel, in place
    patch_torchvision_swin(model, backend)
                                    torchvision's swin_t/s/b, swin_v2_t/s/b, swin3d_t/s/b
    patch_torchvision_swin3d(model) the same, the video models' attention only
    patch_hf_swin(model, backend)   Hugging Face Swin* / Swinv2* models
    unpatch_swin(model)             undo any of these (weights and state-dict keys never change)
    contrastive_loss(a, b, temperature, logit_scale, process_group, backend) -> Tensor
                                    LF-VILA's global symmetric InfoNCE, tiled (never N x N)
    mtc_loss(clip_feats, sent_feats, ...) -> Tensor
                                    the Multimodal Temporal Contrastive loss (SPEC.md 7.4)
    self_check(module, *example_args, on_mismatch) -> [CheckResult]
                                    every fused call `module` makes, checked against the
                                    reference on this machine, forward and backward
    set_first_call_check(mode)      the same check on each call signature's first use: "auto"
                                    (the default: "fallback" on CUDA, off on the CPU), "off",
                                    "error" or "fallback"; or LFVILA_KERNEL_SELF_CHECK
    KernelMismatchError             what a failed check raises in "error" mode
"""

from ._self_check import (
    CheckResult,
    FusedCall,
    KernelMismatchError,
    check_calls,
    record_fused_calls,
    self_check,
    set_first_call_check,
)
from .contrastive import (
    ContrastiveLoss,
    MTCLoss,
    contrastive_loss,
    contrastive_loss_ref,
    gather_batch,
    mtc_labels,
    mtc_loss,
    mtc_loss_ref,
    sample_mtc_indices,
)
from .window_attn import (
    WindowAttention3D,
    can_run_cuda,
    can_run_sdpa,
    can_run_triton,
    explain_window_backend,
    patch_hf_swin,
    patch_timm_swin,
    patch_torchvision_swin,
    patch_torchvision_swin3d,
    relative_position_index,
    unpatch_swin,
    window_attention,
    window_attention_qkv,
    window_attention_ref,
)

__all__ = [
    "CheckResult",
    "ContrastiveLoss",
    "FusedCall",
    "KernelMismatchError",
    "MTCLoss",
    "WindowAttention3D",
    "can_run_cuda",
    "can_run_sdpa",
    "can_run_triton",
    "check_calls",
    "contrastive_loss",
    "contrastive_loss_ref",
    "explain_window_backend",
    "gather_batch",
    "mtc_labels",
    "mtc_loss",
    "mtc_loss_ref",
    "patch_hf_swin",
    "patch_timm_swin",
    "patch_torchvision_swin",
    "patch_torchvision_swin3d",
    "record_fused_calls",
    "relative_position_index",
    "sample_mtc_indices",
    "self_check",
    "set_first_call_check",
    "unpatch_swin",
    "window_attention",
    "window_attention_qkv",
    "window_attention_ref",
]
