"""Turn pytest-benchmark JSON into a Markdown report (and PNG plots when matplotlib is there).

    python benchmarks/report.py RESULTS.json --out benchmarks/results/<theme>_<gpu>_<date>.md

The report has a header (device, driver/CUDA, torch, triton, git sha, command), the copy
bandwidth, one table per benchmark level (op, module) with median and IQR milliseconds per call,
TFLOP/s, GB/s against PERF.md's minimal bytes, % of the measured copy bandwidth and speedups, and
a check of the issue's targets for the Triton op.

Two times per call where a GPU ran (benchmarks/utils.py): "GPU ms", CUDA events around one call
with L2 flushed (what throughput, bandwidth and the op targets use), and "host ms", the wall clock
of the whole call, host overhead included. Without a GPU time (CPU runs) both use the wall clock.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import platform
import subprocess
import sys
from collections import defaultdict

TARGETS = (
    ("flex", 2.0, "fwd_bwd", "at least 2x FlexAttention (fwd+bwd)"),
    ("video-swin-eager", 4.0, "fwd_bwd", "at least 4x the unfused eager steps (fwd+bwd)"),
)
FWD_ROOFLINE_TARGET = 0.60


def _git_sha() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def environment() -> dict[str, str]:
    """Versions and the device of this machine (the report runs where the benchmarks ran)."""
    env = {"python": platform.python_version(), "cpu": platform.processor() or platform.machine()}
    try:
        import torch

        env["torch"] = torch.__version__
        env["cuda"] = str(torch.version.cuda)
        if torch.cuda.is_available():
            env["device"] = torch.cuda.get_device_name()
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True,
            )  # fmt: skip
            env["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 else "?"
        else:
            env["device"] = f"CPU ({env['cpu']}), no GPU"
    except ImportError:
        env["torch"] = "not installed"
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = "not installed"
    env["git"] = _git_sha()
    return env


def load_rows(path: pathlib.Path) -> list[dict]:
    """One row per benchmark: extra_info plus per-call median/IQR in milliseconds."""
    data = json.loads(path.read_text())
    rows = []
    for bench in data.get("benchmarks", []):
        info, stats = dict(bench.get("extra_info", {})), bench["stats"]
        repeat = info.get("repeat", 1)
        info["median_ms"] = stats["median"] * 1e3 / repeat
        info["iqr_ms"] = stats["iqr"] * 1e3 / repeat
        info["name"] = bench["name"]
        rows.append(info)
    return rows


def _fmt(x, digits=3) -> str:
    return "-" if x is None else f"{x:.{digits}g}"


def device_ms(row: dict) -> float:
    """GPU time per call when it was measured (CUDA events), else the wall clock."""
    return row.get("gpu_ms") or row["median_ms"]


def copy_bandwidth_gbs(rows: list[dict]) -> float | None:
    for row in rows:
        if row.get("level") == "copy" and row.get("bytes"):
            return row["bytes"] / (device_ms(row) * 1e-3) / 1e9
    return None


def op_table(rows: list[dict], copy_gbs: float | None) -> list[str]:
    ops = [r for r in rows if r.get("level") == "op"]
    if not ops:
        return []
    ref = {(r["case"], r["mode"]): device_ms(r) for r in ops if r["provider"] == "reference"}
    lines = [
        "| case | mode | provider | GPU ms | GPU IQR | host ms | host IQR | TFLOP/s | GB/s | "
        "% copy BW | vs ref |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(ops, key=lambda r: (r["case"], r["mode"], device_ms(r))):
        seconds = device_ms(r) * 1e-3
        tflops = r["flops"] / seconds / 1e12 if r.get("flops") else None
        gbs = r["bytes"] / seconds / 1e9 if r.get("bytes") else None
        pct = 100 * gbs / copy_gbs if gbs and copy_gbs else None
        base = ref.get((r["case"], r["mode"]))
        speedup = base / device_ms(r) if base else None
        lines.append(
            f"| {r['case']} | {r['mode']} | {r['provider']} | {_fmt(r.get('gpu_ms'))} | "
            f"{_fmt(r.get('gpu_iqr_ms'), 2)} | {_fmt(r['median_ms'])} | {_fmt(r['iqr_ms'], 2)} | "
            f"{_fmt(tflops)} | {_fmt(gbs)} | {_fmt(pct)} | {_fmt(speedup)}x |"
        )
    return lines


def target_checks(rows: list[dict], copy_gbs: float | None) -> list[str]:
    """The issue's GPU targets for the Triton op, one line per case, with the measured ratios."""
    ops = defaultdict(dict)
    for r in rows:
        if r.get("level") == "op":
            ops[(r["case"], r["mode"])][r["provider"]] = r
    lines = []
    for (case, mode), by_provider in sorted(ops.items()):
        triton = by_provider.get("triton")
        if triton is None:
            continue
        for other, factor, target_mode, text in TARGETS:
            if mode == target_mode and other in by_provider:
                ratio = device_ms(by_provider[other]) / device_ms(triton)
                verdict = "met" if ratio >= factor else "NOT met"
                lines.append(f"- {case}: {text}: {ratio:.2f}x, {verdict}")
        if mode == "fwd" and copy_gbs and triton.get("bytes"):
            frac = triton["bytes"] / (device_ms(triton) * 1e-3) / 1e9 / copy_gbs
            verdict = "met" if frac >= FWD_ROOFLINE_TARGET else "NOT met"
            lines.append(
                f"- {case}: forward at >= 60% of copy bandwidth: {100 * frac:.0f}%, {verdict}"
            )
    return lines


LIBRARY_ROUTES = ("triton", "cuda", "sdpa", "reference")
PYTORCH_ROUTES = ("sdpa", "reference", "video-swin-eager", "sdpa-windows", "flex")
AUTO_NOISE = 0.05  # the same route timed twice in one run differs by a few percent


def auto_table(rows: list[dict]) -> list[str]:
    """Issue 27: per case (fwd+bwd), the fastest library route, what `auto` ran (its choice and
    time, measured in the same run) and auto against PyTorch's best route (target: never slower,
    within timing noise)."""
    by_case = defaultdict(dict)
    for r in rows:
        if r.get("level") == "op" and r.get("mode") == "fwd_bwd":
            by_case[r["case"]][r["provider"]] = r
    lines = []
    for case, by in sorted(by_case.items()):
        auto = by.get("auto")
        routes = {p: device_ms(r) for p, r in by.items() if p in LIBRARY_ROUTES}
        torch_routes = {p: device_ms(r) for p, r in by.items() if p in PYTORCH_ROUTES}
        if auto is None or not routes or not torch_routes:
            continue
        best, pt = min(routes, key=routes.get), min(torch_routes, key=torch_routes.get)
        ms = device_ms(auto)
        ratio = torch_routes[pt] / ms
        verdict = "met" if ratio >= 1 - AUTO_NOISE else "NOT met"
        lines.append(
            f"| {case} | {auto.get('tokens', '-')} | {best} {_fmt(routes[best])} | "
            f"{auto.get('auto_choice', '?')} {_fmt(ms)} | {_fmt(routes[best] / ms)}x | "
            f"{pt} {_fmt(torch_routes[pt])} | {ratio:.2f}x, {verdict} |"
        )
    if not lines:
        return []
    return [
        "| case | window tokens | fastest library route, ms | auto ran, ms | auto vs fastest | "
        "best PyTorch route, ms | auto vs it (>= 0.95x) |",
        "|---|---|---|---|---|---|---|",
        *lines,
    ]


def module_table(rows: list[dict]) -> list[str]:
    mods = [r for r in rows if r.get("level") == "module"]
    if not mods:
        return []
    base = {(r["case"], r["mode"]): device_ms(r) for r in mods if r["provider"] == "torchvision"}
    lines = [
        "| case | mode | provider | dtype | batch | GPU ms | host ms | host IQR | vs torchvision |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(mods, key=lambda r: (r["case"], r["mode"], r["provider"])):
        b = base.get((r["case"], r["mode"]))
        speedup = b / device_ms(r) if b else None
        lines.append(
            f"| {r['case']} | {r['mode']} | {r['provider']} | {r['dtype']} | "
            f"{r.get('batch', '-')} | {_fmt(r.get('gpu_ms'))} | {_fmt(r['median_ms'])} | "
            f"{_fmt(r['iqr_ms'], 2)} | {_fmt(speedup)}x |"
        )
    return lines


def paired_table(rows: list[dict]) -> list[str]:
    pairs = [r for r in rows if r.get("level") == "module-paired" and "speedup" in r]
    if not pairs:
        return []
    lines = [
        "| case | mode | lfvila ms | torchvision ms | lfvila speedup |",
        "|---|---|---|---|---|",
    ]
    for r in sorted(pairs, key=lambda r: (r["case"], r["mode"])):
        lines.append(
            f"| {r['case']} | {r['mode']} | {_fmt(r['lfvila_ms'])} | {_fmt(r['torchvision_ms'])} | "
            f"{r['speedup']:.2f}x |"
        )
    return lines


def loss_table(rows: list[dict]) -> list[str]:
    losses = [r for r in rows if r.get("level") == "loss"]
    if not losses:
        return []
    naive = {r["case"]: device_ms(r) for r in losses if r["provider"] == "naive"}
    lines = [
        "| case | provider | dtype | GPU ms | host ms | host IQR | peak memory MiB | vs naive |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(
        losses, key=lambda r: (r.get("n", r.get("batch", 0)), r["case"], r["provider"])
    ):
        base = naive.get(r["case"])
        speedup = base / device_ms(r) if base else None
        lines.append(
            f"| {r['case']} | {r['provider']} | {r['dtype']} | {_fmt(r.get('gpu_ms'))} | "
            f"{_fmt(r['median_ms'])} | {_fmt(r['iqr_ms'], 2)} | {_fmt(r.get('peak_mib'))} | "
            f"{_fmt(speedup)}x |"
        )
    memory = {r.get("memory") for r in losses if r.get("memory")}
    if memory:
        lines.append("")
        lines.append("Peak memory: " + "; ".join(sorted(memory)) + ".")
    return lines


def loss_targets(rows: list[dict]) -> list[str]:
    """Issue 3's GPU targets for the Triton InfoNCE against the naive N x N formula."""
    by_case = defaultdict(dict)
    for r in rows:
        if r.get("level") == "loss" and "n" in r:
            by_case[r["n"]][r["provider"]] = r
    lines = []
    for n, by_provider in sorted(by_case.items()):
        triton = by_provider.get("triton")
        if triton is None:
            continue
        if "naive" in by_provider:
            ratio = device_ms(by_provider["naive"]) / device_ms(triton)
            need = 2.0 if n >= 32768 else 1.0 if n <= 4096 else None
            if need is not None:
                verdict = "met" if ratio >= need else "NOT met"
                lines.append(f"- N={n}: Triton {ratio:.2f}x naive (target >= {need:g}x): {verdict}")
        else:
            lines.append(
                f"- N={n}: naive did not run (out of memory): Triton {_fmt(triton['median_ms'])} ms"
            )
        if n >= 65536 and triton.get("peak_mib") is not None:
            frac = triton["peak_mib"] * 2**20 / (4.0 * n * n)
            verdict = "met" if frac < 0.05 else "NOT met"
            lines.append(
                f"- N={n}: Triton extra memory {100 * frac:.2f}% of the N x N fp32 logits "
                f"(target < 5%): {verdict}"
            )
    return lines


def train_table(rows: list[dict]) -> list[str]:
    steps = [r for r in rows if r.get("level") == "train"]
    if not steps:
        return []
    ref = {r["case"]: r["median_ms"] for r in steps if r["provider"] == "reference"}
    lines = [
        "| case | kernels | ms / step | IQR ms | samples/s | peak GiB | MFU | loss | vs ref |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(steps, key=lambda r: (r["case"], r["provider"])):
        base = ref.get(r["case"])
        speedup = base / r["median_ms"] if base else None
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-"
        lines.append(
            f"| {r['case']} | {r['provider']} | {_fmt(r['median_ms'])} | {_fmt(r['iqr_ms'], 2)} | "
            f"{_fmt(r.get('samples_per_s'))} | {_fmt(r.get('peak_gib'))} | {mfu} | "
            f"{_fmt(r.get('loss'), 6)} | {_fmt(speedup)}x |"
        )
    fused = [r for r in steps if r["provider"] == "triton" and ref.get(r["case"])]
    for r in fused:
        ratio = ref[r["case"]] / r["median_ms"]
        verdict = "met" if ratio >= 1.3 else "NOT met"
        lines.append(
            f"\nTarget (issue 4): fused step >= 1.3x the reference step: {ratio:.2f}x, {verdict}"
        )
    for r in steps:  # issue 20: the compiled fused stage-1 step
        if r["provider"] != "triton+compile" or not r["case"].startswith("stage 1"):
            continue
        mfu, peak = r.get("mfu"), r.get("peak_gib")
        checks = [
            ("MFU >= 30%", mfu is not None and mfu >= 0.30, f"{100 * mfu:.1f}%" if mfu else "-"),
            ("<= 60 ms per step", r["median_ms"] <= 60.0, f"{r['median_ms']:.1f} ms"),
            ("peak memory <= 40 GiB", peak is not None and peak <= 40.0, _fmt(peak) + " GiB"),
        ]
        for name, ok, value in checks:
            lines.append(f"\nTarget (issue 20, {r['case']}): {name}: {value}, "
                         + ("met" if ok else "NOT met"))  # fmt: skip
    return lines


def profile_section(rows: list[dict]) -> list[str]:
    """Issue 20: where the step's time goes (benchmarks/step_profile.py)."""
    profiled = [r for r in rows if r.get("profile")]
    lines = []
    for r in profiled:
        p = r["profile"]
        unit = "GPU kernels" if p["device"] == "cuda" else "CPU ATen ops (self time)"
        lines += [
            f"{r['case']}, {r['provider']}: {p['wall_ms']:.1f} ms per step wall clock over "
            f"{p['steps']} profiled steps; {unit}.",
            "",
            "| kind | ms / step | share of the step |",
            "|---|---|---|",
            *(f"| {k} | {_fmt(ms)} | {100 * share:.1f}% |" for k, ms, share in p["categories"]),
            "",
            "| top kernel | ms / step | launches / step |",
            "|---|---|---|",
            *(f"| `{name[:90]}` | {_fmt(ms)} | {_fmt(n)} |" for name, ms, n in p["top"]),
            "",
        ]
        if p.get("forward"):
            lines += [
                "| forward, by model part | ms / step |",
                "|---|---|",
                *(f"| {part} | {_fmt(ms)} |" for part, ms in p["forward"]),
                "",
            ]
    return lines


def checkpointing_table(rows: list[dict]) -> list[str]:
    """Issue 20: activation checkpointing of the video encoder, measured once."""
    runs = [r for r in rows if r.get("level") == "train-checkpointing"]
    if not runs:
        return []
    lines = [
        "| case | step | ms / step | samples/s | peak GiB | largest batch that fits |",
        "|---|---|---|---|---|---|",
    ]
    for r in sorted(runs, key=lambda r: r["provider"]):
        lines.append(
            f"| {r['case']} | {r['provider']} | {_fmt(r['median_ms'])} | "
            f"{_fmt(r.get('samples_per_s'))} | {_fmt(r.get('peak_gib'))} | "
            f"{r.get('largest_batch', '-')} |"
        )
    return lines


def swin_table(rows: list[dict]) -> list[str]:
    """Issue 28: timm's Swin-T / Swin-V2-T training step, patched vs unpatched, eager/compiled."""
    runs = [r for r in rows if r.get("level") == "swin"]
    if not runs:
        return []
    eager = {r["case"]: device_ms(r) for r in runs if r["provider"] == "timm-eager"}
    lines = [
        "| model | provider | batch | dtype | GPU ms / step | host ms | images/s | peak GiB | "
        "first step s | vs timm eager |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(runs, key=lambda r: (r["case"], device_ms(r))):
        base = eager.get(r["case"])
        lines.append(
            f"| {r['case']} | {r['provider']} | {r.get('batch', '-')} | {r.get('dtype', '-')} | "
            f"{_fmt(r.get('gpu_ms'))} | {_fmt(r['median_ms'])} | {_fmt(r.get('images_per_s'))} | "
            f"{_fmt(r.get('peak_gib'))} | {_fmt(r.get('first_step_s'))} | "
            f"{_fmt(base / device_ms(r) if base else None)}x |"
        )
    for case in sorted({r["case"] for r in runs}):
        by = {r["provider"]: device_ms(r) for r in runs if r["case"] == case}
        for ours, kind in (("lfvila", "eager"), ("lfvila+compile", "compiled")):
            others = {p: ms for p, ms in by.items() if p.startswith("timm")
                      and p.endswith("+compile") == (kind == "compiled")}  # fmt: skip
            if ours in by and others:
                best = min(others, key=others.get)
                lines.append(f"\n- {case}, {kind}: lfvila {others[best] / by[ours]:.2f}x the "
                             f"fastest unpatched ({best})")  # fmt: skip
    return lines


def loop_table(rows: list[dict]) -> list[str]:
    """The whole training loop (loader + engine): samples/s, data-wait share, MFU."""
    loops = [r for r in rows if r.get("level") == "train-loop"]
    if not loops:
        return []
    ref = {r["case"]: r["samples_per_s"] for r in loops if r["provider"] == "reference"}
    lines = [
        "| case | kernels | samples/s | data wait | MFU | peak GiB | loss | vs ref |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(loops, key=lambda r: (r["case"], r["provider"])):
        base = ref.get(r["case"])
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-"
        lines.append(
            f"| {r['case']} | {r['provider']} | {_fmt(r['samples_per_s'])} | "
            f"{100 * r['data_wait']:.0f}% | {mfu} | {_fmt(r.get('peak_gib'))} | "
            f"{_fmt(r.get('loss'), 4)} | {_fmt(r['samples_per_s'] / base) + 'x' if base else '-'} |"
        )
    return lines


def decode_table(rows: list[dict]) -> list[str]:
    """Decoding and the data loader: frames/s and samples/s per provider (vs PyAV)."""
    reads = [r for r in rows if r.get("level") in ("decode", "sample", "loader")]
    if not reads:
        return []
    pyav = {
        (r["level"], r["case"]): r["median_ms"] for r in reads if r["provider"].startswith("pyav")
    }
    lines = [
        "| level | case | provider | ms / call | frames/s | samples/s | vs PyAV |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sorted(reads, key=lambda r: (r["level"], r["case"], r["provider"])):
        seconds = r["median_ms"] * 1e-3
        base = pyav.get((r["level"], r["case"]))
        lines.append(
            f"| {r['level']} | {r['case']} | {r['provider']} | {_fmt(r['median_ms'])} | "
            f"{_fmt(r['frames'] / seconds)} | {_fmt(r['samples'] / seconds)} | "
            f"{_fmt(base / r['median_ms'] if base else None)}x |"
        )
    return lines


def decode_targets(rows: list[dict]) -> list[str]:
    """Issue 5: DALI >= 3x PyAV (16 workers) samples/s, and more samples/s than the full-size
    stage-1 step consumes (its fused-kernel samples/s, when the train benchmark ran too)."""
    loader = {r["provider"]: r for r in rows if r.get("level") == "loader"}
    dali = loader.get("dali-gpu")
    pyav = next((r for p, r in loader.items() if p.startswith("pyav")), None)
    if not dali or not pyav:
        return []
    rate = {p: r["samples"] / (r["median_ms"] * 1e-3) for p, r in loader.items()}
    ratio = rate["dali-gpu"] / rate[pyav["provider"]]
    lines = [
        f"- DALI >= 3x {pyav['provider']} samples/s: {ratio:.2f}x, "
        + ("met" if ratio >= 3 else "NOT met")
    ]
    steps = [r for r in rows if r.get("level") == "train" and r.get("provider") == "triton"]
    if steps and steps[0].get("samples_per_s"):
        need = steps[0]["samples_per_s"]
        lines.append(
            f"- DALI samples/s {rate['dali-gpu']:.1f} > the stage-1 step's {need:.1f} "
            f"({steps[0]['case']}): " + ("met" if rate["dali-gpu"] > need else "NOT met")
        )
    else:
        lines.append("- the stage-1 step's samples/s: not measured in this run")
    return lines


def plots(rows: list[dict], out: pathlib.Path) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "Plots: matplotlib is not installed on this machine; none drawn."
    ops = [r for r in rows if r.get("level") == "op" and r["mode"] == "fwd_bwd"]
    if not ops:
        return "Plots: no op benchmarks to plot."
    cases = sorted({r["case"] for r in ops})
    providers = sorted({r["provider"] for r in ops})
    fig, ax = plt.subplots(figsize=(max(6, len(cases)), 4))
    width = 0.8 / len(providers)
    for i, provider in enumerate(providers):
        ms = {r["case"]: r["median_ms"] for r in ops if r["provider"] == provider}
        ax.bar(
            [c + i * width for c in range(len(cases))],
            [ms.get(c, 0) for c in cases],
            width,
            label=provider,
        )
    ax.set_xticks([c + 0.4 for c in range(len(cases))], cases, rotation=45, ha="right")
    ax.set_ylabel("fwd+bwd ms (lower is better)")
    ax.legend()
    fig.tight_layout()
    png = out.with_suffix(".png")
    fig.savefig(png)
    return f"Plot: {png.name}"


def render(rows: list[dict], env: dict[str, str], command: str, out: pathlib.Path) -> str:
    copy_gbs = copy_bandwidth_gbs(rows)
    today = datetime.date.today().isoformat()
    lines = [
        f"# lfvila benchmarks: {env.get('device', '?')} ({today})",
        "",
        f"- device: {env.get('device', '?')}; driver {env.get('driver', '-')}; "
        f"CUDA {env.get('cuda', '-')}",
        f"- torch {env.get('torch')}, triton {env.get('triton')}, python {env.get('python')}, "
        f"git {env.get('git')}",
        f"- command: `{command}`",
        f"- copy bandwidth (device-to-device, read + write): {_fmt(copy_gbs)} GB/s",
        "- times are per call: GPU ms from CUDA events around one call with L2 flushed (median,",
        "  IQR over repetitions), host ms the wall clock of the whole call (median, IQR over",
        "  rounds); throughput, bandwidth and targets use GPU ms where measured. GB/s uses",
        "  PERF.md's minimal bytes, TFLOP/s its FLOP counts (backward = 2.5x forward)",
        "",
    ]
    if table := op_table(rows, copy_gbs):
        lines += ["## The attention op (q, k, v -> o with RPB and shift)", "", *table, ""]
    if checks := target_checks(rows, copy_gbs):
        lines += ["## Targets (issue 2)", "", *checks, ""]
    if table := auto_table(rows):
        lines += [
            "## `auto` against every route (issue 27; benchmarks/auto_table.py writes the table)",
            "",
            *table,
            "",
        ]
    if table := module_table(rows):
        lines += ["## Whole module vs torchvision's ShiftedWindowAttention3d", "", *table, ""]
    if table := loss_table(rows):
        lines += ["## Contrastive losses (forward + backward)", "", *table, ""]
    if checks := loss_targets(rows):
        lines += ["## Targets (issue 3)", "", *checks, ""]
    if table := train_table(rows):
        lines += [
            "## Training step (forward, backward, clip, fused AdamW; eager and compiled)",
            "",
            *table,
            "",
        ]
    if table := profile_section(rows):
        lines += ["## Step profile (torch.profiler)", "", *table]
    if table := checkpointing_table(rows):
        lines += ["## Activation checkpointing of the video encoder", "", *table, ""]
    if table := swin_table(rows):
        lines += [
            "## Swin family on the kernel (timm, forward + backward of a training step)",
            "",
            *table,
            "",
        ]
    if table := loop_table(rows):
        lines += ["## The training loop (loader + engine, `lfvila pretrain`)", "", *table, ""]
    if table := decode_table(rows):
        lines += ["## Video decoding and the data loader", "", *table, ""]
    if checks := decode_targets(rows):
        lines += ["## Targets (issue 5)", "", *checks, ""]
    if table := paired_table(rows):
        lines += [
            "## Whole module vs torchvision, timed alternately in each round (median per call)",
            "",
            *table,
            "",
        ]
    lines += [plots(rows, out), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=pathlib.Path, help="pytest-benchmark --benchmark-json file")
    parser.add_argument("--out", type=pathlib.Path, required=True, help="Markdown file to write")
    parser.add_argument("--command", default=" ".join(sys.argv), help="command that produced it")
    args = parser.parse_args(argv)
    if not args.results.is_file():
        parser.error(f"results file {args.results} does not exist")
    rows = load_rows(args.results)
    if not rows:
        print(f"report: {args.results} holds no benchmark", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(rows, environment(), args.command, args.out))
    print(f"report: wrote {args.out} ({len(rows)} benchmarks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
