"""The demo dataset's downstream-task files: every task's annotations in its schema and the
original layout, labels that are right and in range, the video folders, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lfvila.data import demo as demo_module
from lfvila.data.annotations import read_jsonl

VIDEOS, VAL_VIDEOS, SECONDS = 6, 3, 8 / 3  # 8 frames per clip at 3 fps
TASK = "datasets/lfvila_data/task"
# task -> (train file, eval file, video folder) in the original layout, and its class count
EXPECTED = {
    "actnet_ret": ("actnet/train", "actnet/val1", "activitynet/actnet_video", None),
    "didemo_ret": ("didemo/train", "didemo/test", "didemo/didemo_video", None),
    "queryd_ret": ("querydret/train", "querydret/test", "queryd/queryd_video", None),
    "cmovie_ret": ("cmovie/train", "cmovie/val", "cmovie/cmovie_video", None),
    "how2_qa": ("how2qa/how2qa_train", "how2qa/how2qa_val", "how2qa/how2qa_video", None),
    "violin_qa": ("violin/violin_train", "violin/violin_test", "violin/violin_video", 2),
    "actnet_qa": ("actnet_qa/train", "actnet_qa/test", "activitynet/actnet_video", 7),
    "coin_cls": ("COIN/coin_train", "COIN/coin_test", "COIN/coin_video", 12),
    "lvu_relationship_cls": (
        "LVU_movieclips/relationship_train",
        "LVU_movieclips/relationship_test",
        "LVU_movieclips/lvu_video",
        4,
    ),
    "lvu_scene_cls": (
        "LVU_movieclips/scene_train",
        "LVU_movieclips/scene_test",
        "LVU_movieclips/lvu_video",
        4,  # 4 colours used of LVU's 6 scene classes
    ),
    "lvu_wayspeaking_cls": (
        "LVU_movieclips/wayspeaking_train",
        "LVU_movieclips/wayspeaking_test",
        "LVU_movieclips/lvu_video",
        3,  # 3 shapes used of 5
    ),
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_tasks") / "data"
    return root, demo_module.generate(root, videos=VIDEOS, val_videos=VAL_VIDEOS, seed=1)


def _records(files, name, split):
    entry = files["tasks"][name]
    return read_jsonl(entry[split], entry["schema"])


def _sentences(root) -> dict[str, list[str]]:
    """stem -> its clips' sentences, from the pre-training files."""
    out = {}
    for split in ("train", "val"):
        for line in (root / f"pretrain_{split}.jsonl").read_text().splitlines():
            clips = json.loads(line)
            out[clips[0]["clip_id"].split(".")[0]] = [c["text"] for c in clips]
    return out


def test_every_task_file_is_valid_and_in_the_original_layout(demo):
    root, files = demo
    assert files["task_root"] == root and set(files["tasks"]) == set(EXPECTED)
    train_ids = [f"demo{v:05d}" for v in range(VIDEOS)]
    eval_ids = [f"demo{v:05d}" for v in range(VIDEOS, VIDEOS + VAL_VIDEOS)]
    for name, (train, held_out, videos, classes) in EXPECTED.items():
        entry = files["tasks"][name]
        assert entry["train"] == root / TASK / f"{train}.jsonl", name
        assert entry["eval"] == root / TASK / f"{held_out}.jsonl", name
        assert entry["video_root"] == root / "datasets" / videos, name
        for split, ids in (("train", train_ids), ("eval", eval_ids)):
            records = _records(files, name, split)
            key = {"actnet_qa": "video_name", "video_classification": "video_id"}
            key = key.get(entry["schema"], "clip_id")
            assert [r[key] for r in records] == ids, (name, split)
            if classes is not None:
                field = "recipe_type" if name.endswith("_cls") else "answer"
                assert all(0 <= r[field] < classes for r in records), (name, split)


def test_retrieval_texts_are_the_paragraphs(demo):
    root, files = demo
    sentences = _sentences(root)
    for name in ("actnet_ret", "didemo_ret", "queryd_ret"):
        for split in ("train", "eval"):
            for r in _records(files, name, split):
                assert r["text"] == sentences[r["clip_id"]]
    for split in ("train", "eval"):
        for r in _records(files, "cmovie_ret", split):
            assert r["text"] == ", ".join(sentences[r["clip_id"]])


def test_how2qa_answer_is_the_asked_clips_motion(demo):
    root, files = demo
    sentences = _sentences(root)
    for split in ("train", "eval"):
        for r in _records(files, "how2_qa", split):
            k = int(r["text_q"].rstrip("?").split()[-1]) - 1
            sentence = sentences[r["clip_id"]][k]
            assert sorted(r["text_a"]) == sorted(demo_module.MOTIONS)
            # "a {color} {shape} {motion}" asked as "what does the {color} {shape} do in part k?"
            color, shape = sentence.split()[1:3]
            assert r["text_q"] == f"what does the {color} {shape} do in part {k + 1}?"
            assert sentence == f"a {color} {shape} {r['text_a'][r['answer_idx']]}"
            assert r["span"] == pytest.approx([k * SECONDS, (k + 1) * SECONDS])
            assert [s["text"] for s in r["text_s"]] == ["part 1", "part 2", "part 3", "part 4"]
            assert r["text_s"][3]["end"] == pytest.approx(4 * SECONDS)


def test_violin_statements_are_true_or_false(demo):
    root, files = demo
    sentences = _sentences(root)
    answers = []
    for split in ("train", "eval"):
        for r in _records(files, "violin_qa", split):
            words = r["text_q"].split()
            assert words[:2] == ["in", "part"]
            k, statement = int(words[2]) - 1, " ".join(words[3:])
            real = sentences[r["clip_id"]][k]
            assert (statement == real) == (r["answer"] == 1), r
            # a false one differs only in the motion
            assert statement.split()[:3] == real.split()[:3]
            answers.append(r["answer"])
    assert 0 < sum(answers) < len(answers)  # both classes occur (9 draws at 1/2)


def test_actnet_qa_answers_name_the_asked_clip(demo):
    root, files = demo
    sentences = _sentences(root)
    assert demo_module.ANSWERS == [*demo_module.COLORS, *demo_module.SHAPES]
    for split in ("train", "eval"):
        for r in _records(files, "actnet_qa", split):
            k = int(r["question"].rstrip("?").split()[-1]) - 1
            color, shape = sentences[r["video_name"]][k].split()[1:3]
            asks_colour = r["question"].startswith("what colour")
            assert demo_module.ANSWERS[r["answer"]] == (color if asks_colour else shape)


def test_classification_labels_are_clip_0s(demo):
    root, files = demo
    sentences = _sentences(root)
    colors, shapes, motions = list(demo_module.COLORS), demo_module.SHAPES, demo_module.MOTIONS
    for split in ("train", "eval"):
        labels = {
            name: {r["video_id"]: r["recipe_type"] for r in _records(files, name, split)}
            for name in ("coin_cls", "lvu_relationship_cls", "lvu_scene_cls", "lvu_wayspeaking_cls")
        }
        for vid, coin in labels["coin_cls"].items():
            words = sentences[vid][0].split()
            color, shape, motion = words[1], words[2], " ".join(words[3:])
            assert coin == colors.index(color) * 3 + shapes.index(shape)
            assert labels["lvu_relationship_cls"][vid] == list(motions).index(motion)
            assert labels["lvu_scene_cls"][vid] == colors.index(color)
            assert labels["lvu_wayspeaking_cls"][vid] == shapes.index(shape)


def test_video_folders_are_relative_links_to_the_whole_videos(demo):
    root, files = demo
    whole = sorted(p.name for p in (root / "whole").iterdir())
    for name, entry in files["tasks"].items():
        link = entry["video_root"]
        assert link.is_symlink() and not Path(link.readlink()).is_absolute(), name
        assert link.resolve() == (root / "whole").resolve(), name
        assert sorted(p.name for p in link.iterdir()) == whole, name
        for r in _records(files, name, "eval"):
            stem = r.get("clip_id") or r.get("video_name") or r["video_id"]
            assert (link / f"{stem}.mp4").is_file(), (name, stem)


def test_task_files_are_deterministic(demo, tmp_path):
    _, files = demo
    again = demo_module.generate(tmp_path, videos=VIDEOS, val_videos=VAL_VIDEOS, seed=1)
    for name, entry in files["tasks"].items():
        for split in ("train", "eval"):
            assert entry[split].read_bytes() == again["tasks"][name][split].read_bytes()
