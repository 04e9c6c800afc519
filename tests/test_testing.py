"""The assert helpers fail on planted errors (and pass on honest results)."""

from __future__ import annotations

import math

import pytest
import torch

from lfvila.kernels.testing import (
    GRADIENT,
    assert_close_verbose,
    assert_error_ratio,
    assert_grads_error_ratio,
    error_check,
    guarded,
    no_tf32,
    window_attention_inputs,
)


def _three(seed=0):
    truth = torch.randn(64, 32, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    pt = truth.float().half().double()  # a low-precision result
    return truth, pt


def test_error_ratio_passes_an_honest_result():
    truth, pt = _three()
    assert_error_ratio(truth.float().double(), truth, pt)


def test_error_ratio_fails_on_a_planted_error():
    truth, pt = _three()
    out = truth.clone()
    out[3, 5] += 0.05
    with pytest.raises(AssertionError, match=r"ratio out/pt = .*worst at \(3, 5\)") as info:
        assert_error_ratio(out, truth, pt, "planted")
    assert "planted" in str(info.value) and "of elements over the bound" in str(info.value)


def test_error_ratio_fails_on_nan_and_shape():
    truth, pt = _three()
    out = truth.clone()
    out[0, 0] = math.nan
    with pytest.raises(AssertionError, match="NaN 1"):
        assert_error_ratio(out, truth, pt)
    with pytest.raises(AssertionError, match="shapes differ"):
        assert_error_ratio(truth[:2], truth, pt)


def test_error_check_margin_is_the_error_over_the_bound():
    truth, pt = _three()
    bound = 2.0 * (pt - truth).abs().max().item() + 1e-5 * truth.abs().max().item()
    out = truth.clone()
    out[1, 2] += 0.5 * bound
    ok, msg, margin = error_check(out, truth, pt, ratio=2.0, floor=1e-5)
    assert ok and msg == "" and margin == pytest.approx(0.5, rel=1e-6)
    out[1, 2] = truth[1, 2] + 3 * bound
    ok, msg, margin = error_check(out, truth, pt, ratio=2.0, floor=1e-5)
    assert not ok and "over the bound" in msg and margin == pytest.approx(3.0, rel=1e-6)
    out[0, 0] = math.nan
    assert error_check(out, truth, pt, ratio=2.0, floor=1e-5)[2] == math.inf


def test_grads_error_ratio_reports_each_failing_gradient():
    truth, pt = _three()
    bad = truth + 0.1
    with pytest.raises(AssertionError, match=r"(?s)dk:.*dv:"):
        assert_grads_error_ratio([truth, bad, bad], [truth] * 3, [pt] * 3, ["dq", "dk", "dv"])
    assert GRADIENT["ratio"] == 3.0


def test_assert_close_verbose_fails_on_a_planted_error():
    a = torch.zeros(10)
    b = a.clone()
    b[7] = 1.0
    with pytest.raises(AssertionError, match="worst \\|diff\\| 1.000e\\+00 at flat index 7"):
        assert_close_verbose(a, b, atol=1e-3, rtol=0)


def test_guarded_exposes_over_reads():
    x = torch.arange(12.0).view(3, 4)
    g = guarded(x)
    assert torch.equal(g, x) and g.stride(-1) == 1 and not g.is_contiguous()
    flat = torch.as_strided(g, (g.shape[0], g.shape[1] + 1), g.stride())  # one element too far
    assert torch.isnan(flat[:, -1]).all()


def test_no_tf32_restores_settings():
    before = torch.backends.cuda.matmul.allow_tf32
    with no_tf32():
        assert torch.backends.cuda.matmul.allow_tf32 is False
    assert torch.backends.cuda.matmul.allow_tf32 == before


def test_input_builder_is_seeded_per_case():
    a = window_attention_inputs((1, 2, 3, 5, 2, 16), (2, 3, 5), seed=1)
    b = window_attention_inputs((1, 2, 3, 5, 2, 16), (2, 3, 5), seed=1)
    c = window_attention_inputs((1, 2, 3, 5, 2, 16), (2, 3, 5), seed=2)
    assert torch.equal(a["q"], b["q"]) and not torch.equal(a["q"], c["q"])
    assert a["rel_pos_bias"].shape == (135, 2) and a["pad_kv"][0].shape == (2, 16)
