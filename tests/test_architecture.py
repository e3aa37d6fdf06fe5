"""The shape of ``artclf_core``, checked from its imports (docs/architecture.md).

Every import counts, the lazy ones inside functions and those under ``TYPE_CHECKING`` too: a
module that imports another only to run it later still depends on it. Run alone with
``pytest tests/test_architecture.py``; it needs nothing but the source tree.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "artclf_core"

#: Layers, bottom up. A module may import its own package and any package of a lower layer,
#: never a package of its own layer or a higher one. ``artclf_core`` itself (the constants),
#: ``config`` and ``native_logs`` are the ground everything stands on.
LAYERS: dict[str, int] = {
    "": 0,  # artclf_core/__init__.py
    "config": 0,
    "native_logs": 0,
    "images": 1,
    "lake": 2,
    "model": 2,
    "catalogue": 3,
    "ingest": 4,
    "lifecycle": 4,
    "embedded": 4,
    "cli": 5,
    "web": 5,
}
#: No module longer than this many lines (issue 31: ~600).
MAX_LINES = 610


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(("artclf_core", *parts))] = path
    return found


def imports(path: Path, known: set[str]) -> set[str]:
    """The artclf_core modules ``path`` imports (a name imported from a package counts as its
    submodule when there is one)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if not node.module.startswith("artclf_core"):
                continue
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.add(sub if sub in known else node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("artclf_core"))
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: relative import; use absolute artclf_core imports")
    return out


def package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports(p, set(mods)) - {m} for m, p in mods.items()}


def test_every_package_has_a_layer():
    assert {package(m) for m in modules()} <= set(LAYERS)


def test_imports_only_go_down():
    upward = [
        f"{m} imports {d}"
        for m, deps in graph().items()
        for d in deps
        if package(d) != package(m) and LAYERS[package(d)] >= LAYERS[package(m)]
    ]
    assert upward == []


def test_no_import_circles():
    """Tarjan's strongly connected components over the module graph: every one of size 1."""
    g = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in g.get(v, ()):
            if w not in g:
                continue
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
                circles.append(sorted(component))

    for v in g:
        if v not in index:
            visit(v)
    assert circles == []


def test_core_never_imports_airflow():
    for module, path in modules().items():
        tree = ast.parse(path.read_text())
        names = [
            n.module if isinstance(n, ast.ImportFrom) else a.name
            for n in ast.walk(tree)
            if isinstance(n, ast.Import | ast.ImportFrom)
            for a in (n.names if isinstance(n, ast.Import) else [None])
            if (n.module if isinstance(n, ast.ImportFrom) else a.name)
        ]
        assert not [n for n in names if n.split(".")[0] == "airflow"], module


@pytest.mark.parametrize("path", sorted(ROOT.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_is_too_long(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES
