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
    datasets/lfvila_data/task/        every downstream task's annotations (SPEC §10.3, the
                                      original names; train split from the training videos,
                                      eval split from the held-out ones):
        actnet/{train,val1}.jsonl, didemo/{train,test}.jsonl, querydret/{train,test}.jsonl
                                      retrieval: {clip_id, text: [sentences]}
        cmovie/{train,val}.jsonl      retrieval: {clip_id, text: "sentence, sentence, ..."}
        how2qa/how2qa_{train,val}.jsonl   "what does the red circle do in part 2?", the 4
                                      motions as candidates, the asked clip's span, subtitles
                                      "part 1".."part 4" (which do not reveal the answer)
        violin/violin_{train,test}.jsonl  "in part 2 a red circle grows": true (1) or with
                                      another motion (0), about half each
        actnet_qa/{train,test}.jsonl  "what colour is the shape in part 2?" / "what shape is in
                                      part 2?"; answer = index into ANSWERS (colours, shapes)
        COIN/coin_{train,test}.jsonl  recipe_type = colour * 3 + shape of clip 0 (12 of 180)
        LVU_movieclips/{relationship,scene,wayspeaking}_{train,test}.jsonl
                                      recipe_type = motion (< 4), colour (< 6), shape (< 5)
                                      of clip 0
    datasets/activitynet/actnet_video, didemo/didemo_video, queryd/queryd_video,
    cmovie/cmovie_video, how2qa/how2qa_video, violin/violin_video, COIN/coin_video,
    LVU_movieclips/lvu_video          relative symlinks to whole/ (the folders the task configs
                                      name; relative, so the tree can be moved)
The task annotations draw from their own random.Random(seed + 1) after the videos are written,
so the videos and the pre-training files do not depend on them.
"""

from __future__ import annotations

import fractions
import json
import os
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
# ActivityNet-QA answer vocabulary of the demo: class index = position (colours, then shapes)
ANSWERS = list(COLORS) + list(SHAPES)


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
    clip_labels = {"train": [], "val": []}
    for v in tqdm(range(videos + val_videos), desc="demo videos", disable=not progress):
        vid = f"demo{v:05d}"
        split = "train" if v < videos else "val"
        sentences, all_frames, items, labels = [], [], [], []
        for k in range(clips):
            color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
            motion = rng.choice(list(MOTIONS))
            labels.append((color, shape, motion))
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
        clip_labels[split].append((vid, labels, sentences))
    files = {}
    for split, rows in splits.items():
        pre, ret = root / f"pretrain_{split}.jsonl", root / f"retrieval_{split}.jsonl"
        pre.write_text("".join(json.dumps(items) + "\n" for _, items, _ in rows))
        ret.write_text(
            "".join(json.dumps({"clip_id": vid, "text": s}) + "\n" for vid, _, s in rows)
        )
        files[f"pretrain_{split}"], files[f"retrieval_{split}"] = pre, ret
    files["clip_root"], files["video_root"] = root / "videos", root / "whole"
    seconds = frames_per_clip / fps
    files["tasks"] = write_tasks(root, clip_labels["train"], clip_labels["val"], seconds, seed + 1)
    files["task_root"] = root
    return files


# name (the config's stem) -> (schema, annotation folder, train file, eval file, video folder)
TASKS = {
    "actnet_ret": ("retrieval", "actnet", "train", "val1", "activitynet/actnet_video"),
    "didemo_ret": ("retrieval", "didemo", "train", "test", "didemo/didemo_video"),
    "queryd_ret": ("retrieval", "querydret", "train", "test", "queryd/queryd_video"),
    "cmovie_ret": ("retrieval", "cmovie", "train", "val", "cmovie/cmovie_video"),
    "how2_qa": ("how2qa", "how2qa", "how2qa_train", "how2qa_val", "how2qa/how2qa_video"),
    "violin_qa": ("violin", "violin", "violin_train", "violin_test", "violin/violin_video"),
    "actnet_qa": ("actnet_qa", "actnet_qa", "train", "test", "activitynet/actnet_video"),
    "coin_cls": ("video_classification", "COIN", "coin_train", "coin_test", "COIN/coin_video"),
    **{
        f"lvu_{name}_cls": (
            "video_classification",
            "LVU_movieclips",
            f"{name}_train",
            f"{name}_test",
            "LVU_movieclips/lvu_video",
        )
        for name in ("relationship", "scene", "wayspeaking")
    },
}


def _task_record(name: str, rng: random.Random, vid: str, labels: list, sentences: list, sec):
    """One annotation record of task `name` for a video with clips `labels` [(colour, shape,
    motion)] and `sentences`; `sec` = seconds per clip."""
    color0, shape0, motion0 = labels[0]
    subtitles = [
        {"text": f"part {j + 1}", "start": j * sec, "end": (j + 1) * sec}
        for j in range(len(labels))
    ]
    if name == "cmovie_ret":
        return {"clip_id": vid, "text": ", ".join(sentences)}
    if name.endswith("_ret"):
        return {"clip_id": vid, "text": list(sentences)}
    if name == "how2_qa":
        k = rng.randrange(len(labels))
        color, shape, motion = labels[k]
        candidates = rng.sample(list(MOTIONS), len(MOTIONS))
        return {
            "clip_id": vid,
            "span": [k * sec, (k + 1) * sec],
            "text_q": f"what does the {color} {shape} do in part {k + 1}?",
            "text_a": candidates,
            "text_s": subtitles,
            "answer_idx": candidates.index(motion),
        }
    if name == "violin_qa":
        k = rng.randrange(len(labels))
        color, shape, motion = labels[k]
        answer = int(rng.random() < 0.5)
        if not answer:
            motion = rng.choice([m for m in MOTIONS if m != motion])
        statement = f"in part {k + 1} a {color} {shape} {motion}"
        return {"clip_id": vid, "text_q": statement, "text_s": subtitles, "answer": answer}
    if name == "actnet_qa":
        k = rng.randrange(len(labels))
        color, shape, _ = labels[k]
        if rng.random() < 0.5:
            question, answer = f"what colour is the shape in part {k + 1}?", ANSWERS.index(color)
        else:
            question, answer = f"what shape is in part {k + 1}?", ANSWERS.index(shape)
        return {"video_name": vid, "question": question, "answer": answer}
    label = {
        "coin_cls": list(COLORS).index(color0) * len(SHAPES) + SHAPES.index(shape0),
        "lvu_relationship_cls": list(MOTIONS).index(motion0),
        "lvu_scene_cls": list(COLORS).index(color0),
        "lvu_wayspeaking_cls": SHAPES.index(shape0),
    }[name]
    return {"video_id": vid, "recipe_type": label}


def write_tasks(root: Path, train: list, held_out: list, sec: float, seed: int) -> dict:
    """Every downstream task's annotation files and video-folder symlinks under `root` (module
    docstring) from (vid, clip labels, sentences) rows; returns {task: {schema, train, eval,
    video_root}}. Draws from its own random.Random(seed), task by task, train then eval."""
    rng = random.Random(seed)
    ann_root, out = root / "datasets" / "lfvila_data" / "task", {}
    for name, (schema, folder, train_name, eval_name, video_folder) in TASKS.items():
        entry = {"schema": schema}
        for split, rows, stem in (("train", train, train_name), ("eval", held_out, eval_name)):
            path = ann_root / folder / f"{stem}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            records = [_task_record(name, rng, vid, *rest, sec) for vid, *rest in rows]
            path.write_text("".join(json.dumps(r) + "\n" for r in records))
            entry[split] = path
        link = root / "datasets" / video_folder
        if not link.is_symlink():  # shared by actnet_ret and actnet_qa; kept on a re-run
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.path.relpath(root / "whole", link.parent), link)
        entry["video_root"] = link
        out[name] = entry
    return out


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
        if name != "tasks":
            print(f"{name}: {path}")
    for name, entry in files["tasks"].items():
        print(f"{name}: {entry['train']}, {entry['eval']}, videos {entry['video_root']}")


if __name__ == "__main__":
    main()
