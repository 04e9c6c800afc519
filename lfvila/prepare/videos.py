"""`lfvila prepare videos`: the clip files of the pre-training data, cut out of local source
videos by their metadata spans and re-encoded (`prepare.cut`), into the layout the datasets read:
`<out>/<video_id>/<clip_id>`.

- Sources: every video file under `--source` (recursively). A file with a JSON sidecar of the
  same stem is video2dataset output (`<shard>/<key>.mp4` + `<key>.json`): its video id is the
  sidecar's `video_id` (or `videoid`, `videoID`, `youtube_id`, `ytid`) or else the YouTube id
  in its `url`; sidecars whose `status` is not "success" are skipped. Any other file is the
  video whose id is its name up to the first '.' (`QMi8x8o55Ns.mp4`, `QMi8x8o55Ns.f137.webm`).
  Sources are looked up in this index, never by a path built from metadata.
- Resumable: clips whose output exists are skipped (outputs appear only complete, by rename).
- `shard=(i, n)`: the videos with crc32(video_id) % n == i, so that n machines split the work
  without coordination and together produce exactly the unsharded output.
- Failures go to `<out>/failures.shard-<i>-of-<n>.jsonl`, one JSON object per clip (clip_id,
  video_id, kind, reason) or per malformed metadata line (where, kind, reason), rewritten by
  each run; a summary goes to `<out>/report.shard-<i>-of-<n>.json`. Video ids hold no '.', so
  these names never collide with a clip folder.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import re
import time
import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .cut import ClipJob, ClipResult, EncodeOptions, cut_clips
from .metadata import (
    CONTAINERS,
    Malformed,
    PrepareError,
    json_lines,
    name_problem,
    read_metadata,
)

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = {".mp4", ".mkv", ".webm", ".mov", ".m4v", ".avi", ".flv", ".ts", ".3gp"}
ID_FIELDS = ("video_id", "videoid", "videoID", "youtube_id", "ytid")
_YOUTUBE_ID = re.compile(r"(?:[?&]v=|youtu\.be/|/shorts/|/embed/|/live/|/v/)([A-Za-z0-9_-]{11})")


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' -> (i, n) with 0 <= i < n."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not match or not 0 <= int(match[1]) < int(match[2]):
        raise PrepareError(f"--shard must be i/n with 0 <= i < n (e.g. 0/4), got {text!r}")
    return int(match[1]), int(match[2])


def shard_of(video_id: str, shards: int) -> int:
    """The shard a video belongs to: stable across machines and Python versions."""
    return zlib.crc32(video_id.encode("utf-8")) % shards


def sidecar_video_id(meta: dict) -> str | None:
    """The YouTube id a video2dataset sidecar names, or None."""
    for key in ID_FIELDS:
        if isinstance(meta.get(key), str) and meta[key].strip():
            return meta[key].strip()
    url = meta.get("url")
    if isinstance(url, str):
        match = _YOUTUBE_ID.search(url)
        if match:
            return match[1]
    return None


@dataclass
class SourceIndex:
    """video id -> source file, and what the scan skipped."""

    paths: dict[str, str] = field(default_factory=dict)
    files: int = 0
    sidecars: int = 0
    skipped: Counter = field(default_factory=Counter)


def index_sources(source: str | os.PathLike) -> SourceIndex:
    """Scan `source` for videos (module docstring); the first file of an id in sorted path
    order wins, the others are counted as duplicates."""
    root = Path(source)
    if not root.is_dir():
        raise PrepareError(f"--source {root}: not a directory")
    index = SourceIndex()
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        names = sorted(names)
        present = set(names)
        for name in names:
            stem, ext = os.path.splitext(name)
            if ext.lower() not in VIDEO_EXTENSIONS or name.startswith("."):
                continue
            index.files += 1
            path = os.path.join(folder, name)
            if f"{stem}.json" in present:
                index.sidecars += 1
                try:
                    with open(os.path.join(folder, f"{stem}.json"), encoding="utf-8") as f:
                        meta = json.load(f)
                except (OSError, ValueError):
                    index.skipped["unreadable sidecar"] += 1
                    continue
                if not isinstance(meta, dict):
                    index.skipped["unreadable sidecar"] += 1
                    continue
                if meta.get("status", "success") != "success":
                    index.skipped["sidecar status not success"] += 1
                    continue
                video_id = sidecar_video_id(meta)
                if video_id is None:
                    index.skipped["sidecar without a video id"] += 1
                    continue
            else:
                video_id = name.split(".")[0]
            if video_id in index.paths:
                index.skipped["duplicate video"] += 1
                continue
            index.paths[video_id] = path
    return index


def read_clip_filter(paths: Iterable[str | os.PathLike]) -> set[str]:
    """The clip ids that pre-training JSONL files reference (the only clips to cut)."""
    wanted: set[str] = set()
    for path in paths:
        for where, value in json_lines(path):
            if isinstance(value, Malformed):
                raise PrepareError(str(value))
            ok = isinstance(value, list) and all(
                isinstance(c, dict) and isinstance(c.get("clip_id"), str) for c in value
            )
            if not ok:
                raise PrepareError(f"{where}: expected a list of {{clip_id, text}} objects")
            wanted.update(c["clip_id"] for c in value)
    return wanted


@dataclass
class VideoTask:
    video_id: str
    source: str | None
    jobs: list[ClipJob]


@dataclass
class Plan:
    tasks: list[VideoTask]  # videos with clips still to cut
    videos: int = 0  # videos of this shard in the metadata
    clips: int = 0
    done_before: int = 0
    malformed: list[dict] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)  # annotated clips of no metadata record
    listed: set[str] = field(default_factory=set)  # clips of this shard in the metadata


def output_path(out: Path, clip_id: str, where: str) -> Path:
    """out/<video id>/<clip_id>, checked to stay inside `out` (PrepareError naming `where`)."""
    problem = name_problem(clip_id)
    if problem:
        raise PrepareError(f"{where}: clip id {clip_id!r} {problem}")
    path = out / clip_id.split(".")[0] / clip_id
    if os.path.commonpath([os.path.abspath(out), os.path.abspath(path)]) != os.path.abspath(out):
        raise PrepareError(f"{where}: clip id {clip_id!r} leaves the output folder")
    return path


def plan(
    metadata: Iterable[str | os.PathLike],
    out: Path,
    index: SourceIndex,
    shard: tuple[int, int] = (0, 1),
    wanted: set[str] | None = None,
) -> Plan:
    """The clips of this shard still to cut, grouped by video (sorted by video id)."""
    i, n = shard
    tasks: dict[str, VideoTask] = {}
    result = Plan([])
    for record in read_metadata(metadata):
        if isinstance(record, Malformed):
            if i == 0:  # no video id, hence no shard: reported once, by shard 0
                result.malformed.append({"where": record.where, "reason": record.reason})
            continue
        if shard_of(record.video_id, n) != i:
            continue
        if record.video_id in tasks:
            reason = f"video {record.video_id!r} listed again"
            result.malformed.append({"where": record.where, "reason": reason})
            continue
        for clip in record.malformed_clips:
            result.malformed.append({"where": clip.where, "reason": clip.reason})
        task = tasks[record.video_id] = VideoTask(
            record.video_id, index.paths.get(record.video_id), []
        )
        seen = set()
        folder = out / record.video_id
        existing = set(os.listdir(folder)) if folder.is_dir() else set()  # one listing a video
        for clip in record.clips:
            if clip.clip_id in seen or (wanted is not None and clip.clip_id not in wanted):
                continue
            seen.add(clip.clip_id)
            result.listed.add(clip.clip_id)
            path = output_path(out, clip.clip_id, clip.where)
            result.clips += 1
            if clip.clip_id in existing and path.is_file():
                result.done_before += 1
                continue
            task.jobs.append(ClipJob(clip.clip_id, clip.start, clip.end, str(path)))
    if wanted is not None:
        missing = wanted - result.listed
        result.unknown = sorted(c for c in missing if shard_of(c.split(".")[0], n) == i)
    result.videos = len(tasks)
    result.tasks = [tasks[v] for v in sorted(tasks) if tasks[v].jobs]
    return result


def _run(args: tuple[VideoTask, EncodeOptions, float]) -> tuple[VideoTask, list[ClipResult]]:
    task, opts, seek_gap = args
    if task.source is None:
        reason = f"no source video for {task.video_id} under --source"
        failed = ClipResult("", False, reason, 0, "source not found")
        return task, [replace(failed, clip_id=j.clip_id) for j in task.jobs]
    return task, cut_clips(task.source, task.jobs, opts, seek_gap)


@dataclass
class VideosReport:
    """Counts of one `prepare videos` run (also written to report.shard-<i>-of-<n>.json)."""

    shard: str = "0/1"
    source_files: int = 0
    videos: int = 0
    clips: int = 0
    done_before: int = 0
    written: int = 0
    failed: Counter = field(default_factory=Counter)
    malformed: int = 0
    seconds: float = 0.0
    failures: str = ""

    def lines(self) -> list[str]:
        failed = sum(self.failed.values())
        rate = self.written / self.seconds if self.seconds > 0 else 0.0
        out = [
            f"shard {self.shard}: {self.clips} clips of {self.videos} videos: {self.written} "
            f"written, {self.done_before} already done, {failed} failed "
            f"({self.seconds:.1f} s, {rate:.2f} clips/s)"
        ]
        if failed:
            out.append("failed: " + ", ".join(f"{n} {k}" for k, n in self.failed.items()))
        if self.malformed:
            out.append(f"malformed metadata lines or clips: {self.malformed}")
        if failed or self.malformed:
            out.append(f"failures: {self.failures}")
        return out


def prepare_videos(
    source: str | os.PathLike,
    metadata: Iterable[str | os.PathLike],
    out: str | os.PathLike,
    opts: EncodeOptions | None = None,
    workers: int = 1,
    shard: tuple[int, int] = (0, 1),
    annotations: Iterable[str | os.PathLike] | None = None,
    progress: bool | None = None,
    seek_gap: float = 10.0,
) -> VideosReport:
    """Cut and re-encode this shard's clips (module docstring); returns the report.

    workers: processes (1: this process). progress: a tqdm bar (None: when stderr is a TTY).
    annotations: pre-training JSONL files; when given, only the clips they reference are cut.
    Raises PrepareError for bad arguments, missing files or unsafe ids in the metadata."""
    opts = opts or EncodeOptions()
    if workers < 1:
        raise PrepareError(f"--workers must be >= 1, got {workers}")
    metadata = [metadata] if isinstance(metadata, (str, os.PathLike)) else list(metadata)
    if isinstance(annotations, (str, os.PathLike)):
        annotations = [annotations]
    for path in metadata:
        if not Path(path).is_file():
            raise PrepareError(f"{path}: file not found")
    out = Path(out)
    src, dst = os.path.realpath(source), os.path.realpath(out)
    if os.path.commonpath([src, dst]) == src:  # its clips would be indexed as sources
        raise PrepareError(f"--out {out} is inside --source {source}")
    started = time.perf_counter()
    index = index_sources(source)
    wanted = read_clip_filter(annotations) if annotations else None
    out.mkdir(parents=True, exist_ok=True)
    work = plan(metadata, out, index, shard, wanted)
    for task in work.tasks:
        for job in task.jobs:
            ext = Path(job.clip_id).suffix.lstrip(".").lower()
            if opts.codec == "h264" and CONTAINERS[ext] == "webm":
                raise PrepareError(f"{job.clip_id}: H.264 cannot go into a .webm (use --codec vp9)")
    name = f"shard-{shard[0]}-of-{shard[1]}"
    report = VideosReport(
        shard=f"{shard[0]}/{shard[1]}",
        source_files=index.files,
        videos=work.videos,
        clips=work.clips,
        done_before=work.done_before,
        malformed=len(work.malformed),
        failures=str(out / f"failures.{name}.jsonl"),
    )
    pending = sum(len(t.jobs) for t in work.tasks)
    from tqdm.auto import tqdm

    with open(report.failures, "w", encoding="utf-8") as failures:
        for line in work.malformed:
            failures.write(json.dumps({**line, "kind": "malformed metadata"}) + "\n")
        for clip_id in work.unknown:
            report.failed["not in metadata"] += 1
            reason = "named by --annotations, in no metadata record"
            line = {
                "clip_id": clip_id,
                "video_id": clip_id.split(".")[0],
                "kind": "not in metadata",
            }
            failures.write(json.dumps({**line, "reason": reason}, ensure_ascii=False) + "\n")
        failures.flush()
        pool = None
        if workers > 1 and len(work.tasks) > 1:
            # fork: the workers need nothing but this module; no decoder is open yet
            methods = multiprocessing.get_all_start_methods()
            ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
            pool = ctx.Pool(min(workers, len(work.tasks)))
        disable = None if progress is None else not progress  # None: tqdm asks isatty
        bar = tqdm(total=pending, unit="clip", desc=f"shard {report.shard}", disable=disable)
        try:
            items = ((t, opts, seek_gap) for t in work.tasks)
            results = pool.imap_unordered(_run, items) if pool else map(_run, items)
            for task, clip_results in results:
                for r in clip_results:
                    if r.ok:
                        report.written += 1
                        continue
                    report.failed[r.kind] += 1
                    line = {"clip_id": r.clip_id, "video_id": task.video_id, "kind": r.kind,
                            "reason": r.reason}  # fmt: skip
                    failures.write(json.dumps(line, ensure_ascii=False) + "\n")
                failures.flush()
                bar.update(len(clip_results))
                bar.set_postfix(failed=sum(report.failed.values()), refresh=False)
        finally:
            bar.close()
            if pool is not None:
                pool.terminate()  # all results are in (or an error): stop the workers now
                pool.join()
    report.seconds = time.perf_counter() - started
    data = asdict(report)
    data["failed"] = dict(report.failed)
    data["source_skipped"] = dict(index.skipped)
    data["options"] = asdict(opts)
    tmp = out / f".report.{name}.json.partial"
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out / f"report.{name}.json")
    return report
