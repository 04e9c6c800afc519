"""Peak memory of pre-training records in one process and its forked DataLoader workers, each
worker reading every record: a Python list of dicts (how `read_jsonl` held them before issue 10)
vs `lfvila.data.records.RecordTable` (BENCHMARKS.md, "Annotations at scale").

    python -m benchmarks.records_memory [--records 1000000] [--workers 4] [--only KIND]

A JSONL file of synthetic records (4-6 clips of {clip_id like 'QMi8x8o55Ns.12.mp4', a sentence of
10-20 words}) is written once. Each representation then runs in a fresh child process: it reads
the file (list: the pre-issue loop, `json.loads` + validation per line into a list; table:
`read_jsonl`; none: no records, the fixed cost of the processes, torch and the DataLoader, to
subtract), then iterates a DataLoader with `--workers` forked workers over a dataset whose
items are chunks of the records: item k is chunk k // workers, and items go to workers round
robin, so every worker reads every record (the sum of its texts' lengths, checked).

This process watches the child: every 0.1 s it reads /proc/<pid>/smaps_rollup of the child and
of each of its workers and keeps, per phase, the peak of the sums of PSS and of RSS. PSS charges
a page shared by k processes 1/k to each, so its sum is the memory the processes hold together;
the RSS sum counts a shared page once per process (what adding up `top` gives): it
overstates shared memory, and the gap between the two sums is what the workers share.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = (
    "the of and to a in is you that it he was for on are as with his they i at be this have "
    "from or one had by word but not what all were we when your can said there use an each "
    "which she do how their if will up other about out many then them these so some her would "
    "make like him into time has look two more write go see number no way could people my than "
    "first water been call who oil its now find long down day did get come made may part video "
    "today going really right think little something cooking recipe minutes together garden"
).split()
ID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"


def synthetic_records(n: int, seed: int = 0):
    rng = random.Random(seed)
    for _ in range(n):
        vid = "".join(rng.choice(ID_CHARS) for _ in range(11))
        first = rng.randrange(200)
        yield [
            {
                "clip_id": f"{vid}.{first + k}.mp4",
                "text": " ".join(rng.choices(WORDS, k=rng.randint(10, 20))),
            }
            for k in range(rng.randint(4, 6))
        ]


def write_jsonl(path: Path, n: int) -> None:
    with open(path, "w") as f:
        for record in synthetic_records(n):
            f.write(json.dumps(record) + "\n")


# ----------------------------------------------------------------------- the measured process


def _read_as_list(path: Path) -> list:
    """The pre-issue-10 `read_jsonl(path, "pretrain")`: a list of validated Python records."""
    from lfvila.data.annotations import validate_pretrain
    from lfvila.data.records import loads

    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                records.append(validate_pretrain(loads(line), f"{path}:{number}", 4))
    return records


class _TouchAll:
    """Item k: the summed text lengths of chunk k // workers (so each worker reads them all);
    a worker's last item waits a second, holding what it touched, for the sampler to see."""

    def __init__(self, records, workers: int, chunks: int):
        self.records, self.workers, self.chunks = records, workers, chunks

    def __len__(self) -> int:
        return self.workers * self.chunks

    def __getitem__(self, k: int) -> int:
        n, c = len(self.records), k // self.workers
        lo, hi = n * c // self.chunks, n * (c + 1) // self.chunks
        total = 0
        for i in range(lo, hi):
            for clip in self.records[i]:
                total += len(clip["text"])
        if c == self.chunks - 1:
            time.sleep(1.0)
        return total


def _phase(phase_file: str, name: str) -> None:
    tmp = phase_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(name)
    os.replace(tmp, phase_file)


def child(path: Path, kind: str, workers: int, phase_file: str) -> dict:
    import warnings

    import torch
    from torch.utils.data import DataLoader

    from lfvila.data.annotations import read_jsonl

    warnings.filterwarnings("ignore", message="This DataLoader will create")  # 4 > 2 cores
    torch.set_num_threads(1)
    gc.collect()
    _phase(phase_file, "base")
    time.sleep(0.5)
    _phase(phase_file, "read")
    start = time.perf_counter()
    if kind == "list":
        records = _read_as_list(path)
    elif kind == "table":
        records = read_jsonl(path, "pretrain", min_clips=4)
    else:
        records = []
    read_s = time.perf_counter() - start
    gc.collect()
    _phase(phase_file, "loaded")
    time.sleep(0.5)
    expected = sum(len(c["text"]) for r in records for c in r)
    _phase(phase_file, "workers")
    start = time.perf_counter()
    loader = DataLoader(
        _TouchAll(records, workers, chunks=32),
        batch_size=None,
        num_workers=workers,
        multiprocessing_context="fork",
    )
    got = sum(loader)
    workers_s = time.perf_counter() - start
    _phase(phase_file, "done")
    if got != workers * expected:
        raise AssertionError(f"workers read {got} characters, expected {workers} x {expected}")
    return {"records": len(records), "read_s": read_s, "workers_s": workers_s}


# ----------------------------------------------------------------------------- the watcher


def _rollup(pid: int) -> dict[str, int] | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
    except OSError:
        return None  # the process has just exited
    kib = {k: int(v.split()[0]) for k, v in fields.items() if v.strip().endswith("kB")}
    return {
        "rss": kib["Rss"] * 1024,
        "pss": kib["Pss"] * 1024,
        "uss": (kib["Private_Clean"] + kib["Private_Dirty"]) * 1024,
    }


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def run(path: Path, kind: str, workers: int) -> dict:
    """Run `kind` in a fresh process and watch it; peaks per phase in bytes."""
    phase_file = tempfile.mktemp(prefix="records_phase_")
    cmd = [sys.executable, "-m", "benchmarks.records_memory", "--child", kind, str(path),
           "--workers", str(workers), "--phase-file", phase_file]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, text=True)
    peaks: dict[str, dict[str, float]] = {}
    while proc.poll() is None:
        try:
            phase = Path(phase_file).read_text() or "start"
        except OSError:
            phase = "start"
        pids = [proc.pid, *_children(proc.pid)]
        rolls = [r for r in map(_rollup, pids) if r is not None]
        if rolls:
            p = peaks.setdefault(phase, {"pss": 0, "rss": 0, "parent_rss": 0, "worker_uss": 0})
            p["pss"] = max(p["pss"], sum(r["pss"] for r in rolls))
            p["rss"] = max(p["rss"], sum(r["rss"] for r in rolls))
            p["parent_rss"] = max(p["parent_rss"], rolls[0]["rss"])
            p["worker_uss"] = max(p["worker_uss"], max((r["uss"] for r in rolls[1:]), default=0))
            p["processes"] = max(p.get("processes", 0), len(rolls))
        time.sleep(0.1)
    out, _ = proc.communicate()
    Path(phase_file).unlink(missing_ok=True)
    if proc.returncode:
        raise RuntimeError(f"{kind}: the measured process failed (exit {proc.returncode})")
    return {"kind": kind, **json.loads(out.strip().splitlines()[-1]), "peaks": peaks}


def _check_memory(need: int) -> None:
    with open("/proc/meminfo") as f:
        available = next(int(x.split()[1]) * 1024 for x in f if x.startswith("MemAvailable"))
    if need > 0.8 * available:
        raise SystemExit(
            f"the list representation needs ~{need / 2**30:.1f} GiB, more than 80% of the "
            f"{available / 2**30:.1f} GiB available: use fewer --records or --workers"
        )


def report(results: list[dict], workers: int) -> str:
    """A markdown table; GiB = 2^30 bytes; 'records' columns: minus the 'none' run."""
    gib = 2**30
    base = next((r for r in results if r["kind"] == "none"), None)
    rows = [
        f"| records as | read s | parent RSS after reading | 1 + {workers} workers: s | "
        "peak sum PSS | peak sum RSS | largest worker private |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        loaded, w = r["peaks"].get("loaded", {}), r["peaks"].get("workers", {})
        cells = [loaded.get("parent_rss", 0), w.get("pss", 0), w.get("rss", 0)]
        if base is not None and r is not base:
            b = [base["peaks"]["loaded"]["parent_rss"], *(base["peaks"]["workers"][k]
                 for k in ("pss", "rss"))]  # fmt: skip
            text = [f"{c / gib:.2f} (+{(c - x) / gib:.2f})" for c, x in zip(cells, b)]
        else:
            text = [f"{c / gib:.2f}" for c in cells]
        rows.append(
            f"| {r['kind']} | {r['read_s']:.1f} | {text[0]} | {r['workers_s']:.1f} | {text[1]} "
            f"| {text[2]} | {w.get('worker_uss', 0) / gib:.2f} |"
        )
    seen = {r["kind"]: r["peaks"].get("workers", {}).get("processes", 0) for r in results}
    return "\n".join(rows) + f"\n(GiB; processes seen while iterating: {seen})"


def machine() -> str:
    import numpy
    import torch

    model = platform.processor() or "?"
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
        model = next(x.split(":", 1)[1].strip() for x in lines if x.startswith("Model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{model}, {os.cpu_count()} cores, {mem:.0f} GiB; Python {platform.python_version()}, "
        f"numpy {numpy.__version__}, torch {torch.__version__}"
    )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--only", choices=("none", "list", "table"))
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--child", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    ap.add_argument("--phase-file", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        kind, path = args.child
        print(json.dumps(child(Path(path), kind, args.workers, args.phase_file)))
        return
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.jsonl"
        start = time.perf_counter()
        write_jsonl(path, args.records)
        size = path.stat().st_size
        print(f"{args.records:,} records, {size / 2**20:.0f} MiB of JSONL "
              f"({size / args.records:.0f} B/record), written in "
              f"{time.perf_counter() - start:.0f} s")  # fmt: skip
        results = []
        for kind in [args.only] if args.only else ["none", "table", "list"]:
            if kind == "list":
                _check_memory(size * 4 * (1 + args.workers))  # ~2.2 kB a record, per process
            results.append(run(path, kind, args.workers))
    print(report(results, args.workers))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "results": results}))


if __name__ == "__main__":
    main()
