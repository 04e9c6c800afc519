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
    assert read_jsonl(path, task) == [GOOD[task], GOOD[task]]


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
    with pytest.raises(AnnotationError, match=r"train_db key 9: no such key"):
        db[9]
