"""Encoding a whole collection into an index file, resumably (`lfvila encode videos`).

Inputs (`list_videos`): a folder (every video file under it, id = its path relative to the
folder without the extension), a .txt list (one path per line, or `id<TAB>path`; relative paths
against the list's folder), or retrieval annotations .jsonl (`clip_id` = id, files under
`video_root` as the datasets resolve them).

Resumable (`encode_collection`): videos are encoded `chunk_size` at a time and each chunk is
committed as its own index file in `<out>.parts/` (written to a temporary file, then renamed).
A rerun skips every id already encoded there or in an existing `<out>`, and retries the ones
that failed. When every chunk is in, `<out>` is written (streaming, atomically) with the ids of
the input in input order and the failures of the last attempt, and the parts are removed.
Chunks encoded with other weights (another fingerprint) are refused, never mixed in.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from .._version import __version__
from .index import Index, write_index

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov")


def list_videos(spec: str | os.PathLike, video_root: str | os.PathLike | None = None):
    """[(id, path)] of a folder, a .txt list or retrieval annotations (see the module docstring);
    errors name `--videos` and the file and line."""
    spec = Path(spec)
    if spec.is_dir():
        files = sorted(p for p in spec.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS)
        items = [(p.relative_to(spec).with_suffix("").as_posix(), str(p)) for p in files]
    elif spec.is_file() and spec.suffix == ".jsonl":
        from ..data.annotations import read_jsonl
        from ..data.datasets import video_file

        root = Path(video_root) if video_root else spec.parent
        records = read_jsonl(spec, "retrieval")
        items = [
            (str(r["clip_id"]), video_file(root, r["clip_id"], f"{spec}: record {i}"))
            for i, r in enumerate(records)
        ]
    elif spec.is_file():
        items = []
        for line in spec.read_text(encoding="utf-8").splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            vid, _, path = line.partition("\t") if "\t" in line else ("", "", line)
            path = Path(path.strip()).expanduser()
            full = path if path.is_absolute() else spec.parent / path
            if not vid:
                known = path.suffix.lower() in VIDEO_EXTENSIONS
                vid = (path.with_suffix("") if known else path).as_posix()
            items.append((vid.strip(), str(full)))
    else:
        raise FileNotFoundError(f"--videos: {spec} is neither a folder nor a file")
    seen: dict[str, str] = {}
    for vid, path in items:
        if vid in seen:
            raise ValueError(f"--videos {spec}: id {vid!r} twice ({seen[vid]} and {path})")
        seen[vid] = path
    if not items:
        raise ValueError(f"--videos: no videos in {spec}")
    return items


def _parts_dir(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def _check_model(index: Index, fingerprint: str | None) -> None:
    theirs = index.metadata.get("model")
    if fingerprint is not None and theirs != fingerprint:
        raise ValueError(
            f"{index.path} was encoded with other weights (model {theirs}, these are "
            f"{fingerprint}): delete it or choose another --out"
        )


def encode_collection(
    encoder,
    items: list[tuple[str, str]],
    out: str | os.PathLike,
    chunk_size: int = 1024,
    batch_size: int | None = None,
    workers: int | None = None,
    progress: bool | None = None,
) -> dict:
    """Encode the videos `items` [(id, path)] into the index file `out`, resumably; returns
    {"encoded", "reused", "failed": [{id, path, kind, reason}], "out"}."""
    if chunk_size < 1:
        raise ValueError(f"--chunk-size must be >= 1, got {chunk_size}")
    out = Path(out)
    parts = _parts_dir(out)
    sources: list[Index] = []
    if out.is_file():
        sources.append(Index(out))
    if parts.is_dir():
        sources += [Index(p) for p in sorted(parts.glob("part-*.safetensors"))]
    done: dict[str, tuple[int, int]] = {}  # id -> (source, row)
    for s, index in enumerate(sources):
        _check_model(index, encoder.fingerprint)
        for row, vid in enumerate(index.ids):
            done[vid] = (s, row)
    todo = [(vid, path) for vid, path in items if vid not in done]
    reused = len(items) - len(todo)
    if reused:
        logger.info(
            "%s: %d of %d videos already encoded, %d to go", out, reused, len(items), len(todo)
        )
    meta = _metadata(encoder, "video")
    failed: dict[str, dict] = {}
    numbers = [int(s.path.stem.split("-")[1]) for s in sources if s.path.parent == parts]
    next_part = 1 + max(numbers, default=-1)
    encoded = 0
    for start in range(0, len(todo), chunk_size):
        chunk = todo[start : start + chunk_size]
        ids, blocks, chunk_failed = [], [], []
        for batch in encoder.iter_videos([p for _, p in chunk], batch_size, workers, progress):
            ids += [chunk[i][0] for i in batch.positions]
            blocks.append(batch.features)
            for f in batch.failures:
                chunk_failed.append(
                    {"id": chunk[f.position][0], "path": f.path, "kind": f.kind, "reason": f.reason}
                )
        parts.mkdir(parents=True, exist_ok=True)
        path = parts / f"part-{next_part:05d}.safetensors"
        write_index(path, blocks, len(ids), encoder.dim, ids, chunk_failed, meta)
        next_part += 1
        index = Index(path)
        sources.append(index)
        for row, vid in enumerate(ids):
            done[vid] = (len(sources) - 1, row)
        for f in chunk_failed:
            failed[f["id"]] = f
        encoded += len(ids)
    rows = [done[vid] for vid, _ in items if vid in done]
    ids = [vid for vid, _ in items if vid in done]
    write_index(
        out, _gather(sources, rows), len(rows), encoder.dim, ids, list(failed.values()), meta
    )
    shutil.rmtree(parts, ignore_errors=True)
    return {"encoded": encoded, "reused": reused, "failed": list(failed.values()), "out": str(out)}


def _gather(sources: list[Index], rows: list[tuple[int, int]], max_rows: int = 65536):
    """Feature blocks of `rows` [(source, row)], reading runs of consecutive rows at once."""
    i = 0
    while i < len(rows):
        s, first = rows[i]
        j = i + 1
        while j < len(rows) and j - i < max_rows and rows[j] == (s, first + (j - i)):
            j += 1
        yield sources[s].rows(first, first + (j - i))
        i = j


def _metadata(encoder, kind: str) -> dict:
    v = encoder.cfg.model.video
    return {
        "kind": kind,
        "model": encoder.fingerprint or "",
        "weights": encoder.weights or "",
        "frames": str(v.num_frames),
        "size": "x".join(map(str, v.input_size)),
        "lfvila_version": __version__,
    }


def read_texts(
    path: str | os.PathLike, option: str = "--texts"
) -> list[tuple[str, str | list[str]]]:
    """[(id, paragraph)] of a .jsonl file ({id or clip_id, text: str or [sentences]}) or a text
    file (one paragraph a line, split into sentences; id = the line number). `option`: the
    command-line option that named the file, for the error messages."""
    from .encoder import split_sentences

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{option}: {path} not found")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                record = json.loads(line)
                vid = str(record.get("id", record.get("clip_id", n)))
                text = record["text"]
            except (json.JSONDecodeError, KeyError, AttributeError) as exc:
                raise ValueError(
                    f"{path}:{n}: expected {{id or clip_id, text}} JSON ({exc})"
                ) from None
            out.append((vid, text))
        else:
            out.append((str(n), split_sentences(line)))
    if not out:
        raise ValueError(f"{option}: {path} holds no paragraphs")
    return out


def encode_text_file(encoder, path, out, batch_size=None, progress=None) -> dict:
    """Paragraph features of `read_texts(path)` into the index file `out` (kind "text")."""
    records = read_texts(path)
    ids = [vid for vid, _ in records]
    if len(set(ids)) != len(ids):
        raise ValueError(f"--texts {path}: ids are not unique")
    feats = encoder.encode_paragraphs([t for _, t in records], batch_size, progress)
    write_index(out, [feats], len(ids), encoder.dim, ids, [], _metadata(encoder, "text"))
    return {"encoded": len(ids), "out": str(out)}
