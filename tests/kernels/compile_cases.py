"""The compile report's cases (tests/kernels/compile_for_gpu.py): LF-VILA's layers and
Video-Swin's windows in bf16 and fp16 at head dims 32 and 64, shifted and not, through the
module's packed-qkv path; the odd cases through the functional (masked padding, fp32 with the
legacy index, no bias, pad vectors, a user's dense bias); the loss kernels; the CI subset."""

from __future__ import annotations

import dataclasses

import torch

BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32
DTYPE_NAMES = {BF16: "bf16", FP16: "fp16", FP32: "fp32"}


@dataclasses.dataclass(frozen=True)
class AttnCase:
    """One window-attention forward + backward. path "module": what `WindowAttention3D` runs on a
    GPU under autocast (one packed qkv in `dtype`, fp32 table, fp32 pad vectors where the map is
    padded: what training runs); "functional": `window_attention` with q, k, v in `dtype` (fp32
    table)."""

    size: tuple[int, int, int]  # (T, H, W) map
    heads: int
    head_dim: int
    window: tuple[int, int, int]
    shift: tuple[int, int, int]
    dtype: torch.dtype
    path: str = "module"
    pad_kv: bool = True  # functional only: pass pad vectors (else padding keys are masked)
    bias: str = "table"  # functional only: "table", "dense", "dense-broadcast" (in dtype), "none"
    clamped: str = "effective"  # functional only
    batch: int | None = None  # None: every batch of --batches; else only this one


# LF-VILA's layers (PERF.md): (T, H, W) map, heads, window; L4 is L3's shape.
LAYERS = {
    "L0": ((32, 24, 40), 4, (2, 3, 5)),
    "L1": ((32, 12, 20), 8, (4, 3, 5)),
    "L2": ((32, 6, 10), 16, (8, 3, 5)),
    "L3": ((32, 6, 10), 16, (16, 3, 5)),
    "L5": ((32, 3, 5), 32, (32, 3, 5)),  # global: clamped to the map, never shifted
}
LF_SHIFT = (0, 1, 2)
# Video-Swin-T at 32 frames, patch 2x4x4: stage 1 (16x56x56, 3 heads), windows and their shifts.
VSWIN = {"vswin8x7x7": ((8, 7, 7), (4, 3, 3)), "vswin2x7x7": ((2, 7, 7), (1, 3, 3))}


def _attn_cases() -> dict[str, AttnCase]:
    cases = {}
    for dtype in (BF16, FP16):
        for d in (32, 64):
            tail = f"{DTYPE_NAMES[dtype]}-d{d}"
            for name, (size, heads, window) in LAYERS.items():
                cases[f"{name}-{tail}"] = AttnCase(size, heads, d, window, (0, 0, 0), dtype)
                if name != "L5":
                    cases[f"{name}-shift-{tail}"] = AttnCase(
                        size, heads, d, window, LF_SHIFT, dtype
                    )
            for name, (window, shift) in VSWIN.items():
                cases[f"{name}-{tail}"] = AttnCase((16, 56, 56), 3, d, window, (0, 0, 0), dtype)
                cases[f"{name}-shift-{tail}"] = AttnCase((16, 56, 56), 3, d, window, shift, dtype)
    # odd cases, through the functional: padding keys masked at head_dim 64; fp32 with the
    # legacy clamped index at 128; no bias table at 16
    cases["pad-masked-fp16-d64"] = AttnCase(
        (9, 7, 11), 3, 64, (4, 3, 5), (1, 1, 2), FP16, "functional", pad_kv=False, batch=1
    )
    cases["legacy-fp32-d128"] = AttnCase(
        (3, 4, 4), 2, 128, (4, 3, 5), (2, 1, 2), FP32, "functional", clamped="legacy", batch=1
    )
    cases["no-bias-d16"] = AttnCase(
        (5, 6, 7), 2, 16, (1, 2, 3), (0, 1, 1), BF16, "functional", bias="none", batch=1
    )  # fmt: skip
    cases["pad-module-bf16-d32"] = AttnCase((9, 7, 11), 4, 32, (4, 3, 5), (1, 1, 2), BF16)
    # a user's dense bias in the inputs' dtype (Swin-V2's CPB, ALiBi-like terms): per head at
    # L0 (packed windows, the fused backward) and broadcast over heads at L3 (two passes)
    for name, layer, kind in (("L0", "L0", "dense"), ("L3", "L3", "dense-broadcast")):
        size, heads, window = LAYERS[layer]
        for dtype in (BF16, FP16):
            cases[f"{name}-shift-{kind}-{DTYPE_NAMES[dtype]}-d32"] = AttnCase(
                size, heads, 32, window, LF_SHIFT, dtype, "functional", pad_kv=False, bias=kind
            )  # fmt: skip
    return cases


ATTN_CASES = _attn_cases()
# contrastive cases: (N, d, dtype) for the InfoNCE, (B, M, d, dtype) for MTC
LOSS_CASES = {
    "infonce-bf16-d1024": ("infonce", (512, 1024, BF16)),
    "infonce-fp32-d72": ("infonce", (300, 72, FP32)),
    "mtc-bf16-d1024": ("mtc", (64, 4, 1024, BF16)),
    "mtc-fp16-d40": ("mtc", (9, 6, 40, FP16)),
}
ALL_CASES = [*ATTN_CASES, *LOSS_CASES]
BATCHES = tuple(range(1, 17))  # LF-VILA's per-GPU batch is 16; smaller ones in evaluation, tests
# make test: every LF-VILA layer (shifted where it is), the large Video-Swin window (at head_dim
# 64 too: the dq/bias pass in key parts), the odd cases (fp32, fp16, head dims 16/64/128, masked
# padding, no bias) and every loss kernel.
CI_CASES = [
    "L0-shift-bf16-d32", "L1-shift-bf16-d32", "L2-shift-bf16-d32", "L3-shift-bf16-d32",
    "L5-bf16-d32", "vswin8x7x7-shift-bf16-d32", "vswin8x7x7-shift-fp16-d64",
    "pad-masked-fp16-d64", "legacy-fp32-d128", "no-bias-d16", "pad-module-bf16-d32",
    "L0-shift-dense-bf16-d32", "L3-shift-dense-broadcast-fp16-d32", *LOSS_CASES,
]  # fmt: skip
