"""Weight import: Swin 2D -> 3D inflation (SPEC §5), BERT, the original LF-VILA layout, reports."""

from __future__ import annotations

import pathlib

import pytest
import torch
import torch.nn.functional as F

from lfvila.config import load_config
from lfvila.model import LFVILA, VideoEncoder
from lfvila.model.convert import (
    convert_bert,
    export_bert,
    from_original,
    inflate_swin_2d,
    load_weights,
    read_checkpoint,
    to_original,
)

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny.yaml"
SWIN_B = dict(embed=128, depths=(2, 2, 18, 2), heads=(4, 8, 16, 32), window=12)


def swin_b_state_dict(seed: int = 0) -> dict:
    """swin_base_patch4_window12_384_22k's key names and shapes (values random or zero)."""
    gen = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    rows = (2 * SWIN_B["window"] - 1) ** 2
    n = SWIN_B["window"] ** 2
    sd = {
        "patch_embed.proj.weight": rnd(128, 3, 4, 4),
        "patch_embed.proj.bias": rnd(128),
        "patch_embed.norm.weight": rnd(128),
        "patch_embed.norm.bias": rnd(128),
        "norm.weight": rnd(1024),
        "norm.bias": rnd(1024),
        "head.weight": torch.zeros(21841, 1024),
        "head.bias": torch.zeros(21841),
    }
    for s, (depth, heads) in enumerate(zip(SWIN_B["depths"], SWIN_B["heads"])):
        c = SWIN_B["embed"] * 2**s
        for b in range(depth):
            p = f"layers.{s}.blocks.{b}."
            sd.update({
                p + "norm1.weight": rnd(c), p + "norm1.bias": rnd(c),
                p + "attn.relative_position_bias_table": rnd(rows, heads),
                p + "attn.relative_position_index": torch.zeros(n, n, dtype=torch.long),
                p + "attn.qkv.weight": torch.zeros(3 * c, c), p + "attn.qkv.bias": rnd(3 * c),
                p + "attn.proj.weight": torch.zeros(c, c), p + "attn.proj.bias": rnd(c),
                p + "norm2.weight": rnd(c), p + "norm2.bias": rnd(c),
                p + "mlp.fc1.weight": torch.zeros(4 * c, c), p + "mlp.fc1.bias": rnd(4 * c),
                p + "mlp.fc2.weight": torch.zeros(c, 4 * c), p + "mlp.fc2.bias": rnd(c),
            })  # fmt: skip
            if b % 2:
                sd[p + "attn_mask"] = torch.zeros(4, n, n)
        if s < 3:
            sd[f"layers.{s}.downsample.reduction.weight"] = rnd(2 * c, 4 * c)
            sd[f"layers.{s}.downsample.norm.weight"] = rnd(4 * c)
            sd[f"layers.{s}.downsample.norm.bias"] = rnd(4 * c)
    return sd


def test_swin_inflation_fills_the_full_size_video_encoder():
    cfg = load_config().model.video
    swin = swin_b_state_dict()
    inflated = inflate_swin_2d(swin, cfg)
    with torch.device("meta"):
        encoder = VideoEncoder(cfg)
    report = load_weights(encoder, inflated, strict=True)  # every key, every shape
    assert report.ok and report.loaded == len(inflated)
    # block order: L3 <- stage 2 blocks 14-15, L4 <- 16-17, L5 <- stage 3
    assert inflated["layers.3.blocks.0.attn.qkv.bias"] is swin["layers.2.blocks.14.attn.qkv.bias"]
    assert inflated["layers.4.blocks.1.norm2.weight"] is swin["layers.2.blocks.17.norm2.weight"]
    assert inflated["layers.5.blocks.1.mlp.fc2.bias"] is swin["layers.3.blocks.1.mlp.fc2.bias"]
    # downsamples move to the merging layers 0, 1, 4; the tap and its norm start from stage 2 / norm
    assert (
        inflated["layers.4.downsample.reduction.weight"]
        is swin["layers.2.downsample.reduction.weight"]
    )
    assert inflated["local_feat_proj.norm.bias"] is swin["layers.2.downsample.norm.bias"]
    assert inflated["norm_local.weight"] is swin["norm.weight"]
    assert not [
        k
        for k in inflated
        if "attn_mask" in k or "relative_position_index" in k or k.startswith("head")
    ]


def test_swin_inflation_bias_tables_and_patch_embedding_numerically():
    cfg = load_config().model.video
    swin = swin_b_state_dict(seed=1)
    inflated = inflate_swin_2d(swin, cfg)
    for layer, (swin_key, window) in enumerate(
        [("layers.0.blocks.0", (2, 3, 5)), ("layers.2.blocks.14", (16, 3, 5))]
    ):
        ours = f"layers.{0 if layer == 0 else 3}.blocks.0.attn.relative_position_bias_table"
        table2d = swin[swin_key + ".attn.relative_position_bias_table"]  # (529, heads)
        heads = table2d.shape[1]
        grid = table2d.t().reshape(1, heads, 23, 23)
        spatial = (
            F.interpolate(grid, size=(5, 9), mode="bicubic", align_corners=False)[0]
            .reshape(heads, 45)
            .t()
        )
        table3d = inflated[ours]
        assert table3d.shape == ((2 * window[0] - 1) * 45, heads)
        for dt in range(2 * window[0] - 1):  # every temporal offset starts from the same table
            torch.testing.assert_close(table3d[dt * 45 : (dt + 1) * 45], spatial)
    constant = {"x.relative_position_bias_table": torch.full((529, 2), 0.7)}
    from lfvila.model.convert import resize_bias_table

    torch.testing.assert_close(
        resize_bias_table(constant["x.relative_position_bias_table"], (2, 3, 5)),
        torch.full((135, 2), 0.7),
    )
    w2d, w3d = swin["patch_embed.proj.weight"], inflated["patch_embed.proj.weight"]
    assert w3d.shape == (128, 3, 1, 8, 8)
    for i in (0, 4):
        for j in (0, 4):
            torch.testing.assert_close(
                w3d[:, :, 0, i : i + 4, j : j + 4], w2d / 4
            )  # tiled, not upsampled
    # a constant frame gives the same response as the 2D patch embedding
    frame = torch.full((1, 3, 8, 8), 0.3)
    out3d = F.conv3d(frame[:, :, None], w3d)
    out2d = F.conv2d(frame[:, :, :4, :4], w2d)
    torch.testing.assert_close(out3d.flatten(), out2d.flatten(), rtol=1e-5, atol=1e-5)
    assert inflated["patch_embed.proj.bias"] is swin["patch_embed.proj.bias"]


def _hf_bert(cfg_text, layers: int, seed=0) -> dict:
    from transformers import BertConfig, BertForPreTraining

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=cfg_text.vocab_size,
        hidden_size=cfg_text.hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=cfg_text.num_attention_heads,
        intermediate_size=cfg_text.intermediate_size,
    )
    return {k: v.clone() for k, v in BertForPreTraining(config).state_dict().items()}


def test_bert_import_round_trips_and_maps_legacy_names():
    cfg = load_config(TINY, ["model.stage=2"]).model
    hf = _hf_bert(cfg.text, cfg.text.num_hidden_layers)
    converted = convert_bert(hf, cfg.text.num_hidden_layers)
    model = LFVILA(cfg)
    report = load_weights(model, converted)
    assert not report.unexpected and not report.mismatched
    assert not [
        k for k in report.missing if k.startswith("text_encoder.bert.")
    ]  # BERT fully loaded
    assert (
        "text_encoder.seq_relationship.weight" in report.missing
    )  # VTM head starts random (SPEC §8.1)
    sd = model.state_dict()
    torch.testing.assert_close(
        sd["sent_embedding.position_embeddings.weight"],
        hf["bert.embeddings.position_embeddings.weight"],
    )
    exported = export_bert(sd)
    for key, value in hf.items():
        if key.startswith("cls.seq_relationship") or key.endswith(
            ("position_ids", "token_type_ids")
        ):
            continue
        torch.testing.assert_close(exported[key], value, msg=key)
    legacy = {
        k.replace("LayerNorm.weight", "LayerNorm.gamma").replace(
            "LayerNorm.bias", "LayerNorm.beta"
        ): v
        for k, v in hf.items()
    }
    assert any(k.endswith("gamma") for k in legacy)
    assert convert_bert(legacy, cfg.text.num_hidden_layers).keys() == converted.keys()
    stage1 = convert_bert(hf, cfg.text.stage1_layers)
    assert not [
        k for k in stage1 if f"layer.{cfg.text.stage1_layers}." in k
    ]  # stage 1 has 12 (here 3) layers


def test_original_layout_round_trip_and_fp16_export():
    cfg = load_config(TINY, ["model.stage=2"]).model
    torch.manual_seed(0)
    model = LFVILA(cfg)
    original = to_original(model.state_dict(), dtype=None)
    assert "text_encoder.bert.embeddings.position_ids" in original
    wrapped = {"module." + k: v for k, v in original.items()}  # as a DeepSpeed engine saves it
    fresh = LFVILA(cfg)
    report = load_weights(fresh, from_original(wrapped), strict=True)
    assert report.ok
    for key, value in model.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[key], value, rtol=0, atol=0, msg=key)
    fp16 = to_original(model.state_dict())
    assert fp16["video_encoder.norm.weight"].dtype == torch.float16
    assert fp16["video_encoder.layers.0.blocks.0.attn.relative_position_index"].dtype == torch.long


def test_wrong_shapes_missing_and_unexpected_keys_are_reported_by_key():
    cfg = load_config(TINY).model
    model = LFVILA(cfg)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    bad = "video_encoder.layers.0.blocks.0.attn.relative_position_bias_table"
    sd[bad] = torch.zeros(7, 1)
    del sd["text_global_proj.bias"]
    sd["head.weight"] = torch.zeros(3)
    report = load_weights(model, sd)
    assert report.mismatched == [(bad, (7, 1), tuple(model.state_dict()[bad].shape))]
    assert report.missing == ["text_global_proj.bias"] and report.unexpected == ["head.weight"]
    assert bad in str(report)
    pattern = r"(?s)missing.*text_global_proj.bias.*unexpected.*head.weight.*shape mismatch: video_"
    with pytest.raises(ValueError, match=pattern):
        load_weights(model, sd, strict=True)


def test_read_checkpoint_formats(tmp_path):
    sd = {"a": torch.ones(2)}
    torch.save({"model": sd}, tmp_path / "swin.pth")
    torch.save(sd, tmp_path / "flat.bin")
    from safetensors.torch import save_file

    save_file(sd, str(tmp_path / "w.safetensors"))
    for name in ("swin.pth", "flat.bin", "w.safetensors"):
        torch.testing.assert_close(read_checkpoint(tmp_path / name)["a"], sd["a"])
    with pytest.raises(FileNotFoundError, match="nothere.pth: checkpoint not found"):
        read_checkpoint(tmp_path / "nothere.pth")


def test_initialise_from_local_files_in_spec_order(tmp_path):
    cfg = load_config(TINY, ["model.stage=2"]).model
    hf = _hf_bert(cfg.text, cfg.text.num_hidden_layers)
    torch.save(hf, tmp_path / "bert.bin")
    torch.manual_seed(1)
    stage1 = LFVILA(load_config(TINY).model)
    torch.save(to_original(stage1.state_dict()), tmp_path / "lfvila_stage1.bin")
    from lfvila.model.convert import initialise

    model = LFVILA(cfg)
    reports = initialise(model, bert=tmp_path / "bert.bin", lfvila=tmp_path / "lfvila_stage1.bin")
    sd = model.state_dict()
    # layers 0..stage1-1 come from the stage-1 file (fp16-rounded), later ones from BERT
    first = "text_encoder.bert.encoder.layer.0.attention.self.query.weight"
    torch.testing.assert_close(sd[first], stage1.state_dict()[first].half().float())
    last = f"text_encoder.bert.encoder.layer.{cfg.text.num_hidden_layers - 1}.output.dense.weight"
    torch.testing.assert_close(sd[last], hf["bert.encoder.layer.3.output.dense.weight"])
    assert "video_token_pos.s_pos_embed" in reports["lfvila"].missing  # new in stage 2
