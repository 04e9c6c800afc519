"""The main job on an embedded default (`make demo` = `lfvila demo`): generate the demo videos
(`lfvila.data.demo`, once, into a cache folder), pre-train a small LF-VILA stage 1
(`configs/demo.yaml`: tiny widths, 4 clips, VPC + MTC) on the CPU, evaluate zero-shot
paragraph-to-video retrieval on the 48 held-out videos before and after, and write into the run
directory: metrics.json (R@1, R@5, R@10 and chance_R@1 in percent, MdR in ranks, and the
before/after/chance details), losses.png and retrieval.png, besides everything `lfvila pretrain`
writes. Overrides (`section.key=value`) change the run, e.g. `train.epochs=4`."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from ..config import load_config

logger = logging.getLogger("lfvila")

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
DATA_VERSION = "v4"  # bump when lfvila.data.demo.generate changes its output
MARKER = ".lfvila-demo"
TRAIN_VIDEOS = int(os.environ.get("LFVILA_DEMO_VIDEOS", 480))
"""Training videos of the demo data (the tests generate fewer)."""
VAL_VIDEOS = 48


def cache_dir() -> Path:
    base = os.environ.get("LFVILA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lfvila"
    )
    return Path(base) / f"demo-data-{DATA_VERSION}"


def ensure_data(data_dir: Path) -> Path:
    """The demo dataset in `data_dir`, generated (atomically: a temporary folder, then a rename)
    when it is not complete there."""
    from ..data import demo

    done, stamp = data_dir / "COMPLETE", f"{DATA_VERSION} {TRAIN_VIDEOS} {VAL_VIDEOS}\n"
    if done.is_file() and done.read_text() == stamp:
        logger.info("demo data: %s (cached)", data_dir)
        return data_dir
    total = TRAIN_VIDEOS + VAL_VIDEOS
    logger.info(
        "demo data: generating %d videos into %s (about %d s)", total, data_dir, round(total * 0.05)
    )
    tmp = data_dir.with_name(data_dir.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    demo.generate(tmp, videos=TRAIN_VIDEOS, val_videos=VAL_VIDEOS, progress=True)
    (tmp / "COMPLETE").write_text(stamp)
    if data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, data_dir)
    return data_dir


def _fresh_run_dir(run_dir: Path) -> None:
    """The demo replaces its own previous output, and refuses to touch anything else."""
    if run_dir.exists() and any(run_dir.iterdir()):
        if not (run_dir / MARKER).is_file():
            raise FileExistsError(
                f"{run_dir} exists and is not a demo run: choose another --output-dir"
            )
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / MARKER).write_text("written by `lfvila demo`; rerunning the demo replaces it\n")


def _headline(metrics: dict) -> dict:
    r = metrics["retrieval"]
    return {"R@1": r["t2v_R@1"], "R@5": r["t2v_R@5"], "R@10": r["t2v_R@10"], "MdR": r["t2v_MdR"]}


def plot(run_dir: Path) -> list[Path]:
    """losses.png (training loss terms per log step) and retrieval.png (t2v R@1/5/10 over
    training, chance dashed) from run_dir/metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x]
    train = [x for x in lines if "eval" not in x]
    evals = [x for x in lines if x.get("eval") == "retrieval"]
    out = []
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    for key, label in (("loss", "total"), ("vpc", "VPC"), ("mtc", "MTC")):
        if train and key in train[0]:
            ax.plot([x["step"] for x in train], [x[key] for x in train], label=label)
    ax.set(xlabel="optimiser step", ylabel="loss", title="LF-VILA demo: training losses")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.append(run_dir / "losses.png")
    fig.savefig(out[-1])
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    n = evals[0]["items"] if evals else 1
    for k, color in ((1, "C0"), (5, "C1"), (10, "C2")):
        ax.plot(
            [x["step"] for x in evals],
            [x[f"t2v_R@{k}"] for x in evals],
            "o-",
            color=color,
            label=f"R@{k}",
        )
        ax.axhline(100.0 * min(k, n) / n, color=color, ls="--", lw=0.8)
    ax.set(
        xlabel="optimiser step",
        ylabel="text-to-video recall (%)",
        ylim=(0, 100),
        title=f"zero-shot retrieval, {int(n)} held-out videos (dashed: chance)",
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.append(run_dir / "retrieval.png")
    fig.savefig(out[-1])
    plt.close(fig)
    return out


def run_demo(run_dir: Path, overrides=(), data_dir: str | Path | None = None) -> int:
    """The demo end to end; returns the exit status (0 also when retrieval stays weak: the
    numbers are printed either way)."""
    import torch

    from ..training.metrics import setup_logging
    from .pretrain import pretrain

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    run_dir = Path(run_dir)
    _fresh_run_dir(run_dir)
    setup_logging(run_dir, True)
    data = ensure_data(Path(data_dir) if data_dir else cache_dir())
    cfg = load_config(CONFIG, [f"data.root={data}", *overrides])
    logger.info("demo: pre-training LF-VILA stage 1 (%s) into %s", CONFIG.name, run_dir)
    result = pretrain(cfg, run_dir, config_path=CONFIG, overrides=tuple(overrides))
    if result.stopped_by is not None:
        return 130
    before = next((_headline(r) for step, r in result.history if step == 0), None)
    after = _headline(result.metrics)
    n = result.metrics["retrieval"]["items"]
    chance = {
        "R@1": 100.0 / n,
        "R@5": 100.0 * min(5, n) / n,
        "R@10": 100.0 * min(10, n) / n,
        "MdR": (n + 1) / 2,
    }
    summary = {
        **after,
        "chance_R@1": chance["R@1"],
        "videos": int(n),
        "steps": result.state.step,
        "seconds": round(result.seconds, 1),
        "before": before,
        "chance": chance,
        "full": result.metrics,
    }
    (run_dir / "metrics.json").write_text(json.dumps(summary, indent=1) + "\n")
    pngs = plot(run_dir)
    table = [
        f"zero-shot paragraph-to-video retrieval on {int(n)} held-out videos (text -> video)",
        f"{'':>8} {'before':>8} {'after':>8} {'chance':>8}",
    ]
    for key in ("R@1", "R@5", "R@10", "MdR"):
        b = f"{before[key]:8.1f}" if before else f"{'-':>8}"
        table.append(f"{key:>8} {b} {after[key]:8.1f} {chance[key]:8.1f}")
    ratio = after["R@1"] / chance["R@1"]
    table.append(
        f"R@1 is {ratio:.1f}x chance after {result.state.step} steps "
        f"({result.seconds / 60:.1f} min)"
    )
    table.append("wrote " + ", ".join(str(p) for p in [run_dir / "metrics.json", *pngs]))
    print("\n".join(table))
    return 0
