"""Real trainings on CPU with the tiny Qwen3-MoE model: 2-process ZeRO-3 (with per-epoch
resampling, a SIGTERM and an exact resume) and a single-process run that early-stops.

These are the slow tests (a few minutes in all); they run the script exactly as users do.
"""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import SINGLE_RUN_EVALS_PER_EPOCH, free_port

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "train_distributed_Chameleons.py"
TORCHRUN = Path(sys.executable).parent / "torchrun"
COMMON = ["--max_samples_per_user", "2", "--max_epochs", "2", "--resample_each_epoch", "--sample_seed", "7"]


def tiny_config(tmp: Path) -> Path:
    config = json.loads((ROOT / "config_tiny_cpu.json").read_text())
    config["data"] = {"train_file": str(ROOT / "data" / "sample_chameleons.json"), "cache_dir": str(tmp / "cache")}
    config["training"]["logging_steps"] = 1  # the resume test compares losses step by step
    path = tmp / "config.json"
    path.write_text(json.dumps(config))
    return path


def torchrun_cmd(config, output_dir, *extra):
    return [str(TORCHRUN), "--nproc_per_node=2", f"--master_port={free_port()}", str(SCRIPT), "--config", str(config),
            "--deepspeed", str(ROOT / "ds_config_zero3_optimized.json"), "--output_dir", str(output_dir),
            *COMMON, *extra]


def run(cmd, timeout=1200):
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return proc


def metrics(output_dir):
    path = Path(output_dir, "training_logs", "metrics.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def train_losses(output_dir):
    return {m["step"]: m["loss"] for m in metrics(output_dir) if m["event"] == "train"}


def data_order(output_dir):
    return [Path(output_dir, "training_logs", f"data_order_rank{r}.jsonl").read_text().splitlines() for r in (0, 1)]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    return tmp, tiny_config(tmp)


@pytest.fixture(scope="module")
def run_a(workdir):
    """The uninterrupted 2-process ZeRO-3 run."""
    tmp, config = workdir
    out = tmp / "run_a"
    proc = run(torchrun_cmd(config, out))
    (tmp / "run_a.console").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_console_repeats_no_line(run_a, workdir):
    """Known noisy third-party warnings are filtered and rank 1 prints errors only: no console
    line of the 2-process run repeats more than 3 times, progress-bar refreshes aside (a bar
    redraws with carriage returns, the Trainer's log dicts follow it on the same line)."""
    tmp, _ = workdir
    lines = [line.strip() for line in re.split(r"[\r\n]", (tmp / "run_a.console").read_text())]
    counts = Counter(line for line in lines if line and not re.search(r"\d+%\|", line))
    assert [(line, n) for line, n in counts.most_common(5) if n > 3] == []


def validation_loss_in_fresh_process(model_dir, config, output_dir):
    """Loads the saved model without DeepSpeed, in a new interpreter, and computes the mean
    token loss over the run's validation samples the way training does."""
    code = f"""
import json, sys, torch
sys.path.insert(0, {str(ROOT)!r})
from transformers import AutoModelForCausalLM
from chameleons.config import load_config
from chameleons.data import load_corpus
from chameleons.encoding import ChatFormat, encode_samples, load_tokenizer
from chameleons.prompts import PromptBuilder, HistoryIndex
from chameleons.batching import make_collator
from chameleons.loss import causal_lm_loss
cfg = load_config({str(config)!r})
manifest = json.load(open({str(output_dir)!r} + "/split_manifest.json"))
val_ids = set(manifest["validation"])
corpus = load_corpus(cfg.data.train_file)
samples = [s for s in corpus.samples if s.sample_id in val_ids]
tok = load_tokenizer({str(model_dir)!r})
builder = PromptBuilder(cfg.ablation("context_only"), "simple", None, cfg.training.max_context_turns)
enc = encode_samples(samples, builder, tok, ChatFormat(tok), cfg.training.max_length)
rows = [dict(input_ids=i, prompt_len=p) for i, p in zip(enc["input_ids"], enc["prompt_len"])]
model = AutoModelForCausalLM.from_pretrained({str(model_dir)!r}, dtype=torch.float32).eval()
collate = make_collator("padded", tok.pad_token_id)
total, count = 0.0, 0
with torch.no_grad():
    for i in range(0, len(rows), 8):
        loss, n = causal_lm_loss(model, collate(rows[i:i + 8]), num_items_in_batch=1)
        total += float(loss); count += int(n)
print(json.dumps({{"loss": total / count, "samples": len(rows)}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_zero3_run_trains_logs_and_saves(run_a, workdir):
    tmp, config = workdir
    losses = train_losses(run_a)
    steps = sorted(losses)
    assert len(steps) >= 5
    assert losses[steps[-1]] < losses[steps[0]] - 1.0, losses
    evals = [m for m in metrics(run_a) if m["event"] == "eval"]
    assert len(evals) == 4  # twice per epoch, two epochs
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]

    log = (run_a / "training_logs" / "detailed_training_log.txt").read_text()
    for needle in ("command: ", "versions: ", "world size 2", "== plan", "supervised span between <<< and >>>",
                   "<<<[ANSWER]", "[/ANSWER]<|im_end|>>>>", "step 1/12 | epoch", "tokens/s", "eta ",
                   "eval step 3 | epoch", "patience left", "checkpoint saved: checkpoint-3",
                   "epoch 1: ", "not seen in earlier epochs", "best model restored", "== summary",
                   "model: Qwen3MoeForCausalLM", "attention sdpa_varlen", "experts grouped_mm", "padding 0.0%"):
        assert needle in log, needle
    assert (run_a / "training_logs" / "loss_curve.png").stat().st_size > 1000

    summary = json.loads((run_a / "training_config.json").read_text())
    best = min(e["eval_loss"] for e in evals)
    assert summary["summary"]["best_eval_loss"] == pytest.approx(best, abs=1e-6)
    assert summary["summary"]["final_eval_loss"] == pytest.approx(best, abs=1e-4)
    assert summary["args"]["max_samples_per_user"] == 2 and summary["world_size"] == 2

    manifest = json.loads((run_a / "split_manifest.json").read_text())
    epoch0, epoch1 = manifest["epochs"]
    assert len(epoch0["train"]) == len(epoch1["train"])
    assert 0 < epoch1["new_samples"] <= len(epoch1["train"])
    val = set(manifest["validation"])
    assert not val & set(epoch0["train"]) and not val & set(epoch1["train"])

    fresh = validation_loss_in_fresh_process(run_a, config, run_a)
    assert fresh["samples"] == len(val)
    assert fresh["loss"] == pytest.approx(summary["summary"]["final_eval_loss"], abs=2e-4)


def test_expert_parallel_matches_plain_zero3(run_a, workdir):
    """run_a trains with expert parallelism (on by default for MoE under ZeRO-3); the same run with
    it off gives the same per-step and eval losses and the same final weights, and the final folder
    holds every expert in transformers' layout. (The exact resume with it on: the SIGTERM test.)"""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    tmp, config = workdir
    off = tmp / "run_ep_off"
    proc = run(torchrun_cmd(config, off, "--set", "training.expert_parallel_size=1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    log_on = (run_a / "training_logs" / "detailed_training_log.txt").read_text()
    log_off = (off / "training_logs" / "detailed_training_log.txt").read_text()
    assert "expert parallelism: on, size 2 (DeepSpeed AutoEP, preset qwen3_moe; the GPUs of a node)" in log_on
    assert "expert parallelism: off (training.expert_parallel_size is 1)" in log_off
    assert json.loads((run_a / "training_config.json").read_text())["plan"]["expert_parallel"]["size"] == 2
    assert json.loads((off / "training_config.json").read_text())["plan"]["expert_parallel"]["enabled"] is False

    for event, key in (("train", "loss"), ("eval", "eval_loss")):
        on_l = {m["step"]: m[key] for m in metrics(run_a) if m["event"] == event}
        off_l = {m["step"]: m[key] for m in metrics(off) if m["event"] == event}
        assert sorted(on_l) == sorted(off_l) and len(on_l) >= 4
        for step in on_l:
            assert off_l[step] == pytest.approx(on_l[step], rel=1e-5), (event, step)

    on_w, off_w = load_file(str(run_a / "model.safetensors")), load_file(str(off / "model.safetensors"))
    assert sorted(on_w) == sorted(off_w)
    assert sum(".experts." in k for k in on_w) == 2 * 8 * 3  # config_tiny_cpu.json: 2 layers x 8 experts
    for key, value in off_w.items():
        torch.testing.assert_close(on_w[key], value, rtol=1e-5, atol=1e-5, msg=key)  # 12 Adam steps: ~2e-6 seen
    model, info = AutoModelForCausalLM.from_pretrained(run_a, output_loading_info=True)
    assert not any(info.values()), info
    assert model.model.layers[1].mlp.experts.gate_up_proj.shape[0] == 8


def _worker_pids(output_dir):
    pids = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            env = dict(kv.split(b"=", 1) for kv in (proc / "environ").read_bytes().split(b"\0") if b"=" in kv)
        except OSError:
            continue
        if str(output_dir).encode() in cmdline and b"RANK" in env and b"LOCAL_RANK" in env:
            pids[int(env[b"RANK"])] = int(proc.name)
    return pids


def test_sigterm_then_resume_matches_uninterrupted_run(run_a, workdir):
    tmp, config = workdir
    out = tmp / "run_b"
    console = open(tmp / "run_b.console", "w")  # a file, not a pipe: a full pipe would block the ranks
    proc = subprocess.Popen(torchrun_cmd(config, out), cwd=ROOT, stdout=console, stderr=subprocess.STDOUT)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if any(step >= 8 for step in train_losses(out)):  # in the middle of epoch 2 (steps 7..12)
            break
        time.sleep(0.2)
    assert proc.poll() is None, "run B ended before it could be interrupted"
    pids = _worker_pids(out)
    assert set(pids) == {0, 1}
    os.kill(pids[1], signal.SIGTERM)  # one rank only: the others must follow
    proc.wait(timeout=300)
    console.close()
    output = (tmp / "run_b.console").read_text()
    assert proc.returncode != 0

    log = (out / "training_logs" / "detailed_training_log.txt").read_text()
    stopped = [line for line in log.splitlines() if "stopped at step" in line]
    assert stopped, output[-3000:]
    step = int(stopped[-1].split("stopped at step ")[1].split(",")[0])
    assert 8 <= step < 12
    assert "--resume_from_checkpoint auto" in stopped[-1]
    assert (out / f"checkpoint-{step}" / "chameleons_complete").is_file()
    assert not (out / "training_config.json").exists()  # an interrupted run is not a finished one

    resumed = run(torchrun_cmd(config, out, "--resume_from_checkpoint", "auto"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {out / f'checkpoint-{step}'}" in (out / "training_logs" / "detailed_training_log.txt").read_text()

    a, b = train_losses(run_a), train_losses(out)
    after = [s for s in sorted(a) if s > step]
    assert after, "no logged step after the resume point"
    for s in after:
        assert b[s] == pytest.approx(a[s], rel=1e-4, abs=1e-4), (s, a[s], b[s])
    final_a = json.loads((run_a / "training_config.json").read_text())["summary"]["final_eval_loss"]
    final_b = json.loads((out / "training_config.json").read_text())["summary"]["final_eval_loss"]
    assert final_b == pytest.approx(final_a, rel=1e-4)
    assert data_order(out) == data_order(run_a)


def test_single_process_early_stops_when_it_should(early_stopped_run):
    """No DeepSpeed, one process, length-grouped batches (the suite's shared run, tests/conftest.py):
    with a threshold no evaluation can beat, patience 3 stops the run at the fourth evaluation,
    and the best model is what gets saved. wandb, with no key, logs offline into the run folder
    with one notice."""
    tmp, config, out, proc = early_stopped_run
    assert proc.stderr.count("wandb: no API key found, logging offline") == 1
    assert list((out / "wandb").glob("offline-run-*"))
    evals = [m for m in metrics(out) if m["event"] == "eval"]
    assert len(evals) == 4
    assert any(m["event"] == "early_stop" for m in metrics(out))
    plan = json.loads((out / "training_config.json").read_text())
    assert plan["config"]["training"]["batching"] == "length_grouped"
    steps_per_epoch = plan["plan"]["schedule"]["steps_per_epoch"]
    assert plan["summary"]["global_step"] == 4 * (steps_per_epoch // SINGLE_RUN_EVALS_PER_EPOCH) < 4 * steps_per_epoch
    assert "early stopping: no improvement" in (out / "training_logs" / "detailed_training_log.txt").read_text()
    best = min(e["eval_loss"] for e in evals)
    assert plan["summary"]["final_eval_loss"] == pytest.approx(best, abs=1e-4)
    fresh = validation_loss_in_fresh_process(out, config, out)
    assert fresh["loss"] == pytest.approx(best, abs=2e-4)


def test_finished_run_is_not_overwritten(run_a, workdir, run_in_process):
    tmp, config = workdir
    before = (run_a / "training_config.json").read_text()
    proc = run_in_process(["--config", config, "--output_dir", run_a], cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "--overwrite_output_dir" in proc.stderr
    assert (run_a / "training_config.json").read_text() == before


def test_unfinished_run_needs_resume_or_overwrite(tmp_path, workdir, run_in_process):
    _, config = workdir
    out = tmp_path / "unfinished"
    (out / "checkpoint-3").mkdir(parents=True)
    proc = run_in_process(["--config", config, "--output_dir", out], cwd=ROOT)
    assert proc.returncode == 2 and "--resume_from_checkpoint auto" in proc.stderr
    assert (out / "checkpoint-3").is_dir()
