"""`lfvila prepare videos` throughput: clips/s per core on a 720p H.264 source (BENCHMARKS.md).

    OMP_NUM_THREADS=1 python benchmarks/prepare_videos.py [--dir DIR] [--repeats 3]

Writes a synthetic 1280x720, 30 fps, 60 s H.264 source (libx264 crf 23, preset medium, high
profile with B-frames: like YouTube's 720p) once into DIR, with HD-VILA-style metadata of 15
contiguous 4 s clips, then times `prepare_videos` with 1 worker and 1 codec thread (one core)
cutting all 15 clips to 3 fps at 240p, H.264 and VP9, into a fresh folder each repeat. Also
times a bare PyAV decode of the source on one thread, the floor under any cutter. Not a pytest
file: a minute of 720p encoding is no unit test.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

SECONDS, FPS, SIZE, CLIP_S = 60, 30, (720, 1280), 4.0


def _source(path: Path) -> None:
    """Moving coloured discs over a drifting gradient with light noise (a plausible bitrate)."""
    import av

    h, w = SIZE
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    noise = rng.integers(-6, 7, size=(8, h, w, 1), dtype=np.int16)
    discs = [
        (
            rng.uniform(0, w),
            rng.uniform(0, h),
            rng.uniform(-9, 9),
            rng.uniform(-6, 6),
            rng.uniform(40, 120),
            rng.integers(0, 255, 3),
        )
        for _ in range(6)
    ]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": "23", "preset": "medium"}
        for t in range(SECONDS * FPS):
            base = np.stack(
                [(xx + 3 * t) % 256, (yy + t) % 256, np.full_like(xx, 96 + (t // 30) % 64)], -1
            ).astype(np.int16)
            img = base + noise[t % 8]
            for x0, y0, dx, dy, r, color in discs:
                cx, cy = (x0 + dx * t) % w, (y0 + dy * t) % h
                img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = color
            frame = av.VideoFrame.from_ndarray(np.clip(img, 0, 255).astype(np.uint8), "rgb24")
            frame.pts = t
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _decode_seconds(path: Path) -> float:
    import av

    start = time.perf_counter()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type, stream.codec_context.thread_count = "SLICE", 1
        for _ in container.decode(stream):
            pass
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=str(Path(tempfile.gettempdir()) / "lfvila_bench_prepare"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import av

    from lfvila.prepare.cut import EncodeOptions
    from lfvila.prepare.videos import prepare_videos

    root = Path(args.dir)
    source = root / "src" / "benchvideo1.mp4"
    if not source.is_file():
        source.parent.mkdir(parents=True, exist_ok=True)
        _source(source)
    clips = [
        {"clip_id": f"benchvideo1.{k}.mp4", "span": [k * CLIP_S, (k + 1) * CLIP_S]}
        for k in range(int(SECONDS // CLIP_S))
    ]
    meta = root / "meta.jsonl"
    meta.write_text(json.dumps({"video_id": "benchvideo1", "clip": clips}) + "\n")
    with av.open(str(source)) as c:
        s = c.streams.video[0]
        info = (
            f"{s.codec_context.width}x{s.codec_context.height} {s.codec_context.name} "
            f"{s.codec_context.profile} {Fraction(s.average_rate)} fps, "
            f"{source.stat().st_size * 8 / SECONDS / 1e6:.2f} Mbit/s"
        )
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((x.split(":", 1)[1].strip() for x in cpu.splitlines() if "Model name" in x), "?")
    print(
        f"machine: {model}, {platform.python_version()}, PyAV {av.__version__}, FFmpeg "
        f"{av.ffmpeg_version_info}; source {info}, {len(clips)} clips of {CLIP_S:g} s"
    )
    decode = [_decode_seconds(source) for _ in range(args.repeats)]
    print(
        f"decode only: {statistics.median(decode):.2f} s median of {decode} "
        f"({SECONDS * FPS / statistics.median(decode):.0f} frames/s)"
    )
    for codec in ("h264", "vp9"):
        times = []
        for _ in range(args.repeats):
            out = root / f"out_{codec}"
            shutil.rmtree(out, ignore_errors=True)
            opts = EncodeOptions(fps=3, height=240, codec=codec, threads=1)
            report = prepare_videos(root / "src", [meta], out, opts, workers=1, progress=False)
            assert report.written == len(clips) and not report.failed, report.lines()
            times.append(report.seconds)
        med = statistics.median(times)
        sizes = [p.stat().st_size for p in (root / f"out_{codec}").rglob("*.mp4")]
        print(
            f"{codec}: {med:.2f} s median of {[round(t, 2) for t in times]}: "
            f"{len(clips) / med:.2f} clips/s, {SECONDS / med:.1f} source s/s, "
            f"{statistics.mean(sizes) / 1024:.1f} KiB/clip"
        )


if __name__ == "__main__":
    main()
