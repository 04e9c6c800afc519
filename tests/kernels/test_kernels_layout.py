"""The kernels' layout (STYLE.md §2-3): no module of `lfvila.kernels` imports itself back through
others (module-level and function-level imports alike: the self-check is registered by the ops,
never imports them), only the Triton files import triton at module top, and the window-attention
room stays in files of about 400 lines."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2] / "kernels"
PACKAGE = "lfvila.kernels"
WINDOW_ATTN_MAX_LINES = 420  # "about 400" (issue 24)
KERNELS_MAX_LINES = 600


def _modules() -> dict[str, tuple[pathlib.Path, bool]]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        name = ".".join([PACKAGE, *(parts[:-1] if is_package else parts)])
        out[name] = (path, is_package)
    return out


def _imports(name, path, is_package, modules, top_level_only=False) -> set[str]:
    """The lfvila.kernels modules `name` imports (relative or absolute; `from X import y` is X.y
    when that is a module)."""
    package = name if is_package else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + [node.module or ""][:1])
                base = base.rstrip(".")
            else:
                base = node.module or ""
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                       for a in node.names]  # fmt: skip
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle (one path each), by depth-first search."""
    found, state, stack = [], {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, *where, modules) for name, where in modules.items()}


def test_no_import_circles_in_the_kernels():
    graph = _graph()
    # the package __init__ files re-export their rooms: edges into a package's own __init__ from
    # its members are the normal "from .. import x" and are no circle of their own
    assert f"{PACKAGE}._self_check" in graph
    assert not any(m.startswith(f"{PACKAGE}.window_attn") for m in graph[f"{PACKAGE}._self_check"])
    assert not any(m.startswith(f"{PACKAGE}.contrastive") for m in graph[f"{PACKAGE}._self_check"])
    inner = {n: {m for m in deps if not n.startswith(m + ".")} for n, deps in graph.items()}
    assert _cycles(inner) == []


def test_the_cycle_finder_finds_a_planted_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_only_the_triton_files_import_triton_at_module_top():
    allowed = {"_triton_utils.py"}
    for path in ROOT.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        top = {a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names}
        top |= {n.module for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
        if "triton" in top or "triton.language" in top:
            assert path.name.startswith("triton_") or path.name in allowed, path


def test_kernel_files_stay_small():
    for path in ROOT.rglob("*.py"):
        lines = len(path.read_text().splitlines())
        limit = WINDOW_ATTN_MAX_LINES if path.parent.name == "window_attn" else KERNELS_MAX_LINES
        assert lines <= limit, f"{path.relative_to(ROOT)}: {lines} lines (> {limit})"
