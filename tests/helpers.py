"""Shared test helpers (the library-side ones live in lfvila.kernels.testing)."""

from __future__ import annotations

import torch

from lfvila.kernels.testing import assert_close_verbose  # noqa: F401  (re-exported for tests)


def grads(out: torch.Tensor, inputs: list[torch.Tensor], g: torch.Tensor) -> list[torch.Tensor]:
    """Gradients of `out` with upstream `g`; an input the graph does not reach gets zeros."""
    got = torch.autograd.grad(out, inputs, g, allow_unused=True)
    return [torch.zeros_like(x) if d is None else d for d, x in zip(got, inputs)]


def leaves(*tensors, dtype=None, device=None):
    """Detached copies that require grad (None passes through), optionally cast / moved."""
    out = []
    for t in tensors:
        if t is None:
            out.append(None)
            continue
        t = t.detach().to(dtype=dtype or t.dtype, device=device or t.device).clone()
        out.append(t.requires_grad_(True))
    return out
