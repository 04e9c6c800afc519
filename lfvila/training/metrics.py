"""What a run reports, on rank 0: `DIR/metrics.jsonl` (one JSON object per log step and per
evaluation), TensorBoard scalars in `DIR/tb`, `DIR/log.txt` (everything logged), and a tqdm bar
when stderr is a terminal (otherwise a plain line per log step).

`Throughput` turns step timings into samples/s, the share of time spent waiting for data and,
on GPUs in `lfvila.model.flops.PEAK_BF16_TFLOPS`, model FLOPs utilisation.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path

logger = logging.getLogger("lfvila")


def setup_logging(run_dir: Path | None, is_main: bool) -> None:
    """INFO to stderr and `run_dir/log.txt` on rank 0; warnings only elsewhere."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_lfvila", False):
            root.removeHandler(handler)
            handler.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(message)s"))
    console.setLevel(logging.INFO if is_main else logging.WARNING)
    handlers = [console]
    if run_dir is not None and is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        file = logging.FileHandler(run_dir / "log.txt")
        file.setFormatter(fmt)
        handlers.append(file)
    for handler in handlers:
        handler._lfvila = True
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    for noisy in ("torch.distributed", "DeepSpeed", "deepspeed", "urllib3", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class Throughput:
    """Accumulates step and data-wait time between two log steps."""

    def __init__(self, flops_per_sample: float | None = None, peak_flops: float | None = None):
        self.flops, self.peak = flops_per_sample, peak_flops
        self.reset()

    def reset(self) -> None:
        self.start, self.wait, self.samples, self.steps = time.perf_counter(), 0.0, 0, 0

    def add(self, samples: int, wait: float) -> None:
        self.samples += samples
        self.wait += wait
        self.steps += 1

    def summary(self, world_size: int) -> dict:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        out = {
            "samples_per_s": self.samples / elapsed,
            "data_wait": self.wait / elapsed,
            "step_s": elapsed / max(1, self.steps),
        }
        if self.flops and self.peak:
            # training = 3x forward FLOPs per sample; MFU per GPU
            out["mfu"] = 3 * self.flops * out["samples_per_s"] / (self.peak * world_size)
        return out


class RunLog:
    """metrics.jsonl + TensorBoard + the progress bar (a no-op on ranks other than 0)."""

    def __init__(self, run_dir: Path, is_main: bool, total_steps: int, start_step: int):
        self.active, self.run_dir = is_main, run_dir
        self.tb = self.bar = None
        if not is_main:
            return
        self.metrics_path = run_dir / "metrics.jsonl"
        self._truncate_after(start_step)
        try:
            from torch.utils.tensorboard import SummaryWriter

            purge = start_step + 1 if start_step else None  # drop what a stopped run logged later
            self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=purge)
        except Exception as exc:  # tensorboard missing or broken: the run goes on without it
            logger.warning("TensorBoard logging off (%s: %s)", type(exc).__name__, exc)
        if sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def _truncate_after(self, step: int) -> None:
        """A resumed run drops the lines an interrupted run logged after its checkpoint."""
        if not self.metrics_path.is_file():
            return
        keep = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
        self.metrics_path.write_text("".join(x + "\n" for x in keep))

    def write(self, record: dict, prefix: str) -> None:
        """One line of metrics.jsonl and the scalars of `record` under `prefix/` in TensorBoard."""
        if not self.active:
            return
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.tb.add_scalar(f"{prefix}/{key}", value, record["step"])
            self.tb.flush()

    def progress(self, step: int, text: dict | None) -> None:
        """Advance the bar to `step`; `text` (a logging step's figures) replaces its postfix,
        None keeps the last one (no device value is read between logging steps)."""
        if self.bar is not None:
            self.bar.n = step
            if text is None:
                self.bar.refresh()
            else:
                self.bar.set_postfix(text, refresh=True)

    def say(self, message: str) -> None:
        """A log line that does not break the bar."""
        if not self.active:
            return
        if self.bar is not None:
            self.bar.clear()
        logger.info(message)
        if self.bar is not None:
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
