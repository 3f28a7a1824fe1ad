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


def test_no_module_is_over_450_lines():
    long = [f"{p.name} ({n} lines)" for p in sorted(PACKAGE.rglob("*.py"))
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
