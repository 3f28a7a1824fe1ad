"""The package's shape, as docs/ARCHITECTURE.md promises it: short functions, the Trainer findable
at module level, one reader of the launcher's rank variables."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "chameleons"
MAX_FUNCTION_LINES = 60
MAX_FILE_LINES = 450
MAX_PARAMETERS = 6  # self and cls not counted; grouped settings travel as small frozen dataclasses


def _trees():
    return {p.name: ast.parse(p.read_text(encoding="utf-8")) for p in sorted(PACKAGE.rglob("*.py"))}


def test_no_function_is_over_60_lines():
    long = [f"{name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for name, tree in _trees().items() for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == []


def test_no_module_tool_or_bench_script_is_over_450_lines():
    files = [*PACKAGE.rglob("*.py"), *(PACKAGE.parent / "tools").glob("*.py"), *(PACKAGE.parent / "bench").glob("*.py")]
    assert len(files) > 60
    long = [f"{p.relative_to(PACKAGE.parent)} ({n} lines)" for p in sorted(files)
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_FILE_LINES]
    assert long == []


def _parameters(node) -> int:
    args = node.args
    names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
    return len(names) - (names[:1] in (["self"], ["cls"]))


def test_no_function_takes_more_than_6_parameters():
    wide = [f"{name}:{node.name} ({_parameters(node)})" for name, tree in _trees().items() for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _parameters(node) > MAX_PARAMETERS]
    assert wide == []


def test_the_trainer_subclass_is_a_module_level_class():
    tree = _trees()["trainer.py"]
    top = [n.name for n in tree.body if isinstance(n, ast.ClassDef)]
    assert "ChameleonsTrainer" in top


def test_only_launch_reads_the_rank_variables():
    readers = sorted({name for name, tree in _trees().items() for node in ast.walk(tree)
                      if isinstance(node, ast.Constant) and node.value in ("RANK", "WORLD_SIZE", "LOCAL_RANK")})
    assert readers == ["launch.py"]


@pytest.mark.parametrize("value, expected", [(None, True), ("0", True), ("3", False), ("x", True), ("-1", True)])
def test_maybe_rank_zero_never_silences_a_bad_rank(monkeypatch, value, expected):
    from chameleons.core import launch

    if value is None:
        monkeypatch.delenv("RANK", raising=False)
    else:
        monkeypatch.setenv("RANK", value)
    assert launch.maybe_rank_zero() is expected


def test_the_architecture_doc_names_every_module():
    doc = (PACKAGE.parent / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    modules = [f"{p.parent.name}/{p.name}" for p in sorted(PACKAGE.glob("*/*.py")) if p.stem != "__init__"]
    assert len(modules) > 50
    assert [m for m in modules if f"`{m}`" not in doc] == []


def test_every_test_the_docs_name_exists():
    """A promise in README.md or docs/ names the test that keeps it: a renamed or removed test
    must not leave the promise pointing at nothing."""
    import re

    root = PACKAGE.parent
    tests = {p.stem for p in (root / "tests").glob("test_*.py")}
    for p in (root / "tests").glob("test_*.py"):
        tests |= {n.name for n in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
                  if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}
    named = {m for doc in [root / "README.md", *sorted((root / "docs").glob("*.md"))]
             for m in re.findall(r"`(?:tests/)?(test_\w+)(?:\.py)?(?:::\w+)?`", doc.read_text(encoding="utf-8"))}
    assert len(named) > 20
    assert sorted(named - tests) == []
