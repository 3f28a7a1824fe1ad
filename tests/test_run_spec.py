"""The run spec (chameleons/run/run_spec.py): what `diff` sees, what older records read back as,
and what a damaged record says."""

import json

import pytest

from chameleons.core.config import load_config
from chameleons.core.errors import UserError
from chameleons.run.cli import parse_train_args
from chameleons.run.run_spec import RunSpec


def _spec(cfg, *overrides, flags=()):
    opts = parse_train_args(["--config", str(cfg), "--output_dir", "o", *flags,
                             *[a for o in overrides for a in ("--set", o)]])
    return RunSpec.from_options(opts, load_config(cfg, list(overrides)))


def test_a_section_on_one_side_only_is_a_difference(tmp_path, build):
    cfg = build.tiny_config(tmp_path)
    lora = tmp_path / "lora.json"
    lora.write_text(json.dumps({**json.loads(cfg.read_text()),
                                "lora": {"r": 8, "alpha": 16, "target_modules": ["q_proj"]}}))
    diff = [str(d) for d in _spec(cfg).diff(_spec(lora))]
    assert "lora.r (null -> 8)" in diff and "lora.alpha (null -> 16)" in diff, diff


def test_what_does_not_change_a_result_is_no_difference(tmp_path, build):
    cfg = build.tiny_config(tmp_path)
    (tmp_path / "data.json").write_text("[]")  # found beside the config
    same = _spec(cfg, "training.logging_steps=1", "training.peak_tflops=989", "training.dataloader_num_workers=1")
    assert _spec(cfg).diff(same) == []
    assert [d.setting for d in _spec(cfg).diff(_spec(cfg, "training.learning_rate=0.5"))] == ["training.learning_rate"]
    moved = _spec(cfg, f"data.train_file={(tmp_path / 'data.json').resolve()}")  # the same file, named otherwise
    assert _spec(cfg).diff(moved) == []


def test_a_changed_template_is_named_not_printed(tmp_path, build):
    cfg = build.tiny_config(tmp_path)
    simple, detailed = _spec(cfg), _spec(cfg, flags=["--prompt_style", "detailed"])
    shown = [str(d) for d in simple.diff(detailed)]
    assert "prompt template (differs)" in shown and all(len(s) < 200 for s in shown)


def test_an_older_runs_flags_missing_a_newer_one_read_as_its_default(tmp_path, build):
    cfg = build.tiny_config(tmp_path)
    config = load_config(cfg, [])
    args = {"config": str(cfg), "ablation_config": "context_only", "prompt_style": "simple", "sample_seed": 5,
            "max_samples_per_user": 2, "val_ratio": 0.1, "val_seed": None, "sample_group_by": "user_hash"}
    (tmp_path / "training_config.json").write_text(json.dumps({"args": args, "config": config.resolved()}))
    spec = RunSpec.read(tmp_path, legacy=True)
    assert spec.flags["val_leak_check"] == "conversation" and spec.split_settings().sample_seed == 5


@pytest.mark.parametrize("change, words", [
    (lambda r: r["flags"].pop("prompt_style"), "key flags.prompt_style missing"),
    (lambda r: r.update(format=3), "format 3 is not one this version reads"),
])
def test_a_damaged_record_is_one_error(tmp_path, build, change, words):
    spec = _spec(build.tiny_config(tmp_path))
    record = spec.record()
    change(record)
    (tmp_path / "run_record.json").write_text(json.dumps(record))
    with pytest.raises(UserError, match=words):
        RunSpec.read(tmp_path)


def test_a_record_reads_back_as_the_spec_it_saved(tmp_path, build):
    spec = _spec(build.tiny_config(tmp_path), "training.max_context_turns=3", flags=["--prompt_style", "detailed"])
    spec.save(tmp_path)
    again = RunSpec.read(tmp_path)
    assert again.diff(spec) == [] and again.template == spec.template and again.config.training.max_context_turns == 3


def test_an_unfinished_old_run_is_one_error(tmp_path):
    (tmp_path / "run_record.json").write_text(json.dumps({"format": 1, "training_file": "/x.json",
                                                           "prompt_template": None}))
    with pytest.raises(UserError, match="training_config.json: cannot be read"):
        RunSpec.read(tmp_path)
