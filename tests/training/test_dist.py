"""Distributed evaluation on two gloo processes: a dataset whose size divides neither the world
size nor world size x batch, ranks with unequal batch counts, every item counted exactly once
and in dataset order (SPEC Decision 4c)."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, Dataset

from lfvila.data.datasets import EpochSampler, ExactDistributedSampler, GlobalBatchSampler, Loader
from lfvila.training.dist import World
from lfvila.training.loop import EvalOutput, StepContext, evaluate

LENGTH, BATCH, WORLD = 7, 2, 2


class Items(Dataset):
    def __len__(self):
        return LENGTH

    def __getitem__(self, key):
        _, i = key
        return {"index": torch.tensor(i), "x": torch.tensor([float(i), 10.0 * i])}


class Doubling:
    name = "toy"

    def __init__(self, loader):
        self.loader = loader

    def step(self, model, batch, ctx):
        n = torch.tensor(float(len(batch["x"])))
        return EvalOutput(rows={"y": 2 * batch["x"]}, sums={"items": n})

    def metrics(self, rows, sums):
        return {"rows": rows["y"].tolist(), "items": sums["items"]}


class Bare:
    module = torch.nn.Identity()

    @staticmethod
    def prepare(batch):
        return batch

    @staticmethod
    def autocast():
        import contextlib

        return contextlib.nullcontext()


def _loader(rank, world):
    sampler = EpochSampler(ExactDistributedSampler(LENGTH, rank, world))
    batches = DataLoader(Items(), batch_size=BATCH, sampler=sampler)
    return Loader(batches, sampler, None, BATCH, LENGTH)


def _worker(rank, port, out):
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        world = World(rank, rank, WORLD)
        world._make_control_group()
        loader = _loader(rank, WORLD)
        batches = len(loader)
        results = evaluate(Bare, [Doubling(loader)], StepContext(world))
        with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
            json.dump({"batches": batches, **results["toy"]}, f)
    finally:
        dist.destroy_process_group()


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.dist
def test_distributed_evaluation_counts_every_item_once(tmp_path):
    mp.spawn(_worker, args=(_port(), str(tmp_path)), nprocs=WORLD, join=True)
    expected = [[2.0 * i, 20.0 * i] for i in range(LENGTH)]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    assert [r["batches"] for r in results] == [2, 2]  # 4 items vs 3 items: 2 batches each
    for r in results:
        assert r["rows"] == expected and r["items"] == LENGTH


def test_single_process_evaluation_and_missing_items_are_errors():
    world = World()
    results = evaluate(Bare, [Doubling(_loader(0, 1))], StepContext(world))
    assert results["toy"]["rows"] == [[2.0 * i, 20.0 * i] for i in range(LENGTH)]
    with pytest.raises(RuntimeError, match="missing \\[1, 3, 5\\]"):
        world.gather_rows(torch.zeros(4, 1), torch.tensor([0, 2, 4, 6]), LENGTH)
    with pytest.raises(RuntimeError, match="repeated \\[2\\]"):
        world.gather_rows(torch.zeros(3, 1), torch.tensor([0, 2, 2]), 3)


def test_global_batches_do_not_depend_on_the_world_size():
    one = list(GlobalBatchSampler(10, 4, 0, 1, seed=3))
    two = [list(GlobalBatchSampler(10, 2, r, 2, seed=3)) for r in range(2)]
    # global batch s = rank 0's s-th slice of 2, then rank 1's
    merged = [i for s in range(2) for r in range(2) for i in two[r][2 * s : 2 * s + 2]]
    assert merged == one and len(one) == 8  # the partial third global batch is dropped
    sampler = GlobalBatchSampler(10, 4, 0, 1, seed=3)
    sampler.set_epoch(1)
    assert list(sampler) != one  # a new order every epoch
    epoch_sampler = EpochSampler(GlobalBatchSampler(10, 4, 0, 1, seed=3))
    epoch_sampler.skip(4)
    assert [i for _, i in epoch_sampler] == one[4:]
    assert [i for _, i in epoch_sampler] == one  # the skip applies once
