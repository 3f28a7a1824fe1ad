#!/usr/bin/env python3
"""What a run pays before its first step and after its last, at Qwen3-30B-A3B's layer width:
hidden 2048, 32 query / 4 key-value heads of 128, 16 experts of 768 (2 layers, the full
151,936-entry vocabulary, the head tied to the embedding: 0.50 B parameters; untied, 0.81 B, the
two fp32 processes did not fit this machine's 24 GiB), saved as a pretrained folder and read
with `from_pretrained`; 2 processes, ZeRO-3 with expert parallelism, CPU, `--max_steps 1`.

Launches, each into a fresh folder: this tree with `--partition_cache` once (it writes the
cache), then `--repeats` rounds of: the code of `--baseline` (a checkout of an earlier commit,
e.g. `git worktree add /tmp/before 32e737d`), this tree without the cache, this tree reading the
cache. Prints the median wall-clock, start-up (launch to the end of the first step) and end
(last step to the summary, of which the final export) of each, and the ratios to the first.

    python bench/bench_fixed_costs.py --baseline /tmp/before
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).parent / "torchrun"
WIDTH = {"model_type": "qwen3_moe", "vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 6144,
         "moe_intermediate_size": 768, "num_hidden_layers": 2, "num_attention_heads": 32, "num_key_value_heads": 4,
         "head_dim": 128, "num_experts": 16, "num_experts_per_tok": 8, "norm_topk_prob": True,
         "max_position_embeddings": 4096, "tie_word_embeddings": True}


def model_folder(tmp: Path) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(WIDTH)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(spec.pop("model_type"), **spec),
                                             dtype=torch.bfloat16)
    model.save_pretrained(tmp / "model")
    return tmp / "model"


def config_file(tmp: Path, model: Path) -> Path:
    config = json.loads((ROOT / "config_tiny_cpu.json").read_text())
    config["model"].pop("random_init")
    config["model"]["name_or_path"] = str(model)
    config["data"] = {"train_file": str(ROOT / "data" / "sample_chameleons.json"), "cache_dir": str(tmp / "cache")}
    config["training"].update(batch_size=1, gradient_accumulation_steps=1, max_length=256, evals_per_epoch=1)
    path = tmp / "config.json"
    path.write_text(json.dumps(config))
    return path


def launch(tree: Path, config: Path, out: Path, *extra) -> dict:
    started = time.perf_counter()
    proc = subprocess.run([str(TORCHRUN), "--nproc_per_node=2", "--master_port=29741", "train_distributed_Chameleons.py",
                           "--config", str(config), "--deepspeed", "ds_config_zero3_optimized.json",
                           "--output_dir", str(out), "--max_steps", "1", "--max_samples_per_user", "1",
                           "--val_ratio", "0.1", "--prompt_style", "simple", *extra],
                          cwd=tree, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"launch failed ({proc.returncode}) in {tree}:\n{proc.stderr[-3000:]}")
    summary = json.loads((out / "training_config.json").read_text())["summary"]
    seconds = summary["seconds"]
    model_line = next((line.split("initial weights: ", 1)[1] for line in
                       (out / "training_logs" / "detailed_training_log.txt").read_text().splitlines()
                       if "initial weights: " in line), "")
    return {"wall": wall, "startup": seconds["startup_to_first_step"], "end": seconds["last_step_to_summary"],
            "export": seconds.get("export"), "model": model_line}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", type=Path, help="a checkout of the code to compare with (today's)")
    p.add_argument("--repeats", type=int, default=2, help="rounds of the launches (medians are printed)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_fixed.") as tmp:
        tmp = Path(tmp)
        config = config_file(tmp, model_folder(tmp))
        cache = ("--partition_cache", str(tmp / "partitions"))
        runs = {"this tree, cache written": [launch(ROOT, config, tmp / "write", *cache)]}
        for k in range(args.repeats):  # interleaved, so that the machine's load falls on every variant alike
            if args.baseline:
                runs.setdefault(f"baseline {args.baseline}", []).append(launch(args.baseline, config, tmp / f"base{k}"))
            runs.setdefault("this tree", []).append(launch(ROOT, config, tmp / f"now{k}"))
            runs.setdefault("this tree, cache read", []).append(launch(ROOT, config, tmp / f"read{k}", *cache))
    first = median(next(iter(v for k, v in runs.items() if k != "this tree, cache written")))
    print(f"medians of {args.repeats} launches each (the cache written once)")
    print(f"{'launch':<34} {'wall s':>7} {'start-up s':>10} {'end s':>6} {'export s':>8}   ratios to the first")
    for name, rs in runs.items():
        r = median(rs)
        print(f"{name[:34]:<34} {r['wall']:7.1f} {r['startup']:10.1f} {r['end']:6.1f} {r['export'] or 0:8.1f}   "
              f"wall {r['wall'] / first['wall']:.2f}, start-up {r['startup'] / first['startup']:.2f}, "
              f"end {r['end'] / first['end']:.2f}")
        for line in sorted({x["model"] for x in rs if x["model"]}):
            print(f"{'':<34} initial weights: {line}")
    return 0


def median(rs: list) -> dict:
    return {k: statistics.median(r[k] or 0 for r in rs) for k in ("wall", "startup", "end", "export")}


if __name__ == "__main__":
    sys.exit(main())
