"""Fixtures for `lfvila prepare`: PyAV-made source videos whose frame t shows the number t (8
black/white bars in the top half, bit b = bar b), HD-VILA-style metadata and transcripts."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

SIZE = (64, 112)  # source height, width
BITS = 8  # frame numbers 0..255


def write_numbered_video(
    path: Path, frames: int, fps, size=SIZE, codec: str = "libx264", gop: int | None = None
) -> Path:
    """A video whose frame t (pts t at `fps`) shows t in binary: bar b of the top half is white
    when bit b is set; the bottom half is a horizontal gradient. gop: keyframe interval."""
    import av

    h, w = size
    path.parent.mkdir(parents=True, exist_ok=True)
    bar = w // BITS
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.thread_count = 1
        if gop:
            stream.codec_context.gop_size = gop
            stream.options = {"keyint_min": str(gop), "sc_threshold": "0"}
        for t in range(frames):
            img = np.zeros((h, w, 3), np.uint8)
            for b in range(BITS):
                if (t >> b) & 1:
                    img[: h // 2, b * bar : (b + 1) * bar] = 255
            img[h // 2 :] = np.linspace(0, 255, w).astype(np.uint8)[None, :, None]
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = t
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def frame_numbers(path: Path) -> list[int]:
    """The number each decoded frame of `path` shows (any size: the bars scale with it)."""
    import av

    out = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            gray = frame.to_ndarray(format="gray")
            h, w = gray.shape
            value = 0
            for b in range(BITS):
                x = int((b + 0.5) * w / BITS)
                if gray[h // 8 : 3 * h // 8, x - 1 : x + 2].mean() > 128:
                    value |= 1 << b
            out.append(value)
    return out


def stream_info(path: Path) -> dict:
    import av

    with av.open(str(path)) as container:
        s = container.streams.video[0]
        return {
            "fps": s.average_rate,
            "width": s.codec_context.width,
            "height": s.codec_context.height,
            "codec": s.codec_context.name,
        }


def hms(seconds: float) -> str:
    """HD-VILA's span format "hh:mm:ss.mmm"."""
    ms = round(seconds * 1000)
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"


def record(video_id: str, spans: list[tuple[int, float, float]]) -> dict:
    """A metadata line: clips (k, start, end) named <video_id>.<k>.mp4."""
    return {
        "video_id": video_id,
        "url": f"https://www.youtube.com/watch?v={video_id}",
        "clip": [{"clip_id": f"{video_id}.{k}.mp4", "span": [hms(s), hms(e)]} for k, s, e in spans],
    }


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# Source videos: (video id, seconds, fps, clips (k, start, end)). Clip spans fall between frames
# on purpose; the 25 fps video is not a multiple of 3 fps; "ccccccccccc" has keyframes every
# half second, overlapping clips and a 2.8 s gap (a seek with seek_gap 1); the last clip of
# "ddddddddddd" ends with the video.
VIDEOS = [
    ("aaaaaaaaaaa", 6.0, 30, [(0, 0.0, 1.517), (1, 1.517, 3.05), (2, 3.3, 4.6), (3, 4.6, 5.95)]),
    ("bbbbbbbbbbb", 5.0, 25, [(0, 0.21, 1.4), (1, 1.4, 2.9), (2, 2.9, 4.1), (3, 4.1, 4.98)]),
    ("ccccccccccc", 8.0, 30, [(0, 0.0, 1.0), (1, 0.8, 2.3), (2, 5.1, 6.4), (3, 6.4, 7.9)]),
    ("ddddddddddd", 4.0, 30, [(0, 0.0, 1.2), (1, 1.2, 2.5), (2, 2.5, 3.9), (3, 3.9, 4.0)]),
]


@pytest.fixture(scope="session")
def sources(tmp_path_factory) -> dict:
    """Source videos (plain layout, <video_id>.mp4) and their metadata file."""
    root = tmp_path_factory.mktemp("prepare_sources")
    src = root / "src"
    for video_id, seconds, fps, _ in VIDEOS:
        gop = 15 if video_id == "ccccccccccc" else None
        write_numbered_video(src / f"{video_id}.mp4", round(seconds * fps), fps, gop=gop)
    meta = write_jsonl(root / "meta.jsonl", [record(v, clips) for v, _, _, clips in VIDEOS])
    return {"root": root, "source": src, "metadata": meta, "videos": VIDEOS}
