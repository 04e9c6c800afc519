"""RNG states in checkpoints without pickle: written as JSON and plain tensors, read with
`weights_only=True`; a checkpoint of the previous format (a pickled dict) still resumes, and a
pickle planted where that format lives never runs on `--resume`."""

from __future__ import annotations

import json
import pathlib
import random

import numpy as np
import pytest
import torch

from lfvila.cli import main
from lfvila.config import TrainConfig
from lfvila.training.checkpoint import CheckpointManager, TrainerState, rng_state
from lfvila.training.dist import World
from lfvila.training.engine import TorchEngine


class Planted:
    """Unpickling this writes `marker`: what a run folder from someone else could hold."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.write_text, (self.marker, "the pickle ran\n")


def _engine():
    model = torch.nn.Linear(4, 2)
    return TorchEngine(
        model, torch.optim.AdamW(model.parameters()), TrainConfig(), World(), ddp=False
    )


def _draws(gen):
    return random.random(), np.random.rand(), torch.rand(3), torch.rand(2, generator=gen)


def _same(a, b):
    assert a[0] == b[0] and a[1] == b[1]
    assert torch.equal(a[2], b[2]) and torch.equal(a[3], b[3])


def _plant(path: pathlib.Path, marker: pathlib.Path) -> None:
    state = rng_state(None)
    state["torch"] = Planted(marker)
    torch.save(state, path)


def test_rng_files_are_json_and_plain_tensors(tmp_path):
    manager = CheckpointManager(tmp_path, World())
    path = manager.save(_engine(), TrainerState(step=1), torch.Generator().manual_seed(7), "")
    names = sorted(p.name for p in path.glob("rng_*"))
    assert names == ["rng_rank0.json", "rng_rank0.tensors.pt"]
    meta = json.loads((path / "rng_rank0.json").read_text())
    assert meta["format"] == 2 and meta["mtc"] is True
    tensors = torch.load(path / "rng_rank0.tensors.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in tensors.values())


def test_a_checkpoint_of_the_previous_format_still_resumes(tmp_path):
    """The previous format: `torch.save(rng_state(gen))` as `rng_rank<r>.pt` (numpy arrays in a
    pickled dict) is read with numpy's array type allowed, and restores every stream."""
    engine, gen = _engine(), torch.Generator().manual_seed(7)
    manager = CheckpointManager(tmp_path, World())
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.randn()  # a cached Gaussian in numpy's state
    path = manager.save(engine, TrainerState(step=1), gen, "")
    for name in ("rng_rank0.json", "rng_rank0.tensors.pt"):
        (path / name).unlink()
    torch.save(rng_state(gen), path / "rng_rank0.pt")  # what the previous code wrote
    expected = _draws(gen)
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    gen2 = torch.Generator().manual_seed(0)
    manager.load(manager.latest(), engine, gen2)
    _same(_draws(gen2), expected)


def test_the_planted_pickle_would_run(tmp_path):
    """The plant is live: an ordinary unpickling runs it (so the tests below can fail)."""
    marker = tmp_path / "marker"
    _plant(tmp_path / "planted.pt", marker)
    torch.load(tmp_path / "planted.pt", weights_only=False)
    assert marker.read_text() == "the pickle ran\n"


def test_a_planted_pickle_is_refused_with_one_line(tmp_path):
    manager = CheckpointManager(tmp_path, World())
    path = manager.save(_engine(), TrainerState(step=1), torch.Generator(), "")
    for name in ("rng_rank0.json", "rng_rank0.tensors.pt"):
        (path / name).unlink()
    marker = tmp_path / "marker"
    _plant(path / "rng_rank0.pt", marker)
    with pytest.raises(ValueError, match="never unpickled. Delete it") as info:
        manager.load(path, _engine(), torch.Generator())
    assert "rng_rank0.pt" in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()


@pytest.fixture
def tiny_run(tiny_config, tmp_path):
    """A finished 2-step tiny pre-training run (no evaluations): (config, run folder)."""
    args = ["--config", str(tiny_config), "--output-dir", str(tmp_path / "run")]
    fast = ["train.max_steps=2", "data.val=null", "data.val_retrieval=null"]
    assert main(["pretrain", *args, *fast]) == 0
    return args, tmp_path / "run"


def test_resume_never_runs_a_planted_pickle(tiny_run, tmp_path, capsys):
    """Where the previous format's RNG file lives: beside the new files it is never opened and
    the run resumes; alone, the resume stops with one line saying what to do. It never runs."""
    args, run = tiny_run
    step = run / "checkpoints" / "step_2"
    marker = tmp_path / "marker"
    _plant(step / "rng_rank0.pt", marker)
    more = ["data.val=null", "data.val_retrieval=null"]
    assert main(["pretrain", *args, "--resume", "train.max_steps=3", *more]) == 0
    assert not marker.exists()

    step = run / "checkpoints" / "step_3"
    for name in ("rng_rank0.json", "rng_rank0.tensors.pt"):
        (step / name).unlink()
    _plant(step / "rng_rank0.pt", marker)
    capsys.readouterr()
    assert main(["pretrain", *args, "--resume", "train.max_steps=4", *more]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]  # the error, one line (a config-change warning before)
    assert last.startswith("lfvila pretrain: error: ") and "rng_rank0.pt" in last, err
    assert "Delete it to resume without this rank's random streams" in last
    assert not marker.exists()
