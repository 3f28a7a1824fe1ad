import pytest

from chameleons.errors import UserError
from chameleons.outputs import check_output_dir, clear_previous_run, set_aside_previous_logs, write_json


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
    check_output_dir(run, overwrite=False, resume="auto", dry_run=False)
    check_output_dir(run, overwrite=False, resume=None, dry_run=True)


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
