"""Global InfoNCE: the chunked reference against direct formulas, the Triton kernels (interpreter
on CPU) against the reference, determinism, bad input, and the reference's O(N·d) memory."""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from lfvila.kernels import contrastive_loss, contrastive_loss_ref
from lfvila.kernels.contrastive import triton_impl
from lfvila.kernels.testing import GRADIENT, assert_error_ratio, error_report, no_tf32

from ..helpers import leaves

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def features(n: int, d: int, dtype=torch.float64, seed: int = 0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    a = F.normalize(torch.randn(n, d, generator=gen, dtype=torch.float64), dim=-1)
    # b correlated with a, so the positives matter (as trained features are)
    b = F.normalize(a + 0.7 * torch.randn(n, d, generator=gen, dtype=torch.float64), dim=-1)
    return a.to(device, dtype), b.to(device, dtype)


def direct_formula(a, b, scale):
    """The loss written out: mean_i(lse_j s_ij - s_ii) + mean_j(lse_i s_ij - s_jj)."""
    s = scale * (a @ b.t())
    diag = torch.diagonal(s)
    return (torch.logsumexp(s, 1) - diag).mean() + (torch.logsumexp(s, 0) - diag).mean()


@pytest.mark.parametrize("n, d, chunk", [(137, 24, 64), (300, 16, 7), (1, 8, None), (64, 40, 64)])
def test_contrastive_ref_matches_direct_formula_and_cross_entropy(n, d, chunk):
    a, b = leaves(*features(n, d))
    log_scale = torch.tensor(math.log(1 / 0.05), dtype=torch.float64, requires_grad=True)
    loss = contrastive_loss_ref(a, b, logit_scale=log_scale, chunk=chunk)
    a2, b2, s2 = leaves(a, b, log_scale)
    expected = direct_formula(a2, b2, s2.exp())
    logits = s2.exp() * a2 @ b2.t()
    target = torch.arange(n)
    ce = F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(expected, ce, rtol=1e-12, atol=1e-12)
    g = torch.rand(()) + 0.5  # a random non-unit upstream scale
    got = torch.autograd.grad(loss, [a, b, log_scale], g)
    want = torch.autograd.grad(expected, [a2, b2, s2], g)
    for name, x, y in zip(("da", "db", "dlogit_scale"), got, want):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12, msg=name)


def test_contrastive_ref_fixed_temperature_and_gradcheck():
    a, b = features(20, 6, seed=3)
    loss = contrastive_loss_ref(a, b, temperature=0.05)
    torch.testing.assert_close(loss, direct_formula(a, b, 20.0), rtol=1e-12, atol=1e-12)
    args = leaves(a, b, torch.tensor(1.3, dtype=torch.float64))
    assert torch.autograd.gradcheck(
        lambda a, b, s: contrastive_loss_ref(a, b, logit_scale=s, chunk=6),
        args,
        eps=1e-6,
        atol=1e-6,
    )


def _check_triton(n, d, dtype, run_triton):
    a, b = features(n, d, dtype, seed=n, device=DEVICE)
    log_scale = torch.tensor(math.log(20.0), device=DEVICE)
    g = torch.rand((), generator=torch.Generator().manual_seed(n)).item() + 0.5
    truth_dtype = torch.float64 if dtype == torch.float32 else torch.float32

    def reference(dt):
        x, y, s = leaves(a, b, log_scale, dtype=dt)
        with no_tf32():
            loss = contrastive_loss_ref(x, y, logit_scale=s)
            return loss, torch.autograd.grad(loss, [x, y, s], torch.tensor(g, dtype=loss.dtype))

    truth, truth_grads = reference(truth_dtype)
    pt, pt_grads = reference(dtype)
    x, y, s = leaves(a, b, log_scale)
    loss, grads = run_triton(x, y, s, g)
    assert loss.dtype == torch.float32 and grads[0].dtype == dtype
    assert_error_ratio(loss.reshape(1), truth.reshape(1), pt.reshape(1), "loss")
    for name, out, t, p in zip(("da", "db", "dlogit_scale"), grads, truth_grads, pt_grads):
        ok, msg = error_report(out.reshape(-1), t.reshape(-1), p.reshape(-1), **GRADIENT)
        assert ok, f"{name}: {msg}"


@pytest.mark.parametrize("n, d", [(150, 40), (64, 16), (200, 72)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_contrastive_triton_matches_reference(n, d, dtype):
    def run(x, y, s, g):
        loss = contrastive_loss(x, y, logit_scale=s, backend="triton")
        return loss, torch.autograd.grad(loss, [x, y, s], torch.tensor(g, device=DEVICE))

    _check_triton(n, d, dtype, run)


def test_contrastive_triton_backward_in_column_chunks():
    """Several G chunks (the last one partial) accumulate to the same gradients."""

    def run(x, y, s, g):
        loss, lse_r, lse_c = triton_impl.infonce_fwd(x.detach(), y.detach(), s.detach())
        grads = triton_impl.infonce_bwd(
            torch.tensor(g, device=DEVICE), x, y, s, lse_r, lse_c, chunk=48
        )
        return loss, grads

    _check_triton(130, 24, torch.float32, run)


# (n, d, dtype, splits asked, splits expected). Interpreter target: 8 programs; fp32 tiles are
# 64 x 64, fp16 128 x 128. Ragged: no n here is a multiple of its tile.
SPLIT_CASES = {
    "fp32-3-splits-default": (150, 40, torch.float32, None, 3),  # 3 row blocks x 3 splits
    "fp32-1-split": (150, 40, torch.float32, 1, 1),
    "fp32-2-splits-of-3-tiles": (300, 16, torch.float32, 2, 2),  # 192 + 108 columns
    "fp32-more-than-tiles": (70, 24, torch.float32, 7, 2),  # capped at the 2 column tiles
    "fp16-2-splits-default": (200, 24, torch.float16, None, 2),
    "fp32-tiny": (5, 16, torch.float32, None, 1),
}


@pytest.mark.parametrize("case", list(SPLIT_CASES))
def test_contrastive_triton_forward_column_splits(case):
    """The forward's row partials from several column splits (the last one ragged) merge to the
    reference's loss and LSEs; the backward runs on the merged LSEs."""
    n, d, dtype, asked, expected = SPLIT_CASES[case]
    tiles = triton_impl.fwd_tiles(dtype, d)
    assert triton_impl.fwd_grid(n, tiles, torch.device(DEVICE), asked)[1] == expected

    def run(x, y, s, g):
        loss, lse_r, lse_c = triton_impl.infonce_fwd(x.detach(), y.detach(), s.detach(), asked)
        grads = triton_impl.infonce_bwd(torch.tensor(g, device=DEVICE), x, y, s, lse_r, lse_c)
        return loss, grads

    _check_triton(n, d, dtype, run)


def test_contrastive_triton_split_results_are_bitwise_reproducible():
    """Same (N, splits): bitwise equal loss and LSEs; another split count: the same loss up to
    rounding (the merge order differs, so bits may not)."""
    a, b = features(150, 40, torch.float32, seed=4, device=DEVICE)
    s = torch.tensor(math.log(20.0), device=DEVICE)
    first, second = (triton_impl.infonce_fwd(a, b, s, 3) for _ in range(2))
    assert all(torch.equal(x, y) for x, y in zip(first, second))
    one = triton_impl.infonce_fwd(a, b, s, 1)
    for x, y in zip(first, one):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-5)


def test_contrastive_grid_and_chunks_on_an_h100(monkeypatch):
    """Grid (row blocks, splits) for 132 SMs (target 4 per SM) at d = 1024 bf16: small N is split
    over columns to fill the GPU; every split has columns; G stays within GRAD_BYTES."""
    monkeypatch.setattr(triton_impl, "parallel_target", lambda device: 4 * 132)
    tiles = triton_impl.fwd_tiles(torch.bfloat16, 1024)
    grids = {}
    for n in (512, 4096, 65536):
        rows, splits, width = triton_impl.fwd_grid(n, tiles, torch.device("cuda"))
        assert (splits - 1) * width < n <= splits * width and width % tiles.block_n == 0
        grids[n] = (rows, splits)
    assert grids == {512: (4, 4), 4096: (32, 16), 65536: (512, 2)}
    chunk = triton_impl.grad_chunk(65536, torch.bfloat16, 128)
    assert chunk == 1024 and 65536 * chunk * 2 <= triton_impl.GRAD_BYTES
    assert triton_impl.grad_chunk(4096, torch.bfloat16, 128) == 4096  # one chunk: all of G


@contextlib.contextmanager
def no_host_reads():
    """Fail on any read of a tensor's value by Python (.item(), bool(), int(), .tolist()): on
    a GPU each is a device-to-host sync, which a CUDA graph cannot capture."""
    names = ("item", "__bool__", "__int__", "__float__", "__index__", "tolist")
    saved = {name: getattr(torch.Tensor, name) for name in names}

    def read(self, *args, **kwargs):
        raise AssertionError("a tensor value was read on the host")

    try:
        for name in names:
            setattr(torch.Tensor, name, read)
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)


def test_contrastive_triton_launchers_read_no_value_on_the_host():
    a, b = features(70, 16, torch.float32, device=DEVICE)
    s = torch.tensor(3.0, device=DEVICE)
    with no_host_reads():
        loss, lse_r, lse_c = triton_impl.infonce_fwd(a, b, s)
        triton_impl.infonce_bwd(torch.tensor(1.0, device=DEVICE), a, b, s, lse_r, lse_c)
        contrastive_loss_ref(*leaves(a, b), temperature=0.05).backward()


def test_contrastive_triton_fixed_temperature_and_determinism():
    a, b = features(96, 32, torch.float32, device=DEVICE)

    def once():
        x, y = leaves(a, b)
        loss = contrastive_loss(x, y, temperature=0.07, backend="triton")
        return loss, torch.autograd.grad(loss, [x, y])

    (l1, g1), (l2, g2) = once(), once()
    assert torch.equal(l1, l2) and all(torch.equal(x, y) for x, y in zip(g1, g2))
    torch.testing.assert_close(
        l1.double(), direct_formula(a.double(), b.double(), 1 / 0.07), rtol=1e-5, atol=1e-5
    )


BAD = {
    "shape-mismatch": (
        lambda a, b: dict(b=b[:-1]),
        r"b must have a's shape \(8, 4\), got \(7, 4\)",
    ),
    "rank": (lambda a, b: dict(a=a[0]), r"a must have shape \(N, d\)"),
    "empty": (lambda a, b: dict(a=a[:0], b=b[:0]), r"a is empty.*N = 0"),
    "temperature-inf": (
        lambda a, b: dict(temperature=math.inf),
        r"temperature must be a finite number > 0",
    ),
    "temperature-zero": (
        lambda a, b: dict(temperature=0.0),
        r"temperature must be a finite number > 0",
    ),
    "logit-scale": (
        lambda a, b: dict(logit_scale=torch.ones(2)),
        r"logit_scale must be a 1-element tensor",
    ),
    "int": (lambda a, b: dict(a=a.long(), b=b.long()), r"a must be a floating tensor"),
    "backend": (lambda a, b: dict(backend="cuda"), r"contrastive_loss backend 'cuda' cannot run"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_contrastive_bad_input_raises(case):
    a, b = features(8, 4, torch.float32)
    change, message = BAD[case]
    kwargs = dict(a=a, b=b)
    kwargs.update(change(a, b))
    with pytest.raises(ValueError, match=message):
        contrastive_loss(**kwargs)


_MEMORY_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    import torch.nn.functional as F
    from lfvila.kernels import contrastive_loss_ref

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024

    n, d = 16384, 256
    a = F.normalize(torch.randn(n, d), dim=-1).requires_grad_()
    b = F.normalize(torch.randn(n, d), dim=-1).requires_grad_()
    open("/proc/self/clear_refs", "w").write("5")  # reset the high-water mark (VmHWM)
    base = status("VmRSS")
    if sys.argv[1] == "naive":
        logits = 20.0 * a @ b.t()
        y = torch.arange(n)
        loss = F.cross_entropy(logits, y) + F.cross_entropy(logits.t(), y)
    else:
        loss = contrastive_loss_ref(a, b, temperature=0.05)
    loss.backward()
    print(status("VmHWM") - base)
    """
)


def test_contrastive_ref_peak_memory_is_linear_in_n():
    """N = 16,384, d = 256: the chunked reference needs a few N·d-sized buffers (inputs' grads,
    fp32 accumulators, a 256 x N chunk of logits and its temporaries), the naive formula several
    N×N fp32 matrices (1 GiB each). Peak RSS growth measured in fresh processes."""
    # A fixed mmap threshold: glibc otherwise raises it after large frees and keeps later
    # buffers in the heap, whose freed pages stay resident; the high-water mark then varied
    # from 160 to 430 MiB between identical runs (AMD EPYC guest), 127 MiB every time with it.
    env = dict(os.environ, OMP_NUM_THREADS="2", MALLOC_MMAP_THRESHOLD_="131072")

    def peak(mode):
        out = subprocess.run(
            [sys.executable, "-c", _MEMORY_SCRIPT, mode], capture_output=True, text=True, env=env
        )
        assert out.returncode == 0, out.stderr[-2000:]
        return int(out.stdout.strip().splitlines()[-1])

    chunked, naive = peak("chunked"), peak("naive")
    n_d_bytes = 16384 * 256 * 4
    assert naive > 2 * 16384**2 * 4  # the naive path really holds N x N matrices
    assert chunked < 24 * n_d_bytes, f"chunked reference grew {chunked / 2**20:.0f} MiB"
    assert chunked < naive / 10


def test_contrastive_custom_ops_and_compile():
    a, b = features(40, 16, torch.float32, device=DEVICE)
    s = torch.tensor(2.5, device=DEVICE)
    torch.library.opcheck(
        torch.ops.lfvila.infonce_fwd.default,
        (a, b, s),
        test_utils=("test_schema", "test_faketensor"),
    )
    loss, lse_r, lse_c = torch.ops.lfvila.infonce_fwd(a, b, s)
    bwd_args = (torch.tensor(1.0, device=DEVICE), a, b, s, lse_r, lse_c)
    torch.library.opcheck(
        torch.ops.lfvila.infonce_bwd.default,
        bwd_args,
        test_utils=("test_schema", "test_faketensor"),
    )

    def fn(x, y, scale):
        return contrastive_loss(x, y, logit_scale=scale, backend="triton")

    x, y, sc = leaves(a, b, s)
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    out = compiled(x, y, sc)
    out.backward()
    x2, y2, s2 = leaves(a, b, s)
    fn(x2, y2, s2).backward()
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(sc.grad, s2.grad)


def test_contrastive_module_owns_a_learnable_scale():
    from lfvila.kernels import ContrastiveLoss

    module = ContrastiveLoss(temperature=0.07, learnable_scale=True, backend="reference")
    assert math.isclose(module.logit_scale.item(), math.log(1 / 0.07), rel_tol=1e-6)
    a, b = features(16, 8, torch.float32)
    module(a, b).backward()
    assert module.logit_scale.grad is not None and module.logit_scale.grad.abs() > 0
    fixed = ContrastiveLoss(temperature=0.05)
    assert fixed.logit_scale is None and list(fixed.parameters()) == []
    torch.testing.assert_close(fixed(a, b), contrastive_loss_ref(a, b, 0.05))
