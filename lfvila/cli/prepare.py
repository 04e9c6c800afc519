"""`lfvila prepare longform|videos|check`: the data preparation steps of `lfvila.prepare`."""

from __future__ import annotations

import argparse

from ..prepare.cut import X264_PRESETS
from ..prepare.longform import TOLERANCE_S


def _longform(args: argparse.Namespace) -> int:
    from ..prepare.longform import prepare_longform

    report = prepare_longform(
        args.metadata,
        args.transcripts,
        args.out,
        min_clips=args.min_clips,
        clip_ids=args.clip_ids,
        val_fraction=args.val_fraction,
        tolerance=args.tolerance,
        lmdb=args.lmdb,
    )
    for line in report.lines():
        print(line)
    print(f"wrote {args.out}/train.jsonl" + (" and val.jsonl" if args.val_fraction else ""))
    return 0


def _videos(args: argparse.Namespace) -> int:
    from ..prepare.cut import EncodeOptions
    from ..prepare.metadata import PrepareError
    from ..prepare.videos import parse_shard, prepare_videos

    try:
        opts = EncodeOptions(
            fps=args.fps,
            codec=args.codec,
            height=args.height,
            crf=args.crf,
            preset=args.preset,
            threads=args.threads,
        )
    except ValueError as exc:
        raise PrepareError(str(exc)) from None
    try:
        report = prepare_videos(
            args.source,
            args.metadata,
            args.out,
            opts,
            workers=args.workers,
            shard=parse_shard(args.shard),
            annotations=args.annotations,
        )
    except KeyboardInterrupt:
        print("lfvila prepare videos: interrupted; run the same command again to resume")
        return 130
    for line in report.lines():
        print(line)
    return 0


def _check(args: argparse.Namespace) -> int:
    from ..prepare.check import prepare_check

    report = prepare_check(
        args.annotations,
        args.video_root,
        workers=args.workers,
        frames_per_clip=args.frames_per_clip,
        min_frames=args.min_frames,
        exact=args.exact,
        report_path=args.report,
        bad_ids_path=args.bad_ids,
    )
    for line in report.lines():
        print(line)
    return 1 if report.ok < report.clips else 0


def add_parser(sub) -> None:
    """Add `prepare` with its three subcommands to the `lfvila` subparsers `sub`."""
    parser = sub.add_parser(
        "prepare",
        help="build pre-training data from HD-VILA-100M-style metadata and raw videos",
        description="Build LF-VILA-8M-style pre-training data: `longform` (annotations), "
        "`videos` (3 fps clips), `check` (every clip readable).",
    )
    commands = parser.add_subparsers(dest="prepare_command", required=True)

    p = commands.add_parser(
        "longform",
        help="runs of >= 4 time-contiguous clips -> the pre-training JSONL",
        description="Group each video's time-contiguous clips (consecutive indices, spans "
        f"touching within --tolerance, default {TOLERANCE_S:g} s, gap or overlap), keep maximal "
        "runs of at least --min-clips with a transcript for every clip (or exactly the runs of "
        "--clip-ids), and write OUT/train.jsonl (OUT/val.jsonl), OUT/report.json.",
    )
    p.add_argument("--metadata", nargs="+", required=True, help="HD-VILA-style JSONL (.gz ok)")
    p.add_argument(
        "--transcripts",
        nargs="+",
        required=True,
        help="JSONL of {clip_id, text} (or clip_id -> text objects), or a .json mapping",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--min-clips", type=int, default=4, help="shortest run kept (default 4)")
    p.add_argument(
        "--clip-ids",
        help="keep exactly these runs instead: one run per line, a JSON list of clip ids or "
        "ids separated by spaces or commas (the released LF-VILA-8M list)",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.0,
        help="share of videos (by a hash of the video id) whose runs go to val.jsonl",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=TOLERANCE_S,
        help=f"largest gap or overlap between touching clips, seconds (default {TOLERANCE_S:g})",
    )
    p.add_argument("--lmdb", action="store_true", help="also write OUT/train_db (original LMDB)")
    p.set_defaults(func=_longform)

    p = commands.add_parser(
        "videos",
        help="cut clips from local source videos and re-encode them at 3 fps",
        description="Cut every clip of the metadata out of its source video and re-encode it "
        "(PyAV) into OUT/<video_id>/<clip_id>: a clip spanning [s, e) gets ceil((e-s)*fps) "
        "frames, frame k being the source frame on screen at s + k/fps. Resumable: existing "
        "outputs are skipped, each is written under a temporary name and renamed. Failures: "
        "OUT/failures.shard-I-of-N.jsonl, summary: OUT/report.shard-I-of-N.json.",
    )
    p.add_argument(
        "--source",
        required=True,
        help="folder of source videos: <video_id>.<ext> files, or video2dataset output (files "
        "named by key with a JSON sidecar holding the url or video id)",
    )
    p.add_argument("--metadata", nargs="+", required=True, help="HD-VILA-style JSONL (.gz ok)")
    p.add_argument("--out", required=True, help="output folder (the datasets' data.video_root)")
    p.add_argument(
        "--annotations",
        nargs="+",
        help="only the clips these pre-training JSONL files reference (prepare longform output)",
    )
    p.add_argument("--fps", type=float, default=3.0, help="output frame rate (default 3)")
    p.add_argument(
        "--codec",
        choices=("h264", "vp9"),
        default="h264",
        help="h264 (libx264: NVDEC, PyAV) or vp9 (libvpx-vp9: DALI's CPU decoder); default h264",
    )
    p.add_argument("--height", type=int, default=240, help="output height, even (default 240)")
    p.add_argument("--crf", type=int, default=None, help="quality (default 23 H.264, 32 VP9)")
    p.add_argument(
        "--preset", default="medium", choices=X264_PRESETS, help="libx264 preset (default medium)"
    )
    p.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    p.add_argument("--threads", type=int, default=1, help="codec threads per process (default 1)")
    p.add_argument(
        "--shard",
        default="0/1",
        help="i/n: only the videos with crc32(video_id) %% n == i (default 0/1: all)",
    )
    p.set_defaults(func=_videos)

    p = commands.add_parser(
        "check",
        help="every clip of an annotation file exists, opens and has enough frames",
        description="Check each clip of a pre-training JSONL (or LMDB folder) under "
        "VIDEO_ROOT/<video_id>/<clip_id>: it exists, opens, has at least --min-frames frames and "
        "the sampled frames decode. Writes a JSON report and a bad-id list (one clip_id per "
        "line); exit status 1 when any clip is bad.",
    )
    p.add_argument("--annotations", required=True, help="pre-training JSONL or LMDB folder")
    p.add_argument("--video-root", required=True, help="folder of <video_id>/<clip_id> clips")
    p.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    p.add_argument(
        "--frames-per-clip",
        type=int,
        default=8,
        help="frames the sampler takes per clip, num_frames / num_clips (default 32 / 4 = 8)",
    )
    p.add_argument("--min-frames", type=int, help="fewest frames a clip may have (default: same)")
    p.add_argument("--exact", action="store_true", help="count frames by a full decode")
    p.add_argument("--report", help="report path (default <annotations stem>.check.json)")
    p.add_argument("--bad-ids", help="bad-id list path (default <annotations stem>.bad_ids.txt)")
    p.set_defaults(func=_check)
