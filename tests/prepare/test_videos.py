"""`lfvila prepare videos`: cut clips show the right source frames at the right fps and size;
seeking changes nothing; a run killed mid-clip resumes without redoing or corrupting outputs;
shards add up to the unsharded output; video2dataset sources; the failures manifest."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lfvila.cli import main
from lfvila.prepare import PrepareError
from lfvila.prepare.cut import EncodeOptions
from lfvila.prepare.videos import index_sources, parse_shard, prepare_videos

from .conftest import frame_numbers, record, stream_info, write_jsonl, write_numbered_video

OPTS = EncodeOptions(height=48)  # 64x112 sources -> 84x48


def _clips(out: Path) -> dict[str, bytes]:
    """relative path -> bytes of every finished clip under `out` (no reports, no temporaries)."""
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*.mp4"))
        if not p.name.startswith(".")
    }


def _expected(start: float, end: float, fps: float, out_fps: float = 3.0) -> list[int]:
    """Source frame on screen at start + k/out_fps: the last one at or before it."""
    n = math.ceil((end - start) * out_fps - 1e-6)
    return [math.floor((start + k / out_fps) * fps + 1e-3) for k in range(n)]


@pytest.fixture(scope="module")
def reference(sources, tmp_path_factory) -> Path:
    """One clean, unsharded run over the sources."""
    out = tmp_path_factory.mktemp("reference") / "clips"
    report = prepare_videos(sources["source"], [sources["metadata"]], out, OPTS, progress=False)
    assert report.written == 16 and not report.failed
    return out


@pytest.mark.parametrize("codec", ["h264", "vp9"])
def test_videos_clips_show_the_right_frames_at_3_fps(sources, reference, tmp_path, codec):
    out = reference
    if codec == "vp9":
        out = tmp_path / "vp9"
        opts = EncodeOptions(height=48, codec="vp9")
        prepare_videos(sources["source"], [sources["metadata"]], out, opts, progress=False)
    for video_id, _, fps, clips in sources["videos"]:
        for k, start, end in clips:
            path = out / video_id / f"{video_id}.{k}.mp4"
            info = stream_info(path)
            assert info == {"fps": 3, "width": 84, "height": 48, "codec": codec}, path
            got, want = frame_numbers(path), _expected(start, end, fps)
            assert got == want, (path.name, got, want)
            for j, shown in enumerate(got):  # within one source frame of the exact time
                assert -1e-6 <= start + j / 3 - shown / fps < 1 / fps


def test_videos_seeking_gives_the_same_bytes(sources, reference, tmp_path):
    prepare_videos(
        sources["source"], [sources["metadata"]], tmp_path, OPTS, progress=False, seek_gap=1.0
    )
    assert _clips(tmp_path) == _clips(reference)


def test_videos_two_shards_make_exactly_the_unsharded_output(sources, reference, tmp_path):
    reports = [
        prepare_videos(
            sources["source"],
            [sources["metadata"]],
            tmp_path,
            OPTS,
            workers=2,
            shard=(i, 2),
            progress=False,
        )  # fmt: skip
        for i in range(2)
    ]
    assert [r.written for r in reports] == [12, 4]  # a, c, d | b (crc32 % 2)
    assert _clips(tmp_path) == _clips(reference)
    for i in range(2):
        assert (tmp_path / f"failures.shard-{i}-of-2.jsonl").read_text() == ""
        report = json.loads((tmp_path / f"report.shard-{i}-of-2.json").read_text())
        assert report["shard"] == f"{i}/2" and report["options"]["height"] == 48


_KILLER = """
import os, signal, sys
import lfvila.prepare.cut as cut
from lfvila.prepare.cut import EncodeOptions
from lfvila.prepare.videos import prepare_videos

renames, replace = [0], os.replace
def replace_or_die(src, dst):
    if str(src).endswith(".partial"):
        renames[0] += 1
        if renames[0] == 4:  # the 4th clip is written and fsynced, not yet renamed
            os.kill(os.getpid(), signal.SIGKILL)
    replace(src, dst)
cut.os.replace = replace_or_die
source, meta, out = sys.argv[1:]
prepare_videos(source, [meta], out, EncodeOptions(height=48), progress=False)
"""


def test_videos_resume_after_a_kill_redoes_nothing(sources, reference, tmp_path):
    out = tmp_path / "out"
    args = [sources["source"], sources["metadata"], out]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-c", _KILLER, *map(str, args)], env=env, timeout=120)
    assert killed.returncode == -9
    done = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.rglob("*.mp4")}
    partial = list(out.rglob(".*.partial"))
    assert len(done) == 3 and len(partial) == 1
    assert all(p.name.startswith("aaaaaaaaaaa.") for p in done)  # videos go in id order
    # a leftover of some other process, for a clip still to do
    stale = out / "ccccccccccc" / ".ccccccccccc.2.mp4.99999.partial"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"garbage")

    report = prepare_videos(args[0], [args[1]], out, OPTS, progress=False)
    assert (report.done_before, report.written, sum(report.failed.values())) == (3, 13, 0)
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in done} == done  # not redone
    assert not list(out.rglob(".*.partial"))
    assert _clips(out) == _clips(reference)  # and nothing is corrupt

    again = prepare_videos(args[0], [args[1]], out, OPTS, progress=False)
    assert (again.done_before, again.written) == (16, 0)


def test_videos_interrupt_via_cli_then_resume(sources, reference, tmp_path, monkeypatch, capsys):
    import lfvila.prepare.cut as cut

    add, calls = cut._Output.add, [0]

    def add_or_interrupt(self, frame):
        calls[0] += 1
        if calls[0] == 20:
            raise KeyboardInterrupt
        add(self, frame)

    monkeypatch.setattr(cut._Output, "add", add_or_interrupt)
    argv = ["prepare", "videos", "--source", str(sources["source"]), "--metadata"]
    argv += [str(sources["metadata"]), "--out", str(tmp_path), "--height", "48"]
    assert main(argv) == 130
    assert "run the same command again to resume" in capsys.readouterr().out
    assert not list(tmp_path.rglob(".*.partial"))  # the interrupted clip's file was removed
    monkeypatch.setattr(cut._Output, "add", add)
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "16 clips of 4 videos" in out and "already done" in out
    assert _clips(tmp_path) == _clips(reference)


def test_videos_reads_video2dataset_output(sources, reference, tmp_path):
    src = tmp_path / "v2d" / "00000"
    src.mkdir(parents=True)
    sidecars = {
        "aaaaaaaaaaa": {"url": "https://www.youtube.com/watch?v=aaaaaaaaaaa&t=3s"},
        "bbbbbbbbbbb": {"url": "https://youtu.be/bbbbbbbbbbb"},
        "ccccccccccc": {"url": "https://example.com/x", "videoID": "ccccccccccc"},
        "ddddddddddd": {"url": "https://www.youtube.com/watch?v=ddddddddddd", "status": "failed"},
    }
    for key, (video_id, meta) in enumerate(sidecars.items()):
        shutil.copy(sources["source"] / f"{video_id}.mp4", src / f"{key:09d}.mp4")
        meta = {"key": f"{key:09d}", "status": "success", "error_message": None, **meta}
        (src / f"{key:09d}.json").write_text(json.dumps(meta))
        (src / f"{key:09d}.txt").write_text("a caption")
    (tmp_path / "v2d" / "00000_stats.json").write_text("{}")
    index = index_sources(tmp_path / "v2d")
    assert sorted(index.paths) == ["aaaaaaaaaaa", "bbbbbbbbbbb", "ccccccccccc"]
    assert dict(index.skipped) == {"sidecar status not success": 1}

    out = tmp_path / "out"
    report = prepare_videos(tmp_path / "v2d", [sources["metadata"]], out, OPTS, progress=False)
    assert report.written == 12 and dict(report.failed) == {"source not found": 4}
    assert _clips(out) == {k: v for k, v in _clips(reference).items() if "ddd" not in k}


def test_videos_failures_manifest(sources, tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    write_numbered_video(src / "shortvideo1.mp4", 30, 30)  # 1 s
    (src / "garbagevid1.mp4").write_bytes(b"\x00not a video" * 100)
    meta = write_jsonl(
        tmp_path / "meta.jsonl",
        [
            record("shortvideo1", [(0, 0.0, 0.9), (1, 0.9, 2.5)]),  # clip 1 ends after 1 s
            record("garbagevid1", [(0, 0.0, 1.0)]),
            record("nosourcevid", [(0, 0.0, 1.0), (1, 1.0, 2.0)]),
            "{broken",
        ],
    )
    argv = ["prepare", "videos", "--source", str(src), "--metadata", str(meta), "--out"]
    assert main([*argv, str(tmp_path / "out"), "--height", "32"]) == 0
    printed = capsys.readouterr().out
    assert "5 clips of 3 videos: 1 written, 0 already done, 4 failed" in printed
    lines = (tmp_path / "out" / "failures.shard-0-of-1.jsonl").read_text().splitlines()
    failures = {f.get("clip_id", f.get("where")): f for f in map(json.loads, lines)}
    assert {k: f["kind"] for k, f in failures.items()} == {
        f"{meta}:4": "malformed metadata",
        "shortvideo1.1.mp4": "source ends before the clip",
        "garbagevid1.0.mp4": "cannot open source",
        "nosourcevid.0.mp4": "source not found",
        "nosourcevid.1.mp4": "source not found",
    }
    assert (
        "ends at 1.000 s, before the clip's end at 2.500 s"
        in failures["shortvideo1.1.mp4"]["reason"]
    )
    assert frame_numbers(tmp_path / "out" / "shortvideo1" / "shortvideo1.0.mp4") == [0, 10, 20]
    assert not (tmp_path / "out" / "garbagevid1").exists() or not list(
        (tmp_path / "out" / "garbagevid1").iterdir()
    )


def test_videos_only_the_annotated_clips(sources, reference, tmp_path):
    ann = write_jsonl(
        tmp_path / "train.jsonl",
        [[{"clip_id": f"ccccccccccc.{k}.mp4", "text": "t"} for k in (2, 3, 9)]],
    )
    report = prepare_videos(
        sources["source"], [sources["metadata"]], tmp_path / "out", OPTS, annotations=[ann],
        progress=False,
    )  # fmt: skip
    assert report.written == 2 and dict(report.failed) == {"not in metadata": 1}
    (line,) = (tmp_path / "out" / "failures.shard-0-of-1.jsonl").read_text().splitlines()
    assert json.loads(line)["clip_id"] == "ccccccccccc.9.mp4"
    want = {k: v for k, v in _clips(reference).items() if k.endswith((".2.mp4", ".3.mp4"))}
    assert _clips(tmp_path / "out") == {k: v for k, v in want.items() if "ccc" in k}


def test_videos_unsafe_names_and_bad_arguments(sources, tmp_path, capsys):
    bad = {"video_id": "ok", "clip": [{"clip_id": "../../escaped.1.mp4", "span": [0, 1]}]}
    meta = write_jsonl(tmp_path / "meta.jsonl", [record("aaaaaaaaaaa", [(0, 0, 1)]), bad])
    with pytest.raises(PrepareError, match=r"meta.jsonl:2: clip 0: clip id '../../escaped"):
        prepare_videos(sources["source"], [meta], tmp_path / "out", OPTS, progress=False)
    assert not list(tmp_path.rglob("escaped*"))
    argv = ["prepare", "videos", "--source", str(sources["source"]), "--metadata", str(meta)]
    for extra in (["--shard", "2/2"], ["--height", "47"], ["--workers", "0"], []):
        assert main([*argv, "--out", str(tmp_path / "o"), *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("lfvila prepare: error:") and err.count("\n") == 1, err
    good = write_jsonl(tmp_path / "good.jsonl", [record("aaaaaaaaaaa", [(0, 0, 1)])])
    with pytest.raises(PrepareError, match="is inside --source"):
        prepare_videos(sources["source"], good, sources["source"] / "clips", OPTS, progress=False)


@pytest.mark.parametrize("text", ["2/2", "a/b", "-1/2", "1", "0/0"])
def test_parse_shard_rejects(text):
    with pytest.raises(PrepareError, match="--shard must be i/n"):
        parse_shard(text)
