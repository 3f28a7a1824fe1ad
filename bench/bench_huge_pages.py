#!/usr/bin/env python3
"""Large host tensors on transparent huge pages (`launch.use_huge_pages`) against 4 KiB pages: the
demo's run (2 processes, ZeRO-3 with expert parallelism, tiny Qwen3-MoE, CPU) launched with
THP_MEM_ALLOC_ENABLE=1 (what the entry script sets) and =0, alternating, `--repeats` pairs. Prints
each launch's wall-clock, the trainer's train_runtime, user and system CPU seconds and page faults
of all its processes, each pair's ratios and their median, and whether both settings gave the
same losses.

    python bench/bench_huge_pages.py --repeats 3
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).parent / "torchrun"
DEMO = ["--config", "config_tiny_cpu.json", "--deepspeed", "ds_config_zero3_optimized.json", "--ablation_config",
        "context_only", "--max_epochs", "2", "--early_stopping_patience", "3", "--early_stopping_threshold", "0.001",
        "--val_ratio", "0.1", "--prompt_style", "simple", "--max_samples_per_user", "4", "--sample_seed", "42"]


def launch(switch: str, out: Path) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run([str(TORCHRUN), "--nproc_per_node=2", "--master_port=29741", "train_distributed_Chameleons.py",
                           *DEMO, "--output_dir", str(out)], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "THP_MEM_ALLOC_ENABLE": switch})
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"launch failed ({proc.returncode}) with THP_MEM_ALLOC_ENABLE={switch}\n{proc.stderr[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    events = [json.loads(line) for line in (out / "training_logs" / "metrics.jsonl").read_text().splitlines()]
    summary = next(e for e in events if e["event"] == "summary")
    return {"wall": wall, "train_runtime": summary["train_runtime_s"],
            "user": after.ru_utime - before.ru_utime, "system": after.ru_stime - before.ru_stime,
            "faults": after.ru_minflt - before.ru_minflt,
            "losses": [(e["step"], e.get("loss"), e.get("eval_loss")) for e in events if e["event"] in ("train", "eval")]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3, help="pairs, each order alternating")
    args = p.parse_args()
    runs = {"1": [], "0": []}
    for k in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="bench_huge_pages.") as tmp:
            for switch in ("1", "0") if k % 2 == 0 else ("0", "1"):
                r = launch(switch, Path(tmp) / switch)
                runs[switch].append(r)
                print(f"pair {k + 1} THP_MEM_ALLOC_ENABLE={switch}: {r['wall']:.1f} s wall, train_runtime "
                      f"{r['train_runtime']:.1f} s, user {r['user']:.1f} s, system {r['system']:.1f} s, "
                      f"{r['faults'] / 1e6:.2f} M page faults", flush=True)
    for key in ("wall", "train_runtime", "user", "system", "faults"):  # a pair's two launches ran closest in time
        ratios = [on[key] / off[key] for on, off in zip(runs["1"], runs["0"])]
        print(f"{key}: huge / 4 KiB pages per pair {', '.join(f'{r:.2f}' for r in ratios)}; "
              f"median {statistics.median(ratios):.2f}")
    equal = all(r["losses"] == runs["1"][0]["losses"] for r in runs["1"] + runs["0"])
    print(f"every launch's losses equal: {equal}")
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
