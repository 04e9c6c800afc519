"""Retrieval metrics on hand-built similarity matrices: ranks, ties, both directions."""

from __future__ import annotations

import math

import pytest
import torch

from lfvila.tasks.retrieval import retrieval_metrics


def test_perfect_and_reversed_rankings():
    n = 60
    perfect = retrieval_metrics(torch.eye(n))
    assert perfect["t2v_R@1"] == 100.0 and perfect["v2t_R@1"] == 100.0
    assert perfect["t2v_MdR"] == 1.0 and perfect["t2v_MnR"] == 1.0
    worst = retrieval_metrics(-torch.eye(n))  # every answer strictly below all n-1 others
    assert worst["t2v_R@1"] == 0.0 and worst["t2v_R@50"] == 0.0
    assert worst["t2v_MdR"] == n and worst["t2v_MnR"] == n


def test_known_ranks_and_directions_differ():
    # rows = paragraphs, columns = videos; answer on the diagonal
    sim = torch.tensor(
        [
            [0.9, 0.1, 0.2, 0.3],  # rank 1
            [0.8, 0.5, 0.1, 0.0],  # rank 2
            [0.7, 0.6, 0.4, 0.9],  # rank 4
            [0.1, 0.2, 0.3, 0.4],  # rank 1
        ]
    )
    m = retrieval_metrics(sim)
    assert m["t2v_R@1"] == 50.0 and m["t2v_R@5"] == 100.0
    assert m["t2v_MdR"] == 1.5 and m["t2v_MnR"] == 2.0  # ranks 1, 2, 4, 1
    # columns: video 0: 0.9 best (1); video 1: 0.6 > 0.5, 0.2 -> rank 2; video 2: 0.4 > 0.3,
    # 0.2, 0.1 -> 1; video 3: 0.9 > 0.4 -> rank 2
    assert m["v2t_R@1"] == 50.0 and m["v2t_MnR"] == 1.5 and m["v2t_MdR"] == 1.5


def test_ties_count_as_random_tie_breaking():
    n = 8
    flat = retrieval_metrics(torch.zeros(n, n))  # a collapsed model: chance, never 100%
    assert math.isclose(flat["t2v_R@1"], 100.0 / n)
    assert math.isclose(flat["t2v_R@5"], 100.0 * 5 / n)
    assert math.isclose(flat["t2v_MnR"], (n + 1) / 2)
    sim = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [2.0, 0.5, 0.5]])
    m = retrieval_metrics(sim)
    # row 0 tied with one other (R@1 half); row 1 first; row 2 one better, one tied: rank 2-3
    assert math.isclose(m["t2v_R@1"], 100.0 * (0.5 + 1 + 0) / 3)
    assert math.isclose(m["t2v_MnR"], (1.5 + 1 + 2.5) / 3)


def test_non_square_is_an_error():
    with pytest.raises(ValueError, match="square"):
        retrieval_metrics(torch.zeros(3, 4))
