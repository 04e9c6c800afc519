"""The contrastive losses' self-checks (registered with lfvila.kernels._self_check, which imports
nothing of this package): the fused InfoNCE and MTC losses and their gradients against the
references on random unit features of a call's signature."""

from __future__ import annotations

import torch

from .. import _self_check
from ..testing import GRADIENT, OUTPUT
from .dispatch import contrastive_loss, mtc_loss
from .reference import contrastive_loss_ref, mtc_loss_ref, sample_mtc_indices


def _unit_rows(shape, dtype, device, gen):
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    return torch.nn.functional.normalize(x, dim=-1).to(dtype=dtype, device=device)


def _pairs(run, dtype: torch.dtype, grad_names: tuple[str, str]) -> dict:
    names = (("loss", OUTPUT), (grad_names[0], GRADIENT), (grad_names[1], GRADIENT))
    return _self_check.error_pairs(run, dtype, names)


def check_contrastive(call: _self_check.FusedCall, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    a = _unit_rows(call.shape, call.dtype, call.device, gen)
    b = _unit_rows(call.shape, call.dtype, call.device, gen)
    temperature = call.param("temperature")

    def run(dtype, fused):
        xa, xb = _self_check.leaf(a, dtype), _self_check.leaf(b, dtype)
        if fused:
            loss = contrastive_loss(xa, xb, temperature, backend="triton")
        else:
            loss = contrastive_loss_ref(xa, xb, temperature)
        return (loss, *torch.autograd.grad(loss, [xa, xb]))

    return _pairs(run, call.dtype, ("da", "db"))


def check_mtc(call: _self_check.FusedCall, seed: int) -> dict:
    p = dict(call.params)
    gen = torch.Generator().manual_seed(seed)
    clips = _unit_rows(call.shape, call.dtype, call.device, gen)
    sents = _unit_rows(call.shape, call.dtype, call.device, gen)
    batch, m, _ = call.shape
    indices = sample_mtc_indices(
        batch, m, p["num_key"], p["num_value"], None, torch.Generator().manual_seed(seed),
        call.device,
    )  # fmt: skip

    def run(dtype, fused):
        xc, xs = _self_check.leaf(clips, dtype), _self_check.leaf(sents, dtype)
        if fused:
            loss = mtc_loss(xc, xs, p["temperature"], p["num_key"], p["num_value"],
                            p["num_other_neg"], indices=indices, backend="triton")  # fmt: skip
        else:
            loss = mtc_loss_ref(xc, xs, p["temperature"], indices, p["num_other_neg"])
        return (loss, *torch.autograd.grad(loss, [xc, xs]))

    return _pairs(run, call.dtype, ("dclip", "dsent"))


_self_check.register_check("contrastive_loss", check_contrastive)
_self_check.register_check("mtc_loss", check_mtc)
