"""Real trainings on CPU with the tiny Qwen3-MoE model: two 2-process ZeRO-3 runs of the same
training with per-epoch resampling (run_a: 2 x 2 micro-batches, expert parallelism on; run_b:
4 x 1 under a token budget, expert parallelism off, a SIGTERM and an exact resume), compared
step by step, and the suite's single-process run that early-stops.

These are the slow tests; they run the script exactly as users do. One comparison of two runs
checks the layout, expert parallelism and the resume at once: each was a pair of runs of its own.
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

from chameleons.run.checkpoints import WEIGHTS_MARKER, is_complete
from chameleons.train.saves import partition_file

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "train_distributed_Chameleons.py"
TORCHRUN = Path(sys.executable).parent / "torchrun"
# run_a: 2 x 2 micro-batches per rank (8 samples a step, 6 steps an epoch); run_b: run_a's steps as
# one micro-batch of 4 per rank; 4 samples of the tiny config's data are about 1,000 tokens, so
# under this budget some micro-batches run in parts and most do not
PER_RANK = 4
BUDGET = 1152
RUN_B = ["--set", "training.expert_parallel_size=1", "--set", f"training.batch_size={PER_RANK}",
         "--set", "training.gradient_accumulation_steps=1", "--set", f"training.max_tokens_per_micro_batch={BUDGET}",
         "--set", "training.full_checkpoint_minutes=0"]
# Seen: equal to 2e-7 for 4 steps, then Adam amplifies the layouts' other summation order to at most
# 1.3e-4 by step 12 (the final weights then differ by up to 5e-3, so they are not compared; the
# saved model's own loss is, in test_zero3_run_trains_logs_and_saves)
LOSS_RTOL = 5e-4
COMMON = ["--max_samples_per_user", "1", "--max_epochs", "2", "--resample_each_epoch", "--sample_seed", "7"]


def tiny_config(tmp: Path) -> Path:
    """config_tiny_cpu.json's model saved as a pretrained folder (read with from_pretrained under
    ZeRO-3, as a real model is), the sample data, every step logged."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = json.loads((ROOT / "config_tiny_cpu.json").read_text())
    spec = dict(config["model"].pop("random_init"))
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.for_model(spec.pop("model_type"), **spec)).save_pretrained(tmp / "model")
    config["model"]["name_or_path"] = str(tmp / "model")
    config["data"] = {"train_file": str(ROOT / "data" / "sample_chameleons.json"), "cache_dir": str(tmp / "cache")}
    config["training"]["logging_steps"] = 1  # the resume test compares losses step by step
    config["training"]["batch_size"] = PER_RANK // config["training"]["gradient_accumulation_steps"]
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


def saved_weights(folder) -> dict:
    """Every tensor of a saved model, from the shards its index names (each rank writes one)."""
    from safetensors.torch import load_file

    index = json.loads(Path(folder, "model.safetensors.index.json").read_text())
    out = {}
    for name in sorted(set(index["weight_map"].values())):
        out.update(load_file(str(Path(folder, name))))
    assert sorted(out) == sorted(index["weight_map"])
    return out


def train_losses(output_dir):
    return {m["step"]: m["loss"] for m in metrics(output_dir) if m["event"] == "train"}


def data_order(output_dir):
    return [[json.loads(line) for line in Path(output_dir, "training_logs", f"data_order_rank{r}.jsonl").read_text().splitlines()]
            for r in (0, 1)]


def rows_per_step(orders, per_rank=PER_RANK):
    """The dataset rows of each optimizer step, all ranks together (each rank trains `per_rank` a
    step, in 2 x 2 or 4 x 1 micro-batches, some of them run in parts)."""
    steps = []
    for rank in orders:
        flat = [row for batch in rank for row in batch]
        for k in range(len(flat) // per_rank):
            if k == len(steps):
                steps.append(set())
            steps[k].update(flat[k * per_rank:(k + 1) * per_rank])
    return steps


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    return tmp, tiny_config(tmp)


@pytest.fixture(scope="module")
def run_a(workdir):
    """The uninterrupted 2-process ZeRO-3 run."""
    tmp, config = workdir
    out = tmp / "run_a"
    proc = run(torchrun_cmd(config, out, "--partition_cache", str(tmp / "partitions")))
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
from chameleons.core.config import load_config
from chameleons.corpus.data import load_corpus
from chameleons.text.encoding import ChatFormat, encode_samples, load_tokenizer
from chameleons.text.prompts import PromptBuilder, HistoryIndex
from chameleons.text.batching import make_collator
from chameleons.text.loss import causal_lm_loss
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
                   "epoch 1: ", "not seen in earlier epochs", best_model_line(run_a), "== summary",
                   "model: Qwen3MoeForCausalLM", "attention sdpa_varlen", "experts grouped_mm", "padding 0.0%"):
        assert needle in log, needle
    assert (run_a / "training_logs" / "loss_curve.png").stat().st_size > 1000

    summary = json.loads((run_a / "training_config.json").read_text())
    best = min(e["eval_loss"] for e in evals)
    assert summary["summary"]["best_eval_loss"] == pytest.approx(best, abs=1e-6)
    assert summary["summary"]["final_eval_loss"] == pytest.approx(best, abs=1e-4)
    assert summary["args"]["max_samples_per_user"] == 1 and summary["world_size"] == 2

    manifest = json.loads((run_a / "split_manifest.json").read_text())
    epoch0, epoch1 = manifest["epochs"]
    assert len(epoch0["train"]) == len(epoch1["train"])
    assert 0 < epoch1["new_samples"] <= len(epoch1["train"])
    val = set(manifest["validation"])
    assert not val & set(epoch0["train"]) and not val & set(epoch1["train"])

    fresh = validation_loss_in_fresh_process(run_a, config, run_a)
    assert fresh["samples"] == len(val)
    assert fresh["loss"] == pytest.approx(summary["summary"]["final_eval_loss"], abs=2e-4)


def best_model_line(run_dir) -> str:
    """The log's best-model line a finished run must have: a best checkpoint before the last step
    is read back (and evaluated again), the last step's is the weights training ended with."""
    summary = json.loads((run_dir / "training_config.json").read_text())["summary"]
    best = summary["best_model_checkpoint"]
    if best.endswith(f"checkpoint-{summary['global_step']}"):
        return f"kept as they are, not read back from {best}"
    return f"best model restored from {best}:"


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


def config_b(workdir) -> str:
    """run_a's config with RUN_B's settings in it, beside it (a sweep varies the --config flag)."""
    tmp, config = workdir
    values = json.loads(config.read_text())
    for pair in RUN_B[1::2]:
        key, value = pair.split("=")
        section, name = key.split(".")
        values[section][name] = json.loads(value)
    (tmp / "config_b.json").write_text(json.dumps(values))
    return "config_b.json"


@pytest.fixture(scope="module")
def run_b(run_a, workdir):
    """A sweep in one launch (`--sweep config=config.json,config_b.json`, run from the configs'
    folder): first run_a's twin, then run_a's training in another layout (one micro-batch of 4 per
    rank under a token budget that runs some of them in parts, instead of 2 x 2), with expert
    parallelism off and every checkpoint resumable, stopped by a SIGTERM to one rank in epoch 2 and
    resumed by the same command with `auto`. Equal losses, rows and weights then show four things
    at once: a sweep's run is its separate twin, and the layout, expert parallelism and the
    interruption change nothing. Returns (the second run's folder, the step it stopped at, the
    first run's folder, the resuming command's output)."""
    tmp, config = workdir
    sweep_cmd = torchrun_cmd(config.name, tmp / "sweep", "--sweep", f"config={config.name},{config_b(workdir)}",
                             "--partition_cache", str(tmp / "partitions"))
    twin, out = tmp / "sweep" / "config-config.json", tmp / "sweep" / "config-config_b.json"
    console = open(tmp / "run_b.console", "w")  # a file, not a pipe: a full pipe would block the ranks
    proc = subprocess.Popen(sweep_cmd, cwd=tmp, stdout=console, stderr=subprocess.STDOUT)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if any(step >= 8 for step in train_losses(out)):  # in the middle of epoch 2 (steps 7..12)
            break
        time.sleep(0.2)
    assert proc.poll() is None, "run B ended before it could be interrupted"
    pids = _worker_pids(tmp / "sweep")
    assert set(pids) == {0, 1}
    os.kill(pids[1], signal.SIGTERM)  # one rank only: the others must follow
    proc.wait(timeout=300)
    console.close()
    assert proc.returncode != 0
    log = (out / "training_logs" / "detailed_training_log.txt").read_text()
    stopped = [line for line in log.splitlines() if "stopped at step" in line]
    assert stopped, (tmp / "run_b.console").read_text()[-3000:]
    step = int(stopped[-1].split("stopped at step ")[1].split(",")[0])
    stop = {"step": step, "line": stopped[-1], "complete": is_complete(out / f"checkpoint-{step}"),
            "finished": (out / "training_config.json").exists(),
            "twin_finished_at": (twin / "training_config.json").stat().st_mtime_ns}
    resumed = subprocess.run([*sweep_cmd, "--resume_from_checkpoint", "auto"], cwd=tmp, capture_output=True,
                             text=True, timeout=1200)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return out, stop, twin, resumed.stdout


def test_sigterm_to_one_rank_stops_all_with_a_resumable_checkpoint(run_b):
    out, stop = run_b[:2]
    assert 8 <= stop["step"] < 12 and "--resume_from_checkpoint auto" in stop["line"]
    assert stop["complete"] and not stop["finished"]  # an interrupted run is not a finished one
    resumed_from = out / f"checkpoint-{stop['step']}"
    assert f"resuming from {resumed_from}" in (out / "training_logs" / "detailed_training_log.txt").read_text()


def test_a_sweeps_run_is_its_separate_twin_and_a_resumed_sweep_skips_it(run_a, run_b):
    """The sweep's first run trained in the same process as the second, after nothing but the
    checks: its losses, data order, saved weights and records equal run_a's (trained alone), its
    model loads with from_pretrained; the resuming command left it as it was."""
    from transformers import AutoModelForCausalLM

    _, stop, twin, resumed_stdout = run_b
    for event, key in (("train", "loss"), ("eval", "eval_loss")):
        assert [(m["step"], m[key]) for m in metrics(twin) if m["event"] == event] == \
            [(m["step"], m[key]) for m in metrics(run_a) if m["event"] == event]
    assert data_order(twin) == data_order(run_a)
    mine, theirs = saved_weights(twin), saved_weights(run_a)
    assert sorted(mine) == sorted(theirs) and all(mine[k].equal(theirs[k]) for k in mine)
    assert sorted(p.name for p in twin.iterdir()) == sorted(p.name for p in run_a.iterdir())
    records = [json.loads((d / "training_config.json").read_text()) for d in (twin, run_a)]
    differ = {k for k in records[0]["args"] if records[0]["args"][k] != records[1]["args"][k]}
    assert differ == {"config", "output_dir"} and records[0]["config"] == records[1]["config"]
    AutoModelForCausalLM.from_pretrained(twin)
    second = (run_b[0] / "training_logs" / "detailed_training_log.txt").read_text()
    assert "initial weights: from host memory" in second  # not read again: the twin's, kept (then resumed)
    # run_a read the model and wrote each rank's partition to --partition_cache; the twin, a new
    # launch, read those instead, and trained exactly as run_a (above)
    first = (twin / "training_logs" / "detailed_training_log.txt").read_text()
    assert "; partition cache written" in (run_a / "training_logs" / "detailed_training_log.txt").read_text()
    assert "initial weights: from the partition cache" in first
    assert f"already finished: {twin}" in resumed_stdout
    assert (twin / "training_config.json").stat().st_mtime_ns == stop["twin_finished_at"]


def test_resumed_run_in_another_layout_without_expert_parallelism_matches(run_a, run_b):
    """Per-step and eval losses, the final eval loss and the rows of every optimizer step equal
    run_a's: before the interruption (the layout and expert parallelism change nothing) and after
    it (the resume is exact)."""
    out, step = run_b[0], run_b[1]["step"]
    for event, key in (("train", "loss"), ("eval", "eval_loss")):
        a = {m["step"]: m[key] for m in metrics(run_a) if m["event"] == event}
        b = {m["step"]: m[key] for m in metrics(out) if m["event"] == event}
        assert sorted(a) == sorted(b) and len(a) >= 4 and any(s > step for s in a)
        for s in a:
            assert b[s] == pytest.approx(a[s], rel=LOSS_RTOL), (event, s, a[s], b[s])
    plan_a, plan_b = (json.loads((d / "training_config.json").read_text()) for d in (run_a, out))
    assert plan_b["summary"]["final_eval_loss"] == pytest.approx(plan_a["summary"]["final_eval_loss"], rel=LOSS_RTOL)
    for key in ("samples_per_optimizer_step", "steps_per_epoch"):
        assert plan_a["plan"]["schedule"][key] == plan_b["plan"]["schedule"][key], key
    assert plan_a["plan"]["micro_batches"]["micro_batches_per_step_max"] == 2
    assert plan_b["plan"]["micro_batches"]["micro_batches_per_step_median"] == 1  # some steps in parts
    assert plan_b["plan"]["micro_batches"]["over_budget"] > 0
    rows_a, rows_b = rows_per_step(data_order(run_a)), rows_per_step(data_order(out))
    assert len(rows_a) == 12 and rows_a == rows_b
    parts = int(re.search(rf"token budget {BUDGET}: (\d+) micro-batches ran in parts",
                          (out / "training_logs" / "detailed_training_log.txt").read_text())[1])
    assert 0 < parts < 12, parts  # both paths ran: steps in parts and steps in one piece


def test_expert_parallelism_is_on_by_default_and_saves_transformers_layout(run_a, run_b):
    """run_a trains with expert parallelism (on by default for MoE under ZeRO-3), run_b without
    (their losses match: above); the final folder holds every expert in transformers' layout."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    off = run_b[0]
    log_on = (run_a / "training_logs" / "detailed_training_log.txt").read_text()
    log_off = (off / "training_logs" / "detailed_training_log.txt").read_text()
    assert ("expert parallelism: on, size 2 (DeepSpeed AutoEP, preset qwen3_moe; the GPUs of a node, gate_up_impl "
            "fused, async_split_plan False, combine_impl weighted_sum)") in log_on  # CPU: no async plan, no Triton
    assert "expert parallelism: off (training.expert_parallel_size is 1)" in log_off
    assert json.loads((run_a / "training_config.json").read_text())["plan"]["expert_parallel"]["size"] == 2
    assert json.loads((off / "training_config.json").read_text())["plan"]["expert_parallel"]["enabled"] is False
    on_w, off_w = saved_weights(run_a), saved_weights(off)
    # each rank wrote its own shard (layer 0: rank 0; layer 1, embeddings and norm: rank 1), none the whole model
    assert sorted(p.name for p in run_a.glob("model*.safetensors")) == \
        ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert all(".layers.0." in k for k in load_file(str(run_a / "model-00001-of-00002.safetensors")))
    assert sorted(on_w) == sorted(off_w)
    assert sum(".experts." in k for k in on_w) == 2 * 8 * 3  # config_tiny_cpu.json: 2 layers x 8 experts
    assert all(on_w[k].shape == off_w[k].shape for k in on_w)
    model, info = AutoModelForCausalLM.from_pretrained(run_a, output_loading_info=True)
    assert not any(info.values()), info
    assert model.model.layers[1].mlp.experts.gate_up_proj.shape[0] == 8


def test_checkpoints_hold_weight_partitions_and_states_only_when_resumable(run_a, run_b):
    """Under ZeRO-3 a checkpoint holds each rank's weight partition (the best model is restored
    from them), DeepSpeed's states only when resumable: run_a's evaluation-time saves are weights
    only, run_b's (full_checkpoint_minutes 0) all resumable; the gathered model is written once,
    at the end, and both runs restore their best checkpoint."""
    for run_dir, resumable in ((run_a, False), (run_b[0], True)):
        kept = sorted(int(p.name.split("-")[1]) for p in run_dir.glob("checkpoint-*"))
        assert kept, run_dir
        for step in kept:
            folder = run_dir / f"checkpoint-{step}"
            assert [p.name for p in sorted(folder.glob("weights-rank*"))] == [partition_file(folder, r, 2).name
                                                                            for r in (0, 1)]
            assert bool(list(folder.glob("global_step*"))) == resumable == is_complete(folder), folder
            assert (folder / WEIGHTS_MARKER).is_file() != resumable and not list(folder.glob("*.safetensors"))
        log = (run_dir / "training_logs" / "detailed_training_log.txt").read_text()
        assert best_model_line(run_dir) in log


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
    log = (out / "training_logs" / "detailed_training_log.txt").read_text()
    assert "early stopping: no improvement" in log
    assert best_model_line(out) in log
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


def test_eval_loss_is_reported_apart_for_characters_the_run_never_trained_on(early_stopped_run):
    """Validation characters without a training sample (a whole-scene split leaves some) speak
    as someone the model never saw: every evaluation reports their loss and that of the others
    apart, token-weighted back to eval_loss, with the unseen ones' tokens counted from the
    manifest's validation and training ids independently."""
    tmp, config, out, proc = early_stopped_run
    manifest = json.loads((out / "split_manifest.json").read_text())
    character = {f"r{r}": rec["user_hash"] for r, rec in enumerate(
        json.loads(Path(json.loads(Path(config).read_text())["data"]["train_file"]).read_text()))}
    trained = {character[i.split(".")[0]] for i in manifest["epochs"][0]["train"]}
    unseen = [i for i in manifest["validation"] if character[i.split(".")[0]] not in trained]
    assert unseen and len(unseen) < len(manifest["validation"])  # both kinds are there to report
    for e in (m for m in metrics(out) if m["event"] == "eval"):
        n_unseen, n_all = e["eval_tokens_unseen_characters"], e["eval_tokens"]
        assert 0 < n_unseen < n_all
        mixed = (e["eval_loss_unseen_characters"] * n_unseen + e["eval_loss_trained_characters"] * (n_all - n_unseen))
        assert mixed / n_all == pytest.approx(e["eval_loss"], rel=1e-9)
    log = (out / "training_logs" / "detailed_training_log.txt").read_text()
    assert re.search(r"eval_loss \d+\.\d+ .*\| characters trained on \d+\.\d+, unseen \d+\.\d+", log)
