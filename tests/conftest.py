"""Test configuration. The first lines turn on the Triton interpreter when there is no GPU:
kernels defined before TRITON_INTERPRET is set fail with "0 active drivers"."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import random  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    has_cuda = torch.cuda.is_available()
    run_slow = os.environ.get("LFVILA_RUN_SLOW", "0") not in ("", "0")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(
                pytest.mark.skip(reason="needs CUDA (run benchmarks/gpu_check.sh on a GPU)")
            )
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow: set LFVILA_RUN_SLOW=1"))
        if "dali" in item.keywords:
            try:
                import nvidia.dali  # noqa: F401
            except Exception as exc:  # not installed, or broken
                item.add_marker(
                    pytest.mark.skip(reason=f"needs nvidia.dali ({type(exc).__name__})")
                )
