"""A flag's allowed values live in one place: the parsers take them from the modules that give
them meaning, the docs' flag tables list the same values, and `--val_leak_check` is decided
once (`leak_checks.named`), by classes that describe themselves."""

import ast
import re
from pathlib import Path

import pytest

from chameleons.corpus import leak_checks
from chameleons.run.cli import train_parser
from chameleons.predict.prediction import predict_parser

REPO = Path(__file__).resolve().parents[1]
ROW = re.compile(r"^\| `(--\w+) ([^`]+)`", re.MULTILINE)


def _choices(parser) -> dict:
    return {a.option_strings[0]: list(a.choices) for a in parser._actions if a.choices and a.option_strings}


def _documented(doc: Path) -> dict:
    """`--flag a\\|b` rows of a doc's flag table: the values they list."""
    return {flag: values.split("\\|") for flag, values in ROW.findall(doc.read_text(encoding="utf-8"))}


@pytest.mark.parametrize("parser, docs", [(train_parser, ["README.md"]),
                                          (predict_parser, ["README.md", "docs/PREDICTION.md"])])
def test_the_flag_tables_list_the_parsers_choices(parser, docs):
    """Prediction's flags shared with training are in README's table, its own in PREDICTION.md's."""
    choices, documented = _choices(parser()), {}
    for doc in docs:
        documented.update(_documented(REPO / doc))
    assert choices  # the parser has flags with choices, so the comparison below can fail
    assert {flag: documented.get(flag) for flag in choices} == choices


def test_each_leak_check_is_named_once_and_describes_itself():
    assert leak_checks.NAMES == ("conversation", "text")
    assert [leak_checks.named(n).name for n in leak_checks.NAMES] == list(leak_checks.NAMES)
    with pytest.raises(ValueError, match="conversation, text"):
        leak_checks.named("words")
    action = next(a for a in train_parser()._actions if a.dest == "val_leak_check")
    assert tuple(action.choices) == leak_checks.NAMES and action.default == leak_checks.CONVERSATION.name
    for check in leak_checks.LEAK_CHECKS:
        assert f"'{check.name}': {check.description}" in action.help


def _compares_a_leak_check_name(tree) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for side in [node.left, *node.comparators]:
                values = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
                if any(isinstance(v, ast.Constant) and v.value in leak_checks.NAMES for v in values):
                    return True
    return False


def test_only_leak_checks_compares_a_leak_check_name():
    assert _compares_a_leak_check_name(ast.parse('if check == "text":\n    pass'))  # the detector can fail
    files = sorted((REPO / "chameleons").rglob("*.py")) + sorted(REPO.glob("*.py"))
    found = [p.name for p in files if _compares_a_leak_check_name(ast.parse(p.read_text(encoding="utf-8")))]
    assert found == []
