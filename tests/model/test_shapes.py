"""The encoder's attention layers from its config, and the run header's backend per layer."""

from __future__ import annotations

import torch

from lfvila.config import VideoEncoderConfig
from lfvila.kernels.window_attn import auto_table
from lfvila.model.shapes import LFVILA_LAYERS, attention_backends, encoder_layers


def test_encoder_layers_of_the_stage1_config_are_perf_md_s_layers():
    layers = encoder_layers(VideoEncoderConfig())
    assert [blocks for _, blocks in layers] == [2, 2, 14, 2, 2, 2]
    by_name = {spec.name: spec for spec, _ in layers}
    for spec in LFVILA_LAYERS:  # L4 repeats L3
        assert by_name[spec.name] == spec


def test_attention_backends_name_each_layer_its_backend_and_why(monkeypatch):
    cpu = attention_backends(VideoEncoderConfig(), "auto", torch.device("cpu"), torch.float32)
    assert len(cpu) == 6 and cpu[2].startswith("L2 (32x6x10 map, 120-token windows, 14 blocks)")
    assert all(": reference (CPU tensors use the reference" in line for line in cpu)
    # on a GPU (meta tensors stand in; the device answers as the 2026-12-04 H200)
    monkeypatch.setattr(auto_table, "device_info", lambda *a: ("NVIDIA H200", "9.0"))
    auto_table.explain.cache_clear()
    try:
        gpu = attention_backends(VideoEncoderConfig(), "auto", torch.device("meta"), torch.bfloat16)
    finally:
        auto_table.explain.cache_clear()
    assert ": sdpa (auto: table: NVIDIA H200 bfloat16 120 tokens -> sdpa" in gpu[2]
    assert "-> triton" in gpu[0]  # the table's pick; Triton cannot run a meta tensor: skipped
    forced = attention_backends(VideoEncoderConfig(), "sdpa", torch.device("cpu"), torch.float32)
    assert all(": sdpa (backend='sdpa' asked for)" in line for line in forced)
