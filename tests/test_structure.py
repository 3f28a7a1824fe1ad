"""The package's shape, as docs/ARCHITECTURE.md promises it: short functions, the Trainer findable
at module level, one reader of the launcher's rank variables."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "chameleons"
MAX_FUNCTION_LINES = 60


def _trees():
    return {p.name: ast.parse(p.read_text(encoding="utf-8")) for p in sorted(PACKAGE.glob("*.py"))}


def test_no_function_is_over_60_lines():
    long = [f"{name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for name, tree in _trees().items() for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == []


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
    from chameleons import launch

    if value is None:
        monkeypatch.delenv("RANK", raising=False)
    else:
        monkeypatch.setenv("RANK", value)
    assert launch.maybe_rank_zero() is expected
