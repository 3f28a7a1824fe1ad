"""The package's import graph: no cycle, and every import points down the stages (a module of a
stage imports its own stage or one below it, never one above, not even inside a function: a lazy
import hides the arrow from Python, not from the reader)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "chameleons"
STAGES = ["core", "corpus", "text", "run", "evaluate", "predict", "train"]  # bottom to top


def _imported(tree: ast.AST, own: str, modules: dict) -> set:
    """The package modules ('stage.module') a module imports anywhere in its body."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                base = [own]
            elif node.level == 2:
                base = []
            elif (node.module or "").split(".")[0] == "chameleons":
                base, node_module = [], node.module.split(".", 1)[1] if "." in node.module else None
                found.update(_names(base, node_module, node.names, modules))
                continue
            else:
                continue
            found.update(_names(base, node.module, node.names, modules))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "chameleons" and ".".join(parts[1:3]) in modules:
                    found.add(".".join(parts[1:3]))
    return found & set(modules)


def _names(base: list, module, names, modules: dict) -> set:
    path = base + (module.split(".") if module else [])
    if ".".join(path[:2]) in modules:
        return {".".join(path[:2])}
    return {".".join(path + [a.name]) for a in names}


def import_graph(package: Path = PACKAGE) -> dict:
    """{'stage.module': {'stage.module', ...}} for every module of every stage package."""
    modules = {f"{p.parent.name}.{p.stem}": p for p in package.glob("*/*.py") if p.stem != "__init__"}
    return {m: _imported(ast.parse(p.read_text(encoding="utf-8")), m.split(".")[0], modules) - {m}
            for m, p in sorted(modules.items())}


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


def upward_imports(graph: dict, stages: list = STAGES) -> list:
    return sorted(f"{m} -> {n}" for m, targets in graph.items() for n in targets
                  if stages.index(n.split(".")[0]) > stages.index(m.split(".")[0]))


def _package(tmp_path, files: dict) -> Path:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_find_cycle_sees_a_function_level_import(tmp_path):
    package = _package(tmp_path, {"a/low.py": "def f():\n    from .high import X\n    return X\n",
                                  "a/high.py": "from .low import f\nX = 1\n",
                                  "b/other.py": "import chameleons.a.low\n"})
    graph = import_graph(package)
    assert graph == {"a.high": {"a.low"}, "a.low": {"a.high"}, "b.other": {"a.low"}}
    assert find_cycle(graph) in (["a.high", "a.low", "a.high"], ["a.low", "a.high", "a.low"])


def test_an_upward_import_is_seen_in_every_spelling(tmp_path):
    package = _package(tmp_path, {"low/a.py": "def f():\n    from ..high import b\n",
                                  "low/c.py": "from chameleons.high.b import X\n",
                                  "low/d.py": "from ..high.b import X\n",
                                  "high/b.py": "from ..low import a\nX = 1\n"})
    assert upward_imports(import_graph(package), ["low", "high"]) == ["low.a -> high.b", "low.c -> high.b",
                                                                    "low.d -> high.b"]


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle == [], " -> ".join(cycle)


def test_imports_point_down_the_stages():
    graph = import_graph()
    assert {m.split(".")[0] for m in graph} == set(STAGES)
    assert upward_imports(graph) == []


def test_every_module_lives_in_a_stage():
    assert [p.name for p in PACKAGE.glob("*.py")] == ["__init__.py"]
