"""The GPU bisect's new instruments on the CPU (interpreter): the toolkit-ptxas and no-int-spec
variants, the per-row error map of a failing cell, and the two-pass delta check
(benchmarks/bisect_window_attention.py; issue 24, item 6)."""

from __future__ import annotations

import inspect
import re

import pytest

from benchmarks import bisect_variants
from benchmarks import bisect_window_attention as bisect
from lfvila.kernels.window_attn import triton_impl
from lfvila.kernels.window_attn.reference import window_slots

PACKED = "tiny-packed-shift:fp32"  # NP 32: two windows per 64-row unit, fused backward
TWO_PASS = "tiny-multi-tile-shift:fp32"  # NP 128: the two-pass backward (pass 1 writes delta)


def _table(tmp_path) -> str:
    return (tmp_path / "bisect_table.md").read_text()


def test_new_variants_run_in_smoke_mode(tmp_path):
    """toolkit-ptxas runs in a child process of its own with TRITON_PTXAS_PATH set (even with
    --jobs 1), no-int-spec in this one; the notes name both ptxas binaries and their versions."""
    toolkit = bisect.find_toolkit_ptxas()
    argv = ["--smoke", "--cases", PACKED, "--variants", "toolkit-ptxas,no-int-spec", "--jobs",
            "1", "--out", str(tmp_path)]  # fmt: skip
    assert bisect.main(argv) == 0
    text = _table(tmp_path)
    assert f"ptxas: Triton's bundled {bisect.bundled_ptxas()}" in text
    if toolkit is None:
        assert f"| {PACKED} | no toolkit ptxas | ok |" in text
        return
    assert f"| {PACKED} | ok | ok |" in text
    assert f"toolkit {toolkit} {bisect.ptxas_version(toolkit)}" in text
    # the child's own Triton resolved the toolkit's binary: the environment reached it
    assert f"the toolkit-ptxas process's Triton resolved {toolkit} " in text
    assert (tmp_path / "bisect_cells_toolkit-ptxas.json").exists()


def test_toolkit_ptxas_missing_is_a_cell_not_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(bisect_variants, "find_toolkit_ptxas", lambda: None)
    argv = ["--smoke", "--cases", PACKED, "--variants", "toolkit-ptxas", "--out", str(tmp_path)]
    assert bisect.main(argv) == 0
    text = _table(tmp_path)
    assert f"| {PACKED} | no toolkit ptxas |" in text and "ERR" not in text
    assert "no toolkit ptxas found" in text


def test_no_int_spec_rewraps_the_integer_arguments():
    s = ["s_b", "s_t", "s_h", "s_w", "s_n"]
    g = ["g_b", "g_t", "g_h", "g_w", "g_n"]
    expected = {
        "_fwd_kernel": [*s, "s_bh", "s_pn", "total_windows", "units", "units_per_program",
                        "heads"],
        "_bwd_fused_kernel": [*s, *g, "s_bh", "s_pn", "total_windows", "heads", "units_per_chunk"],
        "_bwd_dq_bias_kernel": [*s, *g, "s_bh", "s_pn", "total_windows", "heads",
                                "units_per_chunk"],
        "_bwd_dkdv_kernel": [*s, *g, "s_bh", "s_pn", "total_windows", "heads"],
    }  # fmt: skip
    rewrapped = bisect.no_int_spec_kernels()
    assert {n: names for n, (_, names) in rewrapped.items()} == expected
    for name, (kernel, names) in rewrapped.items():
        shipped = getattr(triton_impl, name)
        assert kernel is not shipped and kernel.fn is shipped.fn
        # every other runtime argument is a pointer (capitalised) or a float: none is missed
        others = [p.name for p in inspect.signature(shipped.fn).parameters.values()
                  if p.name not in names and "constexpr" not in str(p.annotation)
                  and p.name not in ("scale", "qk_scale", "mask_log2")
                  and not p.name[0].isupper()]  # fmt: skip
        assert others == [], (name, others)
    # the compiled path's JITFunction takes the names (the interpreter ignores them)
    from triton.runtime.jit import JITFunction

    fwd = JITFunction(triton_impl._fwd_kernel.fn, do_not_specialize=expected["_fwd_kernel"])
    assert [p.name for p in fwd.params if p.do_not_specialize] == expected["_fwd_kernel"]
    with bisect.VARIANTS["no-int-spec"]():
        assert triton_impl._bwd_fused_kernel is rewrapped["_bwd_fused_kernel"][0]
    assert triton_impl._bwd_fused_kernel is bisect._SHIPPED_KERNELS["_bwd_fused_kernel"]


def _windows_of_trip(case, batch: int, trip: int, per_chunk: int, block: int):
    """(batch, window) pairs whose rows the fused backward's chunk loop handles at `trip`: the
    kernels number rows window * NP + position and units row // BLOCK."""
    geom = case.geometry()
    np_rows, n_win = geom.padded_tokens, geom.num_windows
    return [(b, w) for b in range(batch) for w in range(n_win)
            if ((b * n_win + w) * np_rows // block) % per_chunk == trip]  # fmt: skip


def test_row_map_of_a_wrong_loop_trip(tmp_path, monkeypatch):
    """A backward whose dq is wrong in the fused chunk loop's second trip only: the baseline cell
    fails and its row map, appended to the table, puts every row over bound at trip 1."""
    case = bisect.parse_case(PACKED)
    batch, geom = 2, case.geometry()
    # the launch plan of this shape on the CPU: 8 units, 4 chunks of 2 units (see the map)
    bad = _windows_of_trip(case, batch, trip=1, per_chunk=2, block=triton_impl.BWD_BLOCK)
    src = window_slots(geom)["src"]
    n_tok = geom.size[0] * geom.size[1] * geom.size[2]
    bwd = triton_impl.bwd

    def wrong(*args, **kwargs):
        dq, *rest = bwd(*args, **kwargs)
        flat = dq.view(dq.shape[0], n_tok, *dq.shape[-2:])
        for b, w in bad:
            tokens = src[w][src[w] < n_tok]
            flat[b, tokens] *= 1.5
        return (dq, *rest)

    monkeypatch.setattr(triton_impl, "bwd", wrong)
    argv = ["--smoke", "--cases", PACKED, "--variants", "baseline", "--out", str(tmp_path)]
    assert bisect.main(argv) == 0
    text = _table(tmp_path)
    assert re.search(rf"\| {re.escape(PACKED)} \| dq \S+x \|", text), text
    assert f"### Row map: {PACKED} / baseline (batch 2)" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("- dq:"))
    over = int(re.match(r"- dq: (\d+)/", line).group(1))
    assert over > 0
    assert "fused backward chunk loop (2 units of 64 rows per chunk)" in line
    assert re.search(rf"by trip: 0: 0/\d+, 1: {over}/\d+\.", line), line
    # every window named among the top ones is one the planted bug touched
    for b, w in re.findall(r"\((\d+), (\d+) \(\d+, \d+, \d+\)\)", line):
        assert (int(b), int(w)) in bad
    assert "- dk: no row over bound" in text and "- out: no row over bound" in text
    assert "_bwd_fused_kernel grid (2, 4) units_per_chunk=2" in text


def test_delta_check_flags_a_wrong_delta(monkeypatch):
    """Pass 1's delta as handed to pass 2 (the scratch hook) against torch's rowsum(dO * O)."""
    case = bisect.parse_case(TWO_PASS)
    log = bisect.LaunchLog()
    good = bisect.run_cell(case, "baseline", 1, "cpu", log)
    assert good.cell == "ok" and good.delta.startswith("ok") and not good.failed
    bwd = triton_impl.bwd

    def wrong_delta(*args, scratch=None, **kwargs):
        grads = bwd(*args, scratch=scratch, **kwargs)
        if scratch is not None:
            scratch["delta"].view(-1)[:7] += 1.0
            scratch["delta"].view(-1)[7] = float("nan")
        return grads

    monkeypatch.setattr(triton_impl, "bwd", wrong_delta)
    bad = bisect.run_cell(case, "baseline", 1, "cpu", log, rowmap="failed")
    rows = 4 * 6 * 7 * case.spec.heads
    assert bad.cell == "ok"  # the gradients were computed before the corruption
    assert bad.delta.startswith(f"8/{rows} rows inf") and bad.delta.endswith(", 1 NaN")
    assert bad.failed and "- delta: 8/" in bad.rowmap and "dq pass window loop" in bad.rowmap


@pytest.mark.parametrize("values,text", [([0, 1, 2, 5, 7, 8], "0-2,5,7-8"), ([], "")])
def test_ranges(values, text):
    assert bisect._ranges(values) == text


def test_fused_path_has_no_delta():
    """The scratch hook adds nothing on the fused path (delta stays in registers there)."""
    res = bisect.run_cell(bisect.parse_case(PACKED), "baseline", 1, "cpu", bisect.LaunchLog())
    assert res.cell == "ok" and res.delta == "" and res.rowmap == ""
