"""Disk space: refused up front when the first checkpoint cannot fit, a notice when all saves may
not, and a full disk during a write is one line (chameleons/train/diskspace.py). The free space is
faked (monkeypatched `shutil.disk_usage`); the full disk is a write that raises ENOSPC."""

import errno
import json
import types

import pytest
from conftest import REPO, simple_corpus, tiny_config, write_input

from chameleons.core.errors import UserError
from chameleons.train import diskspace

GiB = 2 ** 30
COST = {"checkpoint_bytes": 10 * GiB, "disk_bytes": 32 * GiB, "kept": 3}


def _free(monkeypatch, n_bytes):
    monkeypatch.setattr(diskspace.shutil, "disk_usage", lambda path: types.SimpleNamespace(free=n_bytes))


def test_first_checkpoint_that_cannot_fit_is_refused(tmp_path, monkeypatch):
    _free(monkeypatch, 4 * GiB)
    with pytest.raises(UserError) as info:
        diskspace.check_run_space(tmp_path / "out", COST)
    assert "4.0 GiB free" in str(info.value) and "10.0 GiB" in str(info.value) and "\n" not in str(info.value)


def test_all_saves_that_may_not_fit_are_a_notice(tmp_path, monkeypatch):
    _free(monkeypatch, 20 * GiB)
    notice = diskspace.check_run_space(tmp_path / "out", COST)
    assert "20.0 GiB free" in notice and "32.0 GiB" in notice and "3 checkpoints kept" in notice
    _free(monkeypatch, 40 * GiB)
    assert diskspace.check_run_space(tmp_path / "out", COST) is None
    assert diskspace.check_run_space(tmp_path / "out", None) is None  # not estimated: nothing claimed


class SafetensorError(Exception):
    """What safetensors' Rust writer raises on a full disk (its own exception type, not OSError)."""


@pytest.mark.parametrize("exc", [
    OSError(errno.ENOSPC, "No space left on device", "/out/checkpoint-2/optimizer.pt"),
    SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on '
                    'device" })'),
], ids=["oserror", "safetensors"])
def test_a_full_disk_during_a_write_is_one_line(exc):
    with pytest.raises(UserError) as info:
        with diskspace.full_disk_is_one_line("/out", "resume with auto"):
            raise exc
    message = str(info.value)
    assert message.startswith("disk full while writing ") and message.endswith("resume with auto")
    assert "\n" not in message
    if isinstance(exc, OSError):
        assert "/out/checkpoint-2/optimizer.pt" in message


def test_other_errors_pass_through():
    with pytest.raises(OSError, match="Permission denied"):
        with diskspace.full_disk_is_one_line("/out", "x"):
            raise OSError(errno.EACCES, "Permission denied")


def test_training_run_wraps_its_saves_in_the_full_disk_line():
    """Both places a run writes checkpoints and the final model sit inside the full-disk guard."""
    source = (REPO / "chameleons" / "train" / "training.py").read_text()
    body = source[source.index("    def train(self)"):source.index("    def report_stop(self)")]
    guarded = body.split("with diskspace.full_disk_is_one_line(self.opts.output_dir, DISK_FULL_THEN):")
    assert len(guarded) == 3
    assert guarded[1].lstrip().startswith("trainer.train(")
    assert "self.save_result()" in guarded[2].split("\n\n")[0]


def _dry_run_args(tmp_path):
    data = write_input(tmp_path / "data.json", simple_corpus([4, 3, 5]))
    return ["--config", tiny_config(tmp_path, train_file=data), "--output_dir", tmp_path / "out", "--dry_run"]


def test_dry_run_on_a_full_disk_is_refused_and_writes_nothing(tmp_path, monkeypatch, run_in_process):
    args = _dry_run_args(tmp_path)
    _free(monkeypatch, 1000)
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = run_in_process(args, cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: --output_dir"), proc.stderr
    assert "free on its disk" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_prediction_refuses_a_disk_smaller_than_its_input(tmp_path, monkeypatch, capsys):
    import predict_Chameleons

    from chameleons.core.errors import user_errors_exit

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    (model / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + bytes(4))
    data = write_input(tmp_path / "test.json", simple_corpus([2, 2]))
    config = tiny_config(tmp_path, train_file=data)
    _free(monkeypatch, 10)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(SystemExit) as info, user_errors_exit():
        predict_Chameleons.main(["--config", str(config), "--model", str(model),
                                 "--input_file", str(data), "--output_file", str(tmp_path / "pred.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1 and "free on its disk" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_prediction_script_wraps_its_run_in_the_full_disk_line():
    """Every write of a prediction run (shards, output, summary, evaluation) happens inside main(),
    which the script runs inside the full-disk guard."""
    source = (REPO / "predict_Chameleons.py").read_text()
    entry = source[source.index('if __name__ == "__main__":'):]
    assert "diskspace.full_disk_is_one_line(" in entry and entry.index("full_disk_is_one_line") < entry.index("main()")
