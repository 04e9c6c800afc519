"""The house's layout (STYLE.md §2): the top level holds only the package's face and its rooms,
every room says what it is for and what it may import, no module of `lfvila/` imports itself
back through others (top-level and function-level imports alike), dependencies between rooms
point one way, and no file is over 600 lines.

`lfvila/kernels` (the folder `kernels/`) is left out: the kernels have their own layout."""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lfvila"

ROOMS = ("cli", "jobs", "retrieval", "model", "data", "training", "tasks", "prepare")
TOP_FILES = {"__init__.py", "__main__.py", "config.py", "_version.py"}
LAYER = {
    "_version": 0, "config": 0,
    "model": 1, "data": 1,
    "training": 2, "prepare": 2,
    "tasks": 3,
    "jobs": 4, "retrieval": 4,
    "cli": 5,
    "__main__": 6, "": 6,
}  # fmt: skip
"""Each room's place: a module may import rooms of a lower layer only (config at the bottom,
the command line and the package's face at the top; `data` feeds `training`, `retrieval`
stands beside `jobs`)."""
MAX_LINES = 600


def _modules() -> dict[str, tuple[pathlib.Path, bool]]:
    """Dotted name -> (file, is a package) for every module of lfvila/ but the kernels."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[1] == "kernels":
            continue
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        out[name] = (path, is_package)
    return out


def _imports(name: str, path: pathlib.Path, is_package: bool, modules) -> set[str]:
    """The lfvila modules `name` imports anywhere in its file (module level or inside a
    function), relative or absolute; `from X import y` counts as X.y when that is a module."""
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                       for a in node.names]  # fmt: skip
        else:
            continue
        for target in targets:
            if target == "lfvila.kernels" or target.startswith("lfvila.kernels."):
                continue
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, *where, modules) for name, where in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _room(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def test_no_import_cycles():
    graph = _graph()
    assert "lfvila.cli.parser" in graph and "lfvila.data.dali" in graph  # the walk sees them
    assert "lfvila.data.containers" in graph["lfvila.data.dali"]
    cycles = _cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_check_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_dependencies_between_rooms_point_one_way():
    wrong = []
    for module, targets in _graph().items():
        for target in targets:
            a, b = _room(module), _room(target)
            if a != b and not LAYER[a] > LAYER[b]:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the arrows of STYLE.md §2: " + ", ".join(sorted(wrong))


def test_top_level_holds_the_face_config_and_the_rooms():
    files = {p.name for p in PACKAGE.glob("*.py")}
    assert files == TOP_FILES, files ^ TOP_FILES
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders - {"kernels"} == set(ROOMS), folders ^ set(ROOMS)
    assert set(LAYER) >= {*ROOMS, "_version", "config"}


@pytest.mark.parametrize("room", ROOMS)
def test_each_room_says_what_it_is_and_what_it_may_import(room):
    doc = ast.get_docstring(ast.parse((PACKAGE / room / "__init__.py").read_text()))
    assert doc, f"lfvila/{room}/__init__.py has no docstring"
    assert "may import" in doc.lower(), f"lfvila/{room}/__init__.py: say what it may import"


def test_no_file_is_over_600_lines():
    long = {
        str(path.relative_to(ROOT)): n
        for path in PACKAGE.rglob("*.py")
        if "kernels" not in path.relative_to(PACKAGE).parts[:1]
        and (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"files over {MAX_LINES} lines: {long}"
