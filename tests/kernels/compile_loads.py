"""The compile report's global loads (tests/kernels/compile_for_gpu.py): every `ld.global` /
`cp.async` of a compiled kernel's LLVM IR (inline PTX) with its width in bytes, attributed to its
source line through the debug locations (inlined helpers included); the width of the bias-tile
loads (narrower than MIN_BIAS_LOAD_BYTES would be a gather, not a tile: the report fails it); and
the table of every load site of every kernel."""

from __future__ import annotations

import inspect
import os
import re

from lfvila.kernels.window_attn import triton_rows

# Loads narrower than this in the bias tile would mean a gather, not a tile (fails the check).
MIN_BIAS_LOAD_BYTES = 8


_DI_FILE = re.compile(r'^!(\d+) = !DIFile\(filename: "([^"]+)"')
_DI_SCOPE = re.compile(r"^!(\d+) = (?:distinct )?!DI(?:Subprogram|LexicalBlock\w*)\((.*)\)")
_DI_LOC = re.compile(r"^!(\d+) = !DILocation\(line: (\d+).*?scope: !(\d+)")
_LD = re.compile(r"ld\.global(?:\.\w+)*?(?:\.v(\d))?\.(?:b|u|s|f)(\d+)")
_CP = re.compile(r"cp\.async\.c[ag]\.shared\.global \[[^]]*\], \[[^]]*\], (0x[0-9a-fA-F]+|\d+)")


def global_loads(llir: str) -> dict[tuple[str, int], dict[int, int]]:
    """{(file name, line): {width in bytes: instruction count}} of one compiled kernel."""
    files, scope_file, locs = {}, {}, {}
    for line in llir.splitlines():
        if m := _DI_FILE.match(line):
            files[m.group(1)] = m.group(2)
        elif m := _DI_SCOPE.match(line):
            f = re.search(r"file: !(\d+)", m.group(2))
            scope_file[m.group(1)] = f.group(1) if f else None
        elif m := _DI_LOC.match(line):
            locs[m.group(1)] = (int(m.group(2)), m.group(3))
    sites: dict[tuple[str, int], dict[int, int]] = {}
    for line in llir.splitlines():
        if "asm" not in line or "!dbg" not in line:
            continue
        asm = line.split('"')[1] if '"' in line else ""
        width = None
        if m := _LD.search(asm):
            width = int(m.group(1) or 1) * int(m.group(2)) // 8
        elif m := _CP.search(asm):
            width = int(m.group(1), 0)
        if width is None:
            continue
        dbg = re.search(r"!dbg !(\d+)", line).group(1)
        lineno, scope = locs.get(dbg, (0, None))
        name = files.get(scope_file.get(scope), "?")
        counts = sites.setdefault((name, lineno), {})
        counts[width] = counts.get(width, 0) + 1
    return sites


def _bias_tile_site() -> tuple[str, int]:
    """(file, line) of the bias tile's `tl.load` in triton_rows.bias_tile."""
    lines, first = inspect.getsourcelines(triton_rows.bias_tile.fn)
    for offset, text in enumerate(lines):
        if "tl.load(" in text:
            return os.path.basename(triton_rows.__file__), first + offset
    raise RuntimeError("no tl.load in bias_tile")


BIAS_TILE_SITE = _bias_tile_site()


def _widths(counts: dict[int, int]) -> str:
    """{16: 8, 4: 2} -> '16Bx8 4Bx2'."""
    return " ".join(f"{w}Bx{n}" for w, n in sorted(counts.items(), reverse=True))


def load_summary(loads: dict) -> tuple[str, str, bool]:
    """(all global loads by width, the bias tile's widths, whether the bias tile is a gather)."""
    total: dict[int, int] = {}
    for counts in loads.values():
        for w, n in counts.items():
            total[w] = total.get(w, 0) + n
    bias = loads.get(BIAS_TILE_SITE, {})
    gather = any(w < MIN_BIAS_LOAD_BYTES for w in bias)
    return _widths(total), (_widths(bias) if bias else "-"), gather


def load_sites(found, results, modules) -> list[str]:
    """Every global-load site of every kernel with the widths its variants compile it to."""
    sites: dict[tuple[str, tuple[str, int]], dict[int, int]] = {}
    for v, r in zip(found, results):
        for site, counts in r.get("loads", {}).items():
            merged = sites.setdefault((v.fn.__name__, site), {})
            for w in counts:
                merged[w] = merged.get(w, 0) + 1  # variants that load this site at width w
    lines = [
        "Global-load sites (source line of each `ld.global` / `cp.async`, widths in bytes, and in "
        "how many of the kernel's variants); the bias tile is "
        f"`{BIAS_TILE_SITE[0]}:{BIAS_TILE_SITE[1]}`:",
        "",
        "| kernel | site | source | widths (variants) |",
        "|---|---|---|---|",
    ]
    for (kernel, (name, line)), counts in sorted(sites.items()):
        text = _source_line(modules, name, line).replace("|", "/")
        widths = " ".join(f"{w}B ({n})" for w, n in sorted(counts.items(), reverse=True))
        lines.append(f"| {kernel} | {name}:{line} | `{text}` | {widths} |")
    return lines


def _source_line(modules, name: str, line: int) -> str:
    for module in modules:
        if os.path.basename(module.__file__) == name:
            with open(module.__file__) as f:
                source = f.read().splitlines()
            return source[line - 1].strip()[:90] if 0 < line <= len(source) else "?"
    return "?"
