"""Public `contrastive_loss` and `mtc_loss`: validation, backend choice, distributed gather, and
the thin `ContrastiveLoss` / `MTCLoss` modules.

Backends: "reference" (pure PyTorch: chunked InfoNCE, explicit MTC gathers), "triton" (fused
kernels; on CPU only under TRITON_INTERPRET=1), "auto" (Triton on a GPU when it can run, else the
reference; `LFVILA_KERNEL_BACKEND` overrides). There is no "cuda" backend for these losses.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import _self_check
from .._dispatch import choose_backend, triton_device_reasons
from .distributed import gather_batch
from .function import InfoNCEFunction, MTCFunction
from .reference import contrastive_loss_ref, mtc_loss_ref, sample_mtc_indices

PRIORITY = ("triton", "reference")
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def can_run_triton_contrastive(a: torch.Tensor, b: torch.Tensor) -> list[str]:
    """Reasons the fused InfoNCE cannot run on these inputs; empty when it can."""
    reasons = triton_device_reasons(a, DTYPES)
    if a.dtype != b.dtype:
        reasons.append(f"a is {a.dtype} but b is {b.dtype}")
    return reasons


def can_run_triton_mtc(clip_feats: torch.Tensor, sent_feats: torch.Tensor) -> list[str]:
    """Reasons the fused MTC loss cannot run on these inputs; empty when it can."""
    reasons = triton_device_reasons(clip_feats, DTYPES)
    if clip_feats.dtype != sent_feats.dtype:
        reasons.append(f"clip_feats is {clip_feats.dtype} but sent_feats is {sent_feats.dtype}")
    return reasons


def _check_temperature(temperature) -> None:
    if (
        not isinstance(temperature, (int, float))
        or not math.isfinite(temperature)
        or temperature <= 0
    ):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")


def _check_features(name: str, x, ndim: int, shape_text: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != ndim:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must have shape {shape_text}, got {got}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor, got {x.dtype}")
    if any(s == 0 for s in x.shape):
        raise ValueError(f"{name} is empty: shape {tuple(x.shape)} (N = 0 has no loss)")


def contrastive_loss(
    a: torch.Tensor,
    b: torch.Tensor,
    temperature: float = 0.05,
    logit_scale: torch.Tensor | None = None,
    process_group=None,
    backend: str = "auto",
) -> torch.Tensor:
    """LF-VILA's global video-paragraph loss: symmetric InfoNCE over the (global) batch.

    Args:
        a, b: (N, d) features, any float dtype (fp32 accumulation), row i of a paired with row i
            of b; assumed L2-normalised by the caller (not re-normalised).
        temperature: logits are a·bᵀ / temperature (LF-VILA: 0.05, fixed).
        logit_scale: optional 0-dim tensor; logits are a·bᵀ · exp(logit_scale) instead, and it
            receives its gradient (CLIP-style learnable temperature).
        process_group: when given, a and b are all-gathered from every rank of the group (same N
            on every rank) and the loss covers the global batch; each rank's input gradient is
            the single-process gradient of that loss on the concatenated batch. Under DDP or
            DeepSpeed, which average parameter gradients over ranks, back-propagate
            `loss * world_size` to get the single-process parameter gradient (LF-VILA's
            SyncFunction applied that factor inside its backward).
        backend: "auto", "triton" or "reference".

    Returns:
        0-dim fp32 loss: CE(a·bᵀ, diag) + CE(b·aᵀ, diag), each averaged over rows, summed.
        Neither backend materialises the N×N logits. The Triton forward and backward are
        deterministic (bitwise, run to run) for a given N and GPU model: the forward's column
        split count follows the SM count. Neither backend reads a device value on the host,
        so without `process_group` (or with CUDA tensors, whose gather trusts equal sizes) the
        loss and its backward can be captured in a CUDA graph.
    """
    _check_features("a", a, 2, "(N, d)")
    _check_features("b", b, 2, "(N, d)")
    if a.shape != b.shape:
        raise ValueError(f"b must have a's shape {tuple(a.shape)}, got {tuple(b.shape)}")
    if b.device != a.device:
        raise ValueError(f"b is on {b.device} but a is on {a.device}")
    if logit_scale is None:
        _check_temperature(temperature)
    elif not isinstance(logit_scale, torch.Tensor) or logit_scale.numel() != 1:
        raise ValueError(f"logit_scale must be a 1-element tensor, got {logit_scale!r}")
    elif logit_scale.device != a.device or not logit_scale.is_floating_point():
        raise ValueError(f"logit_scale must be a float tensor on {a.device}")
    if process_group is not None:
        a, b = gather_batch(a, process_group), gather_batch(b, process_group)
    checks = {"triton": lambda: can_run_triton_contrastive(a, b), "reference": lambda: []}
    chosen = choose_backend("contrastive_loss", backend, a, checks, PRIORITY)
    if chosen != "reference" and logit_scale is None:
        params = dict(temperature=float(temperature))
        chosen = _self_check.verdict(
            "contrastive_loss", a.shape, a.dtype, a.device, params, chosen=chosen
        )
    if chosen == "reference":
        return contrastive_loss_ref(a, b, temperature, logit_scale)
    if logit_scale is None:
        log_scale = torch.full((), -math.log(temperature), dtype=torch.float32, device=a.device)
    else:
        log_scale = logit_scale.reshape(())
    a = a if a.stride(-1) == 1 else a.contiguous()
    b = b if b.stride(-1) == 1 else b.contiguous()
    return InfoNCEFunction.apply(a, b, log_scale)


def _check_indices(indices, batch: int, clips: int, num_key: int, num_value: int, device):
    """Shapes and dtypes always; values (range, repeats) on the host when the indices are CPU
    tensors (free), with device-side asserts when they are CUDA tensors: no host sync, so the
    loss can be captured in a CUDA graph (a failed assert surfaces at the next synchronisation
    as a CUDA device-side assert)."""
    expected = {"keys": (batch, num_key), "values": (batch, num_value), "other": (batch,)}
    if not isinstance(indices, dict) or set(indices) != set(expected):
        raise ValueError(
            "indices must be dict(keys=(B, num_key), values=(B, num_value), other=(B,))"
        )
    out = {}
    for name, shape in expected.items():
        x = indices[name]
        if not isinstance(x, torch.Tensor) or tuple(x.shape) != shape or x.dtype != torch.int64:
            got = (tuple(x.shape), x.dtype) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"indices['{name}'] must be int64 of shape {shape}, got {got}")
        in_range = ((x >= -1) & (x < clips)).all()
        unique = None
        if name != "other":  # keys / values: distinct positions within a sample
            present = x >= 0
            dup = (x[:, :, None] == x[:, None, :]) & present[:, :, None] & present[:, None, :]
            unique = (dup.sum((1, 2)) <= present.sum(1)).all()
        range_text = f"outside [0, {clips}) (-1 marks an absent entry)"
        dup_text = f"indices['{name}'] repeats a position within a sample"
        if x.device.type == "cpu":
            if x.numel() and not in_range:
                raise ValueError(
                    f"indices['{name}'] holds {int(x.min())}..{int(x.max())}, {range_text}"
                )
            if unique is not None and not unique:
                raise ValueError(dup_text)
        else:
            torch._assert_async(in_range, f"indices['{name}'] holds values {range_text}")
            if unique is not None:
                torch._assert_async(unique, dup_text)
        out[name] = x.to(device)
    return out


def mtc_loss(
    clip_feats: torch.Tensor,
    sent_feats: torch.Tensor,
    temperature: float = 0.05,
    num_key: int = 2,
    num_value: int = 2,
    num_other_neg: int = 3,
    valid: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    indices: dict[str, torch.Tensor] | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """LF-VILA's Multimodal Temporal Contrastive loss (SPEC.md §7.4, Decision 3).

    Per sample: keys = first `num_key` of a random permutation of the M positions, values =
    first `num_value` of a second, other = first entry of a third. Each key query (a clip for
    clip->sentence, a sentence for sentence->clip) scores its sample's value items, then the
    `other` items of samples b, b-1, ..., b-(num_other_neg-1) (mod B); its label is the value
    nearest in time to the key, and ties are ignored. Both directions: mean CE over counted rows
    each, summed (a direction with no counted row contributes 0).

    Args:
        clip_feats, sent_feats: (B, M, d), clip m aligned with sentence m; normalised by the
            caller. Pass features already gathered across ranks (SPEC §7.2) and the same
            indices (or an identically seeded generator) on every rank.
        temperature: τ of the logits (LF-VILA: 0.05).
        num_key, num_value, num_other_neg: LF-VILA: 2, 2, 3.
        valid: (B, M) bool of real clips (an extension): invalid positions are never keys,
            values or negatives; a sample with too few valid positions contributes no rows.
        generator: torch.Generator for the sampling (reproducible); ignored with `indices`.
        indices: dict(keys (B, num_key), values (B, num_value), other (B,)) int64 in [0, M)
            (-1: absent); bypasses sampling. Shapes are checked always; values on the host for
            CPU indices (ValueError) and by device-side asserts for CUDA indices (no sync).
            Sampling runs on the host, so a CUDA graph must be given CUDA `indices`.
        backend: "auto", "triton" or "reference". The Triton backward uses float atomics (not
            bitwise deterministic).

    Returns:
        0-dim loss (fp32; fp64 for fp64 inputs on the reference).
    """
    _check_features("clip_feats", clip_feats, 3, "(B, M, d)")
    _check_features("sent_feats", sent_feats, 3, "(B, M, d)")
    if sent_feats.shape != clip_feats.shape:
        raise ValueError(
            f"sent_feats must have clip_feats' shape {tuple(clip_feats.shape)}, "
            f"got {tuple(sent_feats.shape)}"
        )
    if sent_feats.device != clip_feats.device:
        raise ValueError(
            f"sent_feats is on {sent_feats.device} but clip_feats is on {clip_feats.device}"
        )
    _check_temperature(temperature)
    batch, clips, _ = clip_feats.shape
    for name, value, low in (
        ("num_key", num_key, 1),
        ("num_value", num_value, 1),
        ("num_other_neg", num_other_neg, 0),
    ):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if max(num_key, num_value) > clips:
        raise ValueError(f"num_key {num_key} and num_value {num_value} must be <= M = {clips}")
    if valid is not None and (
        not isinstance(valid, torch.Tensor) or tuple(valid.shape) != (batch, clips)
    ):
        got = tuple(valid.shape) if isinstance(valid, torch.Tensor) else type(valid).__name__
        raise ValueError(f"valid must be a (B, M) = ({batch}, {clips}) bool tensor, got {got}")
    if indices is None:
        indices = sample_mtc_indices(
            batch, clips, num_key, num_value, valid, generator, clip_feats.device
        )
    else:
        indices = _check_indices(indices, batch, clips, num_key, num_value, clip_feats.device)
    checks = {"triton": lambda: can_run_triton_mtc(clip_feats, sent_feats), "reference": lambda: []}
    chosen = choose_backend("mtc_loss", backend, clip_feats, checks, PRIORITY)
    if chosen != "reference":
        params = dict(
            temperature=float(temperature), num_key=num_key, num_value=num_value,
            num_other_neg=num_other_neg,
        )  # fmt: skip
        chosen = _self_check.verdict(
            "mtc_loss", clip_feats.shape, clip_feats.dtype, clip_feats.device, params,
            chosen=chosen,
        )  # fmt: skip
    if chosen == "reference":
        return mtc_loss_ref(clip_feats, sent_feats, temperature, indices, num_other_neg)
    feats = torch.stack([clip_feats, sent_feats])  # (2, B, M, d): both directions in one launch
    return MTCFunction.apply(
        feats,
        indices["keys"],
        indices["values"],
        indices["other"],
        float(temperature),
        num_other_neg,
    )


class ContrastiveLoss(nn.Module):
    """`contrastive_loss` as a module; `learnable_scale=True` owns a CLIP-style logit_scale
    parameter initialised to log(1 / temperature)."""

    def __init__(self, temperature: float = 0.05, learnable_scale: bool = False, process_group=None,
                 backend: str = "auto"):  # fmt: skip
        super().__init__()
        _check_temperature(temperature)
        self.temperature, self.process_group, self.backend = temperature, process_group, backend
        init = torch.tensor(-math.log(temperature))
        self.logit_scale = nn.Parameter(init) if learnable_scale else None

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return contrastive_loss(
            a, b, self.temperature, self.logit_scale, self.process_group, self.backend
        )


class MTCLoss(nn.Module):
    """`mtc_loss` as a module with LF-VILA's settings as defaults."""

    def __init__(self, temperature: float = 0.05, num_key: int = 2, num_value: int = 2,
                 num_other_neg: int = 3, backend: str = "auto"):  # fmt: skip
        super().__init__()
        _check_temperature(temperature)
        self.temperature, self.backend = temperature, backend
        self.num_key, self.num_value, self.num_other_neg = num_key, num_value, num_other_neg

    def forward(self, clip_feats, sent_feats, valid=None, generator=None, indices=None):
        return mtc_loss(
            clip_feats, sent_feats, self.temperature, self.num_key, self.num_value,
            self.num_other_neg, valid, generator, indices, self.backend,
        )  # fmt: skip
