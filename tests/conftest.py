"""Test configuration. The first lines turn on the Triton interpreter when there is no GPU:
kernels defined before TRITON_INTERPRET is set fail with "0 active drivers"; and turn the
first-call kernel self-check off (tests turn it on where they test it)."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# The first-call self-check (on by default on CUDA) would send a wrong kernel to the reference
# and hide it from the kernel tests: off unless a test turns it on (test_self_check.py does).
os.environ.setdefault("LFVILA_KERNEL_SELF_CHECK", "off")

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
