"""GPU checks of the compiled Triton kernels (skipped without CUDA; benchmarks/gpu_check.sh
runs them): bf16/fp16 at full LF-VILA shapes by the error-ratio rule, bitwise determinism, and
the padded / clamped / legacy paths compiled for real (the interpreter misses illegal tiles and
unmasked out-of-bounds accesses)."""

from __future__ import annotations

import copy

import pytest
import torch

from lfvila.kernels import WindowAttention3D, patch_torchvision_swin3d, window_attention
from lfvila.kernels.testing import assert_error_ratio, guarded, no_tf32, window_attention_inputs
from lfvila.kernels.window_attn.geometry import window_geometry
from lfvila.model.shapes import LFVILA_LAYERS, VIDEO_SWIN_LAYERS

from ..helpers import grads, leaves
from .window_checks import check_against_reference, public_api_run

pytestmark = pytest.mark.gpu
LAYERS = {spec.name: spec for spec in LFVILA_LAYERS + VIDEO_SWIN_LAYERS}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("shifted", [False, True], ids=["plain", "shift"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_window_attention_gpu_full_shapes(name, shifted, dtype):
    spec = LAYERS[name]
    shift = spec.shift if shifted else (0, 0, 0)
    if shifted and shift == (0, 0, 0):
        pytest.skip(f"{name} is clamped to a global window: no shift")
    shape = (2, *spec.map_size, spec.heads, spec.head_dim)
    inp = window_attention_inputs(shape, spec.window, dtype, "cuda", seed=3)
    check_against_reference(
        inp, spec.window, shift, "effective", public_api_run(inp, spec.window, shift, "effective")
    )


@pytest.mark.parametrize("batch", [1, 16])
@pytest.mark.parametrize("kind", ["dense", "dense-broadcast"])
@pytest.mark.parametrize("name", ["L0", "L1", "L2", "L3", "L5", "VS-8x7x7", "VS-2x7x7"])
def test_window_attention_gpu_dense_bias(name, kind, batch):
    """A user's dense bias in bf16 (Swin-V2's CPB and the like), shifted where the layer is, at
    batch 1 (every loop once: ints equal to 1 compile as constants) and 16 (training's trips)."""
    spec = LAYERS[name]
    shape = (batch, *spec.map_size, spec.heads, spec.head_dim)
    inp = window_attention_inputs(shape, spec.window, torch.bfloat16, "cuda", seed=7, pad_kv=False)
    n = window_geometry(spec.map_size, spec.window, spec.shift).tokens
    heads = spec.heads if kind == "dense" else 1
    dense = torch.randn(heads, n, n, generator=torch.Generator().manual_seed(8))
    inp = dict(inp, rel_pos_bias=None, attn_bias=dense.to("cuda", torch.bfloat16))
    check_against_reference(
        inp, spec.window, spec.shift, "effective",
        public_api_run(inp, spec.window, spec.shift, "effective"),
    )  # fmt: skip


AWKWARD = {
    "pad-masked-odd-heads": ((3, 9, 7, 11, 3, 32), (2, 3, 5), (0, 1, 2), False, "effective"),
    "pad-kv-temporal-shift": ((2, 9, 7, 11, 4, 64), (4, 3, 5), (2, 1, 2), True, "effective"),
    "clamped-legacy-d128": ((1, 3, 4, 4, 2, 128), (4, 3, 5), (2, 1, 2), True, "legacy"),
    "tiny-windows-d16": ((2, 5, 6, 7, 3, 16), (1, 2, 3), (0, 1, 1), True, "effective"),
    "big-window-pad": ((1, 20, 7, 9, 2, 32), (16, 3, 5), (0, 1, 2), True, "effective"),
    # NP 512 at head_dim 64: the dq/bias pass takes the keys in two parts and sums the bias rows
    # in memory across windows (read-modify-write behind a barrier)
    "key-parts-8x7x7-d64": ((2, 8, 10, 9, 2, 64), (8, 7, 7), (4, 3, 3), True, "effective"),
}


@pytest.mark.parametrize(
    "dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"]
)
@pytest.mark.parametrize("case", list(AWKWARD))
def test_window_attention_gpu_awkward_shapes(case, dtype):
    shape, window, shift, pad, clamped = AWKWARD[case]
    inp = window_attention_inputs(shape, window, dtype, "cuda", seed=len(case), pad_kv=pad)
    # strided inputs inside NaN-filled storage: an out-of-bounds read on the GPU shows as NaN
    inp = dict(inp, q=guarded(inp["q"]), k=guarded(inp["k"]), v=guarded(inp["v"]))
    check_against_reference(
        inp, window, shift, clamped, public_api_run(inp, window, shift, clamped)
    )


DETERMINISM = {
    name: ((4, *LAYERS[name].map_size, LAYERS[name].heads, LAYERS[name].head_dim),
           LAYERS[name].window, LAYERS[name].shift)
    for name in ("L0", "L2", "L5")
}  # fmt: skip
# the key-parts path of the dq/bias pass (NP 512, head_dim 64): bias rows summed in memory
DETERMINISM["key-parts-8x7x7-d64"] = ((2, 8, 14, 14, 3, 64), (8, 7, 7), (4, 3, 3))


@pytest.mark.parametrize("name", list(DETERMINISM))
def test_window_attention_gpu_backward_bitwise_deterministic(name):
    shape, window, shift = DETERMINISM[name]
    inp = window_attention_inputs(shape, window, torch.bfloat16, "cuda", seed=5)
    g = torch.randn(shape, device="cuda", dtype=torch.bfloat16)

    def once():
        q, k, v, table = leaves(inp["q"], inp["k"], inp["v"], inp["rel_pos_bias"].float())
        pad = tuple(leaves(*inp["pad_kv"]))
        out = window_attention(q, k, v, window, shift, table, pad_kv=pad, backend="triton")
        return grads(out, [q, k, v, table, *pad], g)

    first, second = once(), once()
    for name_, a, b in zip(["dq", "dk", "dv", "dtable", "dk_pad", "dv_pad"], first, second):
        assert torch.equal(a, b), f"{name_} differs between two identical backward passes"


@pytest.mark.parametrize("backend", ["triton", "sdpa"])
def test_window_attention_module_gpu_autocast(backend):
    """Under bf16 autocast (fp32 table and qkv bias, bf16 activations) the fused module (and the
    sdpa one) is as accurate as the reference module under the same autocast."""
    module = WindowAttention3D(512, (8, 3, 5), 16, backend=backend).cuda()
    ref = WindowAttention3D(512, (8, 3, 5), 16, backend="reference").cuda()
    ref.load_state_dict(module.state_dict())
    x = torch.randn(2, 31, 6, 10, 512, device="cuda")  # 31 frames: padding tokens too
    with torch.no_grad(), no_tf32():
        truth = copy.deepcopy(ref).double()(x.double(), (0, 1, 2))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            fused, pt = module(x, (0, 1, 2)), ref(x, (0, 1, 2))
    assert fused.dtype == torch.bfloat16
    assert_error_ratio(fused.float(), truth.float(), pt.float(), "autocast output")


def test_patched_torchvision_swin3d_gpu():
    from torchvision.models.video import swin3d_t

    model = swin3d_t(num_classes=10).cuda().eval()
    patched = patch_torchvision_swin3d(copy.deepcopy(model), backend="triton")
    truth_model = copy.deepcopy(model).double()
    x = torch.randn(2, 3, 16, 112, 112, device="cuda")
    with torch.no_grad(), no_tf32():
        out, pt, truth = patched(x), model(x), truth_model(x.double())
    assert_error_ratio(out, truth, pt, "logits")


# ----------------------------------------------------------------------------------------------
# Issue 27: the sdpa backend on the GPU, auto's table, and SDPA's deterministic mode


@pytest.mark.parametrize("shifted", [False, True], ids=["plain", "shift"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_window_attention_sdpa_gpu_full_shapes(name, shifted):
    """backend="sdpa" in bf16 at every layer: whichever SDPA kernel PyTorch picks here (memory-
    efficient, cuDNN, math) against the reference by the error-ratio rule."""
    spec = LAYERS[name]
    shift = spec.shift if shifted else (0, 0, 0)
    if shifted and shift == (0, 0, 0):
        pytest.skip(f"{name} is clamped to a global window: no shift")
    shape = (2, *spec.map_size, spec.heads, spec.head_dim)
    inp = window_attention_inputs(shape, spec.window, torch.bfloat16, "cuda", seed=4)
    run = public_api_run(inp, spec.window, shift, "effective", backend="sdpa")
    check_against_reference(inp, spec.window, shift, "effective", run)


def test_auto_on_this_gpu_follows_the_table():
    """On this GPU, bf16, every LF-VILA layer: auto runs the table's (or the rule's) backend, or
    names why it could not."""
    from lfvila.kernels import explain_window_backend
    from lfvila.kernels.window_attn import auto_table

    for spec in LFVILA_LAYERS:
        q = torch.empty(1, *spec.map_size, spec.heads, spec.head_dim, device="cuda",
                        dtype=torch.bfloat16)  # fmt: skip
        tokens = window_geometry(spec.map_size, spec.window).tokens
        want = auto_table.explain("cuda", q.device.index, torch.bfloat16, tokens)
        chosen, why = explain_window_backend(q, spec.window, spec.shift)
        assert chosen == want.backend or f"skipped {want.backend}" in why, (spec.name, why)
        assert want.reason in why


def test_window_attention_sdpa_gpu_deterministic_mode():
    """Under torch.use_deterministic_algorithms(True) the sdpa backend's backward is bitwise
    repeatable (PyTorch runs the memory-efficient backward with one key split)."""
    import os

    spec = LAYERS["L2"]
    shape = (4, *spec.map_size, spec.heads, spec.head_dim)
    inp = window_attention_inputs(shape, spec.window, torch.bfloat16, "cuda", seed=6)
    g = torch.randn(shape, device="cuda", dtype=torch.bfloat16)

    def once():
        q, k, v, table = leaves(inp["q"], inp["k"], inp["v"], inp["rel_pos_bias"].float())
        out = window_attention(q, k, v, spec.window, spec.shift, table, pad_kv=inp["pad_kv"],
                               backend="sdpa")  # fmt: skip
        return grads(out, [q, k, v, table], g)

    previous = torch.are_deterministic_algorithms_enabled()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    try:
        first, second = once(), once()
    finally:
        torch.use_deterministic_algorithms(previous)
    for name, a, b in zip(["dq", "dk", "dv", "dtable"], first, second):
        assert torch.equal(a, b), f"{name} differs between two deterministic backward passes"
