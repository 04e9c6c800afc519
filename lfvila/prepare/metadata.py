"""Readers for HD-VILA-100M-style metadata and transcripts, and the path-safety rules that every
`lfvila prepare` command applies to names taken from them.

Metadata: JSONL (optionally gzip-compressed), one video per line:
    {"video_id": "QMi8x8o55Ns", "url": "https://www.youtube.com/watch?v=QMi8x8o55Ns",
     "clip": [{"clip_id": "QMi8x8o55Ns.1.mp4", "span": ["00:00:17.759", "00:00:23.279"]}, ...]}
A clip id is `<video_id>.<k>.<ext>`: k is the clip's index in the video, and the file of the
clip is `<root>/<video_id>/<clip_id>` (SPEC.md §10.1). Spans are "hh:mm:ss.mmm" (also "mm:ss",
plain seconds, or a number), end after start.

Transcripts: JSONL, each line either {"clip_id": ..., "text": str or [str]} or an object that
maps clip ids to texts; a `.json` file may hold one such mapping or a list of such objects. A
list of strings (ASR segments) is joined with spaces. Empty text counts as missing.

Malformed lines and clips are returned with their "file:line" so the commands can count and
report them; a name that would leave the output or source folder (a '/', '\\', '..', a NUL or a
leading '.') is never a mere reject: it raises `PrepareError` naming the file and the line.
"""

from __future__ import annotations

import gzip
import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

# Containers a clip id may name; the extension picks the muxer of the re-encoded clip.
CONTAINERS = {"mp4": "mp4", "m4v": "mp4", "mov": "mov", "mkv": "matroska", "webm": "webm"}


class PrepareError(ValueError):
    """Bad input to a `lfvila prepare` command: the message names the file and the line (the
    CLI prints it as one line and exits with status 2)."""


def name_problem(name: object) -> str | None:
    """Why `name` cannot be one path component inside an output or source folder, or None."""
    if not isinstance(name, str) or not name.strip():
        return "must be a non-empty string"
    if "\x00" in name:
        return "contains a NUL byte"
    if "/" in name or "\\" in name:
        return "contains a path separator"
    if name in (".", "..") or name.startswith("."):
        return "starts with '.'"
    if len(name.encode("utf-8")) > 255:
        return "is longer than 255 bytes"
    return None


def check_video_id(video_id: object, where: str) -> str:
    """A video id usable as a folder name: PrepareError naming `where` otherwise. No '.': the
    datasets find a clip's folder as the part of its clip id before the first '.'."""
    problem = name_problem(video_id)
    if problem is None and "." in video_id:
        problem = "contains '.'"
    if problem:
        raise PrepareError(f"{where}: video id {video_id!r} {problem}")
    return video_id


def parse_time(value: object) -> float:
    """Seconds from "hh:mm:ss.mmm", "mm:ss.mmm", "ss.mmm" or a number; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"not a time: {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and value.strip():
        parts = value.strip().split(":")
        if len(parts) > 3:
            raise ValueError(f"not a time: {value!r}")
        seconds = 0.0
        try:
            for i, part in enumerate(parts):
                number = float(part)
                if i < len(parts) - 1 and (number != int(number) or "." in part):
                    raise ValueError
                seconds = seconds * 60 + number
        except ValueError:
            raise ValueError(f"not a time: {value!r}") from None
    else:
        raise ValueError(f"not a time: {value!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"not a time: {value!r}")
    return seconds


@dataclass(frozen=True)
class Malformed:
    """A line that is not a usable record: "file:line" and why."""

    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass(frozen=True)
class Clip:
    """One clip of a video: its id, index k (from `<video_id>.<k>.<ext>`), span in seconds."""

    clip_id: str
    index: int
    start: float
    end: float
    where: str  # "file:line" of its metadata record


@dataclass
class VideoRecord:
    """One metadata line: the video, its well-formed clips in file order, and the clips that
    were not (where = "file:line: clip i")."""

    video_id: str
    url: str | None
    clips: list[Clip]
    where: str
    malformed_clips: list[Malformed] = field(default_factory=list)


def open_text(path: str | os.PathLike):
    """A text file, gunzipped when its name ends in .gz; PrepareError when it is missing."""
    path = Path(path)
    if not path.is_file():
        raise PrepareError(f"{path}: file not found")
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="strict")
    return path.open("r", encoding="utf-8", errors="strict")


def json_lines(path: str | os.PathLike) -> Iterator[tuple[str, object]]:
    """("file:line", value | Malformed) for each non-blank line of a JSONL file."""
    with open_text(path) as f:
        number = 0
        while True:
            try:
                line = f.readline()
            except UnicodeDecodeError as exc:
                raise PrepareError(f"{path}:{number + 1}: not UTF-8 ({exc.reason})") from None
            if not line:
                return
            number += 1
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as exc:
                yield where, Malformed(where, f"not valid JSON ({exc.msg} at column {exc.colno})")


def parse_clip_id(clip_id: str, video_id: str) -> tuple[int | None, str | None]:
    """(k, None) for a clip id `<video_id>.<k>.<ext>`, else (None, why)."""
    parts = clip_id.split(".")
    if parts[0] != video_id:
        return None, f"clip id {clip_id!r} does not start with its video id {video_id!r} + '.'"
    if len(parts) != 3 or not (parts[1].isascii() and parts[1].isdigit()):
        return None, f"clip id {clip_id!r} is not <video_id>.<index>.<extension>"
    if parts[2].lower() not in CONTAINERS:
        return None, f"clip id {clip_id!r}: extension not one of {sorted(CONTAINERS)}"
    return int(parts[1]), None


def _video_record(value: object, where: str) -> VideoRecord | Malformed:
    if not isinstance(value, dict):
        return Malformed(where, f"expected a JSON object, got {type(value).__name__}")
    video_id = value.get("video_id")
    if not isinstance(video_id, str) or not video_id.strip():
        return Malformed(where, "field 'video_id' must be a non-empty string")
    check_video_id(video_id, where)
    clips = value.get("clip")
    if not isinstance(clips, list):
        return Malformed(where, "field 'clip' must be a list of {clip_id, span}")
    url = value.get("url") if isinstance(value.get("url"), str) else None
    record = VideoRecord(video_id, url, [], where)
    for i, clip in enumerate(clips):
        at = f"{where}: clip {i}"
        why = None
        if not isinstance(clip, dict):
            why = "expected an object with 'clip_id' and 'span'"
        else:
            clip_id, span = clip.get("clip_id"), clip.get("span")
            problem = name_problem(clip_id)
            if problem and problem != "must be a non-empty string":
                raise PrepareError(f"{at}: clip id {clip_id!r} {problem}")
            if problem:
                why = f"field 'clip_id' {problem}"
            else:
                index, why = parse_clip_id(clip_id, video_id)
            if why is None and (not isinstance(span, list) or len(span) != 2):
                why = "field 'span' must be [start, end]"
            if why is None:
                try:
                    start, end = parse_time(span[0]), parse_time(span[1])
                except ValueError as exc:
                    why = f"field 'span': {exc}"
            if why is None and end <= start:
                why = f"span {span!r} does not end after it starts"
        if why:
            record.malformed_clips.append(Malformed(at, why))
            continue
        record.clips.append(Clip(clip_id, index, start, end, where))
    return record


def read_metadata(paths: Iterable[str | os.PathLike]) -> Iterator[VideoRecord | Malformed]:
    """Every line of the metadata files, in order: a `VideoRecord` or a `Malformed` line.
    Raises PrepareError (naming file and line) for an unsafe video or clip id."""
    for path in paths:
        for where, value in json_lines(path):
            yield value if isinstance(value, Malformed) else _video_record(value, where)


def _text(value: object) -> str | None:
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        value = " ".join(s.strip() for s in value)
    if isinstance(value, str) and value.strip():
        return " ".join(value.split())
    return None


@dataclass
class Transcripts:
    """clip id -> text, with the lines that could not be read and the ids given twice."""

    texts: dict[str, str] = field(default_factory=dict)
    malformed: list[Malformed] = field(default_factory=list)
    duplicates: int = 0
    empty: int = 0

    def add(self, clip_id: object, text: object, where: str) -> None:
        if not isinstance(clip_id, str) or not clip_id:
            self.malformed.append(Malformed(where, "clip id must be a non-empty string"))
            return
        text = _text(text)
        if text is None:  # empty or not text: the clip has no transcript
            self.empty += 1
            return
        if clip_id in self.texts:
            self.duplicates += 1  # the later one wins
        self.texts[clip_id] = text

    def add_value(self, value: object, where: str) -> None:
        if isinstance(value, dict) and "clip_id" in value:
            self.add(value["clip_id"], value.get("text"), where)
        elif isinstance(value, dict):
            for clip_id, text in value.items():
                self.add(clip_id, text, where)
        else:
            self.malformed.append(
                Malformed(where, "expected {clip_id, text} or an object of clip id -> text")
            )


def read_transcripts(paths: Iterable[str | os.PathLike]) -> Transcripts:
    """All transcripts of the given files (module docstring for the formats)."""
    out = Transcripts()
    for path in paths:
        if Path(path).suffix == ".json":
            with open_text(path) as f:
                try:
                    value = json.load(f)
                except json.JSONDecodeError as exc:
                    out.malformed.append(
                        Malformed(f"{path}:{exc.lineno}", f"not valid JSON ({exc.msg})")
                    )
                    continue
            items = value if isinstance(value, list) else [value]
            for i, item in enumerate(items):
                out.add_value(item, f"{path}: item {i}" if isinstance(value, list) else str(path))
            continue
        for where, value in json_lines(path):
            if isinstance(value, Malformed):
                out.malformed.append(value)
            else:
                out.add_value(value, where)
    return out
