"""A sweep point end to end: the suite's short single-process CPU run (tests/conftest.py) with
config overrides and wandb offline. The override reaches the run's settings and every record of them
(training_config.json, the detailed log, wandb.config); wandb's config.yaml holds the project's
flags and the group; tools/compare_runs.py reads the real run folder."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from chameleons.run import tracking
from conftest import SINGLE_RUN_OVERRIDES

ROOT = Path(__file__).resolve().parents[1]


def test_group_and_tags_defaults():
    from chameleons.run.cli import parse_train_args

    base = ["--config", "c.json", "--output_dir", "o", "--ablation_config", "history_only", "--sample_seed", "43"]
    args = parse_train_args(base + ["--max_samples_per_user", "2"])
    assert tracking.wandb_group(args) == "history_only_N2"
    assert tracking.wandb_tags(args) == ["history_only", "N2", "seed43"]
    args = parse_train_args(base)
    assert tracking.wandb_group(args) == "history_only_Nall" and "Nall" in tracking.wandb_tags(args)
    args = parse_train_args(base + ["--wandb_group", "lr_sweep"])
    assert tracking.wandb_group(args) == "lr_sweep"


@pytest.fixture(scope="module")
def sweep_run(early_stopped_run):
    """The suite's single-process run (tests/conftest.py) is the sweep point: --set overrides,
    --sample_seed 5, --val_seed 42, wandb offline under project chameleons_ci."""
    return early_stopped_run[2]


OVERRIDES = SINGLE_RUN_OVERRIDES


def test_override_reaches_the_run_and_its_records(sweep_run):
    info = json.loads((sweep_run / "training_config.json").read_text())
    assert info["config"]["training"]["learning_rate"] == 0.002
    assert info["config"]["overrides"] == OVERRIDES and info["args"]["overrides"] == OVERRIDES
    metrics = [json.loads(line) for line in (sweep_run / "training_logs" / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in metrics if m["event"] == "train"]
    steps = json.loads((sweep_run / "training_config.json").read_text())["summary"]["global_step"]
    assert steps > 2 and [m["step"] for m in train] == list(range(1, steps + 1))  # logging_steps=1 took effect
    assert train[0]["learning_rate"] <= 0.002  # warmup from the overridden peak, not the file's 3e-3
    log = (sweep_run / "training_logs" / "detailed_training_log.txt").read_text()
    assert '"learning_rate": 0.002' in log and '"training.logging_steps=1"' in log


def wandb_run_record(path: Path):
    """(config, run record) of an offline run, as `wandb sync` would upload them. wandb 0.31
    writes no files/config.yaml offline (its sender, which writes it, does not run), so this reads
    the run's `.wandb` file: a 7-byte W&B header, then LevelDB-log chunks in 32 KiB blocks
    (crc32, little-endian length, type 1 full / 2 first / 3 middle / 4 last), each record a protobuf."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending, config, run = 7, 32768, b"", {}, None
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind not in (1, 4):
            continue
        record = wandb_internal_pb2.Record()
        record.ParseFromString(pending)
        pending = b""
        kind_name = record.WhichOneof("record_type")
        updates = record.run.config.update if kind_name == "run" else record.config.update if kind_name == "config" else []
        if kind_name == "run":
            run = record.run
        for item in updates:
            config[item.key] = json.loads(item.value_json)
    return config, run


def test_wandb_config_holds_flags_and_group(sweep_run):
    runs = list((sweep_run / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    config, run = wandb_run_record(next(runs[0].glob("*.wandb")))
    assert config["ablation"] == config["ablation_config"] == "context_only" and config["prompt_style"] == "simple"
    assert config["max_samples_per_user"] == 2 and config["sample_seed"] == 5 and config["val_seed"] == 42
    assert config["val_ratio"] == 0.1 and config["resample_each_epoch"] is False
    assert config["overrides"] == OVERRIDES
    assert config["wandb_group"] == "context_only_N2"
    assert config["training"]["learning_rate"] == 0.002 and config["model"]["router_aux_loss_coef"] == 0.001
    assert config["learning_rate"] == 0.002  # the Trainer's own arguments are added, not replacing ours
    assert config["expert_parallel"] == {"enabled": False, "size": 1, "preset": None, "reason": "ZeRO-3 only"}
    assert run.run_group == "context_only_N2" and list(run.tags) == ["context_only", "N2", "seed5"]
    assert run.display_name == "sweep_point" and run.project == "chameleons_ci"
    history = next(runs[0].glob("*.wandb")).read_bytes()  # the log's per-step figures reach wandb too
    for key in (b"train/tokens_per_s", b"train/padding_share", b"train/model_tflops_per_s", b"eval/perplexity"):
        assert key in history, key


def test_compare_runs_reads_the_real_run(sweep_run, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "compare_runs.py"), str(sweep_run),
                           "--output", str(tmp_path / "cmp")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    import csv

    rows = list(csv.DictReader(open(tmp_path / "cmp" / "runs.csv", newline="")))
    run = next(r for r in rows if r["kind"] == "run")
    metrics = [json.loads(line) for line in (sweep_run / "training_logs" / "metrics.jsonl").read_text().splitlines()]
    evals = [m["eval_loss"] for m in metrics if m["event"] == "eval"]
    assert evals and float(run["best_eval_loss"]) == pytest.approx(min(evals))
    steps = json.loads((sweep_run / "training_config.json").read_text())["summary"]["global_step"]
    assert (run["status"], run["steps"], run["N"], run["sample_seed"], run["val_seed"]) == ("finished", str(steps), "2", "5", "42")
    assert run["setting"] == " ".join(["context_only simple N2", *OVERRIDES])
    assert int(run["train_tokens"]) == sum(m["tokens"] for m in metrics if m["event"] == "train") > 0
    assert run["val_set"] == "A"


def test_tensorboard_gets_the_figures_the_log_shows(sweep_run):
    """--tensorboard: the run's own figures (tokens/s, padding, MFU, perplexity) reach TensorBoard
    through the Trainer's log, step for step the values metrics.jsonl holds."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = (sweep_run / "runs").rglob("events.out.tfevents.*")
    board = EventAccumulator(str(events.parent))
    board.Reload()
    tags = set(board.Tags()["scalars"])
    assert {"train/loss", "train/tokens_per_s", "train/mfu", "train/padding_share", "eval/perplexity"} <= tags, tags
    metrics = [json.loads(line) for line in (sweep_run / "training_logs" / "metrics.jsonl").read_text().splitlines()]
    logged = {m["step"]: m for m in metrics if m["event"] == "train"}
    for tag, key in (("train/tokens_per_s", "tokens_per_s"), ("train/mfu", "mfu")):
        seen = {e.step: e.value for e in board.Scalars(tag)}
        assert sorted(seen) == sorted(logged)
        assert all(seen[s] == pytest.approx(logged[s][key], rel=1e-5) for s in seen), tag
    assert all(0 < logged[s]["mfu"] for s in logged)
