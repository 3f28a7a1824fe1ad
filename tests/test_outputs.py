import pytest

from chameleons.core.errors import UserError
from chameleons.core.outputs import check_output_dir, clear_previous_run, set_aside_previous_logs, write_json


def _old_run(tmp_path):
    (tmp_path / "checkpoint-8").mkdir()
    (tmp_path / "training_logs").mkdir()
    (tmp_path / "training_logs" / "metrics.jsonl").write_text("{}\n")
    write_json(tmp_path / "training_config.json", {"done": True})
    (tmp_path / "model.safetensors").write_bytes(b"old weights")
    (tmp_path / "notes.txt").write_text("mine\n")
    return tmp_path


def test_finished_or_unfinished_runs_are_refused_without_overwrite(tmp_path):
    run = _old_run(tmp_path)
    with pytest.raises(UserError, match="finished run"):
        check_output_dir(run, overwrite=False, resume=None, dry_run=False)
    (run / "training_config.json").unlink()
    with pytest.raises(UserError, match="unfinished run"):
        check_output_dir(run, overwrite=False, resume=None, dry_run=False)
    assert check_output_dir(run, overwrite=False, resume="auto", dry_run=False) is False
    assert check_output_dir(run, overwrite=False, resume=None, dry_run=True) is False


def test_auto_on_a_finished_run_means_nothing_to_do_and_a_path_is_refused(tmp_path):
    run = _old_run(tmp_path)
    assert check_output_dir(run, overwrite=False, resume="auto", dry_run=False) is True
    with pytest.raises(UserError, match="would train it further"):
        check_output_dir(run, overwrite=False, resume=str(run / "checkpoint-8"), dry_run=False)
    assert check_output_dir(run, overwrite=True, resume=str(run / "checkpoint-8"), dry_run=False) is False


def test_output_dir_that_is_a_file_or_under_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    for out in (tmp_path / "f", tmp_path / "f" / "sub"):
        with pytest.raises(UserError, match="is a file"):
            check_output_dir(out, overwrite=False, resume=None, dry_run=True)
    assert [p.name for p in tmp_path.iterdir()] == ["f"]  # the write probe leaves nothing behind


def test_written_files_follow_the_umask(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644


def test_overwrite_clears_only_the_old_run(tmp_path):
    run = _old_run(tmp_path)
    clear_previous_run(run)
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]


def test_fresh_start_sets_old_logs_aside(tmp_path):
    run = _old_run(tmp_path)
    set_aside_previous_logs(run)
    assert not (run / "training_logs").exists()
    kept = list(run.glob("training_logs.before-*"))
    assert len(kept) == 1 and (kept[0] / "metrics.jsonl").read_text() == "{}\n"
