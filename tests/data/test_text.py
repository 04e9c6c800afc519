"""Text (SPEC §6.4, §8.4, §9): WordPiece equal to transformers' BertTokenizer on the same vocab,
the shortest-adjacent-pair merge, padding, MLM masking statistics, QA text layouts."""

from __future__ import annotations

import pytest
import torch

from lfvila.data.text import (
    Tokenizer,
    default_vocab_path,
    encode_sentences,
    how2qa_paragraphs,
    mask_tokens,
    merge_sentences,
    merge_timed,
    violin_paragraph,
)

SENTENCES = [
    "A red circle moves to the left.",
    "Héllo, WORLD!! It's 3:45pm -- naïve café; 'quotes' & <tags> (brackets)",
    "unbelievably-long hyphenated-words and e-mail@example.com 12,345.67",
    "中文字符 mixed with English and emoji 🙂 and tabs\tand\nnewlines",
    "   leading and trailing spaces   ",
    "",
]


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer()


def test_default_vocab_is_bert_uncased(tokenizer):
    assert default_vocab_path().name == "vocab.txt"
    assert tokenizer.vocab_size == 30522
    assert (tokenizer.pad_id, tokenizer.unk_id, tokenizer.cls_id, tokenizer.sep_id) == (
        0,
        100,
        101,
        102,
    )
    assert tokenizer.mask_id == 103


def test_matches_transformers_bert_tokenizer(tokenizer):
    """transformers 5's BertTokenizer (Rust tokenizers, like ours) and BertTokenizerLegacy (the
    pure-Python tokenizer the original used through transformers 4): both give our ids."""
    from transformers import BertTokenizer
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    path = str(default_vocab_path())
    references = [BertTokenizer(vocab=path), BertTokenizerLegacy(vocab_file=path)]
    for reference in references:
        assert len(reference) == 30522  # the vocabulary really loaded
        for text in SENTENCES:
            assert tokenizer.encode(text) == reference.encode(text, add_special_tokens=False), (
                type(reference).__name__,
                text,
            )


def test_missing_vocab_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt: vocabulary file not found"):
        Tokenizer(tmp_path / "nope.txt")


def test_merge_shortest_adjacent_pair():
    # pair lengths 3, 3, 5: the first shortest pair (a, bb) is joined
    assert merge_sentences(["a", "bb", "c", "dddd"], 3) == ["a bb", "c", "dddd"]
    # then (a bb, c) = 5 ties with (c, dddd) = 5: the first wins
    assert merge_sentences(["a", "bb", "c", "dddd"], 2) == ["a bb c", "dddd"]
    assert merge_sentences(["xxxx", "yy", "z"], 1) == ["xxxx yy z"]
    assert merge_sentences(["one", "two"], 4) == ["one", "two"]  # fewer: unchanged
    merged = merge_timed(
        [
            {"text": "long subtitle", "start": 0, "end": 2},
            {"text": "b", "start": 2, "end": 3},
            {"text": "c", "start": 3.5, "end": 5},
        ],
        2,
    )
    assert merged == [
        {"text": "long subtitle", "start": 0, "end": 2},
        {"text": "b c", "start": 2, "end": 5},
    ]


def test_encode_pads_truncates_and_merges(tokenizer):
    enc = encode_sentences(tokenizer, ["a red circle", "x " * 20, "b", "c", "d"], 4, 8)
    assert enc.ids.shape == enc.mask.shape == (4, 8)
    first = [101, *tokenizer.encode("a red circle"), 102]
    assert enc.ids[0, : len(first)].tolist() == first and enc.ids[0, len(first) :].eq(0).all()
    assert enc.mask[0].tolist() == [1] * len(first) + [0] * (8 - len(first))
    assert enc.ids[1].tolist() == [101, *tokenizer.encode("x")[:1] * 6, 102]  # truncated
    assert enc.ids[2].tolist()[:4] == [101, *tokenizer.encode("b c"), 102]  # merged (b, c)
    short = encode_sentences(tokenizer, ["only one"], 3, 6)
    assert short.mask[1:].eq(0).all() and short.ids[1:].eq(0).all()  # absent sentences
    with pytest.raises(ValueError, match="5 sentences > max_sentences 4"):
        encode_sentences(tokenizer, ["a", "b", "c", "d", "e"], 4, 8, merge=False)


def test_mlm_masking_statistics(tokenizer):
    """15% of the real tokens are chosen; 80% of those -> [MASK], 10% random, 10% kept;
    [CLS], [SEP] and padding are never chosen."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (400, 50), generator=g)
    ids[:, 0], ids[:, 40], ids[:, 41:] = 101, 102, 0
    mask = (ids != 0).long()
    masked, labels = mask_tokens(ids, mask, tokenizer, 0.15, torch.Generator().manual_seed(1))
    chosen = labels != -100
    real = mask.bool() & (ids != 101) & (ids != 102)
    assert not (chosen & ~real).any()
    assert labels[chosen].equal(ids[chosen]) and masked[~chosen].equal(ids[~chosen])
    n = int(chosen.sum())
    assert abs(n / int(real.sum()) - 0.15) < 0.01  # 15600 real tokens: 4.5 sigma margin
    to_mask = (masked == tokenizer.mask_id) & chosen
    kept = (masked == ids) & chosen
    assert abs(int(to_mask.sum()) / n - 0.8) < 0.03
    # a random replacement can draw the same token (1 in 30522): "kept" is 10% + that
    assert abs(int(kept.sum()) / n - 0.1) < 0.025
    assert abs((n - int(to_mask.sum()) - int(kept.sum())) / n - 0.1) < 0.025


def test_qa_layouts():
    subs = [{"text": f"s{i}", "start": i, "end": i + 1} for i in range(8)]
    paragraphs = how2qa_paragraphs("why?", ["a0", "a1", "a2", "a3"], subs, max_subtitles=6)
    assert len(paragraphs) == 4
    assert paragraphs[2][:2] == ["why?", "a2"] and len(paragraphs[2]) == 8
    assert paragraphs[0][2:] == ["s0 s1", "s2 s3", "s4", "s5", "s6", "s7"]
    assert violin_paragraph("he leaves.", subs[:2], 4) == ["he leaves.", "s0", "s1"]
    assert violin_paragraph("he leaves.", subs, 4) == [
        "he leaves.",
        "s0 s1",
        "s2 s3",
        "s4 s5",
        "s6 s7",
    ]
