"""Bisect the window-attention kernels on a GPU: which launch variant makes a failing case right.

Issue 18: on an H200 (triton 3.6) shifted windows with a bias table gave wrong gradients (and at
L0 a wrong forward) while every interpreter test passes. This script runs each case under each
variant, compares with the reference by the error-ratio rule (STYLE.md; truth = the reference in
fp32, or fp64 for fp32 inputs), and prints one table:

    case x variant -> "ok", or the worst tensor and its error as a multiple of the bound,
                      "ND" when two identical runs differ in a bit (a race or an uninitialised
                      read), "ERR" when the run raised

Columns checked: out, lse (the forward's saved log-sum-exp against the reference logsumexp: the
statistics the backward recomputes P from), dq, dk, dv, dtable (dk_pad, dv_pad where padded).

Variants (each patches `triton_impl` for its run only):
    baseline    as shipped
    one-unit    one unit (forward) / one unit or window (backward) per program: no loop runs
                more than once, so nothing carries from one iteration to the next
    stages1     num_stages=1 for every launch: no software pipelining of any loop
    warps       the other warp count (4 <-> 8) for every launch
    nan-scratch every launcher buffer starts as NaN: an element read before it is written shows
    mask0       mask_value 0 (shift regions not masked; the kernel's shift path still runs)
    no-bias     no bias table (the path reported right on the GPU)

On a GPU each variant runs in its own process (Triton compiles on the host's cores in parallel);
a case whose variant raises is reported as ERR and the rest go on. With `--sanitizer` one fused
forward + backward of the first case at batch 1 runs under compute-sanitizer's racecheck,
synccheck and initcheck at the same time (each in its own process, all within
`--sanitizer-timeout` seconds of the start): their summaries join the table. The launch
parameters of every kernel launch (grid, units per program or chunk, warps, stages) are logged
per case: whether the trip count matters is answerable from the log alone.

    python benchmarks/bisect_window_attention.py [--cases L0-shift,...] [--variants ...]
        [--batch 2] [--sanitizer] [--out DIR]
    python benchmarks/bisect_window_attention.py --smoke     CPU: interpreter, tiny shapes

Exit status 0 when the script ran (whatever the table says), 1 when it could not run at all.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import subprocess
import sys
import time

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from lfvila.kernels import window_attention  # noqa: E402
from lfvila.kernels._buffers import poisoned_buffers  # noqa: E402
from lfvila.kernels.testing import error_report, no_tf32, window_attention_inputs  # noqa: E402
from lfvila.kernels.window_attn import triton_impl, window_attention_lse_ref  # noqa: E402
from lfvila.model.shapes import AttentionLayer, layer  # noqa: E402

OUTPUT = dict(ratio=2.0, floor=1e-5)
GRADIENT = dict(ratio=3.0, floor=1e-4)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclasses.dataclass(frozen=True)
class Case:
    """One window-attention problem: a layer (shifted or not), a dtype, the table's dtype."""

    name: str
    spec: AttentionLayer
    shift: tuple[int, int, int]
    dtype: torch.dtype
    table_dtype: torch.dtype


def parse_case(text: str) -> Case:
    """'L0-shift', 'VS-2x7x7-shift:fp32', 'L3-shift:bf16:bf16-table', 'L0' (bf16, fp32 table)."""
    name, *opts = text.split(":")
    shifted = name.endswith("-shift")
    base = name[: -len("-shift")] if shifted else name
    smoke = {s.name: s for s in SMOKE_LAYERS}
    spec = smoke[base] if base in smoke else layer(base)
    dtype = DTYPES[opts[0]] if opts else torch.bfloat16
    table = torch.float32
    if len(opts) > 1:
        if not opts[1].endswith("-table") or opts[1][: -len("-table")] not in DTYPES:
            raise ValueError(f"case {text!r}: the third field is <dtype>-table, e.g. bf16-table")
        table = DTYPES[opts[1][: -len("-table")]]
    shift = spec.shift if shifted else (0, 0, 0)
    if shifted and shift == (0, 0, 0):
        raise ValueError(f"case {text!r}: {base} is a global window (never shifted)")
    return Case(text, spec, shift, dtype, table)


SMOKE_LAYERS = (
    AttentionLayer("tiny-packed", (4, 6, 10), 2, (2, 3, 5), head_dim=16),
    AttentionLayer("tiny-multi-tile", (4, 6, 7), 2, (4, 3, 7), head_dim=16, temporal_shift=True),
)
# The GPU's failing cases of issue 18 (bf16 with the module's fp32 table, the tests' bf16 table,
# fp32 whose dots are FMA loops, not tensor cores), and a control that passed there (L0 plain).
DEFAULT_CASES = (
    "L0-shift", "L0-shift:bf16:bf16-table", "L0-shift:fp32", "L3-shift", "VS-2x7x7-shift", "L0",
)  # fmt: skip
SMOKE_CASES = ("tiny-packed-shift:fp32", "tiny-multi-tile-shift:fp32", "tiny-packed:fp16")


# ----------------------------------------------------------------------------------------------
# Variants: context managers that patch the launchers for one run


@contextlib.contextmanager
def _patched(obj, name, value):
    """obj.name = value inside (this script runs standalone: benchmarks/ is not a package
    on its path, so launch_count's twin is not importable here)."""
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def _launch_override(**changes):
    """Every launch-settings function of triton_impl with `changes` applied to its dict."""
    stack = contextlib.ExitStack()
    for fname in ("fwd_launch", "bwd_launch", "dq_bias_launch"):
        original = getattr(triton_impl, fname)

        def patched(*args, _original=original, **kwargs):
            settings = dict(_original(*args, **kwargs))
            for key, fn in changes.items():
                settings[key] = fn(settings.get(key))
            return settings

        stack.enter_context(_patched(triton_impl, fname, patched))
    return stack


def _one_unit():
    # every launcher sizes its grid with _programs(units, ...): as many programs as units
    return _patched(triton_impl, "_programs", lambda units, *args, **kwargs: units)


VARIANTS = {
    "baseline": lambda: contextlib.nullcontext(),
    "one-unit": _one_unit,
    "stages1": lambda: _launch_override(num_stages=lambda s: 1),
    "warps": lambda: _launch_override(num_warps=lambda w: 8 if (w or 4) == 4 else 4),
    "nan-scratch": poisoned_buffers,
    "mask0": lambda: contextlib.nullcontext(),  # input variant: mask_value 0
    "no-bias": lambda: contextlib.nullcontext(),  # input variant: no table
}


# ----------------------------------------------------------------------------------------------
# Running one case


class LaunchLog:
    """Records every Triton launch of the window-attention kernels (name, grid, the loop-trip
    arguments, warps, stages) while active, and still runs it."""

    KEYS = ("units", "units_per_program", "units_per_chunk", "total_windows")

    def __init__(self):
        self.lines: list[str] = []

    @contextlib.contextmanager
    def active(self):
        kernel_class = type(triton_impl._fwd_kernel)  # JITFunction, or the interpreter's
        original = kernel_class.run
        log = self

        def run(fn, *args, grid, warmup, **kwargs):
            if not warmup and fn.fn.__module__ == triton_impl.__name__:
                named = dict(zip(fn.arg_names, args))
                trips = {k: named[k] for k in log.KEYS if k in named}
                shown = {k: kwargs[k] for k in ("NP", "NJ", "BLOCK", "BLOCK_Q", "KEY_SPLIT")
                         if k in kwargs}  # fmt: skip
                log.lines.append(
                    f"{fn.__name__} grid={tuple(grid) if not callable(grid) else 'fn'} {trips} "
                    f"{shown} warps={kwargs.get('num_warps')} stages={kwargs.get('num_stages')}"
                )
            return original(fn, *args, grid=grid, warmup=warmup, **kwargs)

        kernel_class.run = run
        try:
            yield self
        finally:
            kernel_class.run = original


def _inputs(case: Case, batch: int, device: str, variant: str) -> dict:
    shape = (batch, *case.spec.map_size, case.spec.heads, case.spec.head_dim)
    inp = window_attention_inputs(shape, case.spec.window, case.dtype, device, seed=3)
    inp["rel_pos_bias"] = None if variant == "no-bias" else inp["rel_pos_bias"].to(case.table_dtype)
    inp["mask_value"] = 0.0 if variant == "mask0" else -100.0
    return inp


def _leaves(inp, dtype=None):
    names = ("q", "k", "v", "rel_pos_bias")
    out = [None if inp[n] is None else inp[n].detach().to(dtype or inp[n].dtype).requires_grad_()
           for n in names]  # fmt: skip
    pad = tuple(p.detach().to(dtype or p.dtype).requires_grad_() for p in inp["pad_kv"])
    return out, pad


def _run(case: Case, inp: dict, g: torch.Tensor, backend: str, dtype=None):
    """(out, lse or None, {grad name: grad}) of one forward + backward."""
    (q, k, v, table), pad = _leaves(inp, dtype)
    args = (case.spec.window, case.shift, table, None, pad, inp["mask_value"])
    if backend == "reference":
        from lfvila.kernels import window_attention_ref

        out = window_attention_ref(q, k, v, *args)
        lse = window_attention_lse_ref(q, k, *args)
    else:
        out = window_attention(q, k, v, *args, backend="triton")
        scale = case.spec.head_dim**-0.5
        with torch.no_grad():
            _, lse2 = triton_impl.fwd(
                q, k, v, table, *pad, case.spec.window, case.shift, scale, inp["mask_value"]
            )
        lse = lse2 * math.log(2.0)  # log2 units -> natural
    named = {"dq": q, "dk": k, "dv": v, "dtable": table, "dk_pad": pad[0], "dv_pad": pad[1]}
    named = {n: x for n, x in named.items() if x is not None}
    got = torch.autograd.grad(out, list(named.values()), g.to(out.dtype), allow_unused=True)
    grads = {n: (torch.zeros_like(x) if d is None else d) for (n, x), d in zip(named.items(), got)}
    return out.detach(), lse.detach(), grads


def run_case(case: Case, variant: str, batch: int, device: str, log: LaunchLog) -> str:
    """One table cell."""
    inp = _inputs(case, batch, device, variant)
    g = torch.randn(inp["q"].shape, generator=torch.Generator().manual_seed(1)).to(device)
    truth_dtype = torch.float64 if case.dtype == torch.float32 else torch.float32
    with no_tf32():
        truth = _run(case, inp, g, "reference", truth_dtype)
        pt = _run(case, inp, g, "reference")
    with VARIANTS[variant](), log.active():
        first = _run(case, inp, g, "triton")
        second = _run(case, inp, g, "triton")
    worst, worst_name = 0.0, ""
    checks = [
        ("out", first[0], truth[0], pt[0], OUTPUT),
        ("lse", first[1], truth[1], pt[1], OUTPUT),
    ]
    checks += [(n, first[2][n], truth[2][n], pt[2][n], GRADIENT) for n in first[2]]
    for name, out, t, p, rule in checks:
        ok, _ = error_report(out.float(), t.float(), p.float(), **rule)
        err = (out.double() - t.double()).abs().max().item()
        bound = rule["ratio"] * (p.double() - t.double()).abs().max().item()
        bound += rule["floor"] * t.double().abs().max().item()
        ratio = math.inf if not math.isfinite(err) else err / bound if bound else math.inf
        if not ok and ratio >= worst:
            worst, worst_name = ratio, name
    same = all(torch.equal(a, b) for a, b in zip(_flat(first), _flat(second)))
    cell = "ok" if not worst_name else f"{worst_name} {worst:.2g}x"
    return cell + ("" if same else " ND")


def _flat(result):
    out, lse, grads = result
    return [out, lse, *grads.values()]


# ----------------------------------------------------------------------------------------------
# compute-sanitizer


SANITIZER_TOOLS = ("racecheck", "synccheck", "initcheck")


def start_sanitizers(case: str, out_dir: str) -> dict:
    """racecheck / synccheck / initcheck of one fused forward + backward of `case` at batch 1,
    each in its own process, all at once (they run beside the bisect's variants):
    {tool: (process or None, log path, error)}."""
    running = {}
    for tool in SANITIZER_TOOLS:
        cmd = ["compute-sanitizer", "--tool", tool, "--print-limit", "20",
               sys.executable, __file__, "--child", "--cases", case, "--batch", "1",
               "--out", out_dir]  # fmt: skip
        log_path = os.path.join(out_dir, f"sanitizer_{tool}.log")
        try:
            log = open(log_path, "w")
            running[tool] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log_path,
                             None)  # fmt: skip
        except FileNotFoundError:
            running[tool] = (None, log_path, "compute-sanitizer not found")
    return running


def finish_sanitizers(running: dict, deadline: float) -> dict[str, str]:
    """Wait for the sanitizers until `deadline` (time.time()); {tool: summary line}."""
    results = {}
    for tool, (proc, log_path, error) in running.items():
        if proc is None:
            results[tool] = error
            continue
        try:
            proc.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            proc.kill()
            results[tool] = "timed out"
            continue
        with open(log_path) as f:
            text = f.read()
        results[tool] = next((ln.strip() for ln in text.splitlines() if "ERROR SUMMARY" in ln),
                             f"exit {proc.returncode}, no summary")  # fmt: skip
    return results


# ----------------------------------------------------------------------------------------------


def run_table(cases, variants, batch, device, out_dir) -> list[tuple[str, list[str]]]:
    """[(case name, [cell per variant])] run in this process; launch log to out_dir."""
    cells = {case.name: [] for case in cases}
    log = LaunchLog()
    for variant in variants:
        for case in cases:
            log.lines.append(f"== {case.name} / {variant}")
            t0 = time.time()
            try:
                cell = run_case(case, variant, batch, device, log)
            except Exception as exc:  # noqa: BLE001 - a failing variant is a result, not a stop
                cell = "ERR"
                log.lines.append(f"ERROR {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
            cells[case.name].append(cell)
            log.lines.append(f"-> {cell} ({time.time() - t0:.1f} s)")
            print(f"  {case.name} / {variant}: {cell}", flush=True)
    name = "bisect_launches" + (f"_{variants[0]}" if len(variants) == 1 else "") + ".log"
    with open(os.path.join(out_dir, name), "w") as f:
        f.write("\n".join(log.lines) + "\n")
    return [(case.name, cells[case.name]) for case in cases]


def run_parallel(names, variants, batch, out_dir, jobs, smoke) -> list[tuple[str, list[str]]]:
    """One child process per variant (Triton compiles on the host's cores in parallel; the GPU
    runs are short), `jobs` at a time; their cells merged into one table."""
    pending, running, results = list(variants), {}, {}
    while pending or running:
        while pending and len(running) < jobs:
            variant = pending.pop(0)
            path = os.path.join(out_dir, f"bisect_cells_{variant}.json")
            cmd = [
                sys.executable,
                __file__,
                "--cases",
                ",".join(names),
                "--variants",
                variant,
                "--batch",
                str(batch),
                "--out",
                out_dir,
                "--cells-json",
                path,
                "--jobs",
                "1",
                *(["--smoke"] if smoke else []),
            ]
            running[variant] = (subprocess.Popen(cmd), path)
        for variant, (proc, path) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[variant]
            try:
                with open(path) as f:
                    results[variant] = json.load(f)
            except (OSError, ValueError):
                results[variant] = {n: f"ERR (exit {proc.returncode})" for n in names}
        time.sleep(0.2)
    return [(n, [results[v].get(n, "ERR") for v in variants]) for n in names]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", help="comma-separated cases (default: issue 18's set)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="CPU interpreter, tiny shapes")
    parser.add_argument("--sanitizer", action="store_true", help="also compute-sanitizer")
    parser.add_argument(
        "--sanitizer-timeout",
        type=int,
        default=150,
        help="seconds the sanitizers may take, counted from the start",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="variants run in parallel processes (GPU default: all of them)",
    )
    parser.add_argument("--out", default=".", help="folder for the table and the logs")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cells-json", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.smoke and not args.child:
        print("bisect: no CUDA device; use --smoke on a CPU machine", file=sys.stderr)
        return 1
    names = (
        args.cases.split(",") if args.cases else list(SMOKE_CASES if args.smoke else DEFAULT_CASES)
    )
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    cases = [parse_case(n) for n in names]
    os.makedirs(args.out, exist_ok=True)
    if args.child:  # under compute-sanitizer: one fused forward + backward, nothing else
        inp = _inputs(cases[0], args.batch, device, "baseline")
        _run(cases[0], inp, torch.randn_like(inp["q"]), "triton")
        if device == "cuda":
            torch.cuda.synchronize()
        return 0
    if args.cells_json:  # a parallel worker: one variant, cells to a file
        rows = run_table(cases, variants, args.batch, device, args.out)
        with open(args.cells_json, "w") as f:
            json.dump({name: cells[0] for name, cells in rows}, f)
        return 0
    import triton

    where = torch.cuda.get_device_name() if device == "cuda" else "CPU (Triton interpreter)"
    head = f"{where}; torch {torch.__version__}, triton {triton.__version__}; batch {args.batch}"
    print(f"bisect: {head}", flush=True)
    start = time.time()
    sanitizers = None
    if args.sanitizer and device == "cuda":
        sanitizers = start_sanitizers(cases[0].name, args.out)
    jobs = args.jobs or (len(variants) if device == "cuda" else 1)
    if jobs > 1 and len(variants) > 1:
        rows = run_parallel(names, variants, args.batch, args.out, jobs, args.smoke)
    else:
        rows = run_table(cases, variants, args.batch, device, args.out)
    lines = ["| case | " + " | ".join(variants) + " |", "|---" * (len(variants) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows]
    if sanitizers is not None:
        summaries = finish_sanitizers(sanitizers, start + args.sanitizer_timeout)
        lines.append("")
        lines += [f"compute-sanitizer {tool} on {cases[0].name} (batch 1): {text}"
                  for tool, text in summaries.items()]  # fmt: skip
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(args.out, "bisect_table.md"), "w") as f:
        f.write(f"{head}; {time.time() - start:.0f} s\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
