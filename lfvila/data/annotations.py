"""Annotation files: JSONL for every task with the original field names (SPEC.md §10.3), and the
original pre-training LMDB (optional `lmdb` extra), whose values are Python-literal strings parsed
with `ast.literal_eval`, never `eval` (SPEC Decision 4d).

Every record is validated; a bad one raises `AnnotationError` naming the file, the line (or LMDB
key) and the field. Names that become paths (clip_id, video_name, video_id) must stay inside the
video root: absolute paths and '..' are refused.

Records are kept as JSON in flat buffers (`lfvila.data.records.RecordTable`), not as Python
objects: 8.5M pre-training records fit in the bytes of their file, shared by forked workers.
"""

from __future__ import annotations

import ast
import json
import math
import operator
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from .records import RecordTable, RecordTableBuilder, loads


class AnnotationError(ValueError):
    """A malformed annotation; the message names the file, the line or key, and the field.
    (One message argument: pickled and re-raised by DataLoader workers as it is.)"""


def path_problem(name: str) -> str | None:
    """Why `name` (a clip_id, video_name or video_id) is not a path inside the video root, or
    None. The check is lexical: symlinks inside the root are the user's to follow. (String
    operations, not pathlib: this runs for every clip of 8.5M records.)"""
    if "\x00" in name:
        return "contains a NUL byte"
    if os.path.isabs(name) or os.path.splitdrive(name)[0]:
        return "is an absolute path"
    for sep in (os.sep, os.altsep):
        if sep and sep != "/":
            name = name.replace(sep, "/")
    if ".." in name.split("/"):
        return "leaves the video root ('..')"
    return None


def path_in_root(root: str | os.PathLike, name: str, where: str) -> Path:
    """root/name, or AnnotationError naming `where` when `name` would leave the root."""
    problem = path_problem(name)
    if problem:
        raise AnnotationError(f"{where}: {name!r} {problem} (video root {root})")
    return Path(root) / name


def _is_str(x) -> bool:
    return isinstance(x, str) and x.strip() != ""


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_text(x) -> str | None:
    if _is_str(x):
        return None
    if isinstance(x, list) and x and all(isinstance(s, str) for s in x):
        return None
    return "must be a non-empty string or a non-empty list of strings"


def _check_subtitles(x) -> str | None:
    if not isinstance(x, list):
        return "must be a list of {text, start, end}"
    for i, item in enumerate(x):
        if not isinstance(item, dict) or not isinstance(item.get("text"), str):
            return f"item {i} must be an object with a string 'text'"
        if not _is_number(item.get("start")) or not _is_number(item.get("end")):
            return f"item {i} needs numeric 'start' and 'end'"
    return None


def _check_span(x) -> str | None:
    ok = isinstance(x, list) and len(x) == 2 and all(_is_number(v) or v is None for v in x)
    return None if ok else "must be [start, end] in seconds (NaN or null for the whole video)"


def _check_answers(x) -> str | None:
    ok = isinstance(x, list) and len(x) >= 2 and all(isinstance(a, str) for a in x)
    return None if ok else "must be a list of at least 2 answer strings"


def _need(check: Callable[[object], bool], what: str) -> Callable[[object], str | None]:
    return lambda x: None if check(x) else what


def _check_path(x) -> str | None:
    return path_problem(x) if _is_str(x) else "must be a non-empty string"


# field -> check returning None or the problem; one schema per task (SPEC §10.3)
SCHEMAS: dict[str, dict[str, Callable]] = {
    "retrieval": {"clip_id": _check_path, "text": _check_text},
    "how2qa": {
        "clip_id": _check_path,
        "span": _check_span,
        "text_q": _need(lambda x: isinstance(x, str), "must be a string"),
        "text_a": _check_answers,
        "text_s": _check_subtitles,
        "answer_idx": _need(_is_int, "must be an integer"),
    },
    "violin": {
        "clip_id": _check_path,
        "text_q": _need(lambda x: isinstance(x, str), "must be a string"),
        "text_s": _check_subtitles,
        "answer": _need(lambda x: x in (0, 1) and not isinstance(x, bool), "must be 0 or 1"),
    },
    "actnet_qa": {
        "video_name": _check_path,
        "question": _need(lambda x: isinstance(x, str), "must be a string"),
        "answer": _need(_is_int, "must be an integer class index"),
    },
    "video_classification": {
        "video_id": _check_path,
        "recipe_type": _need(_is_int, "must be an integer class index"),
    },
}


def _validate_record(record, task: str, where: str) -> dict:
    if not isinstance(record, dict):
        raise AnnotationError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for field, check in SCHEMAS[task].items():
        if field not in record:
            raise AnnotationError(f"{where}: field '{field}' is missing")
        problem = check(record[field])
        if problem:
            raise AnnotationError(f"{where}: field '{field}' {problem} (got {record[field]!r})")
    if task == "how2qa" and not 0 <= record["answer_idx"] < len(record["text_a"]):
        raise AnnotationError(
            f"{where}: field 'answer_idx' {record['answer_idx']} is not an index of text_a"
        )
    if task == "how2qa":
        _check_span_values(record["span"], where)
    return record


# the class-id field of each classification task (`num_classes` in read_jsonl)
CLASS_FIELDS = {"violin": "answer", "actnet_qa": "answer", "video_classification": "recipe_type"}


def _check_span_values(span: list, where: str) -> None:
    """No negative time; start <= end when both are numbers (NaN / null: the whole video)."""
    numbers = [v for v in span if v is not None and not math.isnan(v)]
    if any(v < 0 for v in numbers):
        raise AnnotationError(f"{where}: field 'span' {span!r} has a negative time")
    if len(numbers) == 2 and span[0] > span[1]:
        raise AnnotationError(f"{where}: field 'span' {span!r} starts after it ends")


def _check_task(record: dict, task: str, where: str, num_classes, num_candidates) -> None:
    """What the model needs of a valid record: class ids in [0, num_classes), exactly
    num_candidates answers (None: not checked)."""
    field = CLASS_FIELDS.get(task)
    if num_classes is not None and field is not None:
        value = record[field]
        if not 0 <= value < num_classes:
            raise AnnotationError(
                f"{where}: field '{field}' {value} is not a class id in [0, {num_classes})"
            )
    if num_candidates is not None and task == "how2qa":
        n = len(record["text_a"])
        if n != num_candidates:
            raise AnnotationError(
                f"{where}: field 'text_a' has {n} answers, the model takes {num_candidates}"
            )


def validate_pretrain(record, where: str, min_clips: int = 1) -> list[dict]:
    """A pre-training sample: a list of at least `min_clips` {clip_id, text} in temporal order
    (min_clips: the clips a sample takes, model.video.num_clips)."""
    if not isinstance(record, list):
        raise AnnotationError(f"{where}: expected a list of {{clip_id, text}} objects")
    if not record:
        raise AnnotationError(f"{where}: expected a list of {{clip_id, text}} objects, got []")
    for i, clip in enumerate(record):
        if not isinstance(clip, dict):
            raise AnnotationError(f"{where}: item {i} must be an object with 'clip_id' and 'text'")
        for field in ("clip_id", "text"):
            if not isinstance(clip.get(field), str):
                raise AnnotationError(
                    f"{where}: item {i} field '{field}' must be a string (got {clip.get(field)!r})"
                )
        problem = path_problem(clip["clip_id"])
        if problem:
            raise AnnotationError(
                f"{where}: item {i} field 'clip_id' {problem} (got {clip['clip_id']!r})"
            )
    if len(record) < min_clips:  # after the fields: a malformed clip is the better message
        raise AnnotationError(
            f"{where}: {len(record)} clips, fewer than the {min_clips} a sample takes"
        )
    return record


def read_jsonl(
    path: str | os.PathLike,
    task: str,
    num_classes: int | None = None,
    num_candidates: int | None = None,
    min_clips: int = 1,
) -> RecordTable:
    """Read and validate a task's JSONL file (`task`: one of SCHEMAS, or "pretrain"): a
    `RecordTable` (a sequence of the records, decoded on access), built line by line.

    Validated against the model too when given: num_classes, the class ids of 'violin' and
    'actnet_qa' (`answer`) and 'video_classification' (`recipe_type`) must lie in
    [0, num_classes) (cross-entropy would silently skip -100 and fail on the GPU for ids past
    the end); num_candidates, the number of 'how2qa' answers (`text_a`), exactly; min_clips,
    the clips of a 'pretrain' record, at least (the window a sample takes, num_clips).
    """
    if task not in SCHEMAS and task != "pretrain":
        raise ValueError(f"task must be one of {sorted(SCHEMAS) + ['pretrain']}, got {task!r}")
    for name, value in (
        ("num_classes", num_classes),
        ("num_candidates", num_candidates),
        ("min_clips", min_clips),
    ):
        if value is not None and (not _is_int(value) or value < 1):
            raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"{path}: annotation file not found")
    # the kept lines are at most the file: one buffer of its size, trimmed at the end
    builder = RecordTableBuilder(capacity=path.stat().st_size, source=str(path))
    with path.open("rb") as f:
        for number, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            where = f"{path}:{number}"
            try:
                record = loads(line.decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise AnnotationError(f"{where}: not UTF-8 (byte {exc.start + 1})") from None
            except json.JSONDecodeError as exc:
                raise AnnotationError(
                    f"{where}: not valid JSON ({exc.msg} at column {exc.colno})"
                ) from None
            if task == "pretrain":
                validate_pretrain(record, where, min_clips or 1)
            else:
                _check_task(
                    _validate_record(record, task, where), task, where, num_classes, num_candidates
                )
            builder.append(line)  # the line as read: decodes to the record just validated
    if not len(builder):
        raise AnnotationError(f"{path}: no records")
    return builder.build()


_ENVIRONMENTS: dict[tuple[str, int], object] = {}
"""Open LMDB environments by (path, process id): LMDB allows one environment per file in a
process, and a forked child must not use its parent's."""


def _lmdb_environment(path: Path):
    key = (str(path), os.getpid())
    env = _ENVIRONMENTS.get(key)
    if env is None:
        import lmdb

        env = _ENVIRONMENTS[key] = lmdb.open(
            str(path), readonly=True, lock=False, readahead=False, subdir=path.is_dir()
        )
    return env


class PretrainLMDB(Sequence):
    """The original pre-training LMDB as a lazy sequence: key str(i) -> a Python-literal string
    of a list of {clip_id, text}, parsed with ast.literal_eval (anything but a literal is
    refused) and validated when read (at least `min_clips` clips, paths inside the root).

    IndexError past the end (iteration stops there). It holds no LMDB environment: each
    process opens its own on first access (one per file, `_lmdb_environment`), so a pickled
    copy (spawned DataLoader workers) is a path and a length, and forked workers never use
    their parent's environment, as LMDB requires."""

    def __init__(self, path: str | os.PathLike, min_clips: int = 1):
        try:
            import lmdb  # noqa: F401
        except ImportError as exc:
            raise ImportError(
                "reading the pre-training LMDB needs the 'lmdb' extra (pip install lmdb)"
            ) from exc
        self.path, self.min_clips = Path(path), min_clips
        if not self.path.exists():
            raise AnnotationError(f"{self.path}: LMDB not found")
        self.length = _lmdb_environment(self.path).stat()["entries"]

    def __len__(self) -> int:
        return self.length

    def where(self, index: int) -> str:
        return f"{self.path} key {index}"

    def __getitem__(self, index: int) -> list[dict]:
        i = operator.index(index)
        if i < 0:
            i += self.length
        if not 0 <= i < self.length:
            raise IndexError(f"{self.path}: index {index} out of range for {self.length} records")
        where = self.where(i)
        with _lmdb_environment(self.path).begin() as txn:
            raw = txn.get(str(i).encode())
        if raw is None:
            raise AnnotationError(f"{where}: no such key")
        return validate_pretrain(parse_literal(raw.decode("utf-8"), where), where, self.min_clips)


def parse_literal(text: str, where: str):
    """A Python literal (lists, dicts, strings, numbers) or AnnotationError: never `eval`."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
        raise AnnotationError(
            f"{where}: value is not a Python literal ({type(exc).__name__})"
        ) from None
