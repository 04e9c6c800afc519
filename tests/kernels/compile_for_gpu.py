"""Compile every Triton kernel variant the launchers would launch, to Hopper cubin, on a machine
without a GPU, and report each variant's registers, spill bytes and shared memory.

The interpreter accepts things a GPU compile rejects (non-constexpr globals, tl.dot tiles under
16, mixed-dtype dots, bf16 code paths it cannot run), and it says nothing about registers. This
script drives the public entry points with every kernel launch intercepted, not run, then
compiles each recorded launch for sm_90a the way the Triton runtime would at that launch on a GPU:

- what the GPU runs: attention cases run on meta tensors (no memory, no arithmetic), so the
  launchers see no CPU tensor and take their GPU paths: the module's packed-qkv path (one
  (B, T, H, W, 3, heads, D) tensor in the autocast dtype, fp32 table and pad vectors, as
  `attention_block` runs under CUDA autocast), the GPU bias reductions, and launch sizes from a
  132-SM H100/H200 (`_triton_utils.device_sms` is replaced, so every per-SM rule applies);
- every batch from 1 to 16 (`--batches`): a launch's int arguments (windows, units, units per
  program or chunk) change with the batch, and each distinct specialisation is its own variant;
- specialisation: the kernel's own argument binder with the CUDA backend, so pointers 16-byte
  aligned and ints divisible by 16 get "tt.divisibility" attributes and ints equal to 1 become
  constants (a loop over one unit per program compiles differently), exactly as
  `JITFunction.run` does on a GPU;
- autotuned kernels: every config the autotuner's prune keeps for that launch (the one that
  wins on a GPU is not known here);
- registers and spill bytes from the `ptxas -v` log of Triton's own ptxas run (the same
  invocation as at runtime); shared memory from the compiled kernel's metadata;
- the width of every global load (`ld.global` and `cp.async` instructions in the LLVM IR, each
  attributed to its source line through the debug locations): per variant a histogram, the
  width of the bias-tile loads (a bias tile that loads in pieces narrower than 8 bytes would be
  a scalar gather: it fails), and after the table every load site with the widths it takes.

It compiles with whichever Triton it imports: the CI pin (3.8) from the venv, or the GPU image's
3.6 from the side folder `make venv` installs (`PYTHONPATH=.venv/triton-3.6 python ...`); the
report names the version and its ptxas. `make test` runs the CI subset under both.

A variant fails when ptxas reports spill stores or loads, when it needs more than sm_90's 227 KiB
(232448 B) of shared memory per block, when its bias tile loads narrower than 8 bytes, when it
does not compile, or when some `*_kernel` of a kernel module is reached by no case. Run it
WITHOUT TRITON_INTERPRET:

    python tests/kernels/compile_for_gpu.py [--subset all|ci] [--report PATH] [--jobs N]
                                            [--batches 1-16] [--autotune] [--list] [case ...]

`--subset ci` is the representative subset `make test` runs (every kernel, every LF-VILA layer);
the default compiles the whole matrix. `--autotune` sets LFVILA_AUTOTUNE=1 (opt-in autotuned
launchers). The markdown report goes to --report (default stdout); the exit status is 1 when any
variant fails.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("compile_for_gpu: run without TRITON_INTERPRET (kernels must be JIT functions)")

# A fresh cache: ptxas must run for every variant, since its -v log is where the usage comes from.
CACHE_DIR = tempfile.mkdtemp(prefix="lfvila-compile-")
os.environ["TRITON_CACHE_DIR"] = CACHE_DIR

import inspect  # noqa: E402

import torch  # noqa: E402
import triton  # noqa: E402
from triton import knobs  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime.autotuner import Autotuner  # noqa: E402
from triton.runtime.jit import JITFunction, create_function_from_signature  # noqa: E402

from lfvila.kernels import _triton_utils, window_attention, window_attention_qkv  # noqa: E402
from lfvila.kernels.contrastive import triton_impl as contrastive_impl  # noqa: E402
from lfvila.kernels.contrastive.reference import sample_mtc_indices  # noqa: E402
from lfvila.kernels.window_attn import bias as attn_bias  # noqa: E402
from lfvila.kernels.window_attn import dispatch as attn_dispatch  # noqa: E402
from lfvila.kernels.window_attn import function as attn_function  # noqa: E402
from lfvila.kernels.window_attn import (  # noqa: E402
    triton_bias,
    triton_bwd_fused,
    triton_bwd_two_pass,
    triton_fwd,
    triton_rows,
)
from lfvila.kernels.window_attn.geometry import window_geometry  # noqa: E402

if __package__:  # imported as a module (a tool importing the report's helpers)
    from .compile_cases import (  # noqa: E402
        ALL_CASES,
        ATTN_CASES,
        BATCHES,
        CI_CASES,
        LOSS_CASES,
        AttnCase,
    )
    from .compile_loads import (  # noqa: E402
        MIN_BIAS_LOAD_BYTES,
        global_loads,
        load_sites,
        load_summary,
    )
else:  # run as a script (how make test and the docs run it): its folder is on sys.path
    from compile_cases import (  # noqa: E402
        ALL_CASES,
        ATTN_CASES,
        BATCHES,
        CI_CASES,
        LOSS_CASES,
        AttnCase,
    )
    from compile_loads import (  # noqa: E402
        MIN_BIAS_LOAD_BYTES,
        global_loads,
        load_sites,
        load_summary,
    )

TARGET = GPUTarget("cuda", 90, 32)
GPU_SMS = 132  # H100 / H200 SXM
MAX_SHARED = 232448  # bytes of shared memory one block may use on sm_90 (227 KiB)
KERNEL_MODULES = (triton_fwd, triton_bwd_fused, triton_bwd_two_pass, triton_bias, contrastive_impl)


# ----------------------------------------------------------------------------------------------
# Recording launches


@dataclasses.dataclass
class Launch:
    case: str  # "name@batch"
    fn: JITFunction
    args: tuple
    kwargs: dict
    autotune: str  # "k/n" for the k-th of n configs an autotuner kept, else ""


class Recorder:
    """Replaces JITFunction.run / Autotuner.run: record the launch, run nothing."""

    def __init__(self):
        self.launches: list[Launch] = []
        self.case = ""
        self._config = ""

    def install(self) -> None:
        rec = self

        def jit_run(fn, *args, grid, warmup, **kwargs):
            rec.launches.append(Launch(rec.case, fn, args, kwargs, rec._config))

        def autotune_run(tuner, *args, **kwargs):
            # What Autotuner.run benchmarks: every config its prune keeps for these arguments.
            tuner.nargs = dict(zip(tuner.arg_names, args))
            configs = tuner.prune_configs(kwargs)
            for i, config in enumerate(configs):
                rec._config = f"{i + 1}/{len(configs)}"
                tuner.fn.run(*args, **kwargs, **config.all_kwargs())
            rec._config = ""
            tuner.nargs = None

        JITFunction.run = jit_run
        Autotuner.run = autotune_run


def _gpu_launch_settings() -> None:
    """Make the launchers choose what they would on an H100/H200: program counts for 132 SMs
    (every per-SM rule), the kernel path of every launcher with a `use_kernel` switch (their CPU
    path is torch ops), and launchers called directly (the torch.library ops would send meta
    tensors to their fake implementations)."""
    _triton_utils.device_sms = lambda device: GPU_SMS
    attn_function.USE_TORCH_OPS = False
    attn_bias.USE_TORCH_OPS = False
    # the table's fold: on meta tensors `fold_table` would take the CPU's index_add_
    attn_bias.fold_table = lambda grad, geom, dtype: triton_bias.dense_to_table(
        grad.float(), geom
    ).to(dtype)
    for module in KERNEL_MODULES:
        for name, obj in list(vars(module).items()):
            if inspect.isfunction(obj) and "use_kernel" in inspect.signature(obj).parameters:
                setattr(module, name, _force_kernel(obj))
    # the dispatchers would refuse CPU tensors (and bf16 on CPU); nothing runs here anyway
    attn_dispatch.can_run_triton = lambda *args, **kwargs: []


def _force_kernel(fn):
    def wrapper(*args, use_kernel=None, **kwargs):
        return fn(*args, use_kernel=True, **kwargs)

    return wrapper


def _run_attn(c: AttnCase, batch: int) -> None:
    """Forward and backward of one case on meta tensors: only the launches matter."""
    meta = torch.device("meta")
    shape = (batch, *c.size)
    rows = (2 * c.window[0] - 1) * (2 * c.window[1] - 1) * (2 * c.window[2] - 1)

    def empty(*size, dtype=torch.float32):
        return torch.empty(size, dtype=dtype, device=meta, requires_grad=True)

    table = empty(rows, c.heads) if c.bias == "table" else None
    dense = None
    if c.bias.startswith("dense"):
        n = window_geometry(c.size, c.window, c.shift).tokens
        dense = empty(c.heads if c.bias == "dense" else 1, n, n, dtype=c.dtype)
    if c.path == "module":  # attention_block's GPU route under autocast
        padded = window_geometry(c.size, c.window, c.shift).has_padding
        pad = (empty(c.heads, c.head_dim), empty(c.heads, c.head_dim)) if padded else None
        qkv = empty(*shape, 3, c.heads, c.head_dim, dtype=c.dtype)
        out = window_attention_qkv(qkv, c.window, c.shift, table, None, pad, backend="triton")
    else:
        q, k, v = (empty(*shape, c.heads, c.head_dim, dtype=c.dtype) for _ in "qkv")
        pad = (empty(c.heads, c.head_dim, dtype=c.dtype),) * 2 if c.pad_kv else None
        out = window_attention(
            q, k, v, c.window, c.shift, table, None, pad, backend="triton",
            clamped_index=c.clamped, attn_bias=dense,
        )  # fmt: skip
    out.float().sum().backward()  # values do not matter: no kernel runs


def _run_loss(kind: str, spec: tuple) -> None:
    if kind == "infonce":
        n, d, dtype = spec
        a, b = torch.randn(n, d, dtype=dtype), torch.randn(n, d, dtype=dtype)
        log_scale = torch.tensor(3.0)
        _, lse_r, lse_c = contrastive_impl.infonce_fwd(a, b, log_scale)
        contrastive_impl.infonce_bwd(torch.tensor(1.0), a, b, log_scale, lse_r, lse_c)
        return
    batch, clips, d, dtype = spec
    feats = torch.randn(2, batch, clips, d, dtype=dtype)
    idx = sample_mtc_indices(batch, clips)
    _, lse = contrastive_impl.mtc_fwd(feats, idx["keys"], idx["values"], idx["other"], 0.05, 3)
    contrastive_impl.mtc_bwd(
        torch.tensor(1.0), feats, idx["keys"], idx["values"], idx["other"], lse, 0.05, 3
    )


def record(names: list[str], batches: tuple[int, ...] = BATCHES) -> list[Launch]:
    rec = Recorder()
    rec.install()
    _gpu_launch_settings()
    for name in names:
        if name in ATTN_CASES:
            case = ATTN_CASES[name]
            for batch in (case.batch,) if case.batch else batches:
                rec.case = f"{name}@{batch}"
                _run_attn(case, batch)
        else:
            rec.case = name
            _run_loss(*LOSS_CASES[name])
    return rec.launches


# ----------------------------------------------------------------------------------------------
# Specialising and compiling

_BACKEND = make_backend(TARGET)
_BINDERS: dict[JITFunction, object] = {}


@dataclasses.dataclass
class Variant:
    """One distinct compile: a kernel with one specialisation and one set of options."""

    fn: JITFunction
    signature: dict
    constexprs: dict
    attrs: dict
    options: object
    cases: list[str]
    autotune: str


def specialise(launch: Launch):
    """(signature, constexprs, attrs, options, key) exactly as JITFunction.run builds them."""
    fn, kwargs = launch.fn, dict(launch.kwargs)
    kwargs["debug"] = kwargs.get("debug", fn.debug) or knobs.runtime.debug
    kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    if fn not in _BINDERS:
        _BINDERS[fn] = create_function_from_signature(fn.signature, fn.params, _BACKEND)
    bound, specialization, options = _BINDERS[fn](*launch.args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(
        _BACKEND, kwargs, bound, specialization, options
    )
    key = (fn.__module__, fn.__name__, repr(specialization), repr(options))
    return signature, constexprs, attrs, options, key


def variants(launches: list[Launch]) -> list[Variant]:
    found: dict[tuple, Variant] = {}
    for launch in launches:
        signature, constexprs, attrs, options, key = specialise(launch)
        if key in found:
            if launch.case not in found[key].cases:
                found[key].cases.append(launch.case)
            continue
        found[key] = Variant(
            launch.fn, signature, constexprs, attrs, options, [launch.case], launch.autotune
        )
    return list(found.values())


_PTXAS = {
    "registers": re.compile(r"Used (\d+) registers"),
    "spill_stores": re.compile(r"(\d+) bytes spill stores"),
    "spill_loads": re.compile(r"(\d+) bytes spill loads"),
    "stack": re.compile(r"(\d+) bytes stack frame"),
}
_VARIANTS: list[Variant] = []  # set before the worker processes fork


def compile_variant(index: int) -> dict:
    v = _VARIANTS[index]
    knobs.nvidia.dump_ptxas_log = True  # Triton prints ptxas's -v log to stdout: capture it
    log = io.StringIO()
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(log):
            kernel = triton.compile(
                ASTSource(v.fn, v.signature, v.constexprs, v.attrs),
                target=TARGET,
                options=v.options.__dict__,
            )
    except Exception as exc:  # noqa: BLE001 - any compiler failure is a reported failure
        lines = [ln for ln in str(exc).splitlines() if ln.strip()] or [type(exc).__name__]
        return dict(error=f"{type(exc).__name__}: {lines[0][:200]}")
    seconds = time.perf_counter() - start
    usage = {}
    for name, pattern in _PTXAS.items():
        match = pattern.search(log.getvalue())
        if match is None:
            return dict(error=f"no '{name}' in the ptxas log (cached compile?)")
        usage[name] = int(match.group(1))
    loads = global_loads(kernel.asm["llir"])
    return dict(usage, shared=kernel.metadata.shared, seconds=seconds, loads=loads)


def compile_all(found: list[Variant], jobs: int) -> list[dict]:
    _VARIANTS[:] = found
    if jobs <= 1:
        return [compile_variant(i) for i in range(len(found))]
    # fork: the workers inherit the recorded variants (JIT functions do not pickle)
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:
        return list(pool.map(compile_variant, range(len(found))))


# ----------------------------------------------------------------------------------------------
# Report


def expected_kernels() -> set[str]:
    """Every launchable kernel (`*_kernel`) defined in the kernel modules."""
    names = set()
    for module in KERNEL_MODULES:
        for obj in vars(module).values():
            while not isinstance(obj, JITFunction) and hasattr(obj, "fn"):
                obj = obj.fn
            if isinstance(obj, JITFunction) and obj.__name__.endswith("_kernel"):
                names.add(obj.__name__)
    return names


def _config(v: Variant) -> str:
    names = v.fn.arg_names
    consts = {names[path[0]]: value for path, value in v.constexprs.items() if len(path) == 1}
    shown = [
        f"{k}={val}"
        for k, val in consts.items()
        if "BLOCK" in k or k in ("NP", "NJ") or (k == "KEY_SPLIT" and val > 1)
    ]
    text = f"w{v.options.num_warps} s{v.options.num_stages}"
    if getattr(v.options, "maxnreg", None):
        text += f" maxnreg {v.options.maxnreg}"
    if v.autotune:
        text += f" (autotune {v.autotune})"
    return " ".join([text, *shown])


def _ranges(values: list[int]) -> str:
    """[1, 2, 3, 5] -> '1-3,5'."""
    out, values = [], sorted(set(values))
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        out.append(str(values[i]) if i == j else f"{values[i]}-{values[j]}")
        i = j + 1
    return ",".join(out)


def _cases(names: list[str]) -> str:
    """Cases of a variant with the batches that reach it: 'L0-shift-bf16-d32 b1-16, ...'."""
    by_case: dict[str, list[int]] = {}
    for name in names:
        case, _, batch = name.partition("@")
        by_case.setdefault(case, []).extend([int(batch)] if batch else [])
    parts = [f"{case} b{_ranges(b)}" if b else case for case, b in by_case.items()]
    return ", ".join(parts) if len(parts) <= 3 else ", ".join(parts[:3]) + f" +{len(parts) - 3}"


def parse_batches(text: str) -> tuple[int, ...]:
    """'1-16' or '2,16' or '1-4,16' -> the batches."""
    out = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    if not out or min(out) < 1:
        raise ValueError(f"--batches {text!r}: positive batch sizes, e.g. 1-16 or 2,16")
    return tuple(sorted(set(out)))


def _fp32_only(cases: list[str]) -> bool:
    return all("fp32" in name for name in cases)


def _status(r: dict, cases: list[str], spills_fail: bool = True) -> tuple[list[str], list[str]]:
    """(problems that fail the check, notes that do not).

    The no-spill rule covers fp16 and bf16 (issue 11's contract: the training dtypes) under the
    CI's Triton. fp32 variants use IEEE dots (`dot_precision`), which need several times the
    registers of a tensor-core dot; at head_dim >= 64 they spill in every tiling tried
    (BENCHMARKS.md), so for them a spill is reported, not failed; so is every spill with
    `spills_fail=False` (`--spills report`: the GPU image's Triton, whose register allocation
    is read here, not tuned for). Shared memory over the limit fails for every dtype and
    version: such a kernel cannot launch."""
    if "error" in r:
        return ["ERROR " + r["error"].replace("|", "/")], []
    problems, notes = [], []
    if r["spill_stores"] or r["spill_loads"]:
        if _fp32_only(cases):
            notes.append("spill (fp32 IEEE dots: reported, not failed)")
        elif not spills_fail:
            notes.append("SPILL (reported, not failed: --spills report)")
        else:
            problems.append("SPILL")
    if r["shared"] > MAX_SHARED:
        problems.append("SHARED > 227 KiB")
    if load_summary(r["loads"])[2]:
        problems.append(f"BIAS TILE LOADS < {MIN_BIAS_LOAD_BYTES} B (a gather)")
    return problems, notes


def report(
    found, results, cases, missing, seconds, jobs, batches, spills_fail=True
) -> tuple[str, int]:
    failures = reported_spills = 0
    ptxas = knobs.nvidia.ptxas.path
    lines = [
        f"Target sm_90a; triton {triton.__version__}, torch {torch.__version__}, "
        f"ptxas {_ptxas_version(ptxas)} ({_relative(ptxas)}).",
        f"{len(cases)} cases at batch {_ranges(list(batches))} with launch sizes of a {GPU_SMS}-SM "
        f"GPU, {len(found)} distinct kernel variants, compiled in {seconds:.0f} s wall with {jobs} "
        "process(es).",
        "",
        "| kernel | cases | config | registers | spill st/ld (B) | stack (B) | shared (B) | "
        "global loads (width x count) | bias tile | compile (s) | status |",
        "|---|---|---|---:|---:|---:|---:|---|---|---:|---|",
    ]
    order = sorted(range(len(found)), key=lambda i: (found[i].fn.__name__, found[i].cases[0]))
    for i in order:
        v, r = found[i], results[i]
        problems, notes = _status(r, v.cases, spills_fail)
        failures += bool(problems)
        reported_spills += bool(notes)
        status = "; ".join(problems + notes) or "ok"
        if "error" in r:
            cells = ["", "", "", "", "", "", ""]
        else:
            widths, bias_widths, _ = load_summary(r["loads"])
            cells = [
                str(r["registers"]),
                f"{r['spill_stores']}/{r['spill_loads']}",
                str(r["stack"]),
                str(r["shared"]),
                widths,
                bias_widths,
                f"{r['seconds']:.1f}",
            ]
        lines.append(
            f"| {v.fn.__name__} | {_cases(v.cases)} | {_config(v)} | " + " | ".join(cells)
            + f" | {status} |"
        )  # fmt: skip
    lines += ["", *load_sites(found, results, (*KERNEL_MODULES, triton_rows)), ""]
    if missing:
        failures += len(missing)
        lines.append(f"NOT COMPILED by any case: {', '.join(sorted(missing))}.")
    lines.append(
        f"{failures} failing variant(s) of {len(found)} (spills, shared memory over "
        f"{MAX_SHARED} B, bias tiles gathered, compile errors, kernels no case reaches)."
        if failures
        else f"All {len(found)} variants compile within {MAX_SHARED} B of shared memory"
        + f", bias tiles in loads of at least {MIN_BIAS_LOAD_BYTES} B"
        + (", fp16/bf16 without spills" if spills_fail else "")
        + f"; variants that spill, reported, not failed: {reported_spills}."
    )
    return "\n".join(lines) + "\n", failures


def _relative(path: str) -> str:
    return os.path.relpath(path, os.path.dirname(os.path.dirname(triton.__file__)))


def _ptxas_version(path: str) -> str:
    import subprocess

    out = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
    match = re.search(r"release ([\d.]+)", out)
    return match.group(1) if match else "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", nargs="*", help="case names (default: the --subset)")
    parser.add_argument("--subset", choices=("all", "ci"), default="all")
    parser.add_argument("--report", help="write the markdown report here (default: stdout)")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--batches", default="1-16", help="attention batch sizes (default 1-16)")
    parser.add_argument(
        "--spills", choices=("fail", "report"), default="fail",
        help="fp16/bf16 spills fail the check (default) or are only reported",
    )  # fmt: skip
    parser.add_argument("--autotune", action="store_true", help="set LFVILA_AUTOTUNE=1")
    parser.add_argument("--list", action="store_true", help="print the case names and exit")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(f"{n}{' (ci)' if n in CI_CASES else ''}" for n in ALL_CASES))
        return 0
    names = args.cases or (CI_CASES if args.subset == "ci" else ALL_CASES)
    unknown = [n for n in names if n not in ATTN_CASES and n not in LOSS_CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; --list shows them")
    if args.autotune:
        os.environ["LFVILA_AUTOTUNE"] = "1"
    start = time.perf_counter()
    try:
        batches = parse_batches(args.batches)
    except ValueError as exc:
        parser.error(str(exc))
    found = variants(record(names, batches))
    results = compile_all(found, args.jobs)
    seconds = time.perf_counter() - start
    # a partial case list need not reach every kernel
    missing = expected_kernels() - {v.fn.__name__ for v in found} if not args.cases else set()
    text, failures = report(
        found, results, names, missing, seconds, args.jobs, batches, args.spills == "fail"
    )
    if args.report:
        with open(args.report, "w") as f:
            f.write(text)
        print(text.splitlines()[-1])
    else:
        print(text, end="")
    shutil.rmtree(CACHE_DIR, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
