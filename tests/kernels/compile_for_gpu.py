"""Compile the Triton kernels exactly as the launchers would launch them, to Hopper cubin, on a
machine without a GPU.

The interpreter accepts things a GPU compile rejects (non-constexpr globals, tl.dot tiles under
16, mixed-dtype dots, bf16 code paths it cannot run). This script runs the window-attention
launchers on CPU tensors with kernel launches intercepted, then compiles every recorded launch
with `triton.compile` for sm_90 (ptxas included). Run it WITHOUT TRITON_INTERPRET:

    python tests/kernels/compile_for_gpu.py [case ...]

It prints one line per compiled kernel variant and exits non-zero on the first failure.
"""

from __future__ import annotations

import os
import sys
import time

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("compile_for_gpu: run without TRITON_INTERPRET (kernels must be JIT functions)")

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.autotuner import Autotuner  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

from lfvila.kernels.contrastive import triton_impl as contrastive_impl  # noqa: E402
from lfvila.kernels.contrastive.reference import sample_mtc_indices  # noqa: E402
from lfvila.kernels.testing import window_attention_inputs  # noqa: E402
from lfvila.kernels.window_attn import triton_impl  # noqa: E402
from lfvila.kernels.window_attn.geometry import window_geometry  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
MAX_SHARED = 232448  # bytes of shared memory one block may use on sm_90 (227 KiB)
LAUNCH_OPTIONS = ("num_warps", "num_stages", "num_ctas", "maxnreg")
DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
          torch.int32: "i32", torch.int64: "i64"}  # fmt: skip

# (B, T, H, W, heads, D), window, shift, dtype, pad_kv, bias, clamped_index; between them they
# cover every kernel (fused and multi-tile backward, fold), each dtype and head dims 16-128.
BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32
CASES = {
    "L0-shift-bf16": ((1, 32, 24, 40, 4, 32), (2, 3, 5), (0, 1, 2), BF16, True, True, "effective"),
    "L2-shift-bf16": ((1, 32, 6, 10, 16, 32), (8, 3, 5), (0, 1, 2), BF16, True, True, "effective"),
    "pad-masked-fp16-d64": (
        (1, 9, 7, 11, 3, 64),
        (4, 3, 5),
        (1, 1, 2),
        FP16,
        False,
        True,
        "effective",
    ),
    "legacy-fp32-d128": ((1, 3, 4, 4, 2, 128), (4, 3, 5), (2, 1, 2), FP32, True, True, "legacy"),
    "no-bias-d16": ((1, 5, 6, 7, 2, 16), (1, 2, 3), (0, 1, 1), BF16, True, False, "effective"),
}


def _record_launches():
    calls = []

    def jit_run(self, *args, grid, warmup, **kwargs):
        calls.append((self, args, kwargs))

    def autotune_run(self, *args, **kwargs):
        calls.append((self.fn, args, {**self.configs[0].all_kwargs(), **kwargs}))

    JITFunction.run = jit_run
    Autotuner.run = autotune_run
    return calls


def _type(value) -> str:
    if isinstance(value, torch.Tensor):
        return "*" + DTYPES[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i64" if abs(value) >= 2**31 else "i32"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"unsupported kernel argument {value!r}")


def compile_call(fn: JITFunction, args: tuple, kwargs: dict):
    kwargs = dict(kwargs)
    options = {k: kwargs.pop(k) for k in LAUNCH_OPTIONS if k in kwargs and kwargs[k] is not None}
    values = dict(zip(fn.arg_names, args))
    values.update(kwargs)
    signature, constexprs = {}, {}
    for name, param in zip(fn.arg_names, fn.params):
        if param.is_constexpr:
            signature[name] = "constexpr"
            constexprs[name] = values[name]
        else:
            signature[name] = _type(values[name])
    return triton.compile(ASTSource(fn, signature, constexprs), target=TARGET, options=options)


# contrastive cases: (N, d, dtype) for the InfoNCE, (B, M, d, dtype) for MTC
LOSS_CASES = {
    "infonce-bf16-d1024": ("infonce", (512, 1024, BF16)),
    "infonce-fp32-d72": ("infonce", (300, 72, FP32)),
    "mtc-bf16-d1024": ("mtc", (64, 4, 1024, BF16)),
    "mtc-fp16-d40": ("mtc", (9, 6, 40, FP16)),
}


def run_loss_case(name: str) -> None:
    kind, spec = LOSS_CASES[name]
    if kind == "infonce":
        n, d, dtype = spec
        a, b = torch.randn(n, d, dtype=dtype), torch.randn(n, d, dtype=dtype)
        log_scale = torch.tensor(3.0)
        _, lse_r, lse_c = contrastive_impl.infonce_fwd(a, b, log_scale)
        contrastive_impl.infonce_bwd(torch.tensor(1.0), a, b, log_scale, lse_r, lse_c)
    else:
        batch, clips, d, dtype = spec
        feats = torch.randn(2, batch, clips, d, dtype=dtype)
        idx = sample_mtc_indices(batch, clips)
        _, lse = contrastive_impl.mtc_fwd(feats, idx["keys"], idx["values"], idx["other"], 0.05, 3)
        contrastive_impl.mtc_bwd(
            torch.tensor(1.0), feats, idx["keys"], idx["values"], idx["other"], lse, 0.05, 3
        )


def run_case(name: str, calls: list) -> None:
    if name in LOSS_CASES:
        return run_loss_case(name)
    shape, window, shift, dtype, pad, bias, clamped = CASES[name]
    inp = window_attention_inputs(shape, window, dtype, "cpu", seed=0, pad_kv=pad, bias=bias)
    k_pad, v_pad = inp["pad_kv"] if pad else (None, None)
    args = (window, shift, shape[-1] ** -0.5, -100.0, clamped)
    table = inp["rel_pos_bias"].float() if bias else None
    out, lse = triton_impl.fwd(inp["q"], inp["k"], inp["v"], table, k_pad, v_pad, *args)
    triton_impl.bwd(
        torch.zeros_like(out), inp["q"], inp["k"], inp["v"], out, lse, table, k_pad, v_pad, *args
    )
    if bias:
        geom = window_geometry(shape[1:4], window, shift, clamped)
        dense = torch.zeros(shape[-2], geom.tokens, geom.tokens)
        triton_impl.dense_to_table(dense, geom, use_kernel=True)


def main(names: list[str]) -> int:
    calls = _record_launches()
    for name in names or [*CASES, *LOSS_CASES]:
        calls.clear()
        run_case(name, calls)
        for fn, args, kwargs in calls:
            start = time.perf_counter()
            kernel = compile_call(fn, args, kwargs)
            seconds = time.perf_counter() - start
            shared = kernel.metadata.shared
            print(f"{name}: {fn.__name__} compiled for sm_90 in {seconds:.1f} s "
                  f"(shared memory {shared} B)")  # fmt: skip
            if shared > MAX_SHARED:
                print(f"{name}: {fn.__name__} needs {shared} B of shared memory > {MAX_SHARED}")
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
