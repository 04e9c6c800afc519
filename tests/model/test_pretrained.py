"""save_pretrained / from_pretrained: exact fp32 round trips, bf16 exports, the shared MLM bias,
atomic writes and the errors for missing files."""

from __future__ import annotations

import pathlib

import pytest
import torch

from lfvila.config import load_config
from lfvila.model import build_model, from_pretrained, load_pretrained_config, save_pretrained

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny.yaml"
STAGES = {"stage1": ["model.stage=1"], "stage2": ["model.stage=2"]}


def _model(overrides, seed=0):
    cfg = load_config(TINY, overrides)
    torch.manual_seed(seed)
    return build_model(cfg), cfg


def _file_dtypes_and_metadata(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_slice(k).get_dtype() for k in f.keys()}, f.metadata()


@pytest.mark.parametrize("stage", list(STAGES))
def test_fp32_round_trip_is_exact(tmp_path, stage):
    model, cfg = _model(STAGES[stage])
    weights = save_pretrained(model, cfg, tmp_path / "run")
    assert weights == tmp_path / "run" / "model.safetensors"
    assert sorted(p.name for p in weights.parent.iterdir()) == ["config.yaml", "model.safetensors"]
    torch.manual_seed(1)  # the rebuilt model starts from other random weights
    loaded = from_pretrained(tmp_path / "run")
    assert type(loaded) is type(model) and not loaded.training
    assert load_pretrained_config(tmp_path / "run") == cfg
    want, got = model.state_dict(), loaded.state_dict()
    assert want.keys() == got.keys()
    for key, value in want.items():
        assert got[key].dtype == value.dtype, key
        assert torch.equal(got[key], value), key  # bit for bit
    dtypes, metadata = _file_dtypes_and_metadata(weights)
    assert metadata["dtype"] == "float32" and metadata["lfvila_version"]
    assert dtypes["video_encoder.layers.0.blocks.0.attn.relative_position_index"] == "I64"


def test_bf16_export_reloads_rounded_values_and_keeps_the_shared_bias(tmp_path):
    model, cfg = _model(STAGES["stage2"])
    with torch.no_grad():  # a bias that is not all zero, so the sharing is visible in the file
        model.text_encoder.cls.predictions.bias.normal_()
    weights = save_pretrained(model, cfg, tmp_path, dtype=torch.bfloat16)
    dtypes, metadata = _file_dtypes_and_metadata(weights)
    assert metadata["dtype"] == "bfloat16"
    assert dtypes["text_encoder.cls.predictions.decoder.weight"] == "BF16"
    assert dtypes["sent_embedding.position_ids"] == "I64"  # integer buffers kept
    # safetensors refuses shared tensors: both names are stored, as separate copies
    assert {"text_encoder.cls.predictions.bias", "text_encoder.cls.predictions.decoder.bias"} <= (
        dtypes.keys()
    )
    loaded = from_pretrained(tmp_path)
    got = loaded.state_dict()
    for key, value in model.state_dict().items():
        want = value.to(torch.bfloat16).float() if value.is_floating_point() else value
        assert got[key].dtype == value.dtype and torch.equal(got[key], want), key
    assert not torch.equal(got["text_encoder.cls.predictions.bias"],
                           model.state_dict()["text_encoder.cls.predictions.bias"])  # fmt: skip
    head = loaded.text_encoder.cls.predictions
    assert head.decoder.bias is head.bias


def test_a_bare_safetensors_file_needs_a_config(tmp_path):
    model, cfg = _model(STAGES["stage1"])
    save_pretrained(model, cfg, tmp_path / "run")
    bare = tmp_path / "weights.safetensors"
    bare.write_bytes((tmp_path / "run" / "model.safetensors").read_bytes())
    with pytest.raises(FileNotFoundError, match="weights.safetensors.*config"):
        from_pretrained(bare)
    for config in (cfg, tmp_path / "run" / "config.yaml"):
        loaded = from_pretrained(bare, config=config)
        assert torch.equal(loaded.video_global_proj.weight, model.video_global_proj.weight)
    # a config.yaml beside the file is used
    loaded = from_pretrained(tmp_path / "run" / "model.safetensors")
    assert torch.equal(loaded.text_global_proj.bias, model.text_global_proj.bias)


def test_errors_name_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        from_pretrained(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="empty.*model.safetensors"):
        from_pretrained(empty)
    model, cfg = _model(STAGES["stage1"])
    run = tmp_path / "run"
    save_pretrained(model, cfg, run)
    (run / "config.yaml").unlink()
    with pytest.raises(FileNotFoundError, match="run.*config.yaml"):
        from_pretrained(run)
    with pytest.raises(FileNotFoundError, match="absent.yaml"):
        from_pretrained(run, config=tmp_path / "absent.yaml")
    other = tmp_path / "model.pt"
    other.write_bytes(b"")
    with pytest.raises(ValueError, match="model.pt.*safetensors"):
        from_pretrained(other)
    # the weights of another model: strict loading names the file and the keys
    with pytest.raises(ValueError, match="(?s)model.safetensors.*missing"):
        from_pretrained(run, config=load_config(TINY, ["model.stage=2"]))
    with pytest.raises(TypeError, match="root Config"):
        save_pretrained(model, cfg.model, tmp_path / "x")


def test_a_failed_save_keeps_the_previous_files(tmp_path, monkeypatch):
    """Atomic writes: a writer that dies half way leaves the old model.safetensors intact and no
    temporary file behind."""
    import safetensors.torch

    model, cfg = _model(STAGES["stage1"])
    save_pretrained(model, cfg, tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()

    def torn(tensors, filename, metadata=None):
        pathlib.Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", torn)
    with torch.no_grad():
        model.video_global_proj.weight.zero_()
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(model, cfg, tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "model.safetensors"]
