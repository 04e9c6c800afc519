"""Test and benchmark helpers shared by tests/ and benchmarks/: error-ratio asserts, TF32 control,
guarded buffers, and per-op input builders. Needs only torch.

The error-ratio rule (STYLE.md §5): with `truth` the reference on upcast inputs, `pt` the reference
on the original low-precision inputs and `out` the kernel,
    max|out - truth| <= ratio * max|pt - truth| + floor,
ratio 2 for outputs and 3 for gradients, floor 1e-5 * max|truth| (outputs) or 1e-4 (gradients).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch

OUTPUT = dict(ratio=2.0, floor=1e-5)
GRADIENT = dict(ratio=3.0, floor=1e-4)


def error_report(
    out: torch.Tensor, truth: torch.Tensor, pt: torch.Tensor, ratio: float, floor: float
):
    """(ok, message) for the error-ratio rule; the message explains a failure in full."""
    ok, msg, _ = error_check(out, truth, pt, ratio, floor)
    return ok, msg


def error_check(
    out: torch.Tensor, truth: torch.Tensor, pt: torch.Tensor, ratio: float, floor: float
) -> tuple[bool, str, float]:
    """(ok, message, margin) for the error-ratio rule: `margin` is max|out - truth| as a multiple
    of the bound (<= 1 passes; inf where `out` holds NaN or inf)."""
    out64, truth64, pt64 = out.double(), truth.double(), pt.double()
    err_out = (out64 - truth64).abs()
    err_pt = (pt64 - truth64).abs()
    scale = truth64.abs().max().item() if truth64.numel() else 0.0
    bound = ratio * (err_pt.max().item() if err_pt.numel() else 0.0) + floor * scale
    nan_out = int(torch.isnan(out64).sum())
    inf_out = int(torch.isinf(out64).sum())
    worst = err_out.max().item() if err_out.numel() else 0.0
    finite = nan_out == 0 and inf_out == 0
    ok = finite and worst <= bound
    if not finite:
        margin = math.inf
    else:
        margin = worst / bound if bound else (0.0 if worst == 0 else math.inf)
    if ok:
        return True, "", margin
    flat = torch.nan_to_num(err_out, nan=math.inf).flatten()
    idx = int(flat.argmax()) if flat.numel() else 0
    where = (
        tuple(int(i) for i in torch.unravel_index(torch.tensor(idx), out.shape))
        if out.dim()
        else ()
    )
    over = (
        float((torch.nan_to_num(err_out, nan=math.inf) > bound).double().mean())
        if flat.numel()
        else 0.0
    )
    pt_err = err_pt.max().item() if err_pt.numel() else 0.0
    msg = (
        f"max|out-truth| = {worst:.3e} > bound {bound:.3e} "
        f"(= {ratio} x max|pt-truth| {pt_err:.3e} + {floor} x max|truth| {scale:.3e}); "
        f"ratio out/pt = {worst / pt_err if pt_err else math.inf:.2f}; worst at {where}: "
        f"out {out64.flatten()[idx].item():.6g}, truth {truth64.flatten()[idx].item():.6g}; "
        f"{over:.2%} of elements over the bound; NaN {nan_out}, inf {inf_out}"
    )
    return False, msg, margin


def assert_error_ratio(
    out: torch.Tensor,
    truth: torch.Tensor,
    pt: torch.Tensor,
    name: str = "output",
    ratio: float = OUTPUT["ratio"],
    floor: float = OUTPUT["floor"],
) -> None:
    """Assert the error-ratio rule for an output (defaults) or a gradient (pass **GRADIENT)."""
    if out.shape != truth.shape or pt.shape != truth.shape:
        raise AssertionError(
            f"{name}: shapes differ: out {tuple(out.shape)}, truth {tuple(truth.shape)}, "
            f"pt {tuple(pt.shape)}"
        )
    ok, msg = error_report(out, truth, pt, ratio, floor)
    if not ok:
        raise AssertionError(f"{name}: {msg}")


def assert_grads_error_ratio(outs, truths, pts, names) -> None:
    """The gradient form (ratio 3, floor 1e-4) over matched sequences; reports every failure."""
    failures = []
    for out, truth, pt, name in zip(outs, truths, pts, names):
        ok, msg = error_report(out, truth, pt, **GRADIENT)
        if not ok:
            failures.append(f"{name}: {msg}")
    if failures:
        raise AssertionError("\n".join(failures))


def assert_close_verbose(
    actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float, name=""
) -> None:
    """torch.testing.assert_close with the worst element and the failing fraction in the message."""
    try:
        torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)
    except AssertionError as exc:
        diff = (actual.double() - expected.double()).abs()
        idx = int(torch.nan_to_num(diff, nan=math.inf).flatten().argmax())
        tol = atol + rtol * expected.double().abs()
        frac = float((diff > tol).double().mean())
        raise AssertionError(
            f"{name}: worst |diff| {diff.flatten()[idx].item():.3e} at flat index {idx} "
            f"(actual {actual.flatten()[idx].item():.6g}, "
            f"expected {expected.flatten()[idx].item():.6g}); "
            f"{frac:.2%} over tolerance\n{exc}"
        ) from None


@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    """Disable TF32 in matmuls and convolutions for references, restoring the settings after."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn


def guarded(x: torch.Tensor, gap: int = 16, fill: float = math.nan) -> torch.Tensor:
    """A copy of x placed inside larger sentinel-filled storage.

    Each innermost row is followed by `gap` sentinels and the whole tensor by `gap` more rows'
    worth, so an unmasked read past a row or past the end picks up NaN (visible in the result
    even under the Triton interpreter). The copy is non-contiguous but has unit inner stride.
    """
    *lead, inner = x.shape
    rows = math.prod(lead)
    storage = torch.full((rows + gap, inner + gap), fill, dtype=x.dtype, device=x.device)
    view = (
        storage[gap // 2 : gap // 2 + rows, :inner].view(*lead, inner)
        if lead
        else storage[0, :inner]
    )
    with torch.no_grad():
        view.copy_(x)
    return view.requires_grad_(x.requires_grad)


def window_attention_inputs(
    shape: tuple[int, int, int, int, int, int],
    window_size: tuple[int, int, int],
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seed: int = 0,
    bias: bool = True,
    pad_kv: bool = True,
    bias_std: float = 1.0,
) -> dict:
    """Random inputs for `window_attention`: dict(q, k, v, rel_pos_bias, pad_kv).

    Args:
        shape: (B, T, H, W, heads, D). window_size: the configured window (sets the table size).
        bias / pad_kv: include a table / pad vectors. bias_std: table scale (Video-Swin inits 0.02;
            1.0 makes bias errors visible).
    Draws from a local generator seeded with `seed`, so cases never share or disturb data.
    """
    gen = torch.Generator().manual_seed(seed)
    heads, head_dim = shape[-2], shape[-1]
    wt, wh, ww = window_size
    rows = (2 * wt - 1) * (2 * wh - 1) * (2 * ww - 1)

    def randn(*s, std=1.0):
        return (torch.randn(*s, generator=gen, dtype=torch.float64) * std).to(
            dtype=dtype, device=device
        )

    return dict(
        q=randn(*shape),
        k=randn(*shape),
        v=randn(*shape),
        rel_pos_bias=randn(rows, heads, std=bias_std) if bias else None,
        pad_kv=(randn(heads, head_dim), randn(heads, head_dim)) if pad_kv else None,
    )
