"""`lfvila prepare check`: every clip a pre-training annotation file references exists, opens
and has enough frames for its sampling, checked the way the datasets read it.

A clip passes when `probe` counts at least `min_frames` frames (default: `frames_per_clip`, the
8 frames a clip contributes to a 32-frame, 4-clip sample, SPEC.md §10.1) and `read_frames`
decodes the frames the sampler takes from it, ⌊j·n/frames_per_clip⌋. The frame count is the
packet count, as in training (`exact=True`: a full decode). Each clip is checked once however
many records name it.

Outputs: a report (JSON: counts by kind, up to MAX_LISTED bad clips with their reasons) and the
bad-id list: one clip_id per line, exactly as in the annotations, sorted, UTF-8, nothing else
(no header, no blank lines), empty when every clip passed.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

MAX_LISTED = 10000


def _records(path: Path):
    """The pre-training records of a JSONL file or an original LMDB folder (validated)."""
    from lfvila.data.annotations import PretrainLMDB, read_jsonl

    if path.is_dir():
        return PretrainLMDB(path)
    return read_jsonl(path, "pretrain")


def check_clip(
    path: str, min_frames: int, frames_per_clip: int, exact: bool = False
) -> tuple[str, str] | None:
    """None when the clip at `path` passes, else (kind, reason)."""
    from lfvila.data.sampling import clip_frame_indices
    from lfvila.data.video import VideoDecodeError, probe, read_frames

    try:
        frames = probe(path, exact=exact)["num_frames"]
        if frames < min_frames:
            return "too short", f"{frames} frames, fewer than {min_frames}"
        read_frames(path, clip_frame_indices(frames, frames_per_clip), backend="pyav")
    except VideoDecodeError as exc:
        return exc.kind, exc.reason
    return None


def _check(args: tuple[str, str, int, int, bool]) -> tuple[str, tuple[str, str] | None]:
    clip_id, path, min_frames, frames_per_clip, exact = args
    return clip_id, check_clip(path, min_frames, frames_per_clip, exact)


@dataclass
class CheckReport:
    annotations: str = ""
    video_root: str = ""
    records: int = 0
    clips: int = 0
    ok: int = 0
    min_frames: int = 8
    frames_per_clip: int = 8
    exact: bool = False
    bad: Counter = field(default_factory=Counter)
    examples: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    bad_ids: str = ""

    def lines(self) -> list[str]:
        bad = sum(self.bad.values())
        out = [
            f"{self.annotations}: {self.records} records, {self.clips} clips: {self.ok} ok, "
            f"{bad} bad ({self.seconds:.1f} s)"
        ]
        if bad:
            out.append("bad: " + ", ".join(f"{n} {k}" for k, n in self.bad.most_common()))
            out.append(f"e.g. {self.examples[0]['clip_id']}: {self.examples[0]['reason']}")
        out.append(f"bad clip ids: {self.bad_ids}")
        return out


def prepare_check(
    annotations: str | os.PathLike,
    video_root: str | os.PathLike,
    workers: int = 1,
    frames_per_clip: int = 8,
    min_frames: int | None = None,
    exact: bool = False,
    report_path: str | os.PathLike | None = None,
    bad_ids_path: str | os.PathLike | None = None,
    progress: bool | None = None,
) -> CheckReport:
    """Check every clip of `annotations` (a pre-training JSONL or LMDB) under `video_root`
    (`<video_root>/<video id>/<clip_id>`); writes the report and the bad-id list (defaults:
    `<annotations stem>.check.json` and `<annotations stem>.bad_ids.txt` in the current folder)."""
    from tqdm.auto import tqdm

    from lfvila.data.annotations import path_in_root

    from .metadata import PrepareError

    annotations, video_root = Path(annotations), Path(video_root)
    if workers < 1 or frames_per_clip < 1 or (min_frames is not None and min_frames < 1):
        raise PrepareError("--workers, --frames-per-clip and --min-frames must be >= 1")
    if not video_root.is_dir():
        raise PrepareError(f"--video-root {video_root}: not a directory")
    min_frames = frames_per_clip if min_frames is None else min_frames
    started = time.perf_counter()
    records = _records(annotations)
    clips: dict[str, str] = {}
    for i in range(len(records)):
        for clip in records[i]:
            clip_id = clip["clip_id"]
            if clip_id not in clips:
                where = f"{annotations} record {i + 1}"
                path = path_in_root(video_root, clip_id.split(".")[0], where) / clip_id
                clips[clip_id] = str(path)
    report = CheckReport(
        annotations=str(annotations),
        video_root=str(video_root),
        records=len(records),
        clips=len(clips),
        min_frames=min_frames,
        frames_per_clip=frames_per_clip,
        exact=exact,
    )
    stem = annotations.name if annotations.is_dir() else annotations.stem
    report_path = Path(report_path or f"{stem}.check.json")
    report.bad_ids = str(Path(bad_ids_path or f"{stem}.bad_ids.txt"))
    jobs = [(c, p, min_frames, frames_per_clip, exact) for c, p in clips.items()]
    bad_ids = []
    pool = None
    if workers > 1 and len(jobs) > 1:
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        pool = ctx.Pool(min(workers, len(jobs)))
    disable = None if progress is None else not progress
    bar = tqdm(total=len(jobs), unit="clip", desc="check", disable=disable)
    try:
        results = pool.imap(_check, jobs, chunksize=8) if pool else map(_check, jobs)
        for clip_id, problem in results:
            bar.update(1)
            if problem is None:
                report.ok += 1
                continue
            kind, reason = problem
            report.bad[kind] += 1
            bad_ids.append(clip_id)
            if len(report.examples) < MAX_LISTED:
                report.examples.append({"clip_id": clip_id, "kind": kind, "reason": reason})
        if pool is not None:
            pool.close()
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
    report.seconds = time.perf_counter() - started
    _write(Path(report.bad_ids), "".join(f"{c}\n" for c in sorted(bad_ids)))
    data = {**report.__dict__, "bad": dict(report.bad)}
    _write(report_path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    return report


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
