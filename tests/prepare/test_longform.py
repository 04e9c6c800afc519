"""`lfvila prepare longform`: runs of time-contiguous clips from synthetic metadata with gaps,
overlaps, out-of-order clips, missing transcripts and malformed lines."""

from __future__ import annotations

import json

import pytest

from lfvila.cli import main
from lfvila.data.annotations import PretrainLMDB, read_jsonl
from lfvila.prepare import PrepareError
from lfvila.prepare.longform import is_val, prepare_longform
from lfvila.prepare.metadata import parse_time

from .conftest import hms, record, write_jsonl


def _text(clip_id: str) -> str:
    return f"words of {clip_id}"


def _metadata(tmp_path):
    x = record(  # out of order; a 0.3 s gap (touching); a 2 s gap before clip 5
        "xxxxxxxxxxx",
        [(3, 6.0, 8.0), (0, 0.0, 2.0), (2, 4.3, 6.0), (1, 2.0, 4.0), (4, 8.0, 10.0), (5, 12, 14)],
    )
    y = record(  # a 1 s overlap (a cut), then a 0.4 s overlap and an exact 0.5 s gap (touching)
        "yyyyyyyyyyy", [(0, 0, 2), (1, 1.0, 3.0), (2, 2.6, 5.0), (3, 5.5, 7.0), (4, 7.0, 9.0)]
    )
    z = record("zzzzzzzzzzz", [(k, 2.0 * k, 2.0 * k + 2) for k in range(9)])  # clip 4: no text
    w = record("wwwwwwwwwww", [(k, 2.0 * k, 2.0 * k + 2) for k in (0, 1, 2, 4, 5)])  # no clip 3
    bad_clips = record("vvvvvvvvvvv", [(k, 2.0 * k, 2.0 * k + 2) for k in range(5)])
    bad_clips["clip"][1]["span"] = ["00:00:02.000", "00:xx:04.000"]  # not a time
    bad_clips["clip"][2]["span"] = [hms(6.0), hms(5.0)]  # ends before it starts
    bad_clips["clip"][3]["clip_id"] = "uuuuuuuuuuu.3.mp4"  # not of this video
    lines = [
        x,
        "{not json",
        y,
        [1, 2],
        {"video_id": "", "clip": []},
        z,
        w,
        {"video_id": "ttttttttttt", "clip": "nope"},
        bad_clips,
        x,  # listed twice
    ]
    meta = write_jsonl(tmp_path / "meta.jsonl", lines)
    ids = [c["clip_id"] for r in (x, y, z, w, bad_clips) for c in r["clip"]]
    texts = [{"clip_id": i, "text": _text(i)} for i in ids if i != "zzzzzzzzzzz.4.mp4"]
    texts[0] = {texts[0]["clip_id"]: [" words of", "xxxxxxxxxxx.3.mp4 "]}  # a mapping, a list
    texts.append({"clip_id": "zzzzzzzzzzz.4.mp4", "text": "   "})  # empty: missing
    trans = write_jsonl(tmp_path / "transcripts.jsonl", [*texts, "[broken"])
    return meta, trans


def _runs(path):
    return [[c["clip_id"] for c in json.loads(line)] for line in path.read_text().splitlines()]


def test_longform_keeps_maximal_contiguous_runs(tmp_path):
    meta, trans = _metadata(tmp_path)
    out = tmp_path / "out"
    report = prepare_longform([meta], [trans], out)
    x = [f"xxxxxxxxxxx.{k}.mp4" for k in range(5)]
    y = [f"yyyyyyyyyyy.{k}.mp4" for k in range(1, 5)]
    z = [f"zzzzzzzzzzz.{k}.mp4" for k in range(9)]
    assert _runs(out / "train.jsonl") == [x, y, z[:4], z[5:]]
    first = json.loads((out / "train.jsonl").read_text().splitlines()[0])
    assert [c["text"] for c in first] == [_text(i) for i in x]  # the list was joined
    assert len(read_jsonl(out / "train.jsonl", "pretrain", min_clips=4)) == 4  # datasets read it

    assert (report.videos, report.runs_kept, report.clips_kept) == (5, 4, 17)
    assert report.clips == 6 + 5 + 9 + 5 + 5
    assert dict(report.breaks) == {"gap": 1, "overlap": 1, "index jump": 2}
    assert dict(report.rejected) == {
        "too short": 1 + 1 + 3 + 2 + 2,  # x.5, y.0, w.0-2, w.4-5, the rest of v
        "missing transcript": 1,
        "malformed clip": 3,
    }
    saved = json.loads((out / "report.json").read_text())
    assert saved["rejected"] == dict(report.rejected) and saved["tolerance_s"] == 0.5
    assert saved["malformed_lines"] == 9  # 5 lines, 3 clips, the transcripts' broken line
    listed = "\n".join(saved["malformed"])
    for where in (":2: not valid JSON", ":4: expected a JSON object", ":5: field 'video_id'",
                  ":8: field 'clip'", ":9: clip 1: field 'span'", ":9: clip 2: span",
                  ":9: clip 3: clip id 'uuuuuuuuuuu.3.mp4' does not start", ":10: video",
                  "transcripts.jsonl:"):  # fmt: skip
        assert where in listed, where


def test_longform_tolerance_and_min_clips(tmp_path):
    meta, trans = _metadata(tmp_path)
    report = prepare_longform([meta], [trans], tmp_path / "a", tolerance=0.2, min_clips=3)
    runs = _runs(tmp_path / "a" / "train.jsonl")
    # x's 0.3 s gap and y's 0.4 s overlap and 0.5 s gap now cut; w's 0-2 is long enough
    assert ["xxxxxxxxxxx.0.mp4", "xxxxxxxxxxx.1.mp4"] not in runs
    assert ["wwwwwwwwwww.0.mp4", "wwwwwwwwwww.1.mp4", "wwwwwwwwwww.2.mp4"] in runs
    assert report.breaks["gap"] == 3 and report.breaks["overlap"] == 2


def test_longform_clip_id_list_keeps_exactly_the_listed_runs(tmp_path):
    meta, trans = _metadata(tmp_path)
    x = [f"xxxxxxxxxxx.{k}.mp4" for k in (5, 1, 2, 3)]  # kept as listed, gap and order too
    z = [f"zzzzzzzzzzz.{k}.mp4" for k in range(4)]
    ids = tmp_path / "ids.txt"
    ids.write_text(
        "\n".join(
            [
                json.dumps(x),
                "# a comment",
                ", ".join(z),
                " ".join(f"zzzzzzzzzzz.{k}.mp4" for k in range(3, 7)),  # 4 has no transcript
                "xxxxxxxxxxx.0.mp4 nothere.1.mp4 xxxxxxxxxxx.2.mp4 xxxxxxxxxxx.3.mp4",
                "xxxxxxxxxxx.0.mp4 xxxxxxxxxxx.1.mp4",
                "[broken",
            ]
        )
        + "\n"
    )
    report = prepare_longform([meta], [trans], tmp_path / "out", clip_ids=ids)
    assert _runs(tmp_path / "out" / "train.jsonl") == [x, z]
    assert dict(report.rejected) == {
        "runs with a missing transcript": 1,
        "runs with a clip not in the metadata": 1,
        "runs too short": 1,
    }
    assert any(m.startswith(f"{ids}:7: not valid JSON") for m in report.malformed)
    ids.write_bytes(b"xxxxxxxxxxx.0.mp4\n\xff\xfe\n")
    with pytest.raises(PrepareError, match=r"ids.txt:2: not UTF-8"):
        prepare_longform([meta], [trans], tmp_path / "out", clip_ids=ids)


def test_longform_validation_split_is_by_video_and_stable(tmp_path):
    videos = [f"v{i:010d}" for i in range(60)]
    rows = [record(v, [(k, 2 * k, 2 * k + 2) for k in range(4)]) for v in videos]
    meta = write_jsonl(tmp_path / "meta.jsonl", rows)
    trans = write_jsonl(
        tmp_path / "t.jsonl", [{f"{v}.{k}.mp4": "t" for k in range(4)} for v in videos]
    )
    for name in ("a", "b"):
        report = prepare_longform([meta], [trans], tmp_path / name, val_fraction=0.25, lmdb=True)
    a, b = tmp_path / "a", tmp_path / "b"
    assert (a / "val.jsonl").read_bytes() == (b / "val.jsonl").read_bytes()
    val = {r[0].split(".")[0] for r in _runs(a / "val.jsonl")}
    train = {r[0].split(".")[0] for r in _runs(a / "train.jsonl")}
    assert val == {v for v in videos if is_val(v, 0.25)} and not val & train
    assert len(val) + len(train) == 60 and 5 <= len(val) <= 25
    assert (report.train_runs, report.val_runs) == (len(train), len(val))
    lmdb = PretrainLMDB(a / "train_db", min_clips=4)  # the original layout, literal_eval'd
    lines = [json.loads(line) for line in (a / "train.jsonl").read_text().splitlines()]
    assert [lmdb[i] for i in range(len(lmdb))] == lines


@pytest.mark.parametrize(
    ("clip_id", "video_id", "problem"),
    [
        ("../evil.1.mp4", "xxxxxxxxxxx", "clip 0: clip id '../evil.1.mp4' contains a path"),
        ("/etc/x.1.mp4", "xxxxxxxxxxx", "clip 0: clip id '/etc/x.1.mp4' contains a path"),
        (".hidden.1.mp4", "xxxxxxxxxxx", "starts with '.'"),
        ("a.1.mp4", "..", "video id '..' starts with '.'"),
        ("a.1.mp4", "a/b", "video id 'a/b' contains a path separator"),
    ],
)
def test_longform_unsafe_names_are_errors_naming_file_and_line(
    tmp_path, capsys, clip_id, video_id, problem
):
    good = record("xxxxxxxxxxx", [(0, 0, 2)])
    bad = {"video_id": video_id, "clip": [{"clip_id": clip_id, "span": [0, 2]}]}
    meta = write_jsonl(tmp_path / "meta.jsonl", [good, bad])
    trans = write_jsonl(tmp_path / "t.jsonl", [])
    with pytest.raises(PrepareError, match=f"meta.jsonl:2: .*{problem[:20]}"):
        prepare_longform([meta], [trans], tmp_path / "out")
    argv = ["prepare", "longform", "--metadata", str(meta), "--transcripts", str(trans)]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and f"{meta}:2:" in err
    assert not (tmp_path / "out" / "train.jsonl").exists()


def test_longform_cli_prints_the_report(tmp_path, capsys):
    meta, trans = _metadata(tmp_path)
    argv = ["prepare", "longform", "--metadata", str(meta), "--transcripts", str(trans)]
    assert main([*argv, "--out", str(tmp_path / "out"), "--val-fraction", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "runs kept: 4 (17 clips" in out and "touching within 0.5 s" in out
    assert "malformed records: 9" in out
    assert main([*argv[:-1], str(tmp_path / "missing.jsonl"), "--out", str(tmp_path)]) == 2
    assert "missing.jsonl: file not found" in capsys.readouterr().err
    assert main([*argv, "--out", str(tmp_path), "--val-fraction", "1.5"]) == 2


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("00:00:17.759", 17.759), ("01:02:03.5", 3723.5), ("02:03", 123.0), ("7.25", 7.25), (3, 3.0)],
)
def test_parse_time(text, seconds):
    assert parse_time(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "aa:bb", "1:2:3:4", "-1", "00:01.5:02", None, True, "nan"])
def test_parse_time_rejects(text):
    with pytest.raises(ValueError, match="not a time"):
        parse_time(text)
