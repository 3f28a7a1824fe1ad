#!/usr/bin/env python3
"""The grid's fixed costs: the same runs launched one by one (the shell loop researchers use) and
as one `--sweep` launch, on the demo's tiny model (2 processes, ZeRO-3, CPU). Prints each launch's
wall-clock and CPU seconds (every process of it), the sweep's share of the loop's, and whether
every sweep run's losses equal its separately launched twin's.

A shared machine's speed drifts by a third within minutes, so `--repeats` rounds alternate the
order (loop first, then sweep first, ...) and the ratio is reported per round and as the median;
CPU seconds drift less than wall-clock.

    python bench/bench_sweep.py                       # 2 sample seeds x 2 ablations, demo flags
    python bench/bench_sweep.py --seeds 42 --ablations context_only --max_epochs 1
    python bench/bench_sweep.py --baseline /tmp/before  # also the loop on an earlier checkout's code
"""

import argparse
import json
import resource
import statistics
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


def launch(args: list, port: int, root: Path = ROOT) -> tuple:
    """(wall-clock s, CPU s of torchrun and its workers) of one launch."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run([str(TORCHRUN), "--nproc_per_node=2", f"--master_port={port}",
                           "train_distributed_Chameleons.py", *DEMO, *args], cwd=root, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"launch failed ({proc.returncode}): {' '.join(args)}\n{proc.stderr[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def losses(folder: Path) -> list:
    lines = (folder / "training_logs" / "metrics.jsonl").read_text().splitlines()
    return [(m["event"], m["step"], m.get("loss"), m.get("eval_loss")) for m in map(json.loads, lines)
            if m["event"] in ("train", "eval")]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="42,43")
    p.add_argument("--ablations", default="context_only,profile_only")
    p.add_argument("--max_epochs", default="2")
    p.add_argument("--repeats", type=int, default=1, help="rounds, each order alternating")
    p.add_argument("--baseline", type=Path, help="a checkout of earlier code: its shell loop is timed too")
    args = p.parse_args()
    seeds, ablations = args.seeds.split(","), args.ablations.split(",")
    grid = {f"sample_seed-{seed}_ablation_config-{ablation}": (seed, ablation) for seed in seeds for ablation in ablations}
    common = ["--max_epochs", args.max_epochs]

    def loop(out: Path, root: Path) -> tuple:
        times = [launch([*common, "--sample_seed", seed, "--ablation_config", ablation, "--output_dir", str(out / name)],
                        29731, root) for name, (seed, ablation) in grid.items()]
        return tuple(map(sum, zip(*times)))

    def sweep(out: Path, root: Path) -> tuple:
        return launch([*common, "--sweep", f"sample_seed={args.seeds}", "--sweep", f"ablation_config={args.ablations}",
                       "--output_dir", str(out)], 29732, root)

    print(f"runs {len(grid)} (sample seeds {args.seeds} x ablations {args.ablations}, --max_epochs {args.max_epochs})")
    kinds = {"loop": (loop, ROOT), "sweep": (sweep, ROOT)}
    if args.baseline:
        kinds["baseline loop"] = (loop, args.baseline)
    rounds, equal = [], True
    for k in range(args.repeats):
        order = list(kinds) if k % 2 == 0 else list(reversed(kinds))
        with tempfile.TemporaryDirectory(prefix="bench_sweep.") as tmp:
            measured = {kind: kinds[kind][0](Path(tmp) / kind.replace(" ", "_"), kinds[kind][1]) for kind in order}
            equal &= all(losses(Path(tmp) / "loop" / n) == losses(Path(tmp) / "sweep" / n) for n in grid)
        rounds.append(measured)
        print(f"round {k + 1} ({', then '.join(order)}): "
              + "; ".join(f"{kind} {wall:.1f} s wall, {cpu:.0f} CPU s" for kind, (wall, cpu) in measured.items())
              + f"; sweep / loop {measured['sweep'][0] / measured['loop'][0]:.2f} wall, "
              + f"{measured['sweep'][1] / measured['loop'][1]:.2f} CPU", flush=True)
    for against in [kind for kind in kinds if kind != "sweep"]:
        wall = statistics.median(r["sweep"][0] / r[against][0] for r in rounds)
        cpu = statistics.median(r["sweep"][1] / r[against][1] for r in rounds)
        runs = statistics.median(r[against][0] for r in rounds) / len(grid)
        print(f"sweep / {against}: {wall:.2f} wall-clock, {cpu:.2f} CPU seconds (median of {len(rounds)}; "
              f"{against} {runs:.1f} s a run, sweep {statistics.median(r['sweep'][0] for r in rounds) / len(grid):.1f})")
    print(f"every sweep run's losses equal its separately launched twin's: {equal}")
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
