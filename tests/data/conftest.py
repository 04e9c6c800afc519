from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """A small demo dataset (6 training and 2 held-out videos of 4 clips x 8 frames)."""
    from lfvila.data import demo

    return demo.generate(tmp_path_factory.mktemp("demo"), videos=6, val_videos=2, seed=3)
