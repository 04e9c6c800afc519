"""Drop-in patches of the Swin family onto lfvila's window-attention kernel, one call per library:
timm (`swin_*`, `swinv2_*`), torchvision (`swin_t/s/b`, `swin_v2_t/s/b`, `swin3d_*`) and Hugging
Face transformers (`Swin*`, `Swinv2*`). Each patches a model in place and returns it, with the
same parameters, buffers and outputs; `unpatch_swin` restores it. The libraries are imported only
when a patch is applied."""

from .common import unpatch_swin
from .hf_swin import patch_hf_swin
from .timm_swin import patch_timm_swin
from .torchvision_swin import patch_torchvision_swin, patch_torchvision_swin3d

__all__ = [
    "patch_hf_swin",
    "patch_timm_swin",
    "patch_torchvision_swin",
    "patch_torchvision_swin3d",
    "unpatch_swin",
]
