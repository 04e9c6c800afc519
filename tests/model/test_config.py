"""The typed config: SPEC defaults, YAML files, overrides, errors naming the file and key."""

from __future__ import annotations

import pathlib

import pytest
import yaml

from lfvila.config import ConfigError, config_from_dict, dump_config, load_config

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_defaults_are_spec_stage1_values():
    cfg = load_config().model
    v, t, loss = cfg.video, cfg.text, cfg.loss
    assert v.depths == (2, 2, 14, 2, 2, 2) and v.num_heads == (4, 8, 16, 16, 16, 32)
    assert v.window_size == ((2, 3, 5), (4, 3, 5), (8, 3, 5), (16, 3, 5), (16, 3, 5), (32, 3, 5))
    assert v.dims() == [128, 256, 512, 512, 512, 1024] and v.downsample_stages == (0, 1, 4)
    assert v.drop_path_rate == 0.2 and v.local_window == 8 and v.temporal_no_shifting
    assert (t.hidden_size, t.num_hidden_layers, t.num_local_layers, t.stage1_layers) == (
        1024,
        24,
        8,
        12,
    )
    assert (t.max_sentences, t.max_tokens, t.sent_type_vocab_size) == (4, 50, 8)
    assert (loss.temperature, loss.mtc_temperature, loss.mtc_weight, loss.vtm_weight) == (
        0.05,
        0.05,
        0.25,
        10.0,
    )
    assert (loss.num_key, loss.num_value, loss.num_other_neg) == (2, 2, 3)
    assert cfg.mtc_features == "local" and cfg.freeze_pooler is False  # SPEC Decisions 1 and 2


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_every_shipped_config_loads_and_round_trips(name):
    cfg = load_config(ROOT / "configs" / name)
    assert config_from_dict(yaml.safe_load(dump_config(cfg))) == cfg


def test_overrides_convert_types():
    cfg = load_config(None, ["model.loss.temperature=5e-2", "--model.video.depths=[1,1,1,1,1,1]",
                             "model.mtc_features=final", "model.freeze_pooler=true"])  # fmt: skip
    assert cfg.model.loss.temperature == 0.05 and isinstance(cfg.model.loss.temperature, float)
    assert cfg.model.video.depths == (1, 1, 1, 1, 1, 1) and cfg.model.mtc_features == "final"
    assert cfg.model.freeze_pooler is True


ERRORS = {
    "unknown-key": (
        ["model.video.drop_path_rat=0.1"],
        r"unknown key 'model.video.drop_path_rat' \(did you mean 'model.video.drop_path_rate'\?\)",
    ),
    "literal": (
        ["model.mtc_features=middle"],
        r"model.mtc_features: 'middle' is not one of \['local', 'final'\]",
    ),
    "type": (
        ["model.video.embed_dim=wide"],
        r"model.video.embed_dim: expected an integer, got 'wide'",
    ),
    "bool": (["model.freeze_pooler=2"], r"model.freeze_pooler: expected true or false"),
    "cross-field": (
        ["model.video.depths=[2,2]"],
        r"model.video: video.stages needs one entry per layer \(2\)",
    ),
    "temperature": (["model.loss.temperature=0"], r"loss.temperature must be > 0"),
    "no-equals": (["model.stage"], r"override 'model.stage' must look like section.key=value"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_config_errors_name_the_key(case):
    overrides, message = ERRORS[case]
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_config_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  vidoe:\n    embed_dim: 8\n")
    with pytest.raises(
        ConfigError, match=rf"{bad}: unknown key 'model.vidoe' \(did you mean 'model.video'\?\)"
    ):
        load_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match=rf"{broken}: not valid YAML"):
        load_config(broken)
