"""Expert parallelism (DeepSpeed AutoEP, on by default for MoE under ZeRO-3) trains exactly like
plain ZeRO-3: 2 processes on CPU, the tiny Qwen3-MoE, two epochs with evaluations, checkpoints,
early stopping and the best-model restore. Same per-step losses, same final weights, an exact
resume from a mid-epoch checkpoint, and a final folder transformers loads with every expert."""

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "train_distributed_Chameleons.py"
TORCHRUN = Path(sys.executable).parent / "torchrun"
EXPERTS, LAYERS = 8, 2  # config_tiny_cpu.json


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(config, out, *extra):
    cmd = [str(TORCHRUN), "--nproc_per_node=2", f"--master_port={free_port()}", str(SCRIPT), "--config", str(config),
           "--deepspeed", str(ROOT / "ds_config_zero3_optimized.json"), "--output_dir", str(out),
           "--max_samples_per_user", "1", "--max_epochs", "2", "--evals_per_epoch", "2", "--sample_seed", "7",
           "--early_stopping_patience", "2", *extra]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = [json.loads(line) for line in (out / "training_logs" / "metrics.jsonl").read_text().splitlines()]
    return {"losses": {e["step"]: e["loss"] for e in events if e["event"] == "train"},
            "evals": {e["step"]: e["eval_loss"] for e in events if e["event"] == "eval"},
            "log": (out / "training_logs" / "detailed_training_log.txt").read_text(),
            "finished": json.loads((out / "training_config.json").read_text()),
            "weights": load_file(str(out / "model.safetensors"))}


def assert_same(a: dict, b: dict, rel=1e-5):
    assert sorted(a) == sorted(b)
    for k in a:
        assert b[k] == pytest.approx(a[k], rel=rel), (k, a, b)


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ep")
    cfg = json.loads((ROOT / "config_tiny_cpu.json").read_text())
    cfg["data"] = {"train_file": str(ROOT / "data" / "sample_chameleons.json"), "cache_dir": str(tmp / "cache")}
    cfg["training"].update(logging_steps=1, save_total_limit=20)  # every checkpoint kept, to resume from
    path = tmp / "config.json"
    path.write_text(json.dumps(cfg))
    return path


def test_expert_parallel_trains_saves_and_resumes_like_plain_zero3(config, tmp_path):
    on = train(config, tmp_path / "on")
    off = train(config, tmp_path / "off", "--set", "training.expert_parallel_size=1")
    assert "expert parallelism: on, size 2 (DeepSpeed AutoEP, preset qwen3_moe; the GPUs of a node)" in on["log"]
    assert "expert parallelism: off (training.expert_parallel_size is 1)" in off["log"]
    assert on["finished"]["plan"]["expert_parallel"]["size"] == 2
    assert off["finished"]["plan"]["expert_parallel"]["enabled"] is False
    per_epoch = on["finished"]["plan"]["schedule"]["steps_per_epoch"]
    assert len(on["losses"]) == 2 * per_epoch >= 4 and len(on["evals"]) >= 4  # two epochs, evaluated twice each
    assert_same(on["losses"], off["losses"])
    assert_same(on["evals"], off["evals"])
    assert "best model restored from" in on["log"]

    # the final folder: transformers' per-expert layout, every expert, the same weights as plain ZeRO-3's
    assert sorted(on["weights"]) == sorted(off["weights"])
    assert sum(".experts." in k for k in on["weights"]) == LAYERS * EXPERTS * 3
    for key, value in off["weights"].items():
        torch.testing.assert_close(on["weights"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(tmp_path / "on", output_loading_info=True)
    assert not any(info.values()), info
    assert model.model.layers[1].mlp.experts.gate_up_proj.shape[0] == EXPERTS

    # resumed with expert parallelism from a checkpoint in the middle of the second epoch
    mid = per_epoch + per_epoch // 2
    state = json.loads((tmp_path / "on" / f"checkpoint-{mid}" / "trainer_state.json").read_text())
    for step in {mid, state["best_global_step"]}:
        shutil.copytree(tmp_path / "on" / f"checkpoint-{step}", tmp_path / "resumed" / f"checkpoint-{step}")
    resumed = train(config, tmp_path / "resumed", "--resume_from_checkpoint", "auto")
    assert f"resuming from {tmp_path / 'resumed' / f'checkpoint-{mid}'}" in resumed["log"]
    assert min(resumed["losses"]) == mid + 1
    assert_same({s: v for s, v in on["losses"].items() if s > mid}, resumed["losses"])
    for key, value in on["weights"].items():
        torch.testing.assert_close(resumed["weights"][key], value, rtol=1e-5, atol=1e-6, msg=key)
