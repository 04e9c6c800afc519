"""`auto` for window attention: the measured table (its packaged entries, loader, writer round
trip, errors, LFVILA_AUTO_TABLE), the lookup and its rule, and the dispatch order on a non-CPU
device (meta tensors stand in for a GPU: the table is asked, a backend that cannot run is
skipped with its reason), explicit backends and LFVILA_KERNEL_BACKEND winning over it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from lfvila.kernels import contrastive_loss, explain_window_backend
from lfvila.kernels.window_attn import auto_table, dispatch
from lfvila.kernels.window_attn.auto_table import (
    AutoTable,
    DeviceTable,
    Entry,
    dump_table,
    fused_threshold,
    load_table,
    lookup,
    merge_device,
)

H200 = ("NVIDIA H200", "9.0")
BF16 = torch.bfloat16


def test_packaged_table_holds_the_2026_12_04_h200_figures():
    """Every packaged entry is one of shared/PERF.md's H200 rows (bf16, batch 16, fwd+bwd)."""
    table = load_table(auto_table.PACKAGED)
    assert table == auto_table.TABLE or os.environ.get(auto_table.ENV)
    assert table.fused_max_tokens == 64
    [h200] = table.devices
    assert (h200.gpu, h200.capability, h200.measured) == ("NVIDIA H200", "9.0", "2026-12-04")
    assert "shared/PERF.md" in h200.source and h200.fused_max_tokens == 64
    got = {(e.tokens, e.backend, dict(e.ms)["triton"]) for e in h200.entries}
    assert got == {(30, "triton", 2.12), (60, "triton", 1.03), (120, "sdpa", 2.36),
                   (240, "sdpa", 3.36), (392, "sdpa", 43.6), (480, "sdpa", 3.2)}  # fmt: skip
    assert {e.dtype for e in h200.entries} == {"bfloat16"}


@pytest.mark.parametrize(
    "gpu, capability, dtype, tokens, backend, reason",
    [
        (*H200, BF16, 120, "sdpa", "table: NVIDIA H200 bfloat16 120 tokens -> sdpa (2026-12-04"),
        (*H200, BF16, 30, "triton", "fwd+bwd ms triton 2.12, eager 6.41"),
        # another GPU of the same compute capability uses the H200's measurements
        ("NVIDIA H100 80GB HBM3", "9.0", BF16, 240, "sdpa", "same compute capability 9.0"),
        # no entry: the device's threshold, then the table's rule
        (*H200, torch.float16, 60, "triton", "rule: 60 tokens <= 64, fused (no float16 entry"),
        (*H200, BF16, 98, "sdpa", "rule: 98 tokens > 64, sdpa"),
        ("NVIDIA A100-SXM4-80GB", "8.0", BF16, 30, "triton", "no table entry for NVIDIA A100"),
        ("NVIDIA A100-SXM4-80GB", "8.0", BF16, 120, "sdpa", "fused up to 64 tokens"),
        (None, None, BF16, 392, "sdpa", "no table entry for this device"),
    ],
)
def test_lookup_matches_name_then_capability_then_the_rule(
    gpu, capability, dtype, tokens, backend, reason
):
    choice = lookup(auto_table.TABLE, gpu, capability, dtype, tokens)
    assert choice.backend == backend
    assert reason in choice.reason, choice.reason


def _measured(gpu="NVIDIA Test GPU", capability="8.9", **picks):
    """A device section with bf16 entries {tokens: backend}."""
    entries = tuple(
        Entry("bfloat16", int(t[1:]), b, (f"case{t}",), ((b, 1.0), ("other", 2.0)))
        for t, b in picks.items()
    )
    return DeviceTable(gpu, capability, "2027-01-01", "a test", None, entries)


def test_writer_and_loader_round_trip(tmp_path):
    """merge_device + dump_table write what load_table reads back, unchanged; a later
    measurement of the same GPU replaces only its own (dtype, tokens) and the GPU's threshold
    follows its entries (raised to the kernels' padded window, kept below the first sdpa win)."""
    table = merge_device(auto_table.TABLE, _measured(t30="triton", t60="triton", t120="sdpa"))
    path = tmp_path / "auto_table.json"
    path.write_text(dump_table(table))
    loaded = load_table(path)
    assert loaded == table
    assert dump_table(loaded) == path.read_text()
    section = next(d for d in loaded.devices if d.gpu == "NVIDIA Test GPU")
    assert section.fused_max_tokens == 64
    assert lookup(loaded, "NVIDIA Test GPU", "8.9", BF16, 120).backend == "sdpa"
    assert lookup(loaded, "NVIDIA Test GPU", "8.9", BF16, 50).backend == "triton"
    again = merge_device(loaded, _measured(t60="sdpa", t240="sdpa"))
    section = next(d for d in again.devices if d.gpu == "NVIDIA Test GPU")
    assert [(e.tokens, e.backend) for e in section.entries] == [
        (30, "triton"), (60, "sdpa"), (120, "sdpa"), (240, "sdpa")
    ]  # fmt: skip
    assert section.fused_max_tokens == 32
    assert next(d for d in again.devices if d.gpu == "NVIDIA H200") == auto_table.TABLE.devices[0]


def test_fused_threshold_rule():
    def entries(**picks):
        return _measured(**picks).entries

    assert fused_threshold(()) is None
    assert fused_threshold(entries(t30="triton", t60="triton", t120="sdpa")) == 64
    assert fused_threshold(entries(t30="triton", t40="sdpa")) == 32
    assert fused_threshold(entries(t30="triton", t31="sdpa")) == 30
    assert fused_threshold(entries(t30="sdpa", t60="triton")) == 0
    assert fused_threshold(entries(t30="triton", t480="triton")) == 512


BAD_TABLES = {
    "format": (lambda d: d.pop("format"), "not an auto table"),
    "version": (lambda d: d.update(version=2), "table version 2; this lfvila reads version 1"),
    "rule": (lambda d: d["rule"].pop("fused_max_tokens"), "rule: missing key 'fused_max_tokens'"),
    "backend": (
        lambda d: d["devices"][0]["entries"][0].update(backend="fast"),
        r"devices\[0\].entries\[0\]: 'backend' must be one of",
    ),
    "tokens": (
        lambda d: d["devices"][0]["entries"][1].update(tokens="60"),
        r"devices\[0\].entries\[1\]: 'tokens' must be int, got '60'",
    ),
    "dtype": (
        lambda d: d["devices"][0]["entries"][0].update(dtype="bf16"),
        r"'dtype' must be one of \('bfloat16', 'float16', 'float32'\), got 'bf16'",
    ),
    "duplicate": (
        lambda d: d["devices"][0]["entries"].append(dict(d["devices"][0]["entries"][0])),
        r"devices\[0\]: two entries for one \(dtype, tokens\)",
    ),
}


@pytest.mark.parametrize("case", list(BAD_TABLES))
def test_loader_errors_name_the_file_and_the_key(tmp_path, case):
    data = json.loads(auto_table.PACKAGED.read_text())
    change, message = BAD_TABLES[case]
    change(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message) as info:
        load_table(path)
    assert str(path) in str(info.value)


def test_env_variable_loads_another_table_at_import(tmp_path):
    table = merge_device(AutoTable(128, "a test rule"), _measured(t120="triton"))
    path = tmp_path / "mine.json"
    path.write_text(dump_table(table))
    code = (
        "from lfvila.kernels.window_attn import auto_table as a; import torch; "
        "print(a.TABLE.fused_max_tokens, a.lookup(a.TABLE, 'NVIDIA Test GPU', None, "
        "torch.bfloat16, 120).backend)"
    )
    env = dict(os.environ, LFVILA_AUTO_TABLE=str(path))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["128", "triton"]


# ----------------------------------------------------------------------------------------------
# Dispatch: meta tensors are a non-CPU device, so `auto` asks the table


@pytest.fixture
def on_h200(monkeypatch):
    """auto_table's device probe answers "NVIDIA H200" for any non-CPU device."""
    monkeypatch.setattr(auto_table, "device_info", lambda device_type, index: H200)
    auto_table.explain.cache_clear()
    yield
    auto_table.explain.cache_clear()


def _probe(map_size, heads=16, dtype=BF16, device="meta"):
    return torch.empty(1, 1, 1, 1, heads, 32, dtype=dtype, device=device).expand(
        2, *map_size, heads, 32
    )


def test_auto_on_a_gpu_follows_the_table_and_skips_what_cannot_run(on_h200, monkeypatch):
    l2 = _probe((32, 6, 10))
    chosen, why = explain_window_backend(l2, (8, 3, 5), (0, 1, 2))
    assert chosen == "sdpa" and why.startswith("auto: table: NVIDIA H200 bfloat16 120 tokens")
    assert dispatch._choose_backend("auto", l2, l2, l2, 0.0, _geom(l2, (8, 3, 5))) == "sdpa"
    # L0: the table says fused; Triton cannot run a meta tensor: the next runnable, with why
    l0 = _probe((32, 24, 40), heads=4)
    chosen, why = explain_window_backend(l0, (2, 3, 5))
    assert chosen == "sdpa"
    assert "-> triton" in why and "skipped triton: device meta is not cuda" in why
    monkeypatch.setattr(dispatch, "can_run_triton", lambda *a, **kw: [])
    assert explain_window_backend(l0, (2, 3, 5))[0] == "triton"
    # an explicit backend and the environment override win over the table
    assert explain_window_backend(l2, (8, 3, 5), backend="reference") == (
        "reference", "backend='reference' asked for"
    )  # fmt: skip
    monkeypatch.setenv("LFVILA_KERNEL_BACKEND", "reference")
    assert explain_window_backend(l2, (8, 3, 5)) == ("reference", "LFVILA_KERNEL_BACKEND=reference")


def _geom(q, window):
    from lfvila.kernels.window_attn.geometry import window_geometry

    return window_geometry(q.shape[1:4], window)


def test_auto_on_cpu_tensors_is_the_reference_whatever_the_table(on_h200):
    q = _probe((32, 6, 10), device="cpu", dtype=torch.float32)
    assert explain_window_backend(q, (8, 3, 5)) == (
        "reference", "CPU tensors use the reference unless a backend is asked for by name"
    )  # fmt: skip
    assert explain_window_backend(q, (8, 3, 5), backend="sdpa")[0] == "sdpa"


def test_env_sdpa_applies_to_window_attention_only(monkeypatch):
    """LFVILA_KERNEL_BACKEND=sdpa: window attention runs SDPA; the losses, which have no SDPA
    route, choose as auto. Asked for by name, a loss's missing backend is an error."""
    monkeypatch.setenv("LFVILA_KERNEL_BACKEND", "sdpa")
    q = _probe((4, 6, 10), heads=2, device="cpu", dtype=torch.float32)
    assert explain_window_backend(q, (2, 3, 5)) == ("sdpa", "LFVILA_KERNEL_BACKEND=sdpa")
    a = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    assert torch.isfinite(contrastive_loss(a, a.flip(0)))
    with pytest.raises(ValueError, match="contrastive_loss backend 'sdpa' cannot run: "
                                         "contrastive_loss has no sdpa backend"):  # fmt: skip
        contrastive_loss(a, a.flip(0), backend="sdpa")


def test_the_writer_sums_a_window_size_over_its_cases_and_compares_shared_routes():
    """benchmarks/auto_table.py: per (dtype, tokens), the fwd+bwd times of the routes measured
    in every case of that key are summed (a layer's shifted and unshifted blocks); outside
    baselines, auto itself and other modes do not compete."""
    from benchmarks.auto_table import measured_entries

    def row(case, provider, ms, tokens=120, mode="fwd_bwd"):
        return dict(level="op", mode=mode, case=case, provider=provider, dtype="bfloat16",
                    tokens=tokens, median_ms=ms, gpu_ms=ms, name=f"{case}-{provider}")  # fmt: skip

    rows = [
        row("L2", "triton", 1.0), row("L2-shift", "triton", 2.5),  # 3.5 in all
        row("L2", "sdpa", 1.5), row("L2-shift", "sdpa", 1.5),  # 3.0: the winner
        row("L2", "reference", 0.1),  # not measured in L2-shift: cannot compete
        row("L2", "sdpa-windows", 0.1), row("L2-shift", "sdpa-windows", 0.1),  # a baseline
        row("L2", "auto", 0.1), row("L2-shift", "auto", 0.1),
        row("L2", "triton", 0.1, mode="fwd"),
        row("L0", "triton", 0.5, tokens=30), row("L0", "sdpa", 0.9, tokens=30),
    ]  # fmt: skip
    [l0, l2] = measured_entries(rows)
    assert (l0.tokens, l0.backend, l0.ms) == (30, "triton", (("triton", 0.5), ("sdpa", 0.9)))
    assert (l2.tokens, l2.backend, l2.cases) == (120, "sdpa", ("L2", "L2-shift"))
    assert l2.ms == (("sdpa", 3.0), ("triton", 3.5))


def test_the_table_lookup_is_a_constant_of_a_compiled_graph(on_h200):
    """What dispatch asks the table while torch.compile traces (a GPU block under regional
    compile) is evaluated eagerly: one graph, no break, the table's answer baked in."""

    def fn(x):
        first = auto_table.preferred_backend("cuda", 0, torch.bfloat16, 120)
        why = auto_table.preferred_reason("cuda", 0, torch.bfloat16, 30)
        return x + 1 if first == "sdpa" and why.startswith("table: NVIDIA H200") else x - 1

    compiled = torch.compile(fn, backend="eager", fullgraph=True)
    assert torch.equal(compiled(torch.zeros(3)), torch.ones(3))
