"""Regional `torch.compile` (issue 20): each video block and each text layer compiled on its own,
in place, as torchtitan compiles transformer blocks.

Why regional: a block is the unit that repeats (24 Swin blocks, 12-24 BERT layers), so Dynamo
traces and Inductor compiles one graph per distinct block shape, not the whole model: minutes
become seconds, and the model's control flow (clip-local tap, split text encoder, losses, MTC
sampling) stays eager. Inside a block, LayerNorm, the MLP's GELU, the residual adds and DropPath
fuse into the matmuls' neighbours; window attention stays one opaque custom op
(`lfvila::window_attn_fwd_qkv` and its backward, with fake implementations), so the fused kernels
run as they are. `module.compile()` keeps every parameter name: checkpoints, the optimiser and DDP
see the same module.

`train.compile` (None: on for CUDA, off on the CPU, where Inductor's C++ compile costs more than
it saves at the tiny config) decides whether `lfvila pretrain` / `finetune` call
`compile_blocks`.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

logger = logging.getLogger("lfvila")


def _block_types() -> dict[str, tuple[type, ...]]:
    from transformers.models.bert.modeling_bert import BertLayer

    from ..model.video_swin import SwinBlock3D

    return {"video": (SwinBlock3D,), "text": (BertLayer,)}


def compile_enabled(setting: bool | None, device: torch.device) -> bool:
    """`train.compile`: True / False, or None for on where it pays (CUDA)."""
    return device.type == "cuda" if setting is None else bool(setting)


def compile_blocks(
    model: nn.Module, backend: str = "inductor", fullgraph: bool = False, mode: str | None = None
) -> dict[str, int]:
    """Compile every video block and text layer of `model` in place; {"video": n, "text": m}.

    `fullgraph=True` makes any graph break an error (the tests use it: the blocks have none).
    Shapes are static (`dynamic=False`): each block sees one shape per phase, and evaluation's
    batch recompiles once instead of every step paying for symbolic shapes.
    """
    counts = {kind: 0 for kind in _block_types()}
    for _, module in model.named_modules():
        for kind, types in _block_types().items():
            if isinstance(module, types):
                module.compile(backend=backend, fullgraph=fullgraph, dynamic=False, mode=mode)
                counts[kind] += 1
    return counts
