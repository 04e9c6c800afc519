"""What every Swin-family patch shares: the class swap and its undo, the log line of a layer that
keeps its own attention, and one 2D Swin layer's window attention on `window_attention`.

A patch swaps a module's class for a subclass that overrides only its forward (or timm's
`_attn`): parameters, buffers and state-dict keys stay the module's own, so a model trained
patched loads unpatched and the reverse. The subclasses are created when a patch is applied (the
libraries are imported there, never at `import lfvila.kernels`) and are found again by name
(`fused_class`), so a patched model pickles. Per patched module, `_lfvila_patch` holds a
`PatchState`; `unpatch_swin` restores the original class and removes it.

A layer we cannot serve keeps its own attention, with one WARNING line per layer and reason
(`keep_own`): never a silent change.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..._backend import BACKENDS
from ..dispatch import HEAD_DIMS, window_attention, window_attention_qkv
from ..reference import relative_position_index

log = logging.getLogger(__name__)
ATTR = "_lfvila_patch"
_CLASSES: dict[tuple[str, str], type] = {}


@dataclasses.dataclass
class PatchState:
    """What a patched module carries besides its own attributes."""

    family: str
    """"timm", "torchvision" or "transformers": the log lines' prefix."""
    name: str
    """The module's qualified name in the patched model."""
    original: type
    """The class to restore."""
    backend: str
    """window-attention backend of this module's calls."""
    use_table: bool = True
    """The module's index buffer is Swin's: its table goes to the kernel (a deterministic fold),
    else its own gather goes as a dense bias."""
    logged: set = dataclasses.field(default_factory=set)
    """Reasons already logged for this module (one line each)."""


def fused_class(original: type, module_name: str, members: dict) -> type:
    """`original` with `members` overridden, named Fused<original>; created once per process and
    findable as `module_name.Fused<original>` (the family module's `__getattr__`: pickling)."""
    name = f"Fused{original.__name__}"
    key = (module_name, name)
    if key not in _CLASSES:
        doc = f"{original.__module__}.{original.__qualname__} on lfvila's window-attention kernel."
        cls = type(name, (original,), {"__doc__": doc, **members})
        cls.__module__, cls.__qualname__ = module_name, name
        _CLASSES[key] = cls
    return _CLASSES[key]


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def patch_model(
    model: nn.Module,
    family: str,
    classes: dict[type, type],
    backend: str,
    reasons: Callable[[nn.Module], list[str]],
    describe: str,
    uses_table: Callable[[nn.Module], bool] = lambda module: True,
) -> nn.Module:
    """Swap every module whose class is a key of `classes` (exactly: a subclass may have changed
    the forward) for its fused class, unless `reasons(module)` says why not (logged).
    `uses_table(module)`: whether its table and Swin's index can go to the kernel as such.

    Raises ValueError when `model` holds no such module. Patching twice updates the backend.
    """
    check_backend(backend)
    found = 0
    for name, module in model.named_modules():
        state = getattr(module, ATTR, None)
        if state is not None and state.original in classes:
            state.backend, found = backend, found + 1
            continue
        fused = classes.get(type(module))
        if fused is None:
            continue
        found += 1
        why = reasons(module)
        if why:
            log.warning("%s %s '%s' keeps its own attention: %s", family,
                        type(module).__name__, name, "; ".join(why))  # fmt: skip
            continue
        state = PatchState(family, name, type(module), backend, uses_table(module))
        module.__dict__[ATTR] = state
        module.__class__ = fused
    if found == 0:
        raise ValueError(f"model contains no {describe} to patch")
    return model


def unpatch_swin(model: nn.Module) -> nn.Module:
    """Undo any of the Swin patches on `model` in place: every patched module gets its original
    class back (its parameters and buffers were never touched). Returns `model`."""
    for module in model.modules():
        state = module.__dict__.pop(ATTR, None)
        if state is not None:
            module.__class__ = state.original
    return model


def keep_own(module: nn.Module, reason: str) -> None:
    """Log, once per module and reason, that this call runs the module's own attention."""
    state = getattr(module, ATTR)
    if reason not in state.logged:
        state.logged.add(reason)
        log.warning("%s %s '%s' keeps its own attention: %s", state.family,
                    state.original.__name__, state.name, reason)  # fmt: skip


def head_dim_reasons(head_dim: int) -> list[str]:
    return [] if head_dim in HEAD_DIMS else [f"head_dim {head_dim} not in {HEAD_DIMS}"]


def dropout_reason(p: float, training: bool) -> str | None:
    if training and p > 0.0:
        return f"attention dropout {p} in training is not fused"
    return None


def is_swin_index(index: torch.Tensor, window: tuple[int, int]) -> bool:
    """Whether a module's (N, N) or flat relative_position_index is Swin's for `window` (a model
    on the meta device, not yet loaded, builds it from the window: assumed so)."""
    if index.is_meta:
        return True
    ours = relative_position_index((1, *window))
    return index.numel() == ours.numel() and torch.equal(index.reshape(ours.shape).cpu(), ours)


def map_reason(
    size: tuple[int, int], window: tuple[int, int], shift: tuple[int, int]
) -> str | None:
    """The kernel's geometry shifts only axes longer than the window (Swin's own rule). A model
    that shifts a map padded to a single window on an axis keeps its own attention."""
    for axis, (s, w, sh) in enumerate(zip(size, window, shift)):
        if sh > 0 and s <= w:
            return f"shift {sh} on a map of {s} (axis {axis}) within one window of {w}"
    return None


def _explicit_axes(size, window, shift, roll_first: bool) -> list[int]:
    """Axes padded in Python rather than by the kernel: a map shorter than its window (the
    kernel would shrink the window to the map; these models pad it instead), and with
    `roll_first` (timm: roll, then pad) a shifted axis that needs padding."""
    axes = []
    for axis, (s, w, sh) in enumerate(zip(size, window, shift)):
        if s < w or (roll_first and sh > 0 and s % w):
            axes.append(axis)
    return axes


def _to_explicit_map(x, axes, window, shift, roll_first):
    """(B, H, W, C) -> the map the kernel sees on `axes`: padded at the end with zeros to window
    multiples (so padding tokens are projections of 0), after a roll by -shift where the model
    rolls before padding, and rolled back by +shift over the padded size (the kernel rolls)."""
    for axis in axes:
        dim, s, w, sh = axis + 1, x.shape[axis + 1], window[axis], shift[axis]
        pad = [0, 0] * (3 - dim) + [0, math.ceil(s / w) * w - s]
        if roll_first and sh:
            x = F.pad(x.roll(-sh, dim), pad).roll(sh, dim)
        else:
            x = F.pad(x, pad)
    return x


def _from_explicit_map(o, axes, size, shift, roll_first):
    for axis in axes:
        dim, s, sh = axis + 1, size[axis], shift[axis]
        if roll_first and sh:
            o = o.roll(-sh, dim).narrow(dim, 0, s).roll(sh, dim)
        else:
            o = o.narrow(dim, 0, s)
    return o


def v2_table(cpb_mlp: nn.Module, coords: torch.Tensor, heads: int) -> torch.Tensor:
    """Swin-V2's continuous position bias as a ((2Wh-1)(2Ww-1), heads) table: 16 * sigmoid of
    the MLP over the log-spaced coordinates (elementwise, so applied before the gather)."""
    return 16 * torch.sigmoid(cpb_mlp(coords).view(-1, heads))


def v2_logit_scale(logit_scale: torch.Tensor, heads: int) -> torch.Tensor:
    """Swin-V2's per-head cosine-attention scale, exp(min(logit_scale, log 100)): (heads,)."""
    return torch.clamp(logit_scale, max=math.log(100.0)).exp().view(heads)


def table_or_dense(table: torch.Tensor, index: torch.Tensor, window, heads: int, use_table: bool):
    """(table, None) where the module's index is Swin's (the kernel gathers it, the fold is
    deterministic), else (None, its own gather as a (heads, N, N) dense bias)."""
    if use_table:
        return table, None
    n = window[0] * window[1]
    dense = table[index.reshape(-1)].view(n, n, heads).permute(2, 0, 1).contiguous()
    return None, dense


def swin_window_attention(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    heads: int,
    window: tuple[int, int],
    shift: tuple[int, int],
    backend: str,
    *,
    table: torch.Tensor | None = None,
    attn_bias: torch.Tensor | None = None,
    scale: float | None = None,
    logit_scale: torch.Tensor | None = None,
    mask_value: float = -100.0,
    roll_first: bool = False,
) -> torch.Tensor:
    """One 2D Swin layer's attention before its output projection, as the model computes it.

    Args:
        x: (B, H, W, C) the attention's input (padding tokens are zeros of this, projected).
        weight, bias: the packed qkv projection, (3 * heads * D, C) and (3 * heads * D,) or None.
        window, shift: the layer's (Wh, Ww) and effective (Sh, Sw); `map_reason` must be None.
        table: ((2Wh-1)(2Ww-1), heads) relative-position table (Swin's index), or
        attn_bias: (heads, N, N) dense bias (N = Wh * Ww), or neither.
        scale: multiplies q·kᵀ (V1). logit_scale: (heads,) Swin-V2's exp(clamped logit scale):
            cosine attention, folded into the normalised q (the kernel's scale is 1).
        mask_value: the model's shift mask between pre-shift regions.
        roll_first: the model rolls the map before padding it (timm), not after (the others).

    Returns:
        (B, H, W, heads * D) in the projection's dtype.
    """
    B, H, W, _ = x.shape
    axes = _explicit_axes((H, W), window, shift, roll_first)
    if axes:
        x = _to_explicit_map(x, axes, window, shift, roll_first)
    Hx, Wx = x.shape[1:3]
    head_dim = weight.shape[0] // (3 * heads)
    padded = Hx % window[0] or Wx % window[1]
    bias3 = bias.view(3, heads, head_dim) if bias is not None else None
    pad_kv = None
    if padded:  # the key and value of a zero token: the projection bias (or zero)
        zero = weight.new_zeros(heads, head_dim)
        pad_kv = (bias3[1], bias3[2]) if bias3 is not None else (zero, zero)
    args = dict(window_size=(1, *window), shift_size=(0, *shift), rel_pos_bias=table,
                mask_value=mask_value, backend=backend, attn_bias=attn_bias)  # fmt: skip
    shape = (B, 1, Hx, Wx, heads, head_dim)
    if logit_scale is not None:  # Swin-V2: cosine attention, per-head scale folded into q
        q, k, v = F.linear(x, weight, bias).view(B, 1, Hx, Wx, 3, heads, head_dim).unbind(4)
        q = (F.normalize(q, dim=-1) * logit_scale.view(heads, 1)).to(v.dtype)
        k = F.normalize(k, dim=-1).to(v.dtype)
        v = v.contiguous()  # q and k are new tensors: one stride set for the kernels
        if pad_kv is not None:
            pad_kv = (F.normalize(pad_kv[0], dim=-1), pad_kv[1])
        o = window_attention(q, k, v, scale=1.0, pad_kv=pad_kv, **args)
    elif x.device.type == "cpu":
        # three GEMMs with the scale folded into q's (measured faster on the CPU than one GEMM and
        # strided views, as attention_block)
        w, b = list(weight.chunk(3)), list(bias.chunk(3)) if bias is not None else [None] * 3
        s = head_dim**-0.5 if scale is None else scale
        w[0], b[0] = w[0] * s, b[0] * s if b[0] is not None else None
        q, k, v = (F.linear(x, wi, bi).view(shape) for wi, bi in zip(w, b))
        o = window_attention(q, k, v, scale=1.0, pad_kv=pad_kv, **args)
    else:  # one GEMM; the kernels read q, k, v in place and write their gradient in place
        qkv = F.linear(x, weight, bias).view(B, 1, Hx, Wx, 3, heads, head_dim)
        o = window_attention_qkv(qkv, scale=scale, pad_kv=pad_kv, **args)
    o = o.reshape(B, Hx, Wx, heads * head_dim)
    return _from_explicit_map(o, axes, (H, W), shift, roll_first) if axes else o
