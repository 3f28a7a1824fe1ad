"""The validation-share guard (splitting.check_validation_share, `--accept_val_share`).

A corpus that is one conversation gives no validation; two equal scenes give half. Both are
one error line naming the largest conversations, before anything is written, in the dry run
and in training alike (the check runs right after the split, before the two part ways); the
flag lets the run through.
"""

import pytest

from chameleons.core.errors import UserError
from chameleons.corpus.data import extract_samples
from chameleons.corpus.leak_checks import named
from chameleons.corpus.splitting import SplitSettings, check_validation_share, split_train_val


def one_scene(build, n_lines=12, tag="a"):
    """Two characters taking turns in one scene: every item quotes the ones before."""
    lines, items = [], {"A": [], "B": []}
    for j in range(n_lines):
        who = "AB"[j % 2]
        text = f"{tag} scene line {j + 100 * len(tag)} from {who} with some words"
        if lines:
            items[who].append(build.item([("B" if who == "A" else "A", t) for _, t in lines[-6:]], text))
        lines.append((who, text))
    return [build.record(f"{tag}{w}", items[w], name=w) for w in "AB"]


def test_one_conversation_is_an_error_naming_it(build):
    samples = extract_samples(one_scene(build)).samples
    split = split_train_val(samples, SplitSettings(None, 42, 0.1))
    assert split.stats.validation == 0
    with pytest.raises(UserError) as exc:
        check_validation_share(split, path="d.json")
    msg = str(exc.value)
    assert msg.startswith("d.json: validation is 0 of 11") and "\n" not in msg
    assert f"{len(samples)} samples (from item" in msg and "a run needs validation samples" in msg
    with pytest.raises(UserError):  # an empty validation set cannot be accepted: training needs one
        check_validation_share(split, accept=True)


def test_two_equal_scenes_give_half_and_are_an_error(build):
    samples = extract_samples(one_scene(build, tag="a") + one_scene(build, tag="bb")).samples
    split = split_train_val(samples, SplitSettings(None, 42, 0.1))
    assert split.stats.validation_share == 0.5
    with pytest.raises(UserError, match="50.0%"):
        check_validation_share(split)


@pytest.mark.parametrize("check", ["conversation", "text"])
def test_many_small_conversations_pass(build, check):
    """Each N draws its share of the corpus's validation set; a small N may be off by chance
    (three standard deviations), not more."""
    samples = extract_samples(build.simple_corpus([5] * 40)).samples
    for seed in range(10):
        for n in (None, 1, 2, 3):
            check_validation_share(split_train_val(samples, SplitSettings(n, seed, 0.1, leak_check=named(check))))


def test_dry_run_refuses_and_writes_nothing(tmp_path, build, run_in_process):
    data = build.write_data(tmp_path / "d.json", one_scene(build))
    cfg = build.tiny_config(tmp_path, train_file=data)
    proc = run_in_process(["--config", cfg, "--dry_run", "--output_dir", tmp_path / "o"], cwd=tmp_path)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and err[0].startswith("error:") and "validation is 0 of" in err[0]
    assert not (tmp_path / "o").exists()
    proc = run_in_process(["--config", cfg, "--dry_run", "--output_dir", tmp_path / "o", "--accept_val_share"],
                          cwd=tmp_path)  # no validation sample at all: nothing to accept
    assert proc.returncode == 2 and "a run needs validation samples" in proc.stderr and not (tmp_path / "o").exists()
    data = build.write_data(tmp_path / "d.json", one_scene(build, tag="a") + one_scene(build, tag="bb"))
    proc = run_in_process(["--config", cfg, "--dry_run", "--output_dir", tmp_path / "o"], cwd=tmp_path)
    assert proc.returncode == 2 and "50.0%" in proc.stderr and "--accept_val_share" in proc.stderr
    proc = run_in_process(["--config", cfg, "--dry_run", "--output_dir", tmp_path / "o", "--accept_val_share"],
                          cwd=tmp_path)
    assert proc.returncode == 0 and (tmp_path / "o" / "plan.json").exists(), proc.stderr
