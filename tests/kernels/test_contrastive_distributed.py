"""Two processes on gloo: the gathered losses and each rank's input gradients equal the
single-process loss and gradients on the concatenated batch."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from lfvila.kernels import contrastive_loss, gather_batch, mtc_loss, sample_mtc_indices

WORLD = 2
N_LOCAL, DIM = 37, 24  # the global batch (74) is no multiple of any tile
B_LOCAL, M = 5, 4


def _global_inputs():
    gen = torch.Generator().manual_seed(0)
    a = F.normalize(torch.randn(WORLD * N_LOCAL, DIM, generator=gen), dim=-1)
    b = F.normalize(a + 0.5 * torch.randn(WORLD * N_LOCAL, DIM, generator=gen), dim=-1)
    clip = F.normalize(torch.randn(WORLD * B_LOCAL, M, DIM, generator=gen), dim=-1)
    sent = F.normalize(clip + 0.5 * torch.randn(WORLD * B_LOCAL, M, DIM, generator=gen), dim=-1)
    idx = sample_mtc_indices(WORLD * B_LOCAL, M, generator=torch.Generator().manual_seed(1))
    return a, b, clip, sent, idx


def _losses(a, b, clip, sent, idx, log_scale, backend, group):
    """Both losses and their gradients w.r.t. this process's rows and the logit scale."""
    a, b, clip, sent = (x.clone().requires_grad_() for x in (a, b, clip, sent))
    log_scale = log_scale.clone().requires_grad_()
    vpc = contrastive_loss(a, b, logit_scale=log_scale, process_group=group, backend=backend)
    if group is not None:
        clip_all, sent_all = gather_batch(clip, group), gather_batch(sent, group)
    else:
        clip_all, sent_all = clip, sent
    mtc = mtc_loss(clip_all, sent_all, indices=idx, backend=backend)
    total = vpc + 0.25 * mtc
    grads = torch.autograd.grad(total, [a, b, log_scale, clip, sent])
    return vpc.detach(), mtc.detach(), [g.detach() for g in grads]


def _worker(rank, port, backend, out_dir):
    os.environ.setdefault("TRITON_INTERPRET", "1")
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        a, b, clip, sent, idx = _global_inputs()
        rows, samples = (
            slice(rank * N_LOCAL, (rank + 1) * N_LOCAL),
            slice(rank * B_LOCAL, (rank + 1) * B_LOCAL),
        )
        log_scale = torch.tensor(math.log(20.0))
        result = _losses(
            a[rows],
            b[rows],
            clip[samples],
            sent[samples],
            idx,
            log_scale,
            backend,
            dist.group.WORLD,
        )
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.barrier()
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.dist
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_gathered_losses_equal_single_process(backend, tmp_path):
    mp.spawn(_worker, args=(_free_port(), backend, str(tmp_path)), nprocs=WORLD, join=True)
    a, b, clip, sent, idx = _global_inputs()
    vpc, mtc, grads = _losses(a, b, clip, sent, idx, torch.tensor(math.log(20.0)), backend, None)
    for rank in range(WORLD):
        r_vpc, r_mtc, r_grads = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(r_vpc, vpc, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(r_mtc, mtc, rtol=1e-6, atol=1e-6)
        rows = slice(rank * N_LOCAL, (rank + 1) * N_LOCAL)
        samples = slice(rank * B_LOCAL, (rank + 1) * B_LOCAL)
        expected = [grads[0][rows], grads[1][rows], grads[2], grads[3][samples], grads[4][samples]]
        for name, got, want in zip(
            ("da", "db", "dlogit_scale", "dclip", "dsent"), r_grads, expected
        ):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=f"rank {rank} {name}")
