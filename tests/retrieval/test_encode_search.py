"""Using a trained model (lfvila.retrieval: encoder, index, collection, search; and the
`lfvila encode` / `lfvila search` commands) on tiny pre-training and retrieval fine-tuning runs
over the generated demo data: features equal the evaluation's, search finds each held-out video
as often as the evaluation says, chunked top-k equals one matmul (ties included), bad videos are
reported and skipped, and an interrupted encode resumes."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from lfvila import Encoder
from lfvila.cli import main
from lfvila.config import load_config
from lfvila.data.datasets import video_file
from lfvila.data.video import VideoDecodeError
from lfvila.jobs.evaluate import evaluate_weights
from lfvila.retrieval.collection import encode_collection, list_videos
from lfvila.retrieval.encoder import split_sentences
from lfvila.retrieval.index import Index, write_index
from lfvila.retrieval.search import evaluate_index, search, topk_rows
from lfvila.tasks import build_task
from lfvila.training.dist import World
from lfvila.training.loop import StepContext

from ..training.conftest import ROOT, TINY_RUN

ACTNET = "datasets/lfvila_data/task/actnet/val1.jsonl"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny demo data, a 4-step stage-1 pre-training run and a 2-step retrieval fine-tuning
    (configs/actnet_ret.yaml at TINY_RUN's widths) from it: {kind: (config path, run dir)}."""
    from lfvila.data import demo

    tmp = tmp_path_factory.mktemp("encode")
    data = tmp / "data"
    demo.generate(data, videos=12, val_videos=6, size=(48, 80), seed=3)
    base = yaml.safe_load(yaml.safe_dump(TINY_RUN))
    base["data"]["root"] = str(data)
    base["train"].update(max_steps=4, eval_every=0, lr=3e-3)
    base["eval"]["before_training"] = False
    config = tmp / "pretrain.yaml"
    config.write_text(yaml.safe_dump(base))
    out = {"pretrain": (config, tmp / "pretrain")}
    assert main(["pretrain", "--config", str(config), "--output-dir", str(out["pretrain"][1])]) == 0

    model = yaml.safe_load(yaml.safe_dump(TINY_RUN["model"]))
    del model["video"]["num_clips"]
    overlay = {
        "model": model,
        "data": {"workers": 0, "root": str(data)},
        "train": {
            "zero_stage": 0,
            "batch_size": 4,
            "max_steps": 2,
            "eval_every": 0,
            "checkpoint_every": 0,
        },
        "eval": {"batch_size": 4, "before_training": False},
    }
    (tmp / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    configs = ["--config", str(ROOT / "configs" / "actnet_ret.yaml"), "--config"]
    run = tmp / "retrieval"
    args = [*configs, str(tmp / "overlay.yaml"), "--weights", str(out["pretrain"][1])]
    assert main(["finetune", *args, "--output-dir", str(run)]) == 0
    merged = tmp / "retrieval.yaml"  # the run's resolved config evaluates it again
    merged.write_text((run / "config.yaml").read_text())
    out["retrieval"] = (merged, run)
    return out


def _evaluation_rows(config, run):
    """The retrieval evaluation's own rows ({video, text}) and item paths, in dataset order."""
    cfg = load_config(config)
    _, _, evaluations = build_task(cfg, World.from_env("cpu"), train=False)
    ev = evaluations[0]
    model = Encoder.from_pretrained(run, device="cpu").model
    rows: dict[str, list] = {}
    ctx = StepContext(World.from_env("cpu"), None, torch.Generator().manual_seed(0))
    with torch.no_grad():
        for batch in ev.loader:
            for key, value in ev.step(model, batch, ctx).rows.items():
                rows.setdefault(key, []).append(value)
    dataset = ev.loader.batches.dataset
    paths = [video_file(dataset.root, r["clip_id"]) for r in dataset.records]
    texts = [r["text"] for r in dataset.records]
    return {k: torch.cat(v) for k, v in rows.items()}, paths, texts, cfg


@pytest.mark.parametrize("kind", ["pretrain", "retrieval"])
def test_encoder_features_equal_the_evaluations(runs, kind):
    config, run = runs[kind]
    rows, paths, texts, _ = _evaluation_rows(config, run)
    encoder = Encoder.from_pretrained(run, device="cpu")
    videos = encoder.encode_videos(paths)
    paragraphs = encoder.encode_paragraphs(texts)
    assert videos.dtype == torch.float32 and videos.shape == (len(paths), encoder.dim)
    assert torch.equal(videos, rows["video"])  # bit for bit: the same frames, transform, model
    assert torch.equal(paragraphs, rows["text"])
    norms = torch.cat([videos, paragraphs]).norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    # another batch size changes nothing but rounding
    assert torch.allclose(encoder.encode_videos(paths, batch_size=1), videos, atol=1e-5)


@pytest.mark.parametrize("kind", ["pretrain", "retrieval"])
def test_search_finds_each_video_as_often_as_the_evaluation_says(runs, kind, tmp_path, capsys):
    config, run = runs[kind]
    cfg = load_config(config)
    root = cfg.data.root
    if kind == "pretrain":
        annotations, videos = f"{root}/{cfg.data.val_retrieval}", f"{root}/whole"
    else:
        annotations, videos = f"{root}/{ACTNET}", f"{root}/{cfg.data.video_root}"
    expected = evaluate_weights(cfg, run, tmp_path / "evaluate")["retrieval"]

    index = tmp_path / "videos.safetensors"
    args = ["encode", "videos", "--weights", str(run), "--videos", annotations]
    assert main([*args, "--video-root", videos, "--out", str(index)]) == 0
    capsys.readouterr()
    assert main(["search", "--index", str(index), "--eval", annotations, "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    for key, value in expected.items():  # the same numbers, t2v and v2t
        assert got[key] == pytest.approx(value, abs=1e-9), key

    records = [json.loads(line) for line in open(annotations) if line.strip()]
    queries = [". ".join(r["text"]) if isinstance(r["text"], list) else r["text"] for r in records]
    argv = ["search", "--index", str(index), "-k", "10", "--json"]
    assert main([*argv, *[x for q in queries for x in ("--query", q)]]) == 0
    results = json.loads(capsys.readouterr().out)
    results = results if isinstance(results, list) else [results]
    ranked = [[hit["id"] for hit in r["results"]] for r in results]
    for k in (1, 5, 10):
        hits = sum(r["clip_id"] in ids[:k] for r, ids in zip(records, ranked))
        assert 100.0 * hits / len(records) == pytest.approx(expected[f"t2v_R@{k}"]), k


def _features(n, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    if n < 12:
        return x
    x[5] = x[2]  # exact ties across chunks and within one
    x[6] = x[2]
    x[11] = x[3]
    return x


def _reference(queries, feats, k):
    scores = queries @ feats.t()
    values, rows = scores.sort(dim=1, descending=True, stable=True)
    return values[:, :k], rows[:, :k]


@pytest.mark.parametrize("chunk_rows", [1, 3, 4, 7, 13, 1000])
@pytest.mark.parametrize("k", [1, 3, 5, 20])
def test_chunked_search_equals_one_matmul_topk_ties_included(tmp_path, chunk_rows, k):
    feats = _features(13)
    path = write_index(tmp_path / "i.safetensors", [feats[:6], feats[6:]], 13, 8,
                       [f"v{i}" for i in range(13)])  # fmt: skip
    queries = torch.cat([feats[[2, 3]], _features(3, seed=1)])
    scores, rows = search(Index(path), queries, k, chunk_rows, backend="torch")
    want_v, want_r = _reference(queries, feats, k)
    assert torch.equal(rows, want_r)
    assert torch.allclose(scores, want_v, atol=1e-6)
    assert rows[0, :3].tolist() == [2, 5, 6][: min(k, 3)]  # ties: lower row first


def test_faiss_backend_is_used_when_importable(tmp_path, monkeypatch):
    """The FAISS path (plumbing only: a stand-in module, FAISS is an optional extra)."""
    import sys
    import types

    import numpy as np

    calls = []

    def knn(xq, xb, k, metric):
        calls.append(xb.shape[0])
        scores = xq @ xb.T
        i = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, i, 1), i

    fake = types.SimpleNamespace(knn=knn, METRIC_INNER_PRODUCT=0)
    monkeypatch.setitem(sys.modules, "faiss", fake)
    feats = _features(13)
    path = write_index(tmp_path / "i.safetensors", [feats], 13, 8, [str(i) for i in range(13)])
    queries = feats[[2, 3, 9]]
    got = search(Index(path), queries, 4, chunk_rows=5)  # auto -> faiss
    assert calls == [5, 5, 3]
    assert torch.equal(got[1], _reference(queries, feats, 4)[1])
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(ValueError, match="faiss"):
        search(Index(path), queries, 4, backend="faiss")


def test_topk_rows_orders_ties_by_column():
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.9, 0.1, 0.5], [1.0, 0.0, 0.0, 0.0, 0.0, 1.0]])
    values, cols = topk_rows(scores, 3)
    assert cols.tolist() == [[1, 3, 0], [0, 5, 1]]
    assert values[0].tolist() == scores[0, [1, 3, 0]].tolist()
    assert values[1, :2].tolist() == [1.0, 1.0]


def test_index_file_is_plain_safetensors_with_ids_and_failures(tmp_path):
    feats = _features(4)
    ids = ["a", "vidéo/2", "c d", "x\ny"]
    failed = [{"id": "bad", "path": "/x/bad.mp4", "kind": "file not found", "reason": "r"}]
    path = write_index(tmp_path / "i.safetensors", [feats], 4, 8, ids, failed, {"kind": "video"})
    plain = load_file(str(path))  # any safetensors reader opens it
    assert torch.equal(plain["features"], feats)
    index = Index(path)
    assert index.ids == ids and index.failed == failed and len(index) == 4 and index.dim == 8
    assert torch.equal(torch.cat([b for _, b in index.chunks(3)]), feats)
    with pytest.raises(ValueError, match="4 ids for 5 rows"):
        write_index(tmp_path / "j.safetensors", [feats], 5, 8, ids)


def test_evaluate_index_over_a_larger_collection_counts_every_candidate(tmp_path):
    feats = _features(13)
    path = write_index(tmp_path / "i.safetensors", [feats], 13, 8, [str(i) for i in range(13)])
    text = feats[[2, 3, 7]] + 0.01 * _features(3, seed=2)
    got = evaluate_index(Index(path), text, [5, 3, 7], chunk_rows=4)
    sim = torch.nn.functional.normalize(text.double(), dim=1) @ feats.double().t()
    truth = sim[[0, 1, 2], [5, 3, 7]][:, None]
    better, tied = (sim > truth).sum(1), (sim == truth).sum(1) - 1
    assert tied.tolist()[0] == 2  # rows 2, 5 and 6 are the same video
    rank = (better + tied / 2 + 1).double()
    assert got["t2v_MnR"] == pytest.approx(float(rank.mean()))
    r1 = ((1 - better.double()) / (tied + 1)).clamp(0, 1).mean() * 100
    assert got["t2v_R@1"] == pytest.approx(float(r1)) and "v2t_R@1" not in got


def test_bad_videos_are_reported_and_skipped(runs, tmp_path, capsys):
    config, run = runs["pretrain"]
    whole = f"{load_config(config).data.root}/whole"
    (tmp_path / "corrupt.mp4").write_bytes(b"\x00\x00\x00 ftypisom" + bytes(range(256)) * 8)
    (tmp_path / "empty.mp4").write_bytes(b"")
    listing = tmp_path / "videos.txt"
    listing.write_text(
        f"good\t{whole}/demo00012.mp4\ncorrupt.mp4\nmissing\t{tmp_path}/nope.mp4\nempty.mp4\n"
    )
    out = tmp_path / "feats.safetensors"
    args = ["encode", "videos", "--weights", str(run), "--videos", str(listing)]
    assert main([*args, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "1 videos x" in captured.out and "3 skipped" in captured.out
    index = Index(out)
    assert index.ids == ["good"]
    kinds = {f["id"]: f["kind"] for f in index.failed}
    assert kinds["missing"] == "file not found" and kinds["empty"] == "empty file"
    assert kinds["corrupt"] in ("cannot open", "corrupt or truncated", "no video stream")
    assert "skipped missing" in captured.err
    for name in ("nope.mp4", "empty.mp4", "corrupt.mp4"):  # each bad file named once
        assert captured.err.count(name) == 1, captured.err
    with pytest.raises(VideoDecodeError, match="nope.mp4"):
        Encoder.from_pretrained(run, device="cpu").encode_videos([f"{tmp_path}/nope.mp4"])


class _Interrupting:
    """An Encoder whose third chunk is interrupted (Ctrl-C during a large encode)."""

    def __init__(self, encoder):
        self.inner, self.calls = encoder, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def iter_videos(self, *args, **kwargs):
        self.calls += 1
        if self.calls == 3:
            raise KeyboardInterrupt
        return self.inner.iter_videos(*args, **kwargs)


def test_encode_resumes_from_committed_chunks(runs, tmp_path):
    config, run = runs["pretrain"]
    items = list_videos(f"{load_config(config).data.root}/whole")
    assert len(items) == 18
    encoder = Encoder.from_pretrained(run, device="cpu")
    out = tmp_path / "feats.safetensors"
    with pytest.raises(KeyboardInterrupt):
        encode_collection(_Interrupting(encoder), items, out, chunk_size=4)
    assert not out.exists() and len(list(out.with_name(out.name + ".parts").iterdir())) == 2
    result = encode_collection(encoder, items, out, chunk_size=4)
    assert (result["reused"], result["encoded"]) == (8, 10)
    assert not out.with_name(out.name + ".parts").exists()
    fresh = encode_collection(encoder, items, tmp_path / "fresh.safetensors", chunk_size=100)
    assert fresh["encoded"] == 18
    a, b = Index(out), Index(tmp_path / "fresh.safetensors")
    assert a.ids == b.ids == [vid for vid, _ in items]
    assert torch.allclose(a.features(), b.features(), atol=1e-5)
    # a rerun of a finished index encodes nothing; another model's index is refused
    assert encode_collection(encoder, items, out, chunk_size=4)["encoded"] == 0
    encoder.fingerprint = "0" * 16
    with pytest.raises(ValueError, match="other weights"):
        encode_collection(encoder, items, out)


def test_encode_text_and_search_text_output(runs, tmp_path, capsys):
    _, run = runs["pretrain"]
    texts = tmp_path / "p.txt"
    texts.write_text("a red circle moves up. a blue square grows\na green triangle shrinks\n")
    out = tmp_path / "text.safetensors"
    assert (
        main(["encode", "text", "--weights", str(run), "--texts", str(texts), "--out", str(out)])
        == 0
    )
    index = Index(out)
    assert index.ids == ["1", "2"] and index.metadata["kind"] == "text"
    encoder = Encoder.from_pretrained(run, device="cpu")
    want = encoder.encode_paragraphs(
        [["a red circle moves up", "a blue square grows"], ["a green triangle shrinks"]]
    )
    assert torch.equal(index.features(), want)
    capsys.readouterr()
    query = ["search", "--index", str(out), "--query", "a green triangle shrinks", "-k", "2"]
    assert main(query) == 2  # a paragraph index: search finds videos, so it says so
    err = capsys.readouterr().err
    assert "holds paragraph features" in err and "--text-to-text" in err
    assert main([*query, "--text-to-text"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "query: a green triangle shrinks" and lines[2].split()[::2] == ["1", "2"]


def test_search_eval_names_its_option_and_format(runs, tmp_path, capsys):
    _, run = runs["pretrain"]
    texts = tmp_path / "p.txt"
    texts.write_text("a red circle moves up\n")
    out = tmp_path / "text.safetensors"
    main(["encode", "text", "--weights", str(run), "--texts", str(texts), "--out", str(out)])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"clip": "x", "words": "y"}\n')
    from lfvila.retrieval.collection import read_texts

    with pytest.raises(ValueError, match=r"bad.jsonl:1: expected \{id or clip_id, text\} JSON"):
        read_texts(bad, "--eval")
    with pytest.raises(FileNotFoundError, match="--eval: "):
        read_texts(tmp_path / "nope.jsonl", "--eval")
    from lfvila.cli import build_parser

    help_text = build_parser()._subparsers._group_actions[0].choices["search"].format_help()
    assert "{clip_id or id, text}" in help_text
    # --eval measures video retrieval: a paragraph index is refused, whatever the flags
    assert main(["search", "--index", str(out), "--eval", str(bad), "--text-to-text"]) == 2
    assert "holds paragraph features" in capsys.readouterr().err


def test_split_sentences():
    assert split_sentences("A red circle moves up. A blue one grows!\nthen 3.5 s; end") == [
        "A red circle moves up", "A blue one grows", "then 3.5 s", "end",
    ]  # fmt: skip
    with pytest.raises(ValueError):
        split_sentences(" . ")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["search", "--index", "nope.safetensors", "--query", "x"], "--index: nope.safetensors"),
        (["encode", "videos", "--weights", "nope", "--videos", ".", "--out", "o"], "--weights"),
        (["encode", "videos", "--weights", ".", "--videos", "nope/", "--out", "o"], "--videos"),
    ],
)
def test_cli_errors_name_the_argument(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
