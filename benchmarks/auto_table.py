"""Write `auto`'s window-attention table (kernels/window_attn/auto_table.py) from a kernel run.

    python benchmarks/auto_table.py RESULTS.json --out auto_table.json [--table BASE]
        [--gpu NAME] [--capability X.Y] [--date YYYY-MM-DD]

RESULTS.json is the pytest-benchmark JSON of `benchmarks/gpu_check.sh` (its
`test_bench_window_attention_op` rows). For each (dtype, window tokens) the forward+backward time
of every library route (triton, cuda, sdpa, reference) is summed over the cases of that key
(a layer's shifted and unshifted blocks), and the fastest route becomes this GPU's entry, merged
into BASE (default: the table this lfvila loaded; other GPUs' sections and this GPU's other
entries are kept, and its rule threshold is recomputed). Only routes measured in every case of a
key compete. GPU times (CUDA events) are used where the run has them, else the wall clock (the
CPU smoke run: its table tests the writer, not a GPU). To ship the result, copy it over
kernels/window_attn/auto_table.json; to try it first, point LFVILA_AUTO_TABLE at it.
"""

from __future__ import annotations

import argparse
import datetime
import pathlib
import sys
from collections import defaultdict

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.report import device_ms, environment, load_rows  # noqa: E402
from lfvila.kernels.window_attn import auto_table  # noqa: E402
from lfvila.kernels.window_attn.auto_table import DeviceTable, Entry  # noqa: E402

ROUTES = auto_table.ROUTES


def measured_entries(rows: list[dict]) -> list[Entry]:
    """One entry per (dtype, tokens) of the forward+backward op rows: the fastest route."""
    groups: dict[tuple[str, int], dict[str, dict[str, float]]] = defaultdict(dict)
    for r in rows:
        if r.get("level") != "op" or r.get("mode") != "fwd_bwd" or r.get("provider") not in ROUTES:
            continue
        if not r.get("tokens"):
            raise ValueError(f"benchmark {r.get('name')} has no 'tokens' (a run before issue 27)")
        groups[(r["dtype"], int(r["tokens"]))].setdefault(r["case"], {})[r["provider"]] = device_ms(
            r
        )
    entries = []
    for (dtype, tokens), cases in sorted(groups.items()):
        routes = set.intersection(*(set(by_route) for by_route in cases.values()))
        if not routes:
            continue
        totals = {p: round(sum(c[p] for c in cases.values()), 4) for p in sorted(routes)}
        ms = tuple(sorted(totals.items(), key=lambda kv: kv[1]))
        entries.append(Entry(dtype, tokens, ms[0][0], tuple(sorted(cases)), ms))
    return entries


def device_section(rows, gpu, capability, date, results: pathlib.Path) -> DeviceTable:
    env = environment()
    timing = "GPU ms (CUDA events, L2 flushed)" if any(r.get("gpu_ms") for r in rows) else (
        "wall-clock ms (no GPU timing: not a speed measurement)"
    )  # fmt: skip
    batches = sorted({r.get("batch") for r in rows if r.get("level") == "op"} - {None})
    source = (
        f"benchmarks/gpu_check.sh ({results.name}): forward+backward {timing}, median, batch "
        f"{'/'.join(map(str, batches)) or '?'}, torch {env.get('torch')}, triton "
        f"{env.get('triton')}, git {env.get('git')}"
    )
    entries = tuple(measured_entries(rows))
    return DeviceTable(gpu, capability, date, source, None, entries)


def _this_device() -> tuple[str, str | None]:
    import torch

    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return torch.cuda.get_device_name(), f"{major}.{minor}"
    return "cpu (smoke run)", None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=pathlib.Path, help="pytest-benchmark --benchmark-json file")
    parser.add_argument("--out", type=pathlib.Path, required=True, help="table file to write")
    parser.add_argument("--table", type=pathlib.Path, help="base table (default: the loaded one)")
    parser.add_argument("--gpu", help="GPU name (default: this machine's)")
    parser.add_argument("--capability", help='compute capability "major.minor"')
    parser.add_argument("--date", default=datetime.date.today().isoformat())
    args = parser.parse_args(argv)
    if not args.results.is_file():
        parser.error(f"results file {args.results} does not exist")
    gpu, capability = _this_device()
    gpu, capability = args.gpu or gpu, args.capability or capability
    rows = load_rows(args.results)
    section = device_section(rows, gpu, capability, args.date, args.results)
    if not section.entries:
        print(f"auto_table: no forward+backward op benchmarks in {args.results}", file=sys.stderr)
        return 1
    base = auto_table.load_table(args.table) if args.table else auto_table.TABLE
    table = auto_table.merge_device(base, section)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(auto_table.dump_table(table))
    merged = next(d for d in table.devices if d.gpu == gpu)
    for e in section.entries:
        times = ", ".join(f"{route} {ms:.3g}" for route, ms in e.ms)
        print(f"auto_table: {gpu} {e.dtype} {e.tokens} tokens -> {e.backend} ({times} ms)")
    print(f"auto_table: wrote {args.out} ({gpu}: fused up to {merged.fused_max_tokens} tokens)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
