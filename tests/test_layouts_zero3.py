"""The production layout (one packed micro-batch of 16 per rank per step, accumulation 1) trains
exactly like the seed's 4 x 4 layout under 2-process ZeRO-3 on CPU: same samples per optimizer
step, same steps per epoch, same loss step by step, past an epoch boundary: 45 training samples
make two steps an epoch, the second partial (the trainer's stock sampler gave it 16 samples in
4 x 4 and 32 in 16 x 1), and step 3 starts the next epoch; evaluations at steps 2 and 3. The 16 x 1 run has a token budget
small enough that some micro-batches run in parts (a different number on each rank before the
ranks agree), so the split path is covered too. The 4 x 4 run's checkpoints are evaluation-time
saves (weights only), the 16 x 1 run's all resumable (`full_checkpoint_minutes` 0); both restore
the best model from the weight partitions.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port

from chameleons.checkpoints import WEIGHTS_MARKER, is_complete
from chameleons.saves import partition_file

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "train_distributed_Chameleons.py"
TORCHRUN = Path(sys.executable).parent / "torchrun"
STEPS = 3
BUDGET = 4096  # 16 samples of the tiny config's data are about 4,100 tokens: some micro-batches fit, some do not


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("layouts")
    cfg = json.loads((ROOT / "config_tiny_cpu.json").read_text())
    cfg["data"] = {"train_file": str(ROOT / "data" / "sample_chameleons.json"), "cache_dir": str(tmp / "cache")}
    cfg["training"]["logging_steps"] = 1
    path = tmp / "config.json"
    path.write_text(json.dumps(cfg))
    return path


def train(config, out, *sets):
    cmd = [str(TORCHRUN), "--nproc_per_node=2", f"--master_port={free_port()}", str(SCRIPT), "--config", str(config),
           "--deepspeed", str(ROOT / "ds_config_zero3_optimized.json"), "--output_dir", str(out),
           "--max_samples_per_user", "1", "--max_steps", str(STEPS), "--evals_per_epoch", "1", "--sample_seed", "7"]
    for s in sets:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = [json.loads(line) for line in (out / "training_logs" / "metrics.jsonl").read_text().splitlines()]
    log = (out / "training_logs" / "detailed_training_log.txt").read_text()
    finished = json.loads((out / "training_config.json").read_text())
    plan = finished["plan"]
    orders = [[json.loads(line) for line in (out / "training_logs" / f"data_order_rank{r}.jsonl").read_text().splitlines()]
              for r in (0, 1)]
    losses = {e["step"]: e["loss"] for e in events if e["event"] == "train"}
    losses["eval"] = [e["eval_loss"] for e in events if e["event"] == "eval"]
    losses["final"] = finished["summary"]["final_eval_loss"]
    return losses, log, plan, orders


def rows_per_step(orders, per_rank=16):
    """The dataset rows of each optimizer step, all ranks together (each rank trains `per_rank` a step)."""
    steps = []
    for rank in orders:
        flat = [row for batch in rank for row in batch]
        for k in range(0, len(flat) // per_rank):
            if k == len(steps):
                steps.append(set())
            steps[k].update(flat[k * per_rank:(k + 1) * per_rank])
    return steps


def test_one_packed_micro_batch_of_16_equals_4_by_4(config, tmp_path):
    seed_losses, _, seed_plan, seed_orders = train(config, tmp_path / "4x4", "training.batch_size=4",
                                                   "training.gradient_accumulation_steps=4")
    new_losses, log, new_plan, new_orders = train(config, tmp_path / "16x1", "training.batch_size=16",
                                                  "training.gradient_accumulation_steps=1",
                                                  f"training.max_tokens_per_micro_batch={BUDGET}",
                                                  "training.full_checkpoint_minutes=0")
    for key in ("samples_per_optimizer_step", "steps_per_epoch"):
        assert new_plan["schedule"][key] == seed_plan["schedule"][key], key
    assert seed_plan["micro_batches"]["micro_batches_per_step_max"] == 4
    seed_rows, new_rows = rows_per_step(seed_orders), rows_per_step(new_orders)
    assert len(seed_rows) == len(new_rows) == STEPS
    assert seed_rows == new_rows and all(len(rows) == 32 for rows in new_rows)
    assert new_plan["schedule"]["steps_per_epoch"] == 2 and new_rows[2] != new_rows[0]  # step 3: epoch 1's order
    # evaluations and checkpoints at steps 2 and 3 (the last); the best restored from ZeRO-3's states at the end
    seed_eval, new_eval = seed_losses.pop("eval"), new_losses.pop("eval")
    assert len(seed_eval) == len(new_eval) == 2 and new_eval == pytest.approx(seed_eval, abs=1e-4)
    for losses, evals in ((seed_losses, seed_eval), (new_losses, new_eval)):
        assert losses.pop("final") == pytest.approx(min(evals), abs=1e-4)
    assert sorted(seed_losses) == sorted(new_losses) == list(range(1, STEPS + 1))
    for step in seed_losses:
        assert new_losses[step] == pytest.approx(seed_losses[step], abs=1e-4), (step, seed_losses, new_losses)
    assert seed_losses[STEPS] != pytest.approx(seed_losses[1], abs=1e-2)  # the steps saw different samples
    # under ZeRO-3 a checkpoint holds each rank's weight partition (the best model is restored from
    # them), DeepSpeed's states only when resumable (4 x 4: evaluation-time saves; 16 x 1: every save
    # resumable); the gathered model is written once, at the end
    for run, resumable in (("4x4", False), ("16x1", True)):
        for step in (2, 3):
            folder = tmp_path / run / f"checkpoint-{step}"
            assert [p.name for p in sorted(folder.glob("weights-rank*"))] == [partition_file(folder, r, 2).name
                                                                            for r in (0, 1)]
            assert bool(list(folder.glob("global_step*"))) == resumable == is_complete(folder)
            assert (folder / WEIGHTS_MARKER).is_file() != resumable and not list(folder.glob("*.safetensors"))
    checkpoint = tmp_path / "16x1" / f"checkpoint-{new_eval.index(min(new_eval)) + 2}"
    assert (tmp_path / "16x1" / "model.safetensors").is_file()
    assert f"best model restored from {checkpoint}:" in log  # HF found the checkpoint without a model in it
    split = int(re.search(rf"token budget {BUDGET}: (\d+) micro-batches ran in parts", log)[1])
    assert 0 < split < STEPS, split  # both paths ran: steps in parts and steps in one piece
