"""`lfvila encode videos|text` and `lfvila search`: the command-line side of
`lfvila.retrieval` (its `encoder`, `collection`, `index` and `search` modules; see their
docstrings for the formats)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .common import prepare_triton_for_cpu


def _check_weights(args) -> None:
    if not Path(args.weights).exists():
        raise FileNotFoundError(f"--weights: {args.weights} not found")


def _encoder(args):
    from ..retrieval.encoder import Encoder

    prepare_triton_for_cpu()
    _check_weights(args)
    kwargs = {"batch_size": args.batch_size, "progress": None if args.progress else False}
    if getattr(args, "workers", None) is not None:
        kwargs["workers"] = args.workers
    return Encoder.from_pretrained(args.weights, device=args.device, **kwargs)


def _encode_videos(args) -> int:
    from ..retrieval.collection import encode_collection, list_videos

    _check_weights(args)
    items = list_videos(args.videos, args.video_root)
    encoder = _encoder(args)
    # one line per unreadable video, with its id, printed here: the encoder's own warning (for
    # library users) would name each a second time, without the id
    quiet = logging.getLogger("lfvila.retrieval.encoder")
    level, quiet.level = quiet.level, logging.ERROR
    try:
        result = encode_collection(encoder, items, args.out, args.chunk_size)
    finally:
        quiet.setLevel(level)
    for f in result["failed"]:
        print(f"skipped {f['id']}: {f['path']}: {f['reason']}", file=sys.stderr)
    n = len(items) - len(result["failed"])
    print(
        f"wrote {result['out']}: {n} videos x {encoder.dim} ({result['encoded']} encoded now, "
        f"{result['reused']} reused), {len(result['failed'])} skipped"
    )
    return 0


def _encode_text(args) -> int:
    from ..retrieval.collection import encode_text_file

    encoder = _encoder(args)
    result = encode_text_file(encoder, args.texts, args.out)
    print(f"wrote {result['out']}: {result['encoded']} paragraphs x {encoder.dim}")
    return 0


def _search(args) -> int:
    from ..retrieval.index import Index

    index = Index(args.index)
    if args.weights is None:
        args.weights = index.metadata.get("weights") or None
        if args.weights is None:
            raise ValueError(f"{args.index}: records no weights; pass --weights")
    if index.kind == "text" and not (args.text_to_text and not args.eval):
        raise ValueError(
            f"{args.index} holds paragraph features (`lfvila encode text`), not videos: search "
            "finds videos in an index of `lfvila encode videos`"
            + ("" if args.eval else "; pass --text-to-text to rank its paragraphs instead")
        )
    encoder = _encoder(args)
    model = index.metadata.get("model")
    if model and encoder.fingerprint != model:
        print(
            f"lfvila search: warning: {args.weights} is not the model that encoded {args.index}",
            file=sys.stderr,
        )
    if args.eval:
        return _search_eval(args, index, encoder)
    from ..retrieval.encoder import split_sentences
    from ..retrieval.search import search

    paragraphs = [split_sentences(q) for q in args.query]
    queries = encoder.encode_paragraphs(paragraphs)
    scores, rows = search(index, queries, args.k, args.chunk_rows, args.backend)
    results = [
        {
            "query": text,
            "results": [
                {"rank": r + 1, "id": index.id(int(row)), "score": round(float(s), 6)}
                for r, (s, row) in enumerate(zip(scores[q], rows[q]))
            ],
        }
        for q, text in enumerate(args.query)
    ]
    if args.json:
        print(json.dumps(results if len(results) > 1 else results[0], indent=1))
        return 0
    for item in results:
        print(f"query: {item['query']}")
        print(f"{'rank':>5} {'score':>8}  id")
        for hit in item["results"]:
            print(f"{hit['rank']:>5} {hit['score']:8.4f}  {hit['id']}")
    return 0


def _search_eval(args, index, encoder) -> int:
    from ..retrieval.collection import read_texts
    from ..retrieval.search import annotated_rows, evaluate_index

    records = read_texts(args.eval, "--eval")
    present, missing = annotated_rows(index, records)
    if missing:
        print(
            f"lfvila search: warning: {missing} of {len(records)} paragraphs of {args.eval} have "
            f"no video in {args.index} (left out)",
            file=sys.stderr,
        )
    if not present:
        raise ValueError(f"--eval {args.eval}: none of its videos is in {args.index}")
    text = encoder.encode_paragraphs([t for _, t in present])
    metrics = evaluate_index(index, text, [row for row, _ in present], args.chunk_rows)
    metrics["missing"] = float(missing)
    if args.json:
        print(json.dumps(metrics, indent=1))
        return 0
    n, c = int(metrics["items"]), int(metrics["candidates"])
    print(f"paragraph-to-video retrieval: {n} paragraphs of {args.eval} against {c} videos")
    for prefix, label in (("t2v_", "text -> video"), ("v2t_", "video -> text")):
        if f"{prefix}R@1" in metrics:
            keys = ("R@1", "R@5", "R@10", "R@50", "MdR", "MnR")
            print(f"{label}: " + "  ".join(f"{k} {metrics[prefix + k]:.2f}" for k in keys))
    return 0


def _common(p) -> None:
    p.add_argument(
        "--weights",
        required=True,
        help="run directory (model.safetensors + config.yaml; a fine-tuning run's best model "
        "is DIR/best) or a model.safetensors with its config.yaml beside it",
    )
    p.add_argument("--out", required=True, help="index file to write (.safetensors)")
    p.add_argument("--batch-size", type=int, default=None, help="default: eval.batch_size")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--progress", action="store_true", help="progress bar (default: on a TTY)")


def add_parsers(sub) -> None:
    """`encode` (with `videos` and `text`) and `search` on the top-level subparsers."""
    p = sub.add_parser("encode", help="encode videos or paragraphs into a feature index")
    enc = p.add_subparsers(dest="what", required=True)

    q = enc.add_parser("videos", help="video files -> an index (resumable, bad videos skipped)")
    _common(q)
    q.add_argument(
        "--videos",
        required=True,
        help="a folder (every video under it; id = relative path without extension), a .txt "
        "list (path or id<TAB>path per line) or retrieval annotations .jsonl (id = clip_id)",
    )
    q.add_argument("--video-root", help="where a .jsonl's clip_ids live (default: its folder)")
    q.add_argument(
        "--chunk-size", type=int, default=1024, help="videos per committed chunk (default 1024)"
    )
    q.add_argument(
        "--workers", type=int, default=None, help="PyAV processes (default: data.workers)"
    )
    q.set_defaults(func=_encode_videos)

    q = enc.add_parser("text", help="paragraphs -> an index")
    _common(q)
    q.add_argument(
        "--texts",
        required=True,
        help=".jsonl of {id or clip_id, text} (text: a string or a list of sentences) or a .txt "
        "file, one "
        "paragraph a line (sentences end at . ! ? ;), id = line number",
    )
    q.set_defaults(func=_encode_text)

    p = sub.add_parser("search", help="search an index with paragraphs, or evaluate it")
    p.add_argument("--index", required=True, help="index file written by `lfvila encode`")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--query",
        action="append",
        help="a paragraph (sentences end at . ! ? ; or a new line); repeat for more queries",
    )
    what.add_argument(
        "--eval",
        help="retrieval annotations .jsonl ({clip_id or id, text}): the index's R@K, MdR, MnR",
    )
    p.add_argument("-k", type=int, default=10, help="results per query (default 10)")
    p.add_argument(
        "--text-to-text", action="store_true",
        help="allow an index of paragraphs (`lfvila encode text`): rank them against the query",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--weights", help="the model for the queries (default: the index's)")
    p.add_argument(
        "--chunk-rows", type=int, default=65536, help="index rows scored at once (default 65536)"
    )
    p.add_argument("--backend", default="auto", choices=("auto", "torch", "faiss"))
    p.add_argument("--batch-size", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--progress", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=_search)
