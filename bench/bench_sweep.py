#!/usr/bin/env python3
"""The grid's fixed costs: the same runs launched one by one (the shell loop researchers use) and
as one `--sweep` launch, on the demo's tiny model (2 processes, ZeRO-3, CPU). Prints each launch's
wall-clock, the sweep's share of the loop's, and whether every sweep run's losses equal its
separately launched twin's.

    python bench/bench_sweep.py                       # 2 sample seeds x 2 ablations, demo flags
    python bench/bench_sweep.py --seeds 42 --ablations context_only --max_epochs 1
    python bench/bench_sweep.py --baseline /tmp/before  # also the loop on an earlier checkout's code
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).parent / "torchrun"
DEMO = ["--config", "config_tiny_cpu.json", "--deepspeed", "ds_config_zero3_optimized.json", "--val_ratio", "0.1",
        "--prompt_style", "simple", "--max_samples_per_user", "4", "--early_stopping_patience", "3",
        "--early_stopping_threshold", "0.001"]


def launch(args: list, port: int, root: Path = ROOT) -> float:
    started = time.perf_counter()
    proc = subprocess.run([str(TORCHRUN), "--nproc_per_node=2", f"--master_port={port}",
                           "train_distributed_Chameleons.py", *DEMO, *args], cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"launch failed ({proc.returncode}): {' '.join(args)}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - started


def losses(folder: Path) -> list:
    lines = (folder / "training_logs" / "metrics.jsonl").read_text().splitlines()
    return [(m["event"], m["step"], m.get("loss"), m.get("eval_loss")) for m in map(json.loads, lines)
            if m["event"] in ("train", "eval")]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="42,43")
    p.add_argument("--ablations", default="context_only,profile_only")
    p.add_argument("--max_epochs", default="2")
    p.add_argument("--baseline", type=Path, help="a checkout of earlier code: its shell loop is timed too")
    args = p.parse_args()
    seeds, ablations = args.seeds.split(","), args.ablations.split(",")
    grid = {f"sample_seed-{seed}_ablation_config-{ablation}": (seed, ablation) for seed in seeds for ablation in ablations}
    names = list(grid)
    common = ["--max_epochs", args.max_epochs]

    def loop(out: Path, root: Path) -> float:
        return sum(launch([*common, "--sample_seed", seed, "--ablation_config", ablation, "--output_dir", str(out / name)],
                          29731, root) for name, (seed, ablation) in grid.items())

    with tempfile.TemporaryDirectory(prefix="bench_sweep.") as tmp:
        out = Path(tmp)
        looped = loop(out / "loop", ROOT)
        sweep = launch([*common, "--sweep", f"sample_seed={args.seeds}", "--sweep", f"ablation_config={args.ablations}",
                        "--output_dir", str(out / "sweep")], 29732)
        baseline = loop(out / "baseline", args.baseline) if args.baseline else None
        equal = all(losses(out / "loop" / n) == losses(out / "sweep" / n) for n in names)
    runs = len(names)
    print(f"runs {runs} (sample seeds {args.seeds} x ablations {args.ablations}, --max_epochs {args.max_epochs})")
    print(f"one launch per run (shell loop): {looped:.1f} s ({looped / runs:.1f} s a run)")
    print(f"one --sweep launch:              {sweep:.1f} s ({sweep / runs:.1f} s a run)")
    if baseline:
        print(f"shell loop on {args.baseline}: {baseline:.1f} s ({baseline / runs:.1f} s a run); "
              f"sweep / that loop: {sweep / baseline:.2f}")
    print(f"sweep / loop: {sweep / looped:.2f}; every run's losses equal its separately launched twin's: {equal}")
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
