"""`lfvila prepare longform`: LF-VILA-8M-style long videos from HD-VILA-100M-style metadata.

A long video is a run of time-contiguous clips of one video (SPEC.md §10.1): clips with
consecutive indices k, k+1, ... whose spans touch, that is, clip k+1 starts within
`tolerance` seconds (default 0.5 s) of clip k's end, before or after it. A run breaks at an
index jump (a clip missing from the metadata), at a gap or an overlap larger than the
tolerance, and at a clip without a transcript (the clip is dropped). Maximal runs of at least
`min_clips` clips are kept, in temporal order, with each clip's transcript as its text. With a
clip-id list (the released LF-VILA-8M runs) exactly the listed runs are kept instead.

Outputs under `out`: train.jsonl (and val.jsonl with a validation fraction; a video's runs all
go to the same split), one JSON list of {clip_id, text} per line, the format `lfvila.data`
reads; with `lmdb=True` also train_db/, the original LMDB layout (key str(i), value the
Python-literal string of the list); report.json with the counts. Files are written under a
temporary name and renamed when complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .metadata import (
    Clip,
    Malformed,
    PrepareError,
    name_problem,
    read_metadata,
    read_transcripts,
)

logger = logging.getLogger(__name__)

TOLERANCE_S = 0.5
# malformed lines listed by name in report.json (all are counted)
MAX_LISTED = 1000


@dataclass
class LongformReport:
    """Counts of one `prepare longform` run (written to report.json)."""

    videos: int = 0
    clips: int = 0
    runs_kept: int = 0
    clips_kept: int = 0
    train_runs: int = 0
    val_runs: int = 0
    min_clips: int = 4
    tolerance_s: float = TOLERANCE_S
    transcripts: int = 0
    # clips (or, with a clip-id list, runs) dropped, by reason
    rejected: Counter = field(default_factory=Counter)
    # where runs were cut: "index jump", "gap", "overlap"
    breaks: Counter = field(default_factory=Counter)
    malformed_lines: int = 0
    malformed: list[str] = field(default_factory=list)

    def note_malformed(self, text: str) -> None:
        self.malformed_lines += 1
        if len(self.malformed) < MAX_LISTED:
            self.malformed.append(text)

    def lines(self) -> list[str]:
        """The report as printed by the CLI."""
        out = [
            f"videos: {self.videos}, clips: {self.clips}, transcripts: {self.transcripts}",
            f"runs kept: {self.runs_kept} ({self.clips_kept} clips; train {self.train_runs}, "
            f"val {self.val_runs}); runs of >= {self.min_clips} clips touching within "
            f"{self.tolerance_s:g} s",
        ]
        if self.rejected:
            out.append("rejected: " + ", ".join(f"{n} {k}" for k, n in self.rejected.items()))
        if self.breaks:
            out.append("runs cut at: " + ", ".join(f"{n} {k}" for k, n in self.breaks.items()))
        if self.malformed_lines:
            out.append(f"malformed records: {self.malformed_lines}, e.g. {self.malformed[0]}")
        return out


def contiguous_runs(
    clips: Sequence[Clip], texts: dict[str, str], tolerance: float, report: LongformReport
) -> list[list[Clip]]:
    """Maximal runs of one video's clips (module docstring) in index order, unfiltered;
    rejects and breaks are counted into `report`."""
    seen_ids, seen_index, unique = set(), set(), []
    for clip in clips:
        if clip.clip_id in seen_ids or clip.index in seen_index:
            report.rejected["duplicate clip"] += 1
            continue
        seen_ids.add(clip.clip_id)
        seen_index.add(clip.index)
        unique.append(clip)
    runs: list[list[Clip]] = []
    run: list[Clip] = []
    for clip in sorted(unique, key=lambda c: c.index):
        if clip.clip_id not in texts:
            report.rejected["missing transcript"] += 1
            run = []
            continue
        if run:
            prev = run[-1]
            cut = None
            if clip.index != prev.index + 1:
                cut = "index jump"
            elif clip.start - prev.end > tolerance:
                cut = "gap"
            elif prev.end - clip.start > tolerance:
                cut = "overlap"
            if cut:
                report.breaks[cut] += 1
                run = []
        if not run:
            runs.append(run)
        run.append(clip)
    return runs


def is_val(video_id: str, fraction: float) -> bool:
    """Whether a video goes to the validation split: a hash of its id, the same on every run."""
    if fraction <= 0:
        return False
    digest = hashlib.sha1(video_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def read_clip_id_runs(path: str | os.PathLike) -> Iterator[tuple[str, list[str] | Malformed]]:
    """("file:line", clip ids) per line of a clip-id list: a JSON list of ids, or ids separated
    by whitespace or commas; a Malformed value for a line that is neither."""
    with open(path, "rb") as f:
        raw_lines = f.read().splitlines()
    for number, raw in enumerate(raw_lines, start=1):
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            raise PrepareError(f"{path}:{number}: not UTF-8 (byte {exc.start + 1})") from None
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{number}"
        if line.startswith("["):
            try:
                ids = json.loads(line)
            except json.JSONDecodeError as exc:
                yield where, Malformed(where, f"not valid JSON ({exc.msg})")
                continue
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                yield where, Malformed(where, "expected a JSON list of clip id strings")
                continue
        else:
            ids = line.replace(",", " ").split()
        yield where, ids


class _Writer:
    """Lines to `path` under a temporary name, renamed by `close()`."""

    def __init__(self, path: Path):
        self.path, self.tmp = path, path.with_name(f".{path.name}.partial")
        self.file = self.tmp.open("w", encoding="utf-8")
        self.count = 0

    def write(self, run: list[dict]) -> None:
        self.file.write(json.dumps(run, ensure_ascii=False) + "\n")
        self.count += 1

    def close(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.path)


def _runs_from_metadata(records, texts, tolerance, min_clips, report) -> Iterator[list[Clip]]:
    seen_videos = set()
    for record in records:
        if isinstance(record, Malformed):
            report.note_malformed(str(record))
            continue
        if record.video_id in seen_videos:
            report.note_malformed(f"{record.where}: video {record.video_id!r} listed again")
            continue
        seen_videos.add(record.video_id)
        report.videos += 1
        report.clips += len(record.clips) + len(record.malformed_clips)
        report.rejected["malformed clip"] += len(record.malformed_clips)
        for clip in record.malformed_clips:
            report.note_malformed(str(clip))
        for run in contiguous_runs(record.clips, texts, tolerance, report):
            if len(run) >= min_clips:
                yield run
            else:
                report.rejected["too short"] += len(run)


def _runs_from_list(path, records, texts, min_clips, report) -> Iterator[list[Clip]]:
    known: dict[str, Clip] = {}
    for record in records:
        if isinstance(record, Malformed):
            report.note_malformed(str(record))
            continue
        report.videos += 1
        report.clips += len(record.clips) + len(record.malformed_clips)
        for clip in record.malformed_clips:
            report.note_malformed(str(clip))
        for clip in record.clips:
            known.setdefault(clip.clip_id, clip)
    for where, ids in read_clip_id_runs(path):
        if isinstance(ids, Malformed):
            report.note_malformed(str(ids))
            continue
        for clip_id in ids:
            problem = name_problem(clip_id)
            if problem:
                raise PrepareError(f"{where}: clip id {clip_id!r} {problem}")
        if len(ids) < min_clips:
            report.rejected["runs too short"] += 1
        elif any(i not in known for i in ids):
            report.rejected["runs with a clip not in the metadata"] += 1
        elif any(i not in texts for i in ids):
            report.rejected["runs with a missing transcript"] += 1
        else:
            yield [known[i] for i in ids]


def prepare_longform(
    metadata: Iterable[str | os.PathLike],
    transcripts: Iterable[str | os.PathLike],
    out: str | os.PathLike,
    min_clips: int = 4,
    clip_ids: str | os.PathLike | None = None,
    val_fraction: float = 0.0,
    tolerance: float = TOLERANCE_S,
    lmdb: bool = False,
) -> LongformReport:
    """Write train.jsonl (val.jsonl, train_db/) and report.json under `out`; returns the report.

    Raises PrepareError for bad arguments, a missing file or an unsafe clip or video id."""
    if min_clips < 1:
        raise PrepareError(f"--min-clips must be at least 1, got {min_clips}")
    if not 0 <= val_fraction < 1:
        raise PrepareError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if tolerance < 0:
        raise PrepareError(f"--tolerance must be >= 0 seconds, got {tolerance}")
    metadata, transcripts = (
        [x] if isinstance(x, (str, os.PathLike)) else list(x) for x in (metadata, transcripts)
    )
    for path in [*metadata, *transcripts, *([clip_ids] if clip_ids else [])]:
        if not Path(path).is_file():
            raise PrepareError(f"{path}: file not found")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = LongformReport(min_clips=min_clips, tolerance_s=tolerance)
    found = read_transcripts(transcripts)
    report.transcripts = len(found.texts)
    for line in found.malformed:
        report.note_malformed(f"{line} (transcripts)")
    texts = found.texts
    records = read_metadata(metadata)
    if clip_ids:
        runs = _runs_from_list(clip_ids, records, texts, min_clips, report)
    else:
        runs = _runs_from_metadata(records, texts, tolerance, min_clips, report)
    train = _Writer(out / "train.jsonl")
    val = _Writer(out / "val.jsonl") if val_fraction > 0 else None
    try:
        for run in runs:
            items = [{"clip_id": c.clip_id, "text": texts[c.clip_id]} for c in run]
            video_id = run[0].clip_id.split(".")[0]
            (val if val is not None and is_val(video_id, val_fraction) else train).write(items)
            report.runs_kept += 1
            report.clips_kept += len(run)
    except BaseException:
        for writer in (train, val):
            if writer is not None:
                writer.file.close()
                writer.tmp.unlink(missing_ok=True)
        raise
    train.close()
    if val is not None:
        val.close()
    report.train_runs, report.val_runs = train.count, val.count if val is not None else 0
    if lmdb:
        write_lmdb(out / "train.jsonl", out / "train_db")
    data = asdict(report)
    data["rejected"], data["breaks"] = dict(report.rejected), dict(report.breaks)
    tmp = out / ".report.json.partial"
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, out / "report.json")
    return report


def write_lmdb(jsonl: Path, db: Path) -> int:
    """The original pre-training LMDB from a pre-training JSONL: key str(i) -> the
    Python-literal string of line i's list (what `PretrainLMDB` and the original read).
    Written into a temporary folder, then renamed; returns the number of records."""
    try:
        import lmdb
    except ImportError as exc:
        raise PrepareError("--lmdb needs the 'lmdb' package (pip install lmdb)") from exc
    tmp = db.with_name(f".{db.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    map_size = 4 * jsonl.stat().st_size + (64 << 20)
    env = lmdb.open(str(tmp), map_size=map_size, subdir=True, lock=False)
    count = 0
    try:
        with jsonl.open(encoding="utf-8") as f:
            txn = env.begin(write=True)
            for count, line in enumerate(f, start=1):
                txn.put(str(count - 1).encode(), repr(json.loads(line)).encode("utf-8"))
                if count % 10000 == 0:  # bounded dirty pages per transaction
                    txn.commit()
                    txn = env.begin(write=True)
            txn.commit()
        env.sync(True)
    finally:
        env.close()
    if db.exists():
        shutil.rmtree(db)
    os.replace(tmp, db)
    return count
