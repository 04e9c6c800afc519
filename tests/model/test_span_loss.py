"""How2QA's temporal span loss against a frame-by-frame computation (SPEC §9.2)."""

from __future__ import annotations

import math

import torch

from lfvila.model.tasks import span_loss


def _loop_span_loss(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Per frame: w·(logsumexp(l) - l[y]), w = T·0.5/N_pos or T·0.5/max(1, N_neg) of its
    sample; the mean over all B·T frames."""
    b, t = labels.shape
    total = 0.0
    for i in range(b):
        n_pos = sum(int(y) for y in labels[i].tolist())
        w_pos, w_neg = t * 0.5 / max(1, n_pos), t * 0.5 / max(1, t - n_pos)
        for j in range(t):
            l0, l1 = (float(v) for v in logits[i, j].tolist())
            y = int(labels[i, j])
            ce = math.log(math.exp(l0) + math.exp(l1)) - (l1 if y else l0)
            total += (w_pos if y else w_neg) * ce
    return total / (b * t)


def test_span_loss_is_the_mean_over_frames():
    gen = torch.Generator().manual_seed(0)
    b, t = 4, 8
    logits = torch.randn(b, t, 2, generator=gen) * 2
    labels = torch.zeros(b, t, dtype=torch.long)
    labels[0, 2:5] = 1
    labels[1, 7] = 1
    labels[2] = 1  # a whole-video span (NaN): its weights sum to T/2, not T
    labels[3, :6] = 1
    loss = span_loss(logits, labels)
    assert loss.dtype == torch.float32 and loss.shape == ()
    expected = _loop_span_loss(logits.double(), labels)
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=torch.float32))
    # the sample with no negative frame is why the reduction matters: Σw = 3.5·T here, not B·T
    weighted_average = expected * b * t / (3.5 * t)
    assert abs(loss.item() - weighted_average) > 0.01 * abs(weighted_average)


def test_span_loss_half_precision_logits_and_gradient():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 32, 2, generator=gen)
    labels = (torch.rand(2, 32, generator=gen) < 0.3).long()
    labels[:, 0] = 1
    half = logits.half().requires_grad_()
    loss = span_loss(half, labels)
    expected = _loop_span_loss(half.detach().double(), labels)
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=torch.float32))
    loss.backward()
    assert half.grad is not None and half.grad.dtype == torch.float16
