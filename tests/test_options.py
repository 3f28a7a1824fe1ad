"""The flags as typed options: one field per flag, the parser built from the fields, and the
config's `seed` / `evals_per_epoch` read from one place whichever way they are given."""

import ast
import dataclasses
from pathlib import Path

import pytest

from chameleons.core.config import load_config
from chameleons.run import cli
from chameleons.predict import prediction

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "config_tiny_cpu.json")


def _train(*extra):
    return cli.parse_train_args(["--config", TINY, "--output_dir", "o", *extra])


def test_train_flags_parse_to_a_frozen_typed_object():
    opts = _train("--max_samples_per_user", "all", "--set", "training.learning_rate=1e-4", "--dry_run")
    assert isinstance(opts, cli.TrainOptions)
    assert opts.max_samples_per_user is None and opts.overrides == ["training.learning_rate=1e-4"] and opts.dry_run
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.seed = 3


def test_the_recorded_flags_are_every_flag_of_the_parser_in_order():
    """training_config.json's `args` keeps its keys (tools/compare_runs.py and prediction read them)."""
    parser = cli.train_parser()
    dests = [a.dest for a in parser._actions if a.dest != "help"]
    assert list(_train().as_record()) == dests
    assert "overrides" in dests and "--set" in parser.format_help()


def test_every_field_is_a_flag_with_its_default():
    opts = _train()
    for f in dataclasses.fields(cli.TrainOptions):
        if f.default is not dataclasses.MISSING and f.name != "nproc_per_node":
            assert getattr(opts, f.name) == f.default, f.name
    assert opts.nproc_per_node == 1  # filled from WORLD_SIZE (unset here)


@pytest.mark.parametrize("argv, seed, evals", [
    ([], 42, 2),
    (["--seed", "7"], 7, 2),
    (["--evals_per_epoch", "5"], 42, 5),
    (["--seed", "7", "--set", "training.seed=9"], 9, 2),  # an explicit --set wins over the shorthand
    (["--set", "training.evals_per_epoch=4", "--evals_per_epoch", "3"], 42, 4),
])
def test_seed_and_evals_per_epoch_live_in_the_config(argv, seed, evals):
    opts = _train(*argv)
    config = load_config(opts.config, opts.overrides, opts.config_flags())
    assert (config.training.seed, config.training.evals_per_epoch) == (seed, evals)
    resolved = config.resolved()
    assert resolved["training"]["seed"] == seed  # what the run records is what it uses
    assert resolved["overrides"] == opts.overrides  # the record lists the --set flags as given


def test_a_bad_value_from_a_shorthand_flag_names_that_flag(tmp_path, run_in_process):
    proc = run_in_process(["--config", TINY, "--output_dir", tmp_path / "o", "--dry_run", "--seed", "99999999999"],
                          cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: --seed 99999999999 (the flag sets training.seed, over {TINY}): key training.seed must be between 0 "
        f"and 2**32 - 1 (numpy's seed range), found 99999999999"]
    assert not (tmp_path / "o").exists()


def test_training_arguments_take_the_seed_from_the_config(tmp_path):
    from chameleons.train.model_setup import DevicePolicy
    from chameleons.train.training import training_arguments

    opts = _train("--seed", "11", "--max_epochs", "2")
    config = load_config(opts.config, opts.overrides, opts.config_flags())
    targs = training_arguments(opts, config, DevicePolicy(on_gpu=False, bf16=False, attn_implementation="sdpa"), [])
    assert (targs.seed, targs.data_seed, targs.num_train_epochs) == (11, 11, 2)


def test_predict_options_fill_candidates_from_num_samples():
    base = ["--config", TINY, "--input_file", "i.json", "--model", "m1", "--model", "m2", "--output_file", "o.json"]
    opts = prediction.parse_predict_args(base + ["--num_samples", "3"])
    assert isinstance(opts, cli.DataOptions) and opts.model == ["m1", "m2"] and opts.candidates_per_member == 3
    assert prediction.parse_predict_args(base + ["--candidates_per_member", "2"]).candidates_per_member == 2
    assert "the TRAINING file" in prediction.predict_parser().format_help()


def test_only_the_parsers_read_the_command_line():
    """Library code gets typed options or fields: no module but cli parses flags into a Namespace."""
    parsing = []
    for path in sorted((REPO / "chameleons").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in ("parse_args", "parse_known_args"):
                parsing.append(path.name)
            if isinstance(node, ast.Name) and node.id == "Namespace":
                parsing.append(path.name)
    assert set(parsing) == {"cli.py"}
