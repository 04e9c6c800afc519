"""MTC loss: labels and the loss on hand-built indices, sampling, valid masks, the Triton kernels
(interpreter on CPU) against the reference, and bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lfvila.kernels import mtc_labels, mtc_loss, mtc_loss_ref, sample_mtc_indices
from lfvila.kernels.contrastive import triton_impl
from lfvila.kernels.testing import GRADIENT, error_report, no_tf32

from ..helpers import grads, leaves
from .test_contrastive import no_host_reads

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# B = 3, M = 4. Sample 1's first key (1) is equidistant from its values (0, 2): a tie.
HAND = dict(
    keys=torch.tensor([[0, 1], [1, 2], [3, 0]]),
    values=torch.tensor([[2, 3], [0, 2], [1, 2]]),
    other=torch.tensor([1, 3, 0]),
)
HAND_LABELS = [[0, 0], [-100, 1], [1, 0]]


def feats(b=3, m=4, d=5, dtype=torch.float64, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    clip = F.normalize(torch.randn(b, m, d, generator=gen, dtype=torch.float64), dim=-1)
    sent = F.normalize(
        clip + 0.8 * torch.randn(b, m, d, generator=gen, dtype=torch.float64), dim=-1
    )
    return clip.to(device, dtype), sent.to(device, dtype)


def hand_loss(clip, sent, idx, tau, num_other_neg=3):
    """SPEC §7.4 written as loops: the candidates of query (b, k) are the values of b, then the
    'other' item of samples b, b-1, ..., b-(num_other_neg-1) mod B."""
    batch = clip.shape[0]
    keys, values, other = (idx[k].tolist() for k in ("keys", "values", "other"))
    total = 0.0
    for queries, pool in ((clip, sent), (sent, clip)):
        terms = []
        for b in range(batch):
            for k in keys[b]:
                dist = [abs(u - k) for u in values[b]]
                if dist.count(min(dist)) > 1:
                    continue  # tie: ignored
                label = dist.index(min(dist))
                cands = [pool[b, u] for u in values[b]]
                cands += [
                    pool[(b - x) % batch, other[(b - x) % batch]] for x in range(num_other_neg)
                ]
                logits = torch.stack([queries[b, k] @ c for c in cands]) / tau
                terms.append(torch.logsumexp(logits, 0) - logits[label])
        total = total + (torch.stack(terms).mean() if terms else 0.0)
    return total


def test_mtc_labels_on_hand_built_indices():
    assert mtc_labels(HAND["keys"], HAND["values"]).tolist() == HAND_LABELS
    # LF-VILA's example: key 0, values {2, 3} -> the nearer sentence 2 (candidate 0)
    assert mtc_labels(torch.tensor([[0, 1]]), torch.tensor([[2, 3]])).tolist() == [[0, 0]]
    # absent (-1) keys or values give ignored rows
    assert mtc_labels(torch.tensor([[0, -1]]), torch.tensor([[1, 2]])).tolist() == [[0, -100]]


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_mtc_loss_on_hand_built_indices(backend):
    clip, sent = feats()
    dtype = torch.float64 if backend == "reference" else torch.float32
    loss = mtc_loss(clip.to(dtype), sent.to(dtype), 0.05, indices=HAND, backend=backend)
    expected = hand_loss(clip, sent, HAND, 0.05)
    tol = 1e-12 if backend == "reference" else 1e-4
    torch.testing.assert_close(loss.double(), expected, rtol=tol, atol=tol)


def test_mtc_all_rows_ignored_gives_zero_not_nan():
    """Every key tied (k = 1, values {0, 2}): PyTorch's mean over zero rows would be NaN; the loss
    is 0 with zero gradients (a deliberate, tested choice)."""
    idx = dict(
        keys=torch.tensor([[1], [1]]),
        values=torch.tensor([[0, 2], [2, 0]]),
        other=torch.tensor([3, 3]),
    )
    clip, sent = leaves(*feats(b=2))
    for backend in ("reference", "triton"):
        c, s = leaves(clip, sent, dtype=torch.float32)
        loss = mtc_loss(c, s, indices=idx, num_key=1, backend=backend)
        assert loss.item() == 0.0
        assert all(torch.count_nonzero(g) == 0 for g in grads(loss, [c, s], torch.tensor(1.0)))


def test_mtc_sampling_is_reproducible_and_respects_valid():
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    a, b = sample_mtc_indices(64, 4, generator=g1), sample_mtc_indices(64, 4, generator=g2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    for name in ("keys", "values"):
        assert (a[name].sort(1).values.diff(dim=1) > 0).all()  # distinct positions per sample
    assert a["keys"].min() >= 0 and a["keys"].max() < 4
    valid = torch.ones(64, 4, dtype=torch.bool)
    valid[:, 3] = False
    valid[5] = torch.tensor([True, False, False, False])  # too few positions for 2 keys
    idx = sample_mtc_indices(64, 4, valid=valid, generator=g1)
    for name in ("keys", "values", "other"):
        present = idx[name][idx[name] >= 0]
        assert (present != 3).all()
    assert idx["keys"][5].tolist() == [0, -1] and idx["other"][5].item() == 0
    labels = mtc_labels(idx["keys"], idx["values"])
    assert (labels[5] == -100).all()  # a sample with too few valid positions has no rows


def _check(clip, sent, kwargs):
    dtype = clip.dtype
    truth_dtype = torch.float64 if dtype == torch.float32 else torch.float32
    g = torch.tensor(1.7)

    def run(backend, dt):
        c, s = leaves(clip, sent, dtype=dt)
        with no_tf32():
            loss = mtc_loss(c, s, backend=backend, **kwargs)
        return loss, grads(loss, [c, s], g.to(device=loss.device, dtype=loss.dtype))

    truth, truth_grads = run("reference", truth_dtype)
    pt, pt_grads = run("reference", dtype)
    out, out_grads = run("triton", dtype)
    ok, msg = error_report(out.reshape(1), truth.reshape(1), pt.reshape(1), 2.0, 1e-5)
    assert ok, f"loss: {msg}"
    for name, o, t, p in zip(("d clip", "d sent"), out_grads, truth_grads, pt_grads):
        ok, msg = error_report(o, t, p, **GRADIENT)
        assert ok, f"{name}: {msg}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_mtc_triton_matches_reference_with_ignored_rows(dtype):
    clip, sent = feats(b=24, m=4, d=160, dtype=dtype, seed=1, device=DEVICE)
    idx = sample_mtc_indices(24, 4, generator=torch.Generator().manual_seed(3), device=DEVICE)
    assert (mtc_labels(idx["keys"], idx["values"]) == -100).any()  # some tied rows
    _check(clip, sent, dict(indices=idx))


def test_mtc_triton_matches_reference_with_valid_mask():
    clip, sent = feats(b=10, m=6, d=48, dtype=torch.float32, seed=2, device=DEVICE)
    valid = torch.ones(10, 6, dtype=torch.bool)
    valid[0, 3:] = False
    valid[4, 1:] = False  # one valid clip: no rows, and its 'other' is still a negative
    valid[7] = False  # no valid clip: no rows and no negative
    idx = sample_mtc_indices(
        10,
        6,
        num_key=3,
        num_value=3,
        valid=valid,
        generator=torch.Generator().manual_seed(5),
        device=DEVICE,
    )
    assert idx["other"][7].item() == -1
    _check(clip, sent, dict(indices=idx, num_key=3, num_value=3, num_other_neg=4, temperature=0.07))


BAD = {
    "shape": (
        dict(sent_feats=torch.zeros(3, 4, 4)),
        r"sent_feats must have clip_feats' shape \(3, 4, 5\)",
    ),
    "rank": (dict(clip_feats=torch.zeros(3, 5)), r"clip_feats must have shape \(B, M, d\)"),
    "temperature": (dict(temperature=float("nan")), r"temperature must be a finite number > 0"),
    "num-key": (dict(num_key=5), r"num_key 5 and num_value 2 must be <= M = 4"),
    "index-range": (
        dict(indices=dict(HAND, values=torch.tensor([[2, 4], [0, 2], [1, 2]]))),
        r"indices\['values'\] holds 0..4, outside \[0, 4\)",
    ),
    "index-repeat": (
        dict(indices=dict(HAND, keys=torch.tensor([[0, 0], [1, 2], [3, 0]]))),
        r"indices\['keys'\] repeats a position",
    ),
    "index-shape": (
        dict(indices=dict(HAND, other=torch.tensor([1, 3]))),
        r"indices\['other'\] must be int64 of shape \(3,\)",
    ),
    "valid": (
        dict(valid=torch.ones(3, 3, dtype=torch.bool)),
        r"valid must be a \(B, M\) = \(3, 4\) bool tensor",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_mtc_bad_input_raises(case):
    clip, sent = feats(dtype=torch.float32)
    change, message = BAD[case]
    kwargs = dict(clip_feats=clip, sent_feats=sent)
    kwargs.update(change)
    with pytest.raises(ValueError, match=message):
        mtc_loss(**kwargs)


def test_mtc_paths_read_no_value_on_the_host():
    """The launchers and the reference (its row count stays a tensor) never read a device value
    on the host, so the loss can be captured in a CUDA graph; the all-ignored case included."""
    clip, sent = feats(b=6, m=4, d=16, dtype=torch.float32, device=DEVICE)
    idx = sample_mtc_indices(6, 4, generator=torch.Generator().manual_seed(4), device=DEVICE)
    tied = dict(keys=idx["keys"][:, :1].clone().fill_(1), values=idx["values"].clone(),
                other=idx["other"])  # fmt: skip
    tied["values"][:, 0], tied["values"][:, 1] = 0, 2  # every key equidistant: all ignored
    stacked = torch.stack([clip, sent])
    for ind in (idx, tied):
        c, s = leaves(clip, sent)
        with no_host_reads():
            loss, lse = triton_impl.mtc_fwd(
                stacked, ind["keys"], ind["values"], ind["other"], 0.05, 3
            )
            triton_impl.mtc_bwd(
                torch.tensor(1.0, device=DEVICE), stacked, ind["keys"], ind["values"],
                ind["other"], lse, 0.05, 3,
            )  # fmt: skip
            ref = mtc_loss_ref(c, s, 0.05, ind)
            grads(ref, [c, s], torch.tensor(1.0, device=DEVICE))
    assert ref.item() == 0.0  # the last one: every row ignored


def test_mtc_reference_matches_loop_on_random_indices():
    clip, sent = feats(b=7, m=5, d=6, seed=9)
    idx = sample_mtc_indices(
        7, 5, num_key=3, num_value=3, generator=torch.Generator().manual_seed(1)
    )
    loss = mtc_loss_ref(clip, sent, 0.1, idx, num_other_neg=2)
    torch.testing.assert_close(
        loss, hand_loss(clip, sent, idx, 0.1, num_other_neg=2), rtol=1e-12, atol=1e-12
    )
    assert math.isfinite(loss.item())


def test_mtc_custom_ops_and_module():
    from lfvila.kernels import MTCLoss

    clip, sent = feats(b=4, m=4, d=16, dtype=torch.float32, device=DEVICE)
    idx = sample_mtc_indices(4, 4, generator=torch.Generator().manual_seed(2), device=DEVICE)
    stacked = torch.stack([clip, sent])
    args = (stacked, idx["keys"], idx["values"], idx["other"], 0.05, 3)
    torch.library.opcheck(
        torch.ops.lfvila.mtc_fwd.default, args, test_utils=("test_schema", "test_faketensor")
    )
    _, lse = torch.ops.lfvila.mtc_fwd(*args)
    bwd = (
        torch.tensor(1.0, device=DEVICE),
        stacked,
        idx["keys"],
        idx["values"],
        idx["other"],
        lse,
        0.05,
        3,
    )
    torch.library.opcheck(
        torch.ops.lfvila.mtc_bwd.default, bwd, test_utils=("test_schema", "test_faketensor")
    )
    module = MTCLoss(backend="reference")
    torch.testing.assert_close(module(clip, sent, indices=idx), mtc_loss_ref(clip, sent, 0.05, idx))
