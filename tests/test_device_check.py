"""bench/device_check.py --toy: the device script's whole path on CPU (the trainer through
train_distributed_Chameleons.py under ZeRO-3 in one process, then AutoEP's expert layer against
transformers'), every figure printed; the GPU run is the same code at the 30B width."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_toy_device_check_trains_through_the_entry_script_and_prints_every_figure(tmp_path):
    out = tmp_path / "figures.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "device_check.py"), "--toy", "--steps", "6",
                           "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    run, layers = report["run"], report["expert_layer"]
    assert run["steps"] == 6 and run["evaluations"] >= 1 and run["tokens_per_s"] > 0
    assert run["attention"] == "sdpa_varlen" and run["experts"] == "grouped_mm"
    assert {"weights_only_saves", "best_model_restore", "export", "last_step_to_summary"} <= set(run["seconds"])
    assert 0 < run["seconds"]["startup_to_first_step"] < run["wall_s"]
    assert run["peak_host_memory_gib"] > 0 and run["estimated_peak_gib"] > 0
    assert "deepspeed 0.19.8" in run["versions"] and "transformers" in run["versions"]
    # timings: present, not compared (on a busy machine depth 2 can look faster than depth 1)
    steps = layers["seconds_per_step"]
    assert set(steps) == {"transformers@1", "transformers@2", "autoep@1", "autoep@2"}
    assert all(v > 0 for v in steps.values()) and set(layers["seconds_per_layer"]) == {"transformers", "autoep"}
    for label in ("versions ", "run ", "throughput ", "MoE-aware MFU", "memory ", "kernels ", "saves ",
                  "best-model restore", "expert layer "):
        assert label in proc.stdout, label
