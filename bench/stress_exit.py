#!/usr/bin/env python
"""Stress test (not in CI): a complete 2-process ZeRO-3 run on CPU must exit 0 every time.

Runs the tiny-model job `--runs` times in fresh output folders and counts runs whose torchrun
exit code is not 0 or whose console shows an abort (`terminate called ...`) although the run's
outputs were all written.

    python bench/stress_exit.py --runs 20
"""

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).parent / "torchrun"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_run(tmp: Path, n: int, config: Path) -> dict:
    out = tmp / f"run{n}"
    cmd = [str(TORCHRUN), "--nproc_per_node=2", f"--master_port={_free_port()}",
           str(ROOT / "train_distributed_Chameleons.py"), "--config", str(config),
           "--deepspeed", str(ROOT / "ds_config_zero3_optimized.json"), "--output_dir", str(out),
           "--max_samples_per_user", "2", "--max_epochs", "1", "--sample_seed", str(n)]
    started = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    console = proc.stdout + proc.stderr
    return {"run": n, "rc": proc.returncode, "seconds": round(time.time() - started, 1),
            "finished": (out / "training_config.json").is_file(), "abort": "terminate called" in console}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=20)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config = json.loads((ROOT / "config_tiny_cpu.json").read_text())
        config["data"] = {"train_file": str(ROOT / "data" / "sample_chameleons.json"), "cache_dir": str(tmp / "cache")}
        (tmp / "config.json").write_text(json.dumps(config))
        results = []
        for n in range(args.runs):
            r = one_run(tmp, n, tmp / "config.json")
            results.append(r)
            print(json.dumps(r), flush=True)
    failed = [r for r in results if r["rc"] != 0 or r["abort"] or not r["finished"]]
    print(f"{len(results)} runs, {len(failed)} failed (rc != 0, an abort message, or no training_config.json)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
