"""Benchmark configuration. As in tests/, the Triton interpreter is switched on first when there
is no GPU. `LFVILA_BENCH_SMOKE=1` (benchmarks/gpu_check.sh --smoke) runs the GPU-marked
benchmarks on the CPU at tiny shapes, so that the GPU harness itself is exercised by `make test`."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Time the kernels, not the first-call self-check (each provider passes its own error check).
os.environ.setdefault("LFVILA_KERNEL_SELF_CHECK", "off")

import pytest  # noqa: E402

from benchmarks.shapes import smoke_mode  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available() or smoke_mode():
        return
    skip = pytest.mark.skip(reason="needs CUDA (or LFVILA_BENCH_SMOKE=1 for the CPU smoke run)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
