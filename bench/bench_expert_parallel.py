#!/usr/bin/env python
"""ZeRO-3 communication per optimizer step and rank, plain (every expert all-gathered) against
expert parallelism (DeepSpeed AutoEP: each rank keeps its experts whole, tokens travel by
all-to-all), at Qwen3-30B-A3B's width with reduced depth, projected to 48 layers on 8 GPUs.

Both designs run the same optimizer steps (forward, backward with gradient checkpointing,
AdamW) of the same packed rows through bench_zero3_layouts.py's step, with the shipped
ds_config_zero3_optimized.json filled as training fills it; collectives are counted by wrapping
torch.distributed's (calls and bytes of all-gathers, reduce-scatters, all-reduces and
all-to-alls; a group of one rank moves nothing and is not counted). Two depths give the bytes of
one layer (the slope), so embeddings and the head drop out.

Projection: on CPU the layer has 16 experts (128 would not fit 2 processes); the plain design
gathers a layer's parameters as a whole, so its bytes per layer scale with the parameters of a
layer of 128 experts; the expert-parallel design gathers only a layer's non-expert parameters
(with the expert-parallel size = the GPUs of a node, an expert's ZeRO-3 group is one rank), and
its all-to-all bytes scale with the tokens, not the experts. Seconds and MFU at a stated bus
bandwidth and compute MFU (assumed, not measured here).

    torchrun --nproc_per_node 2 bench/bench_expert_parallel.py                  # CPU, about 5-10 minutes
    torchrun --nproc_per_node 2 bench/bench_expert_parallel.py --model toy      # seconds: the test's run
"""

import argparse
import gc
import json
import os
import random
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import bench_zero3_layouts as z3  # noqa: E402

FULL_EXPERTS, FULL_LAYERS = 128, 48
KINDS = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "broadcast")


def layer_params(cfg, experts: int) -> dict:
    """Parameters of one decoder layer: its experts and the rest (attention, norms, router)."""
    expert = 3 * cfg.hidden_size * cfg.moe_intermediate_size
    d = cfg.head_dim
    attention = cfg.hidden_size * d * (2 * cfg.num_attention_heads + 2 * cfg.num_key_value_heads) + 2 * d
    rest = attention + 2 * cfg.hidden_size + experts * cfg.hidden_size
    return {"experts": experts * expert, "rest": rest}


def measure(cfg, ep_size, args, rows, order, world, rank, device, collate):
    """Warm-up then timed optimizer steps of one design at one depth: seconds, losses and
    collectives per step (mean over the timed steps)."""
    micro, accum = args.micro, args.accum
    engine, _ = z3.build_engine(cfg, z3.ds_config(micro, accum, world, False, ep_size), "sdpa", device,
                                torch.float32)
    for step in range(args.warmup):
        z3.run_step(engine, rows, order, (micro, accum), world, rank, device, step, None, collate)
    comm = {k: {"calls": 0.0, "bytes": 0.0} for k in KINDS}
    secs, losses, tokens = [], [], 0
    for step in range(args.warmup, args.warmup + args.steps):
        z3.COMM.clear()
        sec, loss, _, real, _ = z3.run_step(engine, rows, order, (micro, accum), world, rank, device, step, None,
                                            collate)
        secs.append(sec)
        losses.append(loss)
        tokens += real / world
        for kind, (calls, nbytes) in z3.COMM.items():
            comm[kind]["calls"] += calls / args.steps
            comm[kind]["bytes"] += nbytes / args.steps
    ran = any(type(m).__name__ == "AutoEPMoELayer" for m in engine.module.modules())
    del engine
    gc.collect()
    return {"ep": ep_size, "expert_parallel_ran": ran, "depth": cfg.num_hidden_layers,
            "sec_per_step": sorted(secs)[len(secs) // 2], "losses": losses, "tokens_per_rank": tokens / args.steps,
            "comm": comm}


def project(per_layer: dict, cfg, tokens_measured: float, args) -> dict:
    """Bytes per optimizer step and GPU at 48 layers of 128 experts, bf16, and the seconds they take
    at `bus_gbps` next to the compute at `assumed_mfu`."""
    small, full = layer_params(cfg, cfg.num_experts), layer_params(cfg, FULL_EXPERTS)
    tokens = args.tokens_per_gpu
    out = {}
    for design, b in per_layer.items():
        plain = design == "plain"
        gathered = b["all-gather"] / 4 / (small["experts"] + small["rest"] if plain else small["rest"])
        reduced = b["reduce-scatter"] / 4 / (small["experts"] + small["rest"] if plain else small["rest"])
        params = full["experts"] + full["rest"] if plain else full["rest"]
        layer = {"all-gather": gathered * params * 2, "reduce-scatter": reduced * params * 2,
                 "all-to-all": b["all-to-all"] / 4 * 2 * tokens / tokens_measured}
        if not plain:  # an expert's gradients reduced across data-parallel groups of nodes: none on one node
            layer["all-reduce"] = 0.0
        step = {k: v * FULL_LAYERS for k, v in layer.items()}
        step["comm_s"] = sum(step.values()) * (args.gpus - 1) / args.gpus / (args.bus_gbps * 1e9)
        out[design] = step
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=["30b-width", "toy"], default="30b-width")
    p.add_argument("--micro", type=int, default=2, help="samples per micro-batch per rank")
    p.add_argument("--accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--max_length", type=int, default=256)
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--bus_gbps", type=float, default=360.0, help="collective bus bandwidth of the projection, GB/s")
    p.add_argument("--tokens_per_gpu", type=float, default=16 * 600,
                   help="real tokens per GPU per optimizer step of the projected run (16 samples of ~600)")
    p.add_argument("--json", help="rank 0 also writes the results here")
    args = p.parse_args(argv)

    z3.count_collectives()
    import deepspeed

    torch.set_num_threads(1)
    deepspeed.init_distributed(dist_backend="gloo")
    world, rank = dist.get_world_size(), dist.get_rank()
    say = print if rank == 0 else (lambda *a, **k: None)
    t0 = time.perf_counter()
    from bench_batching_cpu import realistic_rows

    from chameleons.core.quiet import quiet_console
    from chameleons.text.batching import make_collator

    quiet_console()
    rows, _ = realistic_rows(args.samples, args.max_length, "context_only", 15)
    vocab = z3.model_config(args.model, 1).vocab_size
    rows = [dict(r, input_ids=[i % vocab for i in r["input_ids"]]) for r in rows]
    order = list(range(len(rows)))
    random.Random(0).shuffle(order)
    collate = make_collator("packed")
    device = torch.device("cpu")
    say(f"CPU (gloo) x {world} | model {args.model} | {args.micro}x{args.accum} samples per rank per step, "
        f"max_length {args.max_length} | fp32 | load average {os.getloadavg()[0]:.1f}")
    results = []
    for depth in (1, 2):
        cfg = z3.model_config(args.model, depth)
        for ep_size in (1, world):
            r = measure(cfg, ep_size, args, rows, order, world, rank, device, collate)
            results.append(r)
            say(f"  {depth} layer(s), {'expert-parallel ' + str(ep_size) if ep_size > 1 else 'plain ZeRO-3':>17}: "
                f"{r['sec_per_step']:.2f} s/step; per step and rank "
                + ", ".join(f"{k} {v['calls']:.0f} calls {v['bytes'] / 2**20:,.1f} MiB" for k, v in r["comm"].items())
                + "; losses " + " ".join(f"{x:.5f}" for x in r["losses"]))
    by = {(r["depth"], r["ep"]): r for r in results}
    per_layer = {name: {k: by[(2, ep)]["comm"][k]["bytes"] - by[(1, ep)]["comm"][k]["bytes"] for k in KINDS}
                 for name, ep in (("plain", 1), ("expert_parallel", world))}
    worst = max(abs(a - b) / abs(a) for d in (1, 2) for a, b in zip(by[(d, 1)]["losses"], by[(d, world)]["losses"]))
    cfg = z3.model_config(args.model, 1)
    proj = project(per_layer, cfg, by[(2, 1)]["tokens_per_rank"], args)
    ratio = per_layer["plain"]["all-gather"] / max(1.0, per_layer["expert_parallel"]["all-gather"])
    full_ratio = proj["plain"]["all-gather"] / max(1.0, proj["expert_parallel"]["all-gather"])
    say(f"\nper layer and step, measured ({cfg.num_experts} experts): all-gather bytes fall {ratio:.1f}x with expert "
        f"parallelism; step losses differ by at most {worst:.1e} (relative)")
    say(f"projected to Qwen3-30B-A3B ({FULL_LAYERS} layers, {FULL_EXPERTS} experts, bf16) on {args.gpus} GPUs, "
        f"{args.tokens_per_gpu:,.0f} real tokens per GPU per step, {args.bus_gbps:.0f} GB/s bus (assumed):")
    for design, step in proj.items():
        say(f"  {design:>15}: " + ", ".join(f"{k} {v / 1e9:,.1f} GB" for k, v in step.items() if k != "comm_s")
            + f" per step and GPU -> {step['comm_s']:.2f} s of communication")
    say(f"  gathered bytes fall {full_ratio:.1f}x; total wall time {time.perf_counter() - t0:.0f} s")
    if args.json and rank == 0:
        Path(args.json).write_text(json.dumps({"args": vars(args), "world": world, "results": results,
                                               "per_layer_bytes": per_layer, "projection": proj,
                                               "gathered_ratio_measured": ratio, "gathered_ratio_projected": full_ratio,
                                               "max_relative_loss_difference": worst}, indent=1), encoding="utf-8")
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
