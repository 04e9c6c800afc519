"""A generated long-form video-paragraph dataset for the demo and tests, written with PyAV only.

Each video has `clips` clips; each clip shows one coloured shape that moves up or down, grows or
shrinks on a textured background, and its sentence says so ("a red circle moves up"). A paragraph is
the clips' sentences in order, so paragraph-to-video retrieval and the MTC loss (which clip goes
with which sentence) are learnable. Everything is drawn from one seed: the same seed gives the
same bytes.

Layout under `root` (the standard JSONL + video-file layout of `lfvila.data.datasets`):
    videos/<vid>/<vid>.<k>.mp4        one file per clip (pre-training reads clips)
    whole/<vid>.mp4                   the clips back to back (retrieval reads whole videos)
    pretrain_train.jsonl, pretrain_val.jsonl   lists of {clip_id, text} per line
    retrieval_train.jsonl, retrieval_val.jsonl {clip_id, text: [sentences]} per line
"""

from __future__ import annotations

import fractions
import json
import random
from pathlib import Path

import numpy as np

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 80, 220),
    "yellow": (230, 210, 40),
}
SHAPES = ("circle", "square", "triangle")
# (vertical direction, growth) of each motion. No left/right: training flips frames horizontally
# (SPEC §10.2, kept), which would turn half of "moves to the left" into a rightward motion.
MOTIONS = {"moves up": (-1, 0), "moves down": (1, 0), "grows": (0, 1), "shrinks": (0, -1)}


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Greyish, slightly tinted, low-contrast stripes and noise: texture, so that the shape is not
    the only signal, yet no stronger than the shape. (Strong random textures, 40 levels of
    stripes on a base colour anywhere in 60-140 per channel, let a small encoder trained from
    scratch on 240 videos tell the training videos apart by their backgrounds alone: it
    memorised them and retrieval on held-out videos stayed at chance.)"""
    yy, xx = np.mgrid[0:height, 0:width]
    angle = rng.uniform(0, np.pi)
    freq = rng.uniform(0.05, 0.2)
    stripes = 0.5 + 0.5 * np.sin(freq * (xx * np.cos(angle) + yy * np.sin(angle)))
    base = rng.uniform(95, 135) + rng.uniform(-8, 8, size=3)
    img = base[None, None, :] + 12 * stripes[..., None] + rng.normal(0, 4, size=(height, width, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _draw(img: np.ndarray, shape: str, color, cy: float, cx: float, radius: float) -> None:
    h, w, _ = img.shape
    yy, xx = np.mgrid[0:h, 0:w]
    if shape == "circle":
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    elif shape == "square":
        inside = (np.abs(yy - cy) <= radius) & (np.abs(xx - cx) <= radius)
    else:  # triangle pointing up
        inside = (
            (yy >= cy - radius)
            & (yy <= cy + radius)
            & (np.abs(xx - cx) <= (yy - (cy - radius)) / 2)
        )
    img[inside] = color


def clip_frames(
    rng: random.Random,
    nprng,
    color: str,
    shape: str,
    motion: str,
    frames: int,
    height: int,
    width: int,
) -> list[np.ndarray]:
    """(H, W, 3) uint8 frames of one clip: the shape crosses most of the frame vertically, or
    grows / shrinks between 0.08 and 0.22 of the frame's smaller side, in place."""
    background = _background(nprng, height, width)
    dy, growth = MOTIONS[motion]
    small, large = (min(height, width) * f for f in (0.08, 0.22))
    radius = min(height, width) * rng.uniform(0.12, 0.18)
    margin = (large if growth else radius) + 2
    span_y = height - 2 * margin
    cx = margin + (width - 2 * margin) * rng.uniform(0.1, 0.9)
    cy0 = margin + (span_y if dy < 0 else 0 if dy > 0 else span_y * rng.uniform(0.3, 0.7))
    out = []
    for t in range(frames):
        progress = t / max(1, frames - 1)
        if growth:
            radius = small + (large - small) * (progress if growth > 0 else 1 - progress)
        img = background.copy()
        _draw(img, shape, COLORS[color], cy0 + dy * span_y * progress, cx, radius)
        out.append(img)
    return out


_RGB_TO_YUV = np.array(
    [[0.257, 0.504, 0.098], [-0.148, -0.291, 0.439], [0.439, -0.368, -0.071]], dtype=np.float32
)


def rgb_to_yuv420p(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H*3/2, W) planar YUV 4:2:0, BT.601 limited range, in numpy
    (independent of swscale's code paths)."""
    h, w, _ = rgb.shape
    yuv = rgb.astype(np.float32) @ _RGB_TO_YUV.T + np.array([16, 128, 128], dtype=np.float32)
    c = yuv[..., 1:]
    chroma = (c[0::2, 0::2] + c[1::2, 0::2] + c[0::2, 1::2] + c[1::2, 1::2]) * 0.25  # 2x2 means
    planes = [yuv[..., 0], chroma[..., 0].reshape(h // 4, w), chroma[..., 1].reshape(h // 4, w)]
    return np.clip(np.rint(np.concatenate(planes)), 0, 255).astype(np.uint8)


def write_video(
    path: Path, frames: list[np.ndarray], fps: int, codec: str = "mpeg4", fmt: str = "yuv420p"
) -> None:
    """Encode frames at `fps`: `fmt` "yuv420p" takes (H*3/2, W) planes from `rgb_to_yuv420p`,
    "rgb24" takes (H, W, 3) RGB (converted by FFmpeg). codec "mpeg4" (the demo's: FFmpeg's own
    MPEG-4 Part 2 encoder on one thread, byte-identical from run to run; libx264 and libvpx-vp9
    were measured to vary now and then on identical input), "libx264", "libvpx-vp9", ..."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    height = frames[0].shape[0] * 2 // 3 if fmt == "yuv420p" else frames[0].shape[0]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames[0].shape[1], height
        stream.pix_fmt = "yuv420p"
        stream.time_base = fractions.Fraction(1, fps)
        if codec == "mpeg4":
            stream.codec_context.thread_count = 1
            stream.options = {"qscale": "4"}
        for i, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(array, format=fmt)
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def generate(
    root: str | Path,
    videos: int = 240,
    val_videos: int = 48,
    clips: int = 4,
    frames_per_clip: int = 8,
    size: tuple[int, int] = (96, 160),
    fps: int = 3,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Write the demo dataset under `root` (see the module docstring); returns the file paths.

    About 35 ms per video of 4 clips x 8 frames at 96x160 on one core (the defaults: ~10 s)."""
    from tqdm.auto import tqdm

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    nprng = np.random.default_rng(seed)
    splits = {"train": [], "val": []}
    for v in tqdm(range(videos + val_videos), desc="demo videos", disable=not progress):
        vid = f"demo{v:05d}"
        split = "train" if v < videos else "val"
        sentences, all_frames, items = [], [], []
        for k in range(clips):
            color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
            motion = rng.choice(list(MOTIONS))
            rgb = clip_frames(rng, nprng, color, shape, motion, frames_per_clip, *size)
            frames = [rgb_to_yuv420p(f) for f in rgb]
            clip_id = f"{vid}.{k}.mp4"
            write_video(root / "videos" / vid / clip_id, frames, fps)
            sentence = f"a {color} {shape} {motion}"
            sentences.append(sentence)
            items.append({"clip_id": clip_id, "text": sentence})
            all_frames += frames
        write_video(root / "whole" / f"{vid}.mp4", all_frames, fps)
        splits[split].append((vid, items, sentences))
    files = {}
    for split, rows in splits.items():
        pre, ret = root / f"pretrain_{split}.jsonl", root / f"retrieval_{split}.jsonl"
        pre.write_text("".join(json.dumps(items) + "\n" for _, items, _ in rows))
        ret.write_text(
            "".join(json.dumps({"clip_id": vid, "text": s}) + "\n" for vid, _, s in rows)
        )
        files[f"pretrain_{split}"], files[f"retrieval_{split}"] = pre, ret
    files["clip_root"], files["video_root"] = root / "videos", root / "whole"
    return files


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m lfvila.data.demo", description="Write the generated demo dataset."
    )
    parser.add_argument("root", help="output directory")
    parser.add_argument("--videos", type=int, default=240, help="training videos")
    parser.add_argument("--val-videos", type=int, default=48, help="held-out videos")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    files = generate(args.root, args.videos, args.val_videos, seed=args.seed, progress=True)
    for name, path in files.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
