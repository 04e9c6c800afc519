"""Bisect the window-attention kernels on a GPU: which launch variant makes a failing case right.

Issue 18: on an H200 (triton 3.6) shifted windows with a bias table gave wrong gradients (and at
L0 a wrong forward) while every interpreter test passes. This script runs each case under each
variant, compares with the reference by the error-ratio rule (STYLE.md; truth = the reference in
fp32, or fp64 for fp32 inputs), and prints one table:

    case x variant -> "ok", or the worst tensor and its error as a multiple of the bound,
                      "ND" when two identical runs differ in a bit (a race or an uninitialised
                      read), "ERR" when the run raised, "TIMEOUT" when `--time-limit` ran out
                      first, "no toolkit ptxas" when the machine has none

Columns checked: out, lse (the forward's saved log-sum-exp against the reference logsumexp: the
statistics the backward recomputes P from), dq, dk, dv, dtable (dk_pad, dv_pad where padded).
The kernels run through their launchers (`triton_impl.fwd`, `triton_impl.bwd`, the table gathered
into the dense bias and its gradient folded back as the public path does), never through the
public API: its first-call self-check would send a wrong signature to the reference.

Variants (each patches `triton_impl` for its run only, or runs its own process):
    baseline      as shipped
    one-unit      one unit (forward) / one unit or window (backward) per program: no loop runs
                  more than once, so nothing carries from one iteration to the next
    stages1       num_stages=1 for every launch: no software pipelining of any loop
    warps         the other warp count (4 <-> 8) for every launch
    nan-scratch   every launcher buffer starts as NaN: an element read before it is written shows
    mask0         mask_value 0 (shift regions not masked; the kernel's shift path still runs)
    no-bias       no bias table (the path reported right on the GPU)
    toolkit-ptxas the machine's CUDA-toolkit ptxas instead of Triton's bundled one
                  (TRITON_PTXAS_PATH and TRITON_PTXAS_BLACKWELL_PATH; found on PATH, in
                  $CUDA_HOME/bin or /usr/local/cuda/bin), with a fresh TRITON_CACHE_DIR so every
                  kernel really recompiles; always in its own process (also with --jobs 1 and in
                  --smoke, where the interpreter runs and no ptxas does: the plumbing is tested)
    no-int-spec   the window-attention kernels re-wrapped with `triton.jit(kernel.fn,
                  do_not_specialize=[...])` over their integer arguments (strides s_*, g_*;
                  total_windows, units, units_per_program, units_per_chunk, heads): one binary
                  whatever the batch, no "== 1" or "% 16" specialisation (PERF.md: at a trip
                  count of 1 the loop disappears). The bias reductions and the opt-in autotuned
                  forward are not re-wrapped.

The notes under the table name both ptxas binaries and their versions (`ptxas --version`) and
the one the toolkit-ptxas process's Triton resolved (Triton silently falls back to its own when
TRITON_PTXAS_PATH does not run).

Two-pass delta: for cases whose windows take the two-pass backward (NP > 64: L2-L5, VS-2x7x7),
pass 1's delta (rowsum(dO * O), fp32, written for pass 2; `triton_impl.bwd(..., scratch=dict)`
exposes it) is compared with the same sum by torch in fp32 from the kernel's own O: a second
table, max |difference| as a multiple of D * 2**-24 * rowsum|dO * O| per row.

Row map: for the first failing baseline cell (and every failing cell, or the cells named, with
`--rowmap`), each (token, head) row of out, lse, dq, dk, dv (and delta) whose error is over its
tensor's bound is mapped to (batch, window, position in the window, shift region, whether the
window spans more than one shift region: a region boundary) and to the loop trip that produced
it: the persistent forward's unit loop, the fused backward's chunk loop, the dq pass's window
loop (the dk/dv pass has no such loop: its key block instead), from the launch arguments the
launchers themselves computed (recorded per launch). Summarised per tensor (rows over bound by
trip, boundary against interior windows, by region and head, the top windows) and appended to
bisect_table.md (no extra file: a device call brings back at most 8).

On a GPU each variant runs in its own process (Triton compiles on the host's cores in parallel);
a case whose variant raises is reported as ERR and the rest go on. Workers write their cells
after every case, so `--time-limit` (seconds from the start; the workers still running then are
killed) leaves a table with the cells that finished. With `--sanitizer` one fused forward +
backward of the first case at batch 1 runs under compute-sanitizer's racecheck, synccheck and
initcheck at the same time (each in its own process, all within `--sanitizer-timeout` seconds of
the start): their summaries join the table. The launch parameters of every kernel launch (grid,
units per program or chunk, warps, stages) are logged per case: whether the trip count matters
is answerable from the log alone.

    python benchmarks/bisect_window_attention.py [--cases L0-shift,...] [--variants ...]
        [--batch 2] [--sanitizer] [--time-limit S] [--rowmap [all|CASE/VARIANT,...]] [--out DIR]
    python benchmarks/bisect_window_attention.py --smoke     CPU: interpreter, tiny shapes

Runs standalone on a bare GPU image (imports lfvila, never `benchmarks`). Exit status 0 when the
script ran (whatever the table says), 1 when it could not run at all.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import time

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402

from lfvila.kernels.testing import (  # noqa: E402
    GRADIENT,
    OUTPUT,
    error_check,
    no_tf32,
    window_attention_inputs,
)
from lfvila.kernels.window_attn import (  # noqa: E402
    triton_impl,
    window_attention_lse_ref,
    window_attention_ref,
)
from lfvila.kernels.window_attn.bias import fold_table, gather_table  # noqa: E402
from lfvila.kernels.window_attn.geometry import WindowGeometry, window_geometry  # noqa: E402
from lfvila.model.shapes import AttentionLayer, layer  # noqa: E402

if __package__:  # imported as benchmarks.bisect_window_attention (the tests)
    from .bisect_rowmap import (  # noqa: E402
        TRIP_KEYS,
        _ranges,  # noqa: F401  (tested here)
        delta_check,
        format_row_map,
        row_errors,
        row_map,
    )
    from .bisect_variants import (  # noqa: E402
        _SHIPPED_KERNELS,  # noqa: F401  (tested here)
        ENV_VARIANTS,
        VARIANTS,
        bundled_ptxas,  # noqa: F401
        find_toolkit_ptxas,  # noqa: F401
        no_int_spec_kernels,  # noqa: F401
        ptxas_notes,
        ptxas_version,  # noqa: F401
        resolved_ptxas,
        variant_env,
    )
else:  # run as a script on a bare GPU image: its folder is on sys.path, `benchmarks` is not
    from bisect_rowmap import (  # noqa: E402
        TRIP_KEYS,
        _ranges,  # noqa: F401
        delta_check,
        format_row_map,
        row_errors,
        row_map,
    )
    from bisect_variants import (  # noqa: E402
        _SHIPPED_KERNELS,  # noqa: F401  (tested here)
        ENV_VARIANTS,
        VARIANTS,
        bundled_ptxas,  # noqa: F401
        find_toolkit_ptxas,  # noqa: F401
        no_int_spec_kernels,  # noqa: F401
        ptxas_notes,
        ptxas_version,  # noqa: F401
        resolved_ptxas,
        variant_env,
    )

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
KERNEL_PACKAGE = triton_impl.__name__.rsplit(".", 1)[0]  # lfvila.kernels.window_attn


@dataclasses.dataclass(frozen=True)
class Case:
    """One window-attention problem: a layer (shifted or not), a dtype, the table's dtype."""

    name: str
    spec: AttentionLayer
    shift: tuple[int, int, int]
    dtype: torch.dtype
    table_dtype: torch.dtype

    def geometry(self) -> WindowGeometry:
        return window_geometry(self.spec.map_size, self.spec.window, self.shift)


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
# Running one case


class LaunchLog:
    """Records every Triton launch of the window-attention kernels (name, grid, the loop-trip
    arguments, warps, stages) while active, and still runs it. `records` keeps each launch's
    integer arguments and constexprs: the plan the launcher computed (the row map reads it)."""

    KEYS = TRIP_KEYS

    def __init__(self):
        self.lines: list[str] = []
        self.records: list[dict] = []

    @contextlib.contextmanager
    def active(self):
        kernel_class = type(triton_impl._fwd_kernel)  # JITFunction, or the interpreter's
        original = kernel_class.run
        log = self

        def run(fn, *args, grid, warmup, **kwargs):
            if not warmup and fn.fn.__module__.startswith(KERNEL_PACKAGE):
                named = dict(zip(fn.arg_names, args))
                trips = {k: named[k] for k in log.KEYS if k in named}
                shown = {k: kwargs[k] for k in ("NP", "NJ", "BLOCK", "BLOCK_Q", "KEY_SPLIT")
                         if k in kwargs}  # fmt: skip
                grid_t = tuple(grid) if not callable(grid) else "fn"
                log.lines.append(
                    f"{fn.__name__} grid={grid_t} {trips} "
                    f"{shown} warps={kwargs.get('num_warps')} stages={kwargs.get('num_stages')}"
                )
                log.records.append(dict(
                    kernel=fn.__name__, grid=grid_t,
                    args={k: v for k, v in named.items() if isinstance(v, int)},
                    consts={k: v for k, v in kwargs.items() if isinstance(v, int)},
                ))  # fmt: skip
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


def _run_reference(case: Case, inp: dict, g: torch.Tensor, dtype=None):
    """(out, lse, {grad name: grad}) of the reference's forward + backward in `dtype`."""
    (q, k, v, table), pad = _leaves(inp, dtype)
    args = (case.spec.window, case.shift, table, None, pad, inp["mask_value"])
    out = window_attention_ref(q, k, v, *args)
    lse = window_attention_lse_ref(q, k, *args)
    named = {"dq": q, "dk": k, "dv": v, "dtable": table, "dk_pad": pad[0], "dv_pad": pad[1]}
    named = {n: x for n, x in named.items() if x is not None}
    got = torch.autograd.grad(out, list(named.values()), g.to(out.dtype), allow_unused=True)
    grads = {n: (torch.zeros_like(x) if d is None else d) for (n, x), d in zip(named.items(), got)}
    return out.detach(), lse.detach(), grads


def _run_triton(case: Case, inp: dict, g: torch.Tensor, scratch: dict | None = None):
    """(out, lse, {grad name: grad}) of one forward + backward through the launchers (what the
    public path runs, without its self-check); `scratch` receives the two-pass delta."""
    q, k, v, table = (inp[n] for n in ("q", "k", "v", "rel_pos_bias"))
    k_pad, v_pad = (p.contiguous() for p in inp["pad_kv"])
    geom = case.geometry()
    bias = None if table is None else gather_table(table, geom)
    scale = case.spec.head_dim**-0.5
    args = (case.spec.window, case.shift, scale, inp["mask_value"])
    with torch.no_grad():
        out, lse2 = triton_impl.fwd(q, k, v, bias, k_pad, v_pad, *args)
        dq, dk, dv, dbias, dk_pad, dv_pad = triton_impl.bwd(
            g.to(out.dtype), q, k, v, out, lse2, bias, k_pad, v_pad, *args, scratch=scratch
        )
        grads = {"dq": dq, "dk": dk, "dv": dv}
        if table is not None:
            grads["dtable"] = fold_table(dbias, geom, table.dtype)
        grads.update(dk_pad=dk_pad, dv_pad=dv_pad)
    return out, lse2 * math.log(2.0), grads  # lse: log2 units -> natural


@dataclasses.dataclass
class CellResult:
    """One table cell, the two-pass delta check ("" on the fused path) and the row map ("")."""

    cell: str
    delta: str = ""
    rowmap: str = ""
    failed: bool = False


def _bound(t: torch.Tensor, p: torch.Tensor, rule: dict) -> float:
    """The error-ratio rule's bound (kernels.testing.error_check) of one tensor."""
    return (
        rule["ratio"] * (p.double() - t.double()).abs().max().item()
        + rule["floor"] * t.double().abs().max().item()
    )


def run_cell(
    case: Case, variant: str, batch: int, device: str, log: LaunchLog, rowmap: str = "never"
) -> CellResult:
    """One table cell. rowmap: "never", "failed" (a map when the cell fails) or "always"."""
    inp = _inputs(case, batch, device, variant)
    g = torch.randn(inp["q"].shape, generator=torch.Generator().manual_seed(1)).to(device)
    truth_dtype = torch.float64 if case.dtype == torch.float32 else torch.float32
    with no_tf32():
        truth = _run_reference(case, inp, g, truth_dtype)
        pt = _run_reference(case, inp, g)
    scratch, scratch2 = {}, {}
    with VARIANTS[variant](), log.active():
        start = len(log.records)
        first = _run_triton(case, inp, g, scratch)
        plan = log.records[start:]
        second = _run_triton(case, inp, g, scratch2)
    worst, worst_name = 0.0, ""
    checks = [
        ("out", first[0], truth[0], pt[0], OUTPUT),
        ("lse", first[1], truth[1], pt[1], OUTPUT),
    ]
    checks += [(n, first[2][n], truth[2][n], pt[2][n], GRADIENT) for n in first[2]]
    for name, out, t, p, rule in checks:
        ok, _, margin = error_check(out, t, p, **rule)  # margin: the error / its bound
        if not ok and margin >= worst:
            worst, worst_name = margin, name
    same = all(_same_bits(a, b) for a, b in zip(_flat(first), _flat(second)))
    same = same and all(_same_bits(scratch[n], scratch2[n]) for n in scratch)
    cell = "ok" if not worst_name else f"{worst_name} {worst:.2g}x"
    result = CellResult(cell + ("" if same else " ND"), failed=bool(worst_name))
    do = g.to(first[0].dtype)
    delta_rows = None
    if "delta" in scratch:
        result.delta, delta_rows = delta_check(scratch["delta"], do, first[0])
        result.failed = result.failed or not result.delta.startswith("ok")
    if rowmap == "always" or (rowmap == "failed" and result.failed):
        rows = {
            name: row_errors(out, t, _bound(t, p, rule))
            for name, out, t, p, rule in checks
            if name in ("out", "lse", "dq", "dk", "dv")
        }
        if delta_rows is not None:
            rows["delta"] = delta_rows
        result.rowmap = format_row_map(case, variant, batch, row_map(case, batch, rows, plan))
    return result


def run_case(case: Case, variant: str, batch: int, device: str, log: LaunchLog) -> str:
    """One table cell's text."""
    return run_cell(case, variant, batch, device, log).cell


def _flat(result):
    out, lse, grads = result
    return [out, lse, *grads.values()]


_BITS = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equal (a NaN the same in both runs is not a difference; torch.equal says it is)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point():
        a, b = (x.contiguous().view(_BITS[x.element_size()]) for x in (a, b))
    return torch.equal(a, b)


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


def _wants_rowmap(spec: str | None, case: str, variant: str, first_baseline: bool) -> str:
    """run_cell's rowmap mode for a cell: --rowmap all: every failing cell; --rowmap CASE/VARIANT
    ...: those cells always; otherwise the first failing baseline cell."""
    if spec == "all":
        return "failed"
    if spec and f"{case}/{variant}" in spec.split(","):
        return "always"
    return "failed" if variant == "baseline" and first_baseline else "never"


def run_table(
    cases, variants, batch, device, out_dir, rowmap=None, deadline=None, progress=None
) -> dict[str, dict]:
    """{variant: {"cells": {case: cell}, "delta": {case: text}, "rowmaps": [Markdown]}} run in
    this process; launch log to out_dir. `progress(results)` is called after every cell."""
    results = {}
    log = LaunchLog()
    for variant in variants:
        res = results[variant] = dict(cells={}, delta={}, rowmaps=[])
        first_baseline = True
        for case in cases:
            log.lines.append(f"== {case.name} / {variant}")
            t0 = time.time()
            if deadline is not None and t0 > deadline:
                res["cells"][case.name] = "TIMEOUT"
                continue
            mode = _wants_rowmap(rowmap, case.name, variant, first_baseline)
            try:
                cell = run_cell(case, variant, batch, device, log, mode)
            except Exception as exc:  # noqa: BLE001 - a failing variant is a result, not a stop
                cell = CellResult("ERR")
                log.lines.append(f"ERROR {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
            res["cells"][case.name] = cell.cell
            if cell.delta:
                res["delta"][case.name] = cell.delta
            if cell.rowmap:
                res["rowmaps"].append(cell.rowmap)
                first_baseline = first_baseline and not cell.failed
            log.lines.append(f"-> {cell.cell} ({time.time() - t0:.1f} s)")
            print(f"  {case.name} / {variant}: {cell.cell}", flush=True)
            if progress is not None:
                progress(results)
        name = "bisect_launches" + (f"_{variant}" if len(variants) == 1 else "") + ".log"
        with open(os.path.join(out_dir, name), "w") as f:
            f.write("\n".join(log.lines) + "\n")
    return results


def _write_json(path: str, data) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)  # a reader never sees half a file


def run_parallel(
    names, variants, batch, out_dir, jobs, smoke, rowmap=None, deadline=None
) -> dict[str, dict]:
    """One child process per variant (Triton compiles on the host's cores in parallel; the GPU
    runs are short), `jobs` at a time; env-changing variants get their environment. Results as
    run_table's (plus "ptxas": what the child's Triton resolved); cells a child did not reach
    read TIMEOUT (killed at `deadline`) or ERR (exit status)."""
    pending, running, results, temps = list(variants), {}, {}, []
    while pending or running:
        while pending and len(running) < jobs:
            variant = pending.pop(0)
            extra, why = variant_env(variant)
            if deadline is not None and time.time() > deadline:
                extra, why = None, "TIMEOUT"
            if extra is None:
                results[variant] = dict(cells={n: why for n in names}, delta={}, rowmaps=[])
                continue
            if "TRITON_CACHE_DIR" in extra:
                temps.append(extra["TRITON_CACHE_DIR"])
            path = os.path.join(out_dir, f"bisect_cells_{variant}.json")
            cmd = [sys.executable, __file__, "--cases", ",".join(names), "--variants", variant,
                   "--batch", str(batch), "--out", out_dir, "--cells-json", path, "--jobs",
                   "1"]  # fmt: skip
            cmd += ["--smoke"] if smoke else []
            cmd += ["--rowmap", rowmap] if rowmap else []
            env = dict(os.environ, **extra)
            running[variant] = (subprocess.Popen(cmd, env=env), path)
        for variant, (proc, path) in list(running.items()):
            killed = False
            if proc.poll() is None:
                if deadline is None or time.time() < deadline:
                    continue
                proc.kill()
                proc.wait()
                killed = True
            del running[variant]
            try:
                with open(path) as f:
                    res = json.load(f)
            except (OSError, ValueError):
                res = dict(cells={}, delta={}, rowmaps=[])
            missing = "TIMEOUT" if killed else f"ERR (exit {proc.returncode})"
            res["cells"] = {n: res["cells"].get(n, missing) for n in names}
            results[variant] = res
        time.sleep(0.2)
    for path in temps:
        shutil.rmtree(path, ignore_errors=True)
    return results


def _table(names, variants, results, key) -> list[str]:
    lines = ["| case | " + " | ".join(variants) + " |", "|---" * (len(variants) + 1) + "|"]
    lines += [f"| {n} | " + " | ".join(results[v][key].get(n, "-") for v in variants) + " |"
              for n in names]  # fmt: skip
    return lines


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
        "--time-limit",
        type=float,
        default=None,
        help="seconds from the start after which unfinished variants stop (cells: TIMEOUT)",
    )
    parser.add_argument(
        "--rowmap",
        nargs="?",
        const="all",
        default=None,
        help="row maps of every failing cell ('all', the default) or of the cells named "
        "(CASE/VARIANT,...); without it: the first failing baseline cell",
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
    start = time.time()
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
        _run_triton(cases[0], inp, torch.randn_like(inp["q"]))
        if device == "cuda":
            torch.cuda.synchronize()
        return 0
    if args.cells_json:  # a worker process: its variants, results to a file after every cell
        ptxas = resolved_ptxas()

        def progress(results):
            for res in results.values():
                res["ptxas"] = ptxas
            _write_json(args.cells_json, results[variants[0]])

        run_table(cases, variants, args.batch, device, args.out, args.rowmap, None, progress)
        return 0
    where = torch.cuda.get_device_name() if device == "cuda" else "CPU (Triton interpreter)"
    head = f"{where}; torch {torch.__version__}, triton {triton.__version__}; batch {args.batch}"
    print(f"bisect: {head}", flush=True)
    deadline = start + args.time_limit if args.time_limit else None
    sanitizers = None
    if args.sanitizer and device == "cuda":
        sanitizers = start_sanitizers(cases[0].name, args.out)
    jobs = args.jobs or (len(variants) if device == "cuda" else 1)
    parallel = jobs > 1 and len(variants) > 1
    in_children = [v for v in variants if parallel or v in ENV_VARIANTS]
    results = {}
    if in_children:
        results.update(run_parallel(names, in_children, args.batch, args.out, jobs, args.smoke,
                                    args.rowmap, deadline))  # fmt: skip
    here = [v for v in variants if v not in in_children]
    if here:
        results.update(run_table(cases, here, args.batch, device, args.out, args.rowmap, deadline))
    notes = [ptxas_notes(device)]
    for v in ENV_VARIANTS:
        if v in results and results[v].get("ptxas"):
            notes.append(f"the {v} process's Triton resolved {results[v]['ptxas']} "
                         "(fresh TRITON_CACHE_DIR)")  # fmt: skip
    lines = _table(names, variants, results, "cells")
    two_pass = [n for n in names if any(n in results[v]["delta"] for v in variants)]
    if two_pass:
        lines += ["", "Two-pass backward: pass 1's delta against rowsum(dO * O) (torch, fp32, "
                  "from the kernel's O); max |difference| as a multiple of D * 2^-24 * "
                  "rowsum|dO * O|, rows over 1x:", ""]  # fmt: skip
        lines += _table(two_pass, variants, results, "delta")
    if sanitizers is not None:
        summaries = finish_sanitizers(sanitizers, start + args.sanitizer_timeout)
        lines.append("")
        lines += [f"compute-sanitizer {tool} on {cases[0].name} (batch 1): {text}"
                  for tool, text in summaries.items()]  # fmt: skip
    rowmaps = [m for v in variants for m in results[v].get("rowmaps", [])]
    table = "\n".join(lines)
    print(table)
    print("\n".join(notes))
    with open(os.path.join(args.out, "bisect_table.md"), "w") as f:
        f.write(f"{head}; {time.time() - start:.0f} s\n\n" + "\n".join(notes) + f"\n\n{table}\n")
        for text in rowmaps:
            f.write("\n" + text)
    for text in rowmaps:
        print("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
