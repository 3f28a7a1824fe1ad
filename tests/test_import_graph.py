"""The package's import graph has no cycle: a module low in the graph never imports one above it,
not even inside a function (a lazy import hides the cycle from Python, not from the reader)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "chameleons"


def _imported(tree: ast.AST, modules: set) -> set:
    """The package modules a module imports anywhere in its body (relative or `chameleons.x`)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:  # from . import a, b
                found.update(alias.name for alias in node.names)
            elif node.level == 0 and node.module and node.module.split(".")[0] == "chameleons":
                parts = node.module.split(".")
                found.update([parts[1]] if len(parts) > 1 else [alias.name for alias in node.names])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "chameleons" and len(parts) > 1:
                    found.add(parts[1])
    return found & modules


def import_graph(package: Path = PACKAGE) -> dict:
    modules = {p.stem for p in package.glob("*.py") if p.stem != "__init__"}
    return {m: _imported(ast.parse((package / f"{m}.py").read_text(encoding="utf-8")), modules) - {m}
            for m in sorted(modules)}


def find_cycle(graph: dict) -> list:
    """One cycle as [a, b, ..., a], or [] (depth-first search, colouring the modules on the path)."""
    state, path = {}, []

    def visit(m):
        state[m] = "open"
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                return path[path.index(n):] + [n]
            if n not in state:
                cycle = visit(n)
                if cycle:
                    return cycle
        path.pop()
        state[m] = "done"
        return []

    for m in sorted(graph):
        if m not in state:
            cycle = visit(m)
            if cycle:
                return cycle
    return []


def test_find_cycle_sees_a_function_level_import(tmp_path):
    (tmp_path / "low.py").write_text("def f():\n    from .high import X\n    return X\n")
    (tmp_path / "high.py").write_text("from .low import f\nX = 1\n")
    (tmp_path / "other.py").write_text("import chameleons.low\n")
    graph = import_graph(tmp_path)
    assert graph == {"high": {"low"}, "low": {"high"}, "other": {"low"}}
    assert find_cycle(graph) in (["high", "low", "high"], ["low", "high", "low"])


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle == [], " -> ".join(cycle)
