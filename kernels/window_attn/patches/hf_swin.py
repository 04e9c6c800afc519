"""`patch_hf_swin`: Hugging Face `Swin*` and `Swinv2*` models (transformers) on the fused kernel.

Each `SwinLayer` / `Swinv2Layer` gets a forward whose window attention (pad, shift, partition,
attention, reverse) is one `window_attention` call; the layer norms, residuals and MLP are its
own modules, called as the original calls them. Both pad the map before rolling it (the kernel's
order). `SwinLayer` shrinks its window to the map when the map's short side is at most the window
(and then fails on its window-sized bias: such a layer keeps its own path). Swin's shift mask is
-100; `Swinv2SelfAttention` adds its mask twice, so its mask value is -200. q, k and v come from
three Linear modules: their weights are concatenated per call into one projection (a copy of
3C x C, small beside the activations).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from . import common


def _attentions_requested() -> bool:
    """Whether transformers is collecting attention weights (`output_attentions=True`): the
    fused kernel has none to give."""
    try:
        from transformers.utils.output_capturing import _active_collector
    except ImportError:  # another version: it passes `output_attentions` to the layers instead
        return False
    return "attentions" in (_active_collector.get() or {})


def _packed(*linears: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One (3C', C) weight and (3C',) bias: zeros where a Linear has none, None if all have none."""
    weight = torch.cat([m.weight for m in linears])
    if all(m.bias is None for m in linears):
        return weight, None
    zeros = lambda m: m.weight.new_zeros(m.weight.shape[0])  # noqa: E731
    return weight, torch.cat([zeros(m) if m.bias is None else m.bias for m in linears])


def _swin_forward(self, hidden_states, input_dimensions, always_partition=False, **kwargs):
    """SwinLayer.forward: (B, H*W, C) -> ((B, H*W, C), None)."""
    state = self.__dict__[common.ATTR]
    if not always_partition:
        self.set_shift_and_window_size(input_dimensions)
    att = self.attention
    table_window = tuple(att.relative_position_bias.window_size)
    window, shift = (self.window_size,) * 2, (self.shift_size,) * 2
    reason = common.dropout_reason(att.attention_dropout, self.training)
    if reason is None and _attentions_requested():
        reason = "attention weights are requested (output_attentions)"
    if reason is None and window != table_window:
        reason = f"window {window} (clamped to the map) does not fit its {table_window} bias"
    reason = reason or common.map_reason(tuple(input_dimensions), window, shift)
    if reason is not None:
        common.keep_own(self, reason)
        return state.original.forward(
            self, hidden_states, input_dimensions, always_partition, **kwargs
        )
    height, width = input_dimensions
    batch, _, channels = hidden_states.shape
    shortcut = hidden_states
    x = self.layernorm_before(hidden_states).view(batch, height, width, channels)
    weight, bias = _packed(att.q_proj, att.k_proj, att.v_proj)
    rpb = att.relative_position_bias
    table = rpb.relative_position_bias_table if state.use_table else None
    dense = None if state.use_table else rpb()[0]
    o = common.swin_window_attention(
        x, weight, bias, att.num_attention_heads, window, shift, state.backend, table=table,
        attn_bias=dense, scale=att.scaling,
    )  # fmt: skip
    o = self.dropout(att.o_proj(o)).view(batch, height * width, channels)
    hidden_states = shortcut + self.drop_path(o)
    residual = hidden_states
    hidden_states = self.mlp(self.layernorm_after(hidden_states))
    return self.dropout(hidden_states) + residual, None


def _swinv2_forward(self, hidden_states, input_dimensions, output_attentions=False):
    """Swinv2Layer.forward: (B, H*W, C) -> ((B, H*W, C),)."""
    state = self.__dict__[common.ATTR]
    sa = self.attention.self
    window, shift = (self.window_size,) * 2, (self.shift_size,) * 2
    reason = common.dropout_reason(sa.dropout.p, self.training)
    if reason is None and output_attentions:
        reason = "attention weights are requested (output_attentions)"
    if reason is None and window != tuple(sa.window_size):
        reason = f"window {window} does not fit its {tuple(sa.window_size)} position bias"
    reason = reason or common.map_reason(tuple(input_dimensions), window, shift)
    if reason is not None:
        common.keep_own(self, reason)
        return state.original.forward(self, hidden_states, input_dimensions, output_attentions)
    height, width = input_dimensions
    batch, _, channels = hidden_states.shape
    heads = sa.num_attention_heads
    shortcut = hidden_states
    x = hidden_states.view(batch, height, width, channels)
    weight, bias = _packed(sa.query, sa.key, sa.value)
    table = common.v2_table(sa.continuous_position_bias_mlp, sa.relative_coords_table, heads)
    table, dense = common.table_or_dense(
        table, sa.relative_position_index, window, heads, state.use_table
    )
    logit_scale = common.v2_logit_scale(sa.logit_scale, heads)
    o = common.swin_window_attention(
        x, weight, bias, heads, window, shift, state.backend, table=table, attn_bias=dense,
        logit_scale=logit_scale, mask_value=-200.0,  # Swinv2SelfAttention adds its mask twice
    )  # fmt: skip
    o = self.attention.output(o, x).view(batch, height * width, channels)
    hidden_states = shortcut + self.drop_path(self.layernorm_before(o))
    layer_output = self.output(self.intermediate(hidden_states))
    return (hidden_states + self.drop_path(self.layernorm_after(layer_output)),)


@functools.cache
def _classes() -> dict[type, type]:
    from transformers.models.swin.modeling_swin import SwinLayer
    from transformers.models.swinv2.modeling_swinv2 import Swinv2Layer

    return {
        SwinLayer: common.fused_class(SwinLayer, __name__, {"forward": _swin_forward}),
        Swinv2Layer: common.fused_class(Swinv2Layer, __name__, {"forward": _swinv2_forward}),
    }


def __getattr__(name: str):  # a pickled patched model finds its class here
    if name.startswith("Fused"):
        for cls in _classes().values():
            if cls.__name__ == name:
                return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _attention(layer: nn.Module) -> nn.Module:
    return getattr(layer.attention, "self", layer.attention)  # Swinv2: attention.self


def _reasons(layer: nn.Module) -> list[str]:
    att = _attention(layer)
    heads = att.num_attention_heads
    return common.head_dim_reasons(layer.layernorm_before.normalized_shape[0] // heads)


def _uses_table(layer: nn.Module) -> bool:
    att = _attention(layer)
    rpb = getattr(att, "relative_position_bias", att)  # Swin: a submodule; Swinv2: buffers
    return common.is_swin_index(rpb.relative_position_index, tuple(rpb.window_size))


def patch_hf_swin(model: nn.Module, backend: str = "auto") -> nn.Module:
    """Run Hugging Face Swin and Swin-V2 window attention on lfvila's kernel, in place.

    Args:
        model: a transformers `SwinModel`, `SwinForImageClassification`, `SwinBackbone`,
            `Swinv2Model`, ... (eager or SDPA attention), or any module holding their layers.
        backend: window-attention backend of the patched layers ("auto": Triton on a GPU).

    Returns:
        `model`: same parameters, buffers and state-dict keys, the same outputs. A layer we
        cannot serve (head_dim outside the kernel's, attention dropout in training, attention
        weights requested, a window clamped to a map smaller than it, a shifted map within one
        window) keeps its own forward, logged once. `unpatch_swin(model)` restores it. Raises
        ValueError if `model` has no such layer.
    """
    return common.patch_model(
        model, "transformers", _classes(), backend, _reasons, "transformers SwinLayer or "
        "Swinv2Layer", _uses_table,
    )  # fmt: skip
