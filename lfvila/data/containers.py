"""Video files as containers: the error every failure raises (`VideoDecodeError`), the file's
bytes read once per clip (kept between a probe and its decode), opening a file with PyAV, and
`probe` (frame count, rate, size, codec from the header).

The PyAV and DALI decoders (`lfvila.data.video`, `lfvila.data.dali`) both stand on this module;
it imports neither. PyAV is imported where a file is opened.
"""

from __future__ import annotations

import collections
import functools
import io
import os
import stat
import threading


class VideoDecodeError(RuntimeError):
    """A video could not be decoded as asked; `path` and `reason` say which and why.

    It crosses processes intact: pickling rebuilds it from (path, reason), and the copy that a
    DataLoader re-raises in the parent, which torch builds from one string (the worker's
    formatted traceback, ending "...VideoDecodeError: <path>: <reason>"), recovers both from
    that string; its message keeps the worker's traceback. `VideoDecodeError("<path>: <reason>")`
    works too. `KINDS`: the kind each reason is counted under (by its start; `kind_of`)."""

    KINDS: dict[str, tuple[str, ...]] = {
        "file not found": ("file not found",),
        "empty file": ("empty file",),
        "cannot open": ("cannot open",),
        "no video stream": ("no video stream",),
        "corrupt or truncated": ("corrupt or truncated",),
        "no decodable frames": ("no decodable frames",),
        "too few frames": ("asked for frame",),
        "DALI cannot decode it": ("DALI",),
        "bad frame indices": ("no frame indices", "negative frame index"),
        "excluded": ("excluded by data.exclude",),
    }

    def __init__(self, path: str | os.PathLike, reason: str | None = None):
        if reason is not None:
            self.path, self.reason = str(path), reason
            super().__init__(f"{path}: {reason}")
            return
        message = str(path)
        cls = type(self)
        marker = f"\n{cls.__module__}.{cls.__qualname__}: "  # traceback's last line
        at = message.rfind(marker)
        self.path, self.reason = self._split(message[at + len(marker) :] if at >= 0 else message)
        super().__init__(message)

    @classmethod
    def _split(cls, text: str) -> tuple[str, str]:
        """'<path>: <reason>' -> (path, reason), cut at the first ': ' followed by a known
        reason (a path may hold ': ' too), else at the first ': '."""
        text = text.strip()
        cuts = [i for i in range(len(text)) if text.startswith(": ", i)]
        for i in cuts:
            if cls.kind_of(text[i + 2 :]) != "other":
                return text[:i], text[i + 2 :]
        return (text[: cuts[0]], text[cuts[0] + 2 :]) if cuts else ("", text)

    def __reduce__(self):
        return type(self), (self.path, self.reason)

    @classmethod
    def kind_of(cls, reason: str) -> str:
        """The KINDS entry `reason` belongs to, or "other"."""
        for kind, starts in cls.KINDS.items():
            if reason.startswith(starts):
                return kind
        return "other"

    @property
    def kind(self) -> str:
        return self.kind_of(self.reason)


# One read per clip. A plan probes its clips (frame count, size), then the item decodes them; the
# bytes the probe read are kept for that decode, so each clip is opened once per epoch, also when
# the probe cache cannot hold the dataset (LF-VILA-8M has 34M clips: every epoch probes again,
# and on blob storage every open is a round trip). The kept reads are bounded; an entry nobody
# decodes (a plan that failed on a later clip) is dropped as newer ones arrive.
KEPT_READS = 32
"""Files whose bytes are kept between a probe and the decode that follows it, at most."""
KEPT_READ_BYTES = 256 << 20
"""Their total size, at most; PyAV probes and decodes a file larger than a quarter of it from
disk (two opens) instead of reading it whole."""
PROBE_CACHE_SIZE = 65536
"""Probe results kept per process (an LRU: about 40 MB at most)."""

_kept: collections.OrderedDict[str, tuple[tuple[int, int], bytes]] = collections.OrderedDict()
_kept_lock = threading.Lock()


def kept_reads() -> dict:
    """dict(entries, bytes) of the file reads kept for a decode (see KEPT_READS)."""
    with _kept_lock:
        return {"entries": len(_kept), "bytes": sum(len(d) for _, d in _kept.values())}


def clear_caches() -> None:
    """Forget every probe result and kept read of this process."""
    _probe_cached.cache_clear()
    with _kept_lock:
        _kept.clear()


def _stat(path: str | os.PathLike) -> os.stat_result:
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise VideoDecodeError(path, "file not found") from None
    except OSError as exc:
        raise VideoDecodeError(path, f"cannot open ({type(exc).__name__}: {exc})") from exc
    if not stat.S_ISREG(st.st_mode):
        raise VideoDecodeError(path, "file not found")
    if st.st_size == 0:
        raise VideoDecodeError(path, "empty file")
    return st


def _readable_whole(st: os.stat_result) -> bool:
    return st.st_size <= KEPT_READ_BYTES // 4


def read_bytes(path: str | os.PathLike, keep: bool = False) -> bytes:
    """The whole file: the bytes a probe of it just read, else read now (one open).

    keep=False (a decode) takes the kept bytes; keep=True (a probe) keeps them for the decode
    that follows. A kept read of an older version of the file (size or mtime changed) is
    dropped. Raises VideoDecodeError naming the file (missing, empty, unreadable)."""
    key, st = str(path), _stat(path)
    stamp = (st.st_size, st.st_mtime_ns)
    with _kept_lock:
        hit = _kept.pop(key, None)
        if hit is not None and hit[0] == stamp:
            if keep:
                _kept[key] = hit  # back at the recent end
            return hit[1]
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise VideoDecodeError(path, f"cannot open ({type(exc).__name__}: {exc})") from exc
    if keep and _readable_whole(st):
        with _kept_lock:
            _kept[key] = (stamp, data)
            total = sum(len(d) for _, d in _kept.values())
            while len(_kept) > KEPT_READS or total > KEPT_READ_BYTES:
                total -= len(_kept.popitem(last=False)[1][1])
    return data


def open_container(path: str | os.PathLike, keep: bool = False):
    """A PyAV container of the file, parsed from its bytes in memory (`read_bytes`: kept for a
    decode when `keep`), or from disk when the file is too large to be read whole."""
    import av

    st = _stat(path)
    source = io.BytesIO(read_bytes(path, keep)) if _readable_whole(st) else str(path)
    try:
        container = av.open(source)
    except Exception as exc:  # av.error.* and OSError: unreadable container
        truncated = truncated_mp4(path, st.st_size)
        if truncated is not None:
            raise VideoDecodeError(path, f"corrupt or truncated: {truncated}") from exc
        raise VideoDecodeError(path, f"cannot open ({type(exc).__name__}: {exc})") from exc
    if not container.streams.video:
        container.close()
        truncated = truncated_mp4(path, st.st_size)  # a cut-off mp4 can open without streams
        if truncated is not None:
            raise VideoDecodeError(path, f"corrupt or truncated: {truncated}")
        raise VideoDecodeError(path, "no video stream")
    return container


def truncated_mp4(path: str | os.PathLike, size: int) -> str | None:
    """Why an MP4/MOV that will not open is a cut-off file, or None when it is not one.

    Writers that put the index (the `moov` atom) after the media data leave a file that ends
    inside `mdat`, with no index, when the copy or download stops early; FFmpeg then reports
    "Invalid data found", which says nothing. The top-level atoms tell: an `mdat` whose declared
    size runs past the end of the file, and no `moov` before it."""
    import struct

    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[4:8] != b"ftyp":
                return None
            offset, seen = 0, set()
            while offset + 8 <= size:
                f.seek(offset)
                raw = f.read(16)
                if len(raw) < 8:
                    break
                length, kind = struct.unpack(">I4s", raw[:8])
                if length == 1 and len(raw) == 16:
                    length = struct.unpack(">Q", raw[8:16])[0]  # 64-bit atom size
                elif length == 0:
                    length = size - offset  # to the end of the file
                if length < 8:
                    return None  # not an atom layout we know: say nothing
                seen.add(kind)
                if offset + length > size:
                    if kind == b"mdat" and b"moov" not in seen:
                        return (
                            f"the file ends inside its media data ({size} of "
                            f"{offset + length} bytes) and its index (moov atom) is missing: "
                            "an interrupted copy or download"
                        )
                    name = (
                        "index (moov atom)"
                        if kind == b"moov"
                        else f"'{kind.decode(errors='replace')}' atom"
                    )
                    return (
                        f"the file ends inside its {name} ({size} of {offset + length} bytes): "
                        "an interrupted copy or download"
                    )
                offset += length
    except OSError:
        return None
    return None


def _header_frame_count(stream, file_size: int) -> int:
    """The frame count the container header states (mp4/mov: its sample table), 0 when it
    states none (WebM, most MKV). When the header also indexes every frame's bytes, frames whose
    bytes lie past the end of the file are not counted: a truncated fast-start mp4 keeps a
    header that lists frames the file no longer has."""
    count = stream.frames
    if count <= 0:
        return 0
    entries = getattr(stream, "index_entries", None)  # PyAV >= 14
    if entries is not None and len(entries) == count:
        count = sum(1 for e in entries if e.pos + e.size <= file_size)
    return count


@functools.lru_cache(maxsize=PROBE_CACHE_SIZE)
def _probe_cached(path: str, size: int, mtime_ns: int, exact: bool) -> dict:
    container = open_container(path, keep=True)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        count = 0
        try:
            if exact:  # decode everything: the count read_frames can deliver
                for _ in container.decode(stream):
                    count += 1
            else:  # the header's count, else the non-empty packets (decord's count; no decode)
                count = _header_frame_count(stream, size)
                if count == 0:
                    for packet in container.demux(stream):
                        count += packet.size > 0
        except Exception as exc:
            raise VideoDecodeError(
                path, f"corrupt or truncated after {count} frames ({exc})"
            ) from exc
        if count == 0:
            raise VideoDecodeError(path, "no decodable frames")
        rate = stream.average_rate or stream.guessed_rate
        return {
            "num_frames": count,
            "fps": float(rate) if rate else float("nan"),
            "width": stream.codec_context.width,
            "height": stream.codec_context.height,
            "codec": stream.codec_context.name,
        }
    finally:
        container.close()


def probe(path: str | os.PathLike, exact: bool = True) -> dict:
    """dict(num_frames, fps, width, height, codec); codec and size come from the header.

    exact=True: num_frames is what a full decode yields (costs a decode). exact=False: the
    count the container header states (mp4/mov; frames whose bytes are missing from a truncated
    file left out), else the number of non-empty video packets (demuxed, not decoded: what
    decord and the original report); a file whose frames do not all decode is then caught by
    `read_frames`. The file is read once and its bytes kept for the decode that follows (see
    KEPT_READS). Cached per (path, size, mtime) in a bounded LRU (PROBE_CACHE_SIZE): a
    rewritten file is probed again.
    """
    st = _stat(path)
    return dict(_probe_cached(str(path), st.st_size, st.st_mtime_ns, exact))
