"""Cut clips out of one source video and re-encode them at a low frame rate and size (PyAV only).

The source is decoded once for all of its clips. Output frame k of a clip spanning [s, e) shows
the source frame on screen at time s + k/fps (the last frame whose timestamp is at or before
it), so it is at most one source frame away from the exact time; a clip has ceil((e - s)·fps)
frames. Times are relative to the stream's start time, as ffmpeg's `-ss` is. Far-apart clips
are reached by seeking to a keyframe a second before the next clip rather than by decoding
everything in between. Each output is written to a temporary name in its folder, fsynced and
renamed when complete: a file under the final name is always a finished clip.

Encoders: H.264 (libx264, for NVDEC and PyAV) or VP9 (libvpx-vp9, which DALI's CPU decoder
takes), yuv420p, one thread each unless asked (the parallelism is in worker processes).

On one machine, outputs are byte-for-byte reproducible (re-runs, seeking, shards and resumes
give the same files; x264's C and SIMD levels need not agree bit for bit across machines). Two
things would break that: libx264's AVX-512 code paths (x264 core 165 as bundled by PyAV 18) read
memory that is not initialised, so on AVX-512 machines the bits of a clip depend on the heap's
state (earlier clips, other encoders, the decoder) - x264 runs with every SIMD extension the CPU
has except AVX-512 (`x264_asm_flags`); and a frame's picture type, which `reformat` copies from
the decoded source frame, would force x264's frame types - it is reset so that the encoder
decides them itself.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import glob
import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from .metadata import CONTAINERS

ENCODERS = {"h264": "libx264", "vp9": "libvpx-vp9"}
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow",
                "slower", "veryslow")  # fmt: skip
DEFAULT_CRF = {"h264": 23, "vp9": 32}
EPS = 1e-4  # seconds: timestamps closer than this are equal (float rounding of pts * time_base)
PRE_ROLL_S = 1.0  # seek this far before a clip's start: the frame on screen at the start is older
X264_CPU_AVX512 = 1 << 16  # x264.h; on non-x86 builds no flag uses this bit


@dataclass(frozen=True)
class EncodeOptions:
    """How clips are re-encoded."""

    fps: float = 3.0
    """Output frame rate (SPEC §10.1: 3)."""
    codec: str = "h264"
    """'h264' (libx264) or 'vp9' (libvpx-vp9)."""
    height: int = 240
    """Output height in pixels (even); the width keeps the aspect ratio, rounded to even. 0:
    the source's size."""
    crf: int | None = None
    """Constant-rate quality; None: 23 for H.264, 32 for VP9."""
    preset: str = "medium"
    """libx264 preset (VP9 uses deadline 'good', cpu-used 4)."""
    threads: int = 1
    """Decoder and encoder threads per process."""

    def __post_init__(self):
        if self.codec not in ENCODERS:
            raise ValueError(f"codec must be one of {sorted(ENCODERS)}, got {self.codec!r}")
        if not self.fps > 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
        if self.height < 0 or self.height % 2:
            raise ValueError(f"height must be an even number of pixels (or 0), got {self.height}")
        if self.preset not in X264_PRESETS:
            raise ValueError(f"preset must be one of {X264_PRESETS}, got {self.preset!r}")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")


@dataclass(frozen=True)
class ClipJob:
    """One clip to cut: its id, span in seconds and final output path."""

    clip_id: str
    start: float
    end: float
    path: str

    def frame_count(self, fps: float) -> int:
        return max(1, math.ceil((self.end - self.start) * fps - 1e-6))


@dataclass(frozen=True)
class ClipResult:
    """What became of one job: written (`ok`, with its frame count) or failed, with a reason
    and its kind (one of KINDS: what the summary counts)."""

    clip_id: str
    ok: bool
    reason: str | None = None
    frames: int = 0
    kind: str | None = None


KINDS = (
    "source not found",
    "cannot open source",
    "source corrupt or truncated",
    "source ends before the clip",
    "encode failed",
)


def _failed(job: ClipJob, kind: str, reason: str) -> ClipResult:
    return ClipResult(job.clip_id, False, reason, 0, kind)


def output_size(width: int, height: int, target_height: int) -> tuple[int, int]:
    """(width, height) of the output: `target_height` (0: the source's), aspect kept, even."""
    if target_height == 0:
        return max(2, width // 2 * 2), max(2, height // 2 * 2)
    return max(2, round(width * target_height / height / 2) * 2), target_height


def partial_path(path: str | os.PathLike) -> Path:
    """The temporary name an output is written under (hidden, per process)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.partial")


def remove_partials(path: str | os.PathLike) -> None:
    """Leftovers of interrupted writes of `path` (any process)."""
    path = Path(path)
    if path.parent.is_dir():
        for stale in path.parent.glob(f".{glob.escape(path.name)}.*.partial"):
            stale.unlink(missing_ok=True)


def _x264_libraries() -> list[str]:
    """Candidate libx264 shared libraries: PyAV's bundled copy first, then the system's."""
    import av

    package = Path(av.__file__).resolve().parent
    found = []
    for folder in (package.parent / "av.libs", package / ".dylibs"):
        found += sorted(glob.glob(str(folder / "libx264*")))
    system = ctypes.util.find_library("x264")
    return found + ([system] if system else [])


@functools.cache
def x264_asm_flags() -> int:
    """The x264 `asm` mask: what x264 detects on this CPU, minus AVX-512 (module docstring).
    0 (plain C, slower, equally deterministic) when no libx264 with `x264_cpu_detect` loads."""
    for path in _x264_libraries():
        try:
            detect = ctypes.CDLL(path).x264_cpu_detect
        except (OSError, AttributeError):
            continue
        detect.restype, detect.argtypes = ctypes.c_uint32, []
        return int(detect()) & ~X264_CPU_AVX512
    return 0


class _Output:
    """One clip being encoded into its temporary file."""

    def __init__(self, job: ClipJob, opts: EncodeOptions, size: tuple[int, int]):
        import av

        self.job, self.opts, self.size = job, opts, size
        final = Path(job.path)
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_partials(final)
        self.tmp = partial_path(final)
        fmt = CONTAINERS[final.suffix.lstrip(".").lower()]
        self.container = av.open(str(self.tmp), "w", format=fmt)
        rate = Fraction(opts.fps).limit_denominator(1001)
        self.stream = self.container.add_stream(ENCODERS[opts.codec], rate=rate)
        self.stream.width, self.stream.height = size
        self.stream.pix_fmt = "yuv420p"
        self.stream.time_base = 1 / rate
        self.stream.codec_context.thread_count = opts.threads
        crf = str(opts.crf if opts.crf is not None else DEFAULT_CRF[opts.codec])
        if opts.codec == "h264":
            # no AVX-512: its code paths make the bits depend on uninitialised memory
            self.stream.options = {
                "crf": crf, "preset": opts.preset, "x264-params": f"asm={x264_asm_flags()}"
            }  # fmt: skip
        else:
            self.stream.options = {
                "crf": crf, "b": "0", "deadline": "good", "cpu-used": "4", "row-mt": "0"
            }  # fmt: skip
        self.no_pict_type = av.video.frame.PictureType.NONE
        self.written = 0

    def add(self, frame) -> None:
        width, height = self.size
        # AREA: a proper low-pass for 3x downscaling (720p -> 240p), unlike bilinear's 2x2 taps
        out = frame.reformat(width, height, "yuv420p", interpolation="AREA")
        # reformat copies the source frame's properties; its picture type (I/P/B) would force
        # x264's frame type for this frame: let the encoder choose
        out.pict_type = self.no_pict_type
        out.pts = self.written
        out.time_base = self.stream.time_base
        for packet in self.stream.encode(out):
            self.container.mux(packet)
        self.written += 1

    def finish(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
        with open(self.tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(self.tmp, self.job.path)

    def abort(self) -> None:
        try:
            self.container.close()
        except Exception:  # noqa: BLE001 - the file is being discarded anyway
            pass
        self.tmp.unlink(missing_ok=True)


def _finish(out: _Output) -> None:
    try:
        out.finish()
    except BaseException:
        out.abort()
        raise


def _frames(container, stream):
    for packet in container.demux(stream):
        yield from packet.decode()


def cut_clips(
    source: str | os.PathLike,
    jobs: list[ClipJob],
    opts: EncodeOptions,
    seek_gap: float = 10.0,
) -> list[ClipResult]:
    """Cut `jobs` (any order, overlaps allowed) out of `source`; one result per job, in order.

    seek_gap: seek instead of decoding when the next clip starts more than this many seconds
    after the current position. A failure (unopenable source, decode error, a source that ends
    more than one output frame before a clip's end) fails the clips it concerns only."""
    import av

    results: dict[int, ClipResult] = {}
    try:
        container = av.open(str(source))
    except Exception as exc:  # av.error.* / OSError: the source, not the clips, is bad
        reason = f"cannot open source {source} ({type(exc).__name__}: {exc})"
        return [_failed(j, "cannot open source", reason) for j in jobs]
    outputs: dict[int, _Output] = {}
    try:
        if not container.streams.video:
            reason = f"no video stream in {source}"
            return [_failed(j, "cannot open source", reason) for j in jobs]
        stream = container.streams.video[0]
        stream.thread_type = "AUTO" if opts.threads > 1 else "SLICE"
        stream.codec_context.thread_count = opts.threads
        t0 = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        counts = [j.frame_count(opts.fps) for j in jobs]
        # every output frame as (time, job, k), in time order
        targets = sorted(
            (j.start + k / opts.fps, i, k) for i, j in enumerate(jobs) for k in range(counts[i])
        )

        def emit(frame, i: int, k: int) -> None:
            if i in results:  # failed earlier
                return
            try:
                if i not in outputs:
                    size = output_size(frame.width, frame.height, opts.height)
                    outputs[i] = _Output(jobs[i], opts, size)
                outputs[i].add(frame)
                if k == counts[i] - 1:
                    _finish(outputs.pop(i))
                    results[i] = ClipResult(jobs[i].clip_id, True, None, counts[i])
            except Exception as exc:  # noqa: BLE001 - one clip's encoder, not the whole video
                if i in outputs:
                    outputs.pop(i).abort()
                reason = f"encode failed ({type(exc).__name__}: {exc})"
                results[i] = _failed(jobs[i], "encode failed", reason)

        p, prev, prev_time, duration = 0, None, 0.0, 0.0
        frames, seeked_for, can_seek, last_seek = _frames(container, stream), None, True, None
        try:
            while p < len(targets):
                t = targets[p][0]
                if can_seek and t - prev_time > seek_gap and t != last_seek:
                    last_seek = t  # once per target: the keyframe may lie far before it
                    offset = max(0.0, t - PRE_ROLL_S) + t0
                    try:
                        container.seek(int(offset / stream.time_base), stream=stream)
                    except Exception:  # noqa: BLE001 - not seekable: decode through instead
                        can_seek = False
                        continue
                    stream.codec_context.flush_buffers()
                    frames, prev, prev_time, seeked_for = _frames(container, stream), None, t, t
                frame = next(frames, None)
                if frame is None:
                    break
                if frame.pts is None:
                    raise RuntimeError("a frame without a timestamp")
                tf = float(frame.pts * frame.time_base) - t0
                if seeked_for is not None and prev is None and tf > seeked_for + EPS:
                    # the seek landed past the clip: decode from the start, never seek again
                    container.seek(0, stream=stream)
                    stream.codec_context.flush_buffers()
                    frames, prev, prev_time, can_seek = _frames(container, stream), None, 0.0, False
                    continue
                seeked_for = None
                while p < len(targets) and targets[p][0] < tf - EPS:
                    emit(prev if prev is not None else frame, *targets[p][1:])
                    p += 1
                if prev is not None:
                    duration = tf - prev_time
                prev, prev_time = frame, tf
                if frame.duration:
                    duration = float(frame.duration * frame.time_base)
        except Exception as exc:  # av.error.InvalidDataError and the like
            reason = f"source {source} corrupt or truncated near {prev_time:.3f} s ({exc})"
            for i in range(len(jobs)):
                results.setdefault(i, _failed(jobs[i], "source corrupt or truncated", reason))
            return [results[i] for i in range(len(jobs))]
        # the end: the last frame stays on screen for its duration
        end = prev_time + max(duration, EPS)
        while p < len(targets) and prev is not None and targets[p][0] < end - EPS:
            emit(prev, *targets[p][1:])
            p += 1
        for i, job in enumerate(jobs):
            if i in results:
                continue
            written = outputs[i].written if i in outputs else 0
            if i in outputs and counts[i] - written <= 1:  # one output frame short: rounding
                try:
                    _finish(outputs.pop(i))
                    results[i] = ClipResult(job.clip_id, True, None, written)
                    continue
                except Exception as exc:  # noqa: BLE001
                    results[i] = _failed(job, "encode failed", f"encode failed ({exc})")
                    continue
            reason = f"source video ends at {end:.3f} s, before the clip's end at {job.end:.3f} s"
            results[i] = _failed(job, "source ends before the clip", reason)
        return [results[i] for i in range(len(jobs))]
    finally:
        for out in outputs.values():
            out.abort()
        container.close()
