"""Annotation files: every task's JSONL validated with errors naming file, line and field; the
original pre-training LMDB parsed as literals only."""

from __future__ import annotations

import json

import pytest

from lfvila.data import AnnotationError, read_jsonl
from lfvila.data.annotations import PretrainLMDB, parse_literal

GOOD = {
    "retrieval": {"clip_id": "v_abc", "text": ["one.", "two."]},
    "how2qa": {
        "clip_id": "h1",
        "span": [1.0, 4.5],
        "text_q": "what?",
        "text_a": ["a", "b", "c", "d"],
        "text_s": [{"text": "hi", "start": 0, "end": 1.5}],
        "answer_idx": 2,
    },
    "violin": {"clip_id": "v1", "text_q": "s", "text_s": [], "answer": 1},
    "actnet_qa": {"video_name": "v_x", "question": "q?", "answer": 1653},
    "video_classification": {"video_id": "c1", "recipe_type": 7},
    "pretrain": [{"clip_id": "a.1.mp4", "text": "t1"}, {"clip_id": "a.2.mp4", "text": "t2"}],
}


def _write(path, lines):
    path.write_text("".join(line if isinstance(line, str) else json.dumps(line) for line in lines))
    return path


@pytest.mark.parametrize("task", sorted(GOOD))
def test_good_records_read(tmp_path, task):
    path = _write(
        tmp_path / "a.jsonl", [json.dumps(GOOD[task]) + "\n", "\n", json.dumps(GOOD[task]) + "\n"]
    )
    assert list(read_jsonl(path, task)) == [GOOD[task], GOOD[task]]


def test_nan_span_is_read(tmp_path):
    line = json.dumps(GOOD["how2qa"]).replace("[1.0, 4.5]", "[NaN, NaN]")
    (record,) = read_jsonl(_write(tmp_path / "h.jsonl", [line]), "how2qa")
    assert record["span"][0] != record["span"][0]


@pytest.mark.parametrize(
    "task, change, message",
    [
        ("retrieval", {"text": 3}, r"field 'text' must be a non-empty string"),
        ("retrieval", {"clip_id": ""}, r"field 'clip_id' must be a non-empty string"),
        ("how2qa", {"answer_idx": 4}, r"field 'answer_idx' 4 is not an index of text_a"),
        ("how2qa", {"span": [1]}, r"field 'span' must be \[start, end\]"),
        ("how2qa", {"text_s": [{"text": "x"}]}, r"field 'text_s' item 0 needs numeric 'start'"),
        ("violin", {"answer": 2}, r"field 'answer' must be 0 or 1"),
        ("violin", {"answer": True}, r"field 'answer' must be 0 or 1"),
        ("actnet_qa", {"answer": "yes"}, r"field 'answer' must be an integer class index"),
        ("video_classification", {"recipe_type": 1.5}, r"field 'recipe_type' must be an integer"),
    ],
)
def test_bad_field_names_file_line_and_field(tmp_path, task, change, message):
    bad = {**GOOD[task], **change}
    path = _write(tmp_path / "ann.jsonl", [json.dumps(GOOD[task]) + "\n", json.dumps(bad) + "\n"])
    with pytest.raises(AnnotationError, match=rf"ann.jsonl:2: {message}"):
        read_jsonl(path, task)


def test_structural_errors(tmp_path):
    with pytest.raises(AnnotationError, match=r"x.jsonl:1: field 'clip_id' is missing"):
        read_jsonl(_write(tmp_path / "x.jsonl", ['{"text": "a"}\n']), "retrieval")
    with pytest.raises(AnnotationError, match=r"y.jsonl:3: not valid JSON"):
        read_jsonl(
            _write(tmp_path / "y.jsonl", [json.dumps(GOOD["retrieval"]) + "\n", "\n", "{oops\n"]),
            "retrieval",
        )
    with pytest.raises(AnnotationError, match=r"z.jsonl:1: expected a JSON object, got list"):
        read_jsonl(_write(tmp_path / "z.jsonl", ["[1, 2]\n"]), "retrieval")
    with pytest.raises(AnnotationError, match=r"p.jsonl:1: item 1 field 'text' must be a string"):
        read_jsonl(
            _write(tmp_path / "p.jsonl", ['[{"clip_id": "a", "text": "t"}, {"clip_id": "b"}]\n']),
            "pretrain",
        )
    with pytest.raises(AnnotationError, match=r"e.jsonl: no records"):
        read_jsonl(_write(tmp_path / "e.jsonl", ["\n"]), "retrieval")
    with pytest.raises(AnnotationError, match=r"missing.jsonl: annotation file not found"):
        read_jsonl(tmp_path / "missing.jsonl", "retrieval")
    with pytest.raises(ValueError, match="task must be one of"):
        read_jsonl(tmp_path / "e.jsonl", "nope")


def test_literal_parser_refuses_code():
    assert parse_literal("[{'clip_id': 'a.1.mp4', 'text': 'x'}]", "k") == [
        {"clip_id": "a.1.mp4", "text": "x"}
    ]
    for code in ("__import__('os').system('true')", "[open('/etc/passwd')]", "1 +", "x"):
        with pytest.raises(AnnotationError, match=r"db key 7: value is not a Python literal"):
            parse_literal(code, "db key 7")


def test_pretrain_lmdb(tmp_path):
    lmdb = pytest.importorskip("lmdb", reason="the optional lmdb extra is not installed")
    path = tmp_path / "train_db"
    env = lmdb.open(str(path), map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"0", repr(GOOD["pretrain"]).encode())
        txn.put(b"1", b"__import__('os').getcwd()")
        txn.put(b"2", b"[{'clip_id': 'a.1.mp4'}]")
    env.close()
    db = PretrainLMDB(path)
    assert len(db) == 3 and db[0] == GOOD["pretrain"]
    with pytest.raises(AnnotationError, match=r"train_db key 1: value is not a Python literal"):
        db[1]
    with pytest.raises(AnnotationError, match=r"train_db key 2: item 0 field 'text' must be"):
        db[2]
    with pytest.raises(IndexError):  # past the end: iteration stops there
        db[9]


def _three_lines(tmp_path, task, bad, good=None):
    """good, blank, bad: the bad record is on line 3."""
    lines = [json.dumps(good or GOOD[task]) + "\n", "\n", json.dumps(bad) + "\n"]
    return _write(tmp_path / "a.jsonl", lines)


@pytest.mark.parametrize(
    "task, field, value, num_classes",
    [
        ("video_classification", "recipe_type", -100, 180),
        ("video_classification", "recipe_type", 180, 180),
        ("actnet_qa", "answer", 99999, 1654),
        ("actnet_qa", "answer", -1, 1654),
        ("violin", "answer", 1, 1),
    ],
)
def test_class_ids_outside_the_model_are_refused(tmp_path, task, field, value, num_classes):
    path = _three_lines(tmp_path, task, {**GOOD[task], field: value}, {**GOOD[task], field: 0})
    message = rf"a.jsonl:3: field '{field}' {value} is not a class id in \[0, {num_classes}\)"
    with pytest.raises(AnnotationError, match=message):
        read_jsonl(path, task, num_classes=num_classes)
    # without num_classes the file reads as before
    assert read_jsonl(path, task)[1][field] == value


@pytest.mark.parametrize(
    "task, field, last",
    [("video_classification", "recipe_type", 179), ("actnet_qa", "answer", 1653)],
)
def test_class_ids_at_the_edges_are_kept(tmp_path, task, field, last):
    path = _three_lines(tmp_path, task, {**GOOD[task], field: last})
    first = {**GOOD[task], field: 0}
    path.write_text(path.read_text() + json.dumps(first) + "\n")
    records = read_jsonl(path, task, num_classes=last + 1)
    assert [r[field] for r in records] == [GOOD[task][field], last, 0]


@pytest.mark.parametrize("answers", [["a", "b", "c"], ["a", "b", "c", "d", "e"]])
def test_how2qa_candidate_count_must_match(tmp_path, answers):
    path = _three_lines(tmp_path, "how2qa", {**GOOD["how2qa"], "text_a": answers})
    message = rf"a.jsonl:3: field 'text_a' has {len(answers)} answers, the model takes 4"
    with pytest.raises(AnnotationError, match=message):
        read_jsonl(path, "how2qa", num_candidates=4)
    assert len(read_jsonl(path, "how2qa")[1]["text_a"]) == len(answers)
    with pytest.raises(AnnotationError, match=r"a.jsonl:1: field 'text_a' has 4 answers"):
        read_jsonl(path, "how2qa", num_candidates=len(answers))


def test_task_checks_apply_to_their_tasks_only(tmp_path):
    # num_candidates means nothing to a classification file, num_classes nothing to How2QA
    coin = _three_lines(tmp_path, "video_classification", GOOD["video_classification"])
    assert len(read_jsonl(coin, "video_classification", num_candidates=2)) == 2
    how2qa = _write(tmp_path / "h.jsonl", [json.dumps(GOOD["how2qa"]) + "\n"])
    assert len(read_jsonl(how2qa, "how2qa", num_classes=1)) == 1
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        read_jsonl(coin, "video_classification", num_classes=0)


@pytest.mark.parametrize(
    "span, message",
    [
        ("[5.0, 2.0]", r"field 'span' \[5.0, 2.0\] starts after it ends"),
        ("[-1.0, 3.0]", r"field 'span' \[-1.0, 3.0\] has a negative time"),
        ("[NaN, -2]", r"field 'span' \[nan, -2\] has a negative time"),
        ("[-0.5, null]", r"field 'span' \[-0.5, None\] has a negative time"),
    ],
)
def test_bad_spans_are_refused(tmp_path, span, message):
    bad = json.dumps(GOOD["how2qa"]).replace("[1.0, 4.5]", span)
    path = _write(tmp_path / "a.jsonl", [json.dumps(GOOD["how2qa"]) + "\n", "\n", bad + "\n"])
    with pytest.raises(AnnotationError, match=rf"a.jsonl:3: {message}"):
        read_jsonl(path, "how2qa")


def test_good_spans_are_kept(tmp_path):
    spans = ["[3.0, 3.0]", "[0, 7]", "[NaN, 5.0]", "[2.0, NaN]", "[null, null]", "[40.0, 50.0]"]
    lines = [json.dumps(GOOD["how2qa"]).replace("[1.0, 4.5]", s) + "\n" for s in spans]
    records = read_jsonl(_write(tmp_path / "a.jsonl", lines), "how2qa", num_candidates=4)
    assert [r["span"][1] for r in records][:2] == [3.0, 7] and len(records) == 6
