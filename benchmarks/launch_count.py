"""Count the device work of one window-attention forward + backward, without a GPU.

For each LF-VILA layer shape (PERF.md; batch 1, the real map) this runs the fused (triton)
path on the `meta` device with every Triton launch intercepted and counts:

- triton: Triton kernel launches (`JITFunction.run`; an autotuned kernel counts once);
- aten: aten ops that launch device kernels, seen by a TorchDispatchMode: everything except
  view/metadata ops (view, _unsafe_view, as_strided, t, permute, expand, unsqueeze, select,
  slice, unbind, detach, _unsafe_view, ...: ops whose output aliases an input) and allocations;
- alloc: allocations (empty, empty_strided, empty_like, new_empty, ...): the caching allocator,
  no kernel.

On `meta` the module takes its GPU branch (one qkv GEMM, a packed qkv), so two paths are counted:
"functional" (`window_attention(q, k, v, ...)` on separate tensors, bias table, no pad vectors)
and "module" (`WindowAttention3D`, bf16 with its fp32 bias table: qkv and output projections
included, whose GEMMs, bias adds and backward reductions are then part of the aten count).
Launchers are called directly (the `lfvila::` custom ops would run their fake impls on meta), the
GPU kernel path of launchers with a `use_kernel` switch is taken, and program counts are those of
a 132-SM GPU. One aten op can launch more than one kernel (and a cuBLAS GEMM may add a split-K
reduction), so "aten" is a lower bound on its kernels.

    python benchmarks/launch_count.py [--layers L0 L2] [--verbose]   # markdown table to stdout
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import inspect
import sys
from collections.abc import Callable, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lfvila.model.shapes import LFVILA_LAYERS, AttentionLayer

GPU_SMS = 132  # H100 / H200 SXM
ALLOC_OPS = {"empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided"}
METADATA_OPS = {"detach", "lift_fresh", "_unsafe_view", "_reshape_alias", "sym_size", "sym_stride"}


def _op_kind(func) -> str:
    name = func._schema.name.split("::")[-1]
    if name in ALLOC_OPS:
        return "alloc"
    if name in METADATA_OPS or func.is_view or _returns_alias(func):
        return "view"
    return "aten"


def _returns_alias(func) -> bool:
    """Ops whose outputs alias an input without writing it (e.g. unbind, split)."""
    for ret in func._schema.returns:
        info = ret.alias_info
        if info is not None and not info.is_write:
            return True
    return False


class OpCounter(TorchDispatchMode):
    """Counts aten ops by kind ("aten", "alloc", "view") and by name."""

    def __init__(self):
        super().__init__()
        self.kinds: collections.Counter = collections.Counter()
        self.names: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kind = _op_kind(func)
        self.kinds[kind] += 1
        if kind != "view":
            self.names[f"{kind}:{func._schema.name.split('::')[-1]}"] += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def _patched(obj, name: str, value) -> Iterator[None]:
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


@contextlib.contextmanager
def intercepted_launches() -> Iterator[list[str]]:
    """Record Triton launches (kernel names) instead of running them, with GPU launch settings;
    everything is restored on exit."""
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    from lfvila.kernels import _triton_utils as triton_utils
    from lfvila.kernels.contrastive import triton_impl as contrastive_impl
    from lfvila.kernels.window_attn import bias, dispatch, function, triton_bias

    launches: list[str] = []

    def jit_run(fn, *args, grid=None, warmup=False, **kwargs):
        launches.append(fn.__name__)

    def autotune_run(tuner, *args, **kwargs):
        # one launch of one kept config (a GPU would benchmark them first: not counted)
        tuner.nargs = dict(zip(tuner.arg_names, args))
        config = tuner.prune_configs(kwargs)[0]
        tuner.nargs = None
        return tuner.fn.run(*args, **kwargs, **config.all_kwargs())

    with contextlib.ExitStack() as stack:
        stack.enter_context(_patched(JITFunction, "run", jit_run))
        stack.enter_context(_patched(InterpretedFunction, "run", jit_run))
        stack.enter_context(_patched(Autotuner, "run", autotune_run))
        stack.enter_context(_patched(dispatch, "can_run_triton", lambda *a, **k: []))
        stack.enter_context(_patched(function, "USE_TORCH_OPS", False))
        stack.enter_context(_patched(bias, "USE_TORCH_OPS", False))
        # the table's fold as on a GPU (on meta tensors fold_table would take index_add_)
        gpu_fold = lambda grad, geom, dtype: triton_bias.dense_to_table(grad.float(), geom).to(
            dtype
        )  # noqa: E731
        stack.enter_context(_patched(bias, "fold_table", gpu_fold))
        # launch sizes as on a GPU_SMS-SM GPU, whatever the tensors' device
        stack.enter_context(_patched(triton_utils, "device_sms", lambda device: GPU_SMS))
        for module in (triton_bias, contrastive_impl):
            for name, obj in list(vars(module).items()):
                if inspect.isfunction(obj) and "use_kernel" in inspect.signature(obj).parameters:
                    stack.enter_context(_patched(module, name, _force_kernel(obj)))
        yield launches


def _force_kernel(fn: Callable) -> Callable:
    def wrapper(*args, use_kernel=None, **kwargs):
        return fn(*args, use_kernel=True, **kwargs)

    return wrapper


def count(fn: Callable[[], torch.Tensor], leaves: list[torch.Tensor]) -> dict[str, dict]:
    """Counts for fn() (forward) and then the backward of its output, separately, after one
    uncounted call that fills the launchers' per-shape caches (steady state, as in training).
    `leaves` get .grad = None before the counted call (zero_grad(set_to_none=True)), so the
    backward assigns gradients instead of accumulating them."""
    result = {}
    with intercepted_launches() as launches:
        out = fn()
        out.backward(torch.empty_like(out))
        launches.clear()
        for leaf in leaves:
            leaf.grad = None
        with OpCounter() as ops:
            out = fn()
        result["fwd"] = dict(triton=len(launches), **_kinds(ops), names=_names(launches, ops))
        launches.clear()
        grad = torch.empty_like(out)  # outside the counter: the upstream gradient is given
        with OpCounter() as ops:
            out.backward(grad)
        result["bwd"] = dict(triton=len(launches), **_kinds(ops), names=_names(launches, ops))
    return result


def _kinds(ops: OpCounter) -> dict[str, int]:
    return {k: ops.kinds[k] for k in ("aten", "alloc", "view")}


def _names(launches: list[str], ops: OpCounter) -> dict[str, int]:
    names = collections.Counter(f"triton:{n}" for n in launches)
    names.update(ops.names)
    return dict(sorted(names.items()))


def functional_call(spec: AttentionLayer, shift, dtype=torch.bfloat16, batch: int = 1):
    from lfvila.kernels import window_attention

    shape = (batch, *spec.map_size, spec.heads, spec.head_dim)
    q, k, v = (torch.empty(shape, dtype=dtype, device="meta", requires_grad=True) for _ in "qkv")
    rows = 1
    for w in spec.window:
        rows *= 2 * w - 1
    table = torch.empty(rows, spec.heads, device="meta", requires_grad=True)
    return lambda: window_attention(q, k, v, spec.window, shift, table, backend="triton"), [
        q,
        k,
        v,
        table,
    ]


def module_call(spec: AttentionLayer, shift, dtype=torch.bfloat16, batch: int = 1):
    from lfvila.kernels import WindowAttention3D

    module = WindowAttention3D(spec.channels, spec.window, spec.heads, backend="triton")
    module = module.to("meta")
    module.qkv.to(dtype)
    module.proj.to(dtype)
    x = torch.empty(batch, *spec.map_size, spec.channels, dtype=dtype, device="meta")
    x.requires_grad_()
    return lambda: module(x, shift), [x, *module.parameters()]


PATHS = {"functional": functional_call, "module": module_call}


def count_layers(layers=LFVILA_LAYERS, paths=tuple(PATHS)) -> list[dict]:
    rows = []
    for spec in layers:
        shifts = [("", (0, 0, 0))] + ([("-shift", spec.shift)] if any(spec.shift) else [])
        for suffix, shift in shifts:
            for path in paths:
                counts = count(*PATHS[path](spec, shift))
                rows.append(dict(case=spec.name + suffix, path=path, **counts))
    return rows


def table(rows: list[dict], verbose: bool = False) -> str:
    lines = [
        "| case | path | triton fwd | triton bwd | aten fwd | aten bwd | alloc fwd | alloc bwd |"
        " device kernels fwd+bwd |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        f, b = r["fwd"], r["bwd"]
        total = f["triton"] + b["triton"] + f["aten"] + b["aten"]
        lines.append(
            f"| {r['case']} | {r['path']} | {f['triton']} | {b['triton']} | {f['aten']} | "
            f"{b['aten']} | {f['alloc']} | {b['alloc']} | {total} |"
        )
    if verbose:
        for r in rows:
            for mode in ("fwd", "bwd"):
                names = ", ".join(f"{n} x{c}" for n, c in r[mode]["names"].items())
                lines.append(f"\n{r['case']} {r['path']} {mode}: {names}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", nargs="*", help="layer names (default: L0 L1 L2 L3 L5)")
    parser.add_argument("--paths", nargs="*", choices=tuple(PATHS), default=list(PATHS))
    parser.add_argument("--verbose", action="store_true", help="list the ops and kernels")
    args = parser.parse_args(argv)
    layers = [s for s in LFVILA_LAYERS if not args.layers or s.name in args.layers]
    print(table(count_layers(layers, args.paths), args.verbose), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
