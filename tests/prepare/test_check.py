"""`lfvila prepare check`: a missing, an empty, a corrupt and a too-short clip are found, listed
one clip_id per line, and reported by kind; a clean set passes with exit status 0."""

from __future__ import annotations

import json

import pytest

from lfvila.cli import main
from lfvila.prepare.check import prepare_check

from .conftest import write_jsonl, write_numbered_video

GOOD = [f"goodvideo01.{k}.mp4" for k in range(4)]


@pytest.fixture
def clips(tmp_path):
    root = tmp_path / "clips"
    for clip_id in GOOD:
        write_numbered_video(root / "goodvideo01" / clip_id, 12, 3)
    write_numbered_video(root / "badvideo001" / "badvideo001.2.mp4", 5, 3)  # too short for 8
    (root / "badvideo001" / "badvideo001.1.mp4").write_bytes(b"")  # empty
    (root / "badvideo001" / "badvideo001.3.mp4").write_bytes(b"\x00junk" * 50)  # corrupt
    bad = [f"badvideo001.{k}.mp4" for k in range(4)]  # .0: missing
    ann = write_jsonl(
        tmp_path / "train.jsonl",
        [
            [{"clip_id": c, "text": "t"} for c in GOOD],
            [{"clip_id": c, "text": "t"} for c in bad],
            [{"clip_id": c, "text": "t"} for c in [*GOOD[2:], *bad[:2]]],  # checked once each
        ],
    )
    return root, ann, bad


@pytest.mark.parametrize("workers", [1, 2])
def test_check_finds_missing_empty_corrupt_and_short_clips(clips, tmp_path, workers):
    root, ann, bad = clips
    report_path, ids_path = tmp_path / "r.json", tmp_path / "bad.txt"
    report = prepare_check(
        ann, root, workers=workers, report_path=report_path, bad_ids_path=ids_path,
        progress=False,
    )  # fmt: skip
    assert (report.records, report.clips, report.ok) == (3, 8, 4)
    assert ids_path.read_text() == "".join(f"{c}\n" for c in sorted(bad))
    saved = json.loads(report_path.read_text())
    reasons = {e["clip_id"]: (e["kind"], e["reason"]) for e in saved["examples"]}
    assert reasons["badvideo001.2.mp4"] == ("too short", "5 frames, fewer than 8")
    assert "not found" in reasons["badvideo001.0.mp4"][1]
    assert "empty" in reasons["badvideo001.1.mp4"][1]
    assert reasons["badvideo001.3.mp4"][0] not in ("too short", reasons["badvideo001.1.mp4"][0])
    assert sum(saved["bad"].values()) == 4 and saved["bad"]["too short"] == 1


def test_check_cli_exit_status_and_frames_per_clip(clips, tmp_path, capsys, monkeypatch):
    root, ann, bad = clips
    monkeypatch.chdir(tmp_path)  # the default report and list go to the current folder
    argv = ["prepare", "check", "--annotations", str(ann), "--video-root", str(root)]
    ids = tmp_path / "ids.txt"
    assert main([*argv, "--bad-ids", str(ids), "--report", str(tmp_path / "r.json")]) == 1
    out = capsys.readouterr().out
    assert "3 records, 8 clips: 4 ok, 4 bad" in out and f"bad clip ids: {ids}" in out
    # 4 frames per clip (configs/tiny.yaml: 8 frames over 2 clips): 5 frames are enough
    assert main([*argv, "--frames-per-clip", "4"]) == 1
    listed = (tmp_path / "train.bad_ids.txt").read_text().split()
    assert "badvideo001.2.mp4" not in listed and len(listed) == 3
    assert json.loads((tmp_path / "train.check.json").read_text())["frames_per_clip"] == 4

    good = write_jsonl(tmp_path / "good.jsonl", [[{"clip_id": c, "text": "t"} for c in GOOD]])
    argv = ["prepare", "check", "--annotations", str(good), "--video-root", str(root)]
    assert main([*argv, "--bad-ids", str(ids), "--report", str(tmp_path / "g.json")]) == 0
    assert ids.read_text() == ""


def test_check_malformed_annotations_name_the_line(tmp_path, capsys):
    ann = write_jsonl(tmp_path / "a.jsonl", [[{"clip_id": "x.1.mp4", "text": "t"}], "{oops"])
    argv = ["prepare", "check", "--annotations", str(ann), "--video-root", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{ann}:2" in err and err.count("\n") == 1 and "Traceback" not in err
