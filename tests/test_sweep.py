"""--sweep (chameleons/run/sweep.py): which runs a sweep makes, how their folders are named, and
that each run's options are those of the separate command that trains it."""

import pytest

from chameleons.core.errors import UserError
from chameleons.run import sweep
from chameleons.run.cli import parse_train_args

BASE = ["--config", "c.json", "--output_dir", "out", "--max_samples_per_user", "2", "--set", "training.seed=3"]


def test_every_combination_in_the_order_given_each_the_separate_commands_options():
    argv = [*BASE, "--sweep", "sample_seed=42,43", "--sweep=ablation_config=context_only,profile_only"]
    points = sweep.points(parse_train_args(argv), argv)
    assert [name for name, _ in points] == [
        "sample_seed-42_ablation_config-context_only", "sample_seed-42_ablation_config-profile_only",
        "sample_seed-43_ablation_config-context_only", "sample_seed-43_ablation_config-profile_only"]
    name, opts = points[1]
    alone = parse_train_args([*BASE, "--sample_seed", "42", "--ablation_config", "profile_only",
                              "--output_dir", f"out/{name}"])
    assert opts == alone and opts.sweep == [] and opts.max_samples_per_user == 2


def test_a_config_key_is_swept_as_set_and_wins_over_the_commands_own():
    argv = [*BASE, "--sweep", "training.seed=5,6"]
    points = sweep.points(parse_train_args(argv), argv)
    assert [name for name, _ in points] == ["training.seed-5", "training.seed-6"]
    assert points[0][1].overrides == ["training.seed=3", "training.seed=5"]  # applied in order: the sweep's last


def test_without_sweep_the_command_is_the_one_run():
    opts = parse_train_args(BASE)
    assert sweep.points(opts, BASE) == [(None, opts)]


def test_folder_names_keep_only_safe_characters():
    assert sweep.run_name([("config", "configs/a b.json"), ("training.learning_rate", "2e-4")]) == \
        "config-configs_a_b.json_training.learning_rate-2e-4"


@pytest.mark.parametrize("text, words", [
    ("sample_seed", "expected FLAG=V1,V2"),
    ("sample_seed=", "expected FLAG=V1,V2"),
    ("output_dir=a,b", "output_dir is not a flag a sweep can vary"),
    ("nope=1,2", "nope is not a flag a sweep can vary"),
])
def test_a_bad_sweep_is_one_error(text, words):
    with pytest.raises(UserError, match=words):
        sweep.parse([text])


def test_a_key_swept_twice_is_an_error():
    with pytest.raises(UserError, match="sample_seed is swept twice"):
        sweep.parse(["sample_seed=1,2", "sample_seed=3"])


def test_a_bad_value_is_the_flags_own_error(capsys):
    argv = [*BASE, "--sweep", "sample_seed=42,x"]
    with pytest.raises(SystemExit) as exc:
        sweep.points(parse_train_args(argv), argv)
    assert exc.value.code == 2 and "--sample_seed: invalid int value: 'x'" in capsys.readouterr().err


def test_each_run_reports_to_its_own_wandb_group_and_tags():
    from chameleons.run import tracking

    argv = [*BASE, "--sweep", "ablation_config=context_only,profile_only", "--sweep", "sample_seed=7,8"]
    groups = [(tracking.wandb_group(o), tracking.wandb_tags(o)) for _, o in sweep.points(parse_train_args(argv), argv)]
    assert groups == [("context_only_N2", ["context_only", "N2", "seed7"]), ("context_only_N2", ["context_only", "N2", "seed8"]),
                      ("profile_only_N2", ["profile_only", "N2", "seed7"]), ("profile_only_N2", ["profile_only", "N2", "seed8"])]


@pytest.mark.parametrize("values", ["sample_seed=1,1", "config=a/b.json,a_b.json"])
def test_two_runs_sharing_a_folder_is_an_error(values):
    argv = [*BASE, "--sweep", values]
    with pytest.raises(UserError, match="two runs would share the folder"):
        sweep.points(parse_train_args(argv), argv)


def test_a_switch_is_swept_as_true_and_false():
    argv = [*BASE, "--sweep", "resample_each_epoch=true,false"]
    points = sweep.points(parse_train_args(argv), argv)
    assert [(name, o.resample_each_epoch) for name, o in points] == [("resample_each_epoch-true", True),
                                                                     ("resample_each_epoch-false", False)]
    argv = [*BASE, "--resample_each_epoch", "--sweep", "resample_each_epoch=false"]  # the sweep decides
    assert sweep.points(parse_train_args(argv), argv)[0][1].resample_each_epoch is False
    argv = [*BASE, "--sweep", "resample_each_epoch=yes"]
    with pytest.raises(UserError, match="is a switch; sweep it as resample_each_epoch=true,false"):
        sweep.points(parse_train_args(argv), argv)


def test_settle_heap_takes_what_lives_now_out_of_the_collectors_walk():
    """DeepSpeed collects garbage several times per engine; each full collection walked the corpus,
    the tokenized rows and every import again (0.3 s apiece on the demo): a run freezes them first."""
    import gc

    from chameleons.train.model_setup import settle_heap

    before = gc.get_freeze_count()
    alive = [[n] for n in range(1000)]
    try:
        settle_heap()
        assert gc.get_freeze_count() >= before + len(alive)
    finally:
        gc.unfreeze()
