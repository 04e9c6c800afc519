"""The bisect's diagnostics of a failing cell (benchmarks/bisect_window_attention.py): the
two-pass backward's delta against rowsum(dO * O), and the row map (which rows of a tensor are over
their error bound, by batch, window, position, shift region, region boundary and loop trip of the
launch plan that ran). Needs torch and lfvila only: it runs on a bare GPU image beside the bisect.
"""

from __future__ import annotations

import math

import torch

from lfvila.kernels.window_attn.geometry import WindowGeometry
from lfvila.kernels.window_attn.reference import window_slots

# the launch arguments that count a loop's trips (the bisect's LaunchLog records them)
TRIP_KEYS = ("units", "units_per_program", "units_per_chunk", "total_windows")


# ----------------------------------------------------------------------------------------------
# Two-pass delta: pass 1's rowsum(dO * O) against torch's


def delta_check(
    delta: torch.Tensor, do: torch.Tensor, o: torch.Tensor
) -> tuple[str, tuple[torch.Tensor, float]]:
    """Pass 1's delta (B, T, H, W, heads) against rowsum(dO * O) in fp32 from the kernel's O.
    Each row's bound is D * 2**-24 * rowsum|dO * O| (an fp32 sum of D products in any order).
    Returns (text, (per-row error as a multiple of its row's bound, 1.0) for the row map)."""
    prod = do.float() * o.float()
    ref = prod.sum(-1)
    bound = prod.shape[-1] * 2.0**-24 * prod.abs().sum(-1)
    err = (delta.float() - ref).abs().double()
    err = torch.nan_to_num(err, nan=math.inf)
    ratio = torch.where(bound > 0, err / bound.double(), torch.where(err > 0, math.inf, 0.0))
    over = int((ratio > 1).sum())
    worst = ratio.max().item() if ratio.numel() else 0.0
    nan = int(torch.isnan(delta).sum())
    if over == 0:
        return f"ok {worst:.2g}x", (ratio, 1.0)
    text = f"{over}/{ratio.numel()} rows {worst:.2g}x" + (f", {nan} NaN" if nan else "")
    return text, (ratio, 1.0)


# ----------------------------------------------------------------------------------------------
# Row map: rows over bound -> batch, window, position, shift region, boundary, loop trip


def row_errors(out: torch.Tensor, truth: torch.Tensor, bound: float):
    """(per (token, head) row max |out - truth| (NaN -> inf), bound)."""
    err = torch.nan_to_num((out.double() - truth.double()).abs(), nan=math.inf)
    return (err.amax(-1) if err.dim() == 6 else err), bound


def _token_windows(geom: WindowGeometry):
    """Per real token of the map (flat t*H*W + h*W + w): its window, position, shift region;
    and per window whether it spans more than one shift region."""
    slots = window_slots(geom)
    src, region = slots["src"], slots["region"]  # (nW, N)
    n_tok = math.prod(geom.size)
    real = src.reshape(-1) < n_tok
    slot = torch.empty(n_tok, dtype=torch.long)
    slot[src.reshape(-1)[real]] = torch.arange(src.numel())[real]
    n = geom.tokens
    boundary = region.amax(1) != region.amin(1)
    return slot // n, slot % n, region.reshape(-1)[slot], boundary


def _loop_trips(plan: list[dict], rows: torch.Tensor, np_rows: int) -> dict:
    """{"fwd" | "bwd_q" | "bwd_kv": (what the trip is, trip per row)} from the launches' own
    arguments (the plan `fwd` and `bwd` computed): unit = row // BLOCK as the kernels number
    them (row = window * NP + position)."""
    last = {r["kernel"]: r for r in plan}
    loops = {}
    if (r := last.get("_fwd_kernel")) is not None:
        blk, per = r["consts"]["BLOCK"], r["args"]["units_per_program"]
        loops["fwd"] = (f"forward unit loop ({per} units of {blk} rows per program)",
                        (rows // blk) % per)  # fmt: skip
    if (r := last.get("_bwd_fused_kernel")) is not None:
        blk, per = r["consts"]["BLOCK"], r["args"]["units_per_chunk"]
        trip = (f"fused backward chunk loop ({per} units of {blk} rows per chunk)",
                (rows // blk) % per)  # fmt: skip
        loops["bwd_q"] = loops["bwd_kv"] = trip
    if (r := last.get("_bwd_dq_bias_kernel")) is not None:
        per = r["args"]["units_per_chunk"]
        loops["bwd_q"] = (f"dq pass window loop ({per} windows per chunk)",
                          (rows // np_rows) % per)  # fmt: skip
    if (r := last.get("_bwd_dkdv_kernel")) is not None:
        blk = r["consts"]["BLOCK"]
        loops["bwd_kv"] = (f"dk/dv pass: no window loop, one program per key block of {blk} "
                           "rows; by key block", (rows % np_rows) // blk)  # fmt: skip
    return loops


LOOP_OF = {"out": "fwd", "lse": "fwd", "dq": "bwd_q", "delta": "bwd_q", "dk": "bwd_kv",
           "dv": "bwd_kv"}  # fmt: skip


def row_map(case, batch: int, errors: dict, plan: list[dict]) -> dict:
    """{tensor: summary} of the rows over bound. errors: {name: (per-row error (B, T, H, W,
    heads), bound)}. A summary: rows, over, bound, worst, loop (what the trip is), by_trip
    {trip: [over, rows]}, boundary / interior [over, rows], by_region {region: [over, rows]},
    by_head {head: over}, top (up to 5 windows: b, w, grid cell, over, positions, regions of the
    window, regions over, trips over)."""
    geom = case.geometry()
    win, pos, region, boundary = _token_windows(geom)
    n_win, np_rows = geom.num_windows, geom.padded_tokens
    b = torch.arange(batch)[:, None]
    gwin = b * n_win + win[None, :]  # (B, tokens): the kernels' window index
    rows = gwin * np_rows + pos[None, :]
    loops = _loop_trips(plan, rows, np_rows)
    regions_of = window_slots(geom)["region"]
    _, nwh, nww = geom.grid
    summary = {"_geometry": dict(
        size=geom.size, window=geom.window, shift=geom.shift, N=geom.tokens, NP=np_rows,
        windows=n_win, boundary_windows=int(boundary.sum()), heads=case.spec.heads,
        launches=[_launch_text(r) for r in plan],
    )}  # fmt: skip
    for name, (err, bound) in errors.items():
        heads = err.shape[-1]
        over = (err.reshape(batch, -1, heads) > bound).cpu()  # (B, tokens, heads)
        per_tok = over.sum(-1)  # (B, tokens)
        total = per_tok.numel() * heads
        entry = dict(rows=total, over=int(over.sum()), bound=bound, worst=float(err.max()))
        label, trip = loops.get(LOOP_OF[name], ("no recorded launch", torch.zeros_like(rows)))
        entry["loop"] = label
        entry["by_trip"] = _histogram(trip, per_tok, heads)
        bnd = boundary[win][None, :].expand_as(per_tok)
        entry["boundary"] = [int(per_tok[bnd].sum()), int(bnd.sum()) * heads]
        entry["interior"] = [int(per_tok[~bnd].sum()), int((~bnd).sum()) * heads]
        entry["by_region"] = _histogram(region[None, :].expand_as(per_tok), per_tok, heads)
        entry["by_head"] = {h: int(c) for h, c in enumerate(over.sum((0, 1)).tolist()) if c}
        per_win = torch.zeros(batch * n_win, dtype=torch.long)
        per_win.index_add_(0, gwin.reshape(-1), per_tok.reshape(-1))
        top = []
        for w in per_win.argsort(descending=True, stable=True)[:5].tolist():
            if per_win[w] == 0:
                break
            bw, wi = divmod(w, n_win)
            sel = (gwin[bw] == w) & (per_tok[bw] > 0)
            top.append(dict(
                b=bw, w=wi, cell=(wi // (nwh * nww), wi // nww % nwh, wi % nww),
                over=int(per_win[w]), positions=sorted(pos[sel].tolist()),
                regions=sorted(set(regions_of[wi].tolist())),
                regions_over=sorted(set(region[sel].tolist())),
                trips=sorted(set(trip[bw][sel].tolist())),
            ))  # fmt: skip
        entry["top"] = top
        summary[name] = entry
    return summary


def _launch_text(record: dict) -> str:
    """'_fwd_kernel grid (4, 528) units=..., units_per_program=8, ..., BLOCK=64'."""
    shown = [f"{k}={record['args'][k]}" for k in TRIP_KEYS if k in record["args"]]
    shown += [f"{k}={record['consts'][k]}" for k in ("BLOCK", "BLOCK_Q", "NJ", "KEY_SPLIT")
              if k in record["consts"]]  # fmt: skip
    return f"{record['kernel']} grid {record['grid']} " + ", ".join(shown)


def _histogram(keys: torch.Tensor, over: torch.Tensor, heads: int) -> dict:
    """{key: [rows over bound, rows]} (rows = tokens x heads)."""
    keys, over = keys.reshape(-1).long(), over.reshape(-1).long()
    size = int(keys.max()) + 1 if keys.numel() else 0
    counts = torch.bincount(keys, minlength=size) * heads
    hits = torch.bincount(keys, weights=over.double(), minlength=size).long()
    return {k: [int(hits[k]), int(counts[k])] for k in range(size) if counts[k]}


def _ranges(values: list[int], limit: int = 6) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8' (the first `limit` runs)."""
    runs: list[list[int]] = []
    for x in values:
        if runs and x == runs[-1][1] + 1:
            runs[-1][1] = x
        else:
            runs.append([x, x])
    text = ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs[:limit])
    return text + (",..." if len(runs) > limit else "")


def _hist_text(hist: dict, limit: int = 12) -> str:
    items = list(hist.items())
    if len(items) > limit:  # many trips: those with rows over bound first, then the rest
        hot = [kv for kv in items if kv[1][0]]
        shown = hot[:limit]
        rest = [kv for kv in items if kv not in shown]
        over = sum(v[0] for _, v in rest)
        rows = sum(v[1] for _, v in rest)
        text = ", ".join(f"{k}: {o}/{n}" for k, (o, n) in shown)
        return text + f"; {len(rest)} others: {over}/{rows}"
    return ", ".join(f"{k}: {o}/{n}" for k, (o, n) in items)


def format_row_map(case, variant: str, batch: int, summary: dict) -> str:
    """The row map as Markdown: one line of geometry and launch plan, one bullet per tensor."""
    geo = summary["_geometry"]
    x = lambda t: "x".join(map(str, t))  # noqa: E731
    lines = [
        f"### Row map: {case.name} / {variant} (batch {batch})",
        "",
        f"map {x(geo['size'])}, window {x(geo['window'])}, shift {x(geo['shift'])}: N {geo['N']}, "
        f"NP {geo['NP']}, {batch} x {geo['windows']} windows ({geo['boundary_windows']} per batch "
        f"span shift regions), {geo['heads']} heads. Launches: " + "; ".join(geo["launches"]),
        "Rows = (token, head) pairs with error over the tensor's bound; `a/b` = rows over bound / "
        "rows. Region id = 9 rt + 3 rh + rw (0-2 per axis: the shift's three slices). Top "
        "windows: (batch, window (t, h, w cell)): rows over, positions n, regions of the window "
        "(over in), trips.",
        "",
    ]
    for name, e in summary.items():
        if name.startswith("_"):
            continue
        if not e["over"]:
            lines.append(f"- {name}: no row over bound (worst {e['worst']:.2e}, "
                         f"bound {e['bound']:.2e})")  # fmt: skip
            continue
        top = "; ".join(
            f"({t['b']}, {t['w']} {t['cell']}): {t['over']}, n {_ranges(t['positions'])}, "
            f"regions {t['regions']} (over in {t['regions_over']}), trips {t['trips']}"
            for t in e["top"]
        )
        lines.append(
            f"- {name}: {e['over']}/{e['rows']} rows over bound (bound {e['bound']:.2e}, worst "
            f"{e['worst']:.2e}). {e['loop']}, by trip: {_hist_text(e['by_trip'])}. Boundary "
            f"windows {e['boundary'][0]}/{e['boundary'][1]}, interior {e['interior'][0]}/"
            f"{e['interior'][1]}. By region: {_hist_text(e['by_region'], 27)}. By head: "
            f"{e['by_head']}. Top windows: {top}"
        )
    return "\n".join(lines) + "\n"
