#!/usr/bin/env python
"""ZeRO-3 optimizer steps in two layouts of the same samples: the seed's 4 micro-batches of 4
(accumulation 4) against one packed micro-batch of 16 (accumulation 1), per rank per step.

Every rank runs real optimizer steps (forward, backward, AdamW step) of a Qwen3-MoE under
DeepSpeed ZeRO-3 with ds_config_zero3_optimized.json (its `auto` sizes filled as training fills
them), gradient checkpointing and packed rows of realistic samples (the synthetic corpus through
the real prompt builder, tokenizer and chat template). Both layouts see the same 16 x world
samples in each step, so their losses must agree. Measured per layout and depth:

- real tokens/s (all ranks) and per rank; on GPUs MoE-aware MFU (chameleons/train/flops.py) and peak memory;
- ZeRO-3 communication per optimizer step: calls and bytes of all-gathers (parameters),
  reduce-scatters (gradients) and all-reduces, counted by wrapping torch.distributed's collectives
  before DeepSpeed starts. Bytes are the full (gathered, or pre-reduction) tensor size; a ring
  moves (world - 1) / world of it through each rank's link.

From two depths it fits t(L) = fixed + L x per_layer (bytes likewise) and projects the 48 layers
of Qwen3-30B-A3B. On CPU (gloo) the model is small and the figures show the structure (calls,
bytes per parameter byte, the layout ratio), not GPU speed.

    torchrun --nproc_per_node 2 bench/bench_zero3_layouts.py                   # CPU: gloo, small MoE, 2 and 4 layers
    torchrun --nproc_per_node 8 bench/bench_zero3_layouts.py                   # GPUs: Qwen3-30B-A3B layer shape, 2 and 4 layers
    torchrun --nproc_per_node 2 bench/bench_zero3_layouts.py --model toy --steps 2 --warmup 1   # seconds: end to end
"""

import argparse
import collections
import gc
import inspect
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

FULL_LAYERS = 48
KINDS = {"all_gather_into_tensor": ("all-gather", "output_tensor"), "_all_gather_base": ("all-gather", "output_tensor"),
         "all_gather": ("all-gather", "tensor_list"), "reduce_scatter_tensor": ("reduce-scatter", "input"),
         "_reduce_scatter_base": ("reduce-scatter", "input"), "reduce_scatter": ("reduce-scatter", "input_list"),
         "all_reduce": ("all-reduce", "tensor"), "broadcast": ("broadcast", "tensor"),
         "all_to_all_single": ("all-to-all", "input"), "all_to_all": ("all-to-all", "input_tensor_list")}
COMM = collections.defaultdict(lambda: [0, 0])  # kind -> [calls, bytes] while RECORDING
RECORDING = [False]


def _bytes(x) -> int:
    if torch.is_tensor(x):
        return x.numel() * x.element_size()
    return sum(_bytes(t) for t in x)


def count_collectives():
    """Wraps torch.distributed's collectives; DeepSpeed keeps references to them when it starts,
    so this runs first."""
    for name, (kind, arg) in KINDS.items():
        fn = getattr(dist, name, None)
        if fn is None:
            continue
        signature = inspect.signature(fn)

        def counted(*a, _fn=fn, _sig=signature, _kind=kind, _arg=arg, **kw):
            if RECORDING[0]:
                bound = _sig.bind(*a, **kw).arguments
                if dist.get_world_size(bound.get("group")) > 1:  # a group of one rank moves nothing
                    entry = COMM[_kind]
                    entry[0] += 1
                    entry[1] += _bytes(bound[_arg])
            return _fn(*a, **kw)

        setattr(dist, name, counted)


def model_config(preset: str, layers: int):
    from transformers import Qwen3MoeConfig

    dims = {
        "30b": dict(hidden_size=2048, num_attention_heads=32, num_key_value_heads=4, head_dim=128, num_experts=128,
                    num_experts_per_tok=8, moe_intermediate_size=768, intermediate_size=6144, vocab_size=151936),
        # Qwen3-30B-A3B's width (hidden size, heads, expert shape, 8 active) with 16 experts and a small
        # vocabulary: a layer fits 2 CPU processes (bench_expert_parallel.py scales the experts to 128)
        "30b-width": dict(hidden_size=2048, num_attention_heads=32, num_key_value_heads=4, head_dim=128,
                          num_experts=16, num_experts_per_tok=8, moe_intermediate_size=768, intermediate_size=6144,
                          vocab_size=1024),
        # bench_batching_cpu.py's model: lm_head about 10% of the FLOPs per token, as in Qwen3-30B-A3B
        "small": dict(hidden_size=256, num_attention_heads=4, num_key_value_heads=2, head_dim=64, num_experts=16,
                      num_experts_per_tok=2, moe_intermediate_size=256, intermediate_size=512, vocab_size=1024),
        "toy": dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=8,
                    num_experts_per_tok=2, moe_intermediate_size=32, intermediate_size=128, vocab_size=1024),
    }[preset]
    return Qwen3MoeConfig(num_hidden_layers=layers, norm_topk_prob=True, max_position_embeddings=40960,
                          tie_word_embeddings=False, use_cache=False, output_router_logits=False, **dims)


def n_params(cfg) -> int:
    from transformers import Qwen3MoeForCausalLM

    with torch.device("meta"):
        return sum(p.numel() for p in Qwen3MoeForCausalLM(cfg).parameters())


def ds_config(micro: int, accum: int, world: int, bf16: bool, ep_size: int = 1) -> dict:
    """The shipped ZeRO-3 config with its `auto` values filled as training fills them; expert
    parallelism of `ep_size` (1 = off)."""
    from chameleons.train import expert_parallel

    ds = json.loads((REPO / "ds_config_zero3_optimized.json").read_text())
    on = ep_size > 1
    expert_parallel.fill_auto(ds, {"enabled": on, "size": ep_size, "preset": "qwen3_moe" if on else None})
    if on:
        expert_parallel.bridge_output_capture_registry()
    ds["bf16"] = {"enabled": bf16}
    ds.update(train_micro_batch_size_per_gpu=micro, gradient_accumulation_steps=accum,
              train_batch_size=micro * accum * world, gradient_clipping=1.0)
    return ds


def build_engine(cfg, ds, attn, device, dtype):
    """As training builds it: partitioned at construction (zero.Init through transformers), MoE
    blocks as ZeRO-3 leaves, `auto` sizes from the model, the Trainer's AdamW."""
    import deepspeed
    from transformers import Qwen3MoeForCausalLM
    from transformers.integrations import HfDeepSpeedConfig

    from chameleons.train import zero3
    from chameleons.train.model_setup import register_moe_leaves

    hf_ds = HfDeepSpeedConfig(ds)  # noqa: F841  (kept alive: makes transformers build under zero.Init)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3MoeForCausalLM._from_config(cfg, dtype=dtype, attn_implementation=attn)
    register_moe_leaves(model)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    hidden = cfg.hidden_size
    zero = ds["zero_optimization"]
    zero3.fill_auto(ds, model)
    zero.update({k: v for k, v in (("reduce_bucket_size", hidden * hidden),  # transformers' rule for the rest
                                   ("stage3_prefetch_bucket_size", int(0.9 * hidden * hidden)),
                                   ("stage3_param_persistence_threshold", 10 * hidden)) if zero.get(k) == "auto"})
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.01)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds)
    return engine, dict(zero)


def step_batches(rows, order, step, micro, accum, world, rank, collate):
    """This rank's micro-batches of optimizer step `step`: consecutive `micro` rows of the shuffled
    order dealt to the ranks in turn, as accelerate shards HF Trainer's batches."""
    per_step = micro * accum * world
    idx = [order[(step * per_step + k) % len(order)] for k in range(per_step)]
    from chameleons.text.batching import BatchMeta

    mine = [idx[j * micro:(j + 1) * micro] for j in range(accum * world) if j % world == rank]
    batches = []
    for b in mine:
        batch = collate([rows[i] for i in b])
        batch["meta"] = BatchMeta(rows=b, lengths=[rows[i]["length"] for i in b],
                                  supervised=[rows[i]["length"] - max(rows[i]["prompt_len"], 1) for i in b])
        batches.append(batch)
    supervised = sum(rows[i]["length"] - max(rows[i]["prompt_len"], 1) for i in idx)
    return batches, supervised, sum(rows[i]["length"] for i in idx)


def run_step(engine, rows, order, layout, world, rank, device, step, budget, collate):
    """Optimizer step `step` in this layout, its collectives counted into COMM; returns seconds, the
    step's loss (all ranks), this rank's model FLOPs, the real tokens (all ranks) and the
    micro-batches this rank ran."""
    from chameleons.text.batching import split_to_budget
    from chameleons.text.loss import causal_lm_loss
    from chameleons.train.flops import train_flops

    micro, accum = layout
    batches, supervised, real = step_batches(rows, order, step, micro, accum, world, rank, collate)
    parts = [p for b in batches for p in split_to_budget(b, budget, device)]
    flops = 0.0
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    dist.barrier()
    RECORDING[0] = True
    t = time.perf_counter()
    step_loss = torch.zeros((), dtype=torch.float64, device=device)
    for i, part in enumerate(parts):
        meta = part.pop("meta")
        flops += train_flops(engine.module.config, meta.lengths, meta.supervised)
        batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in part.items()}
        loss, _ = causal_lm_loss(engine, batch, num_items_in_batch=supervised)
        step_loss += loss.detach().double()
        engine.set_gradient_accumulation_boundary(i == len(parts) - 1)  # as accelerate drives it
        engine.backward(loss * world, scale_wrt_gas=False)  # DeepSpeed averages gradients over ranks
    engine.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    sec = time.perf_counter() - t
    RECORDING[0] = False
    dist.all_reduce(step_loss)
    return sec, step_loss.item(), flops, real, len(parts)


def fit(depths, values):
    """(fixed, per_layer) of values(L) = fixed + L x per_layer through two depths."""
    if len(depths) == 1:
        return 0.0, values[0] / depths[0]
    (a, b), (va, vb) = depths, values
    per_layer = (vb - va) / (b - a)
    return vb - b * per_layer, per_layer


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=["30b", "small", "toy"], default=None,
                   help="30b: Qwen3-30B-A3B layer shape, bf16 (default on GPUs); small: hidden 256, 16 experts "
                        "(default on CPU); toy: hidden 64 (the test's end-to-end run)")
    p.add_argument("--layers", type=int, default=None, help="deepest depth (default 4; toy 2); also half of it")
    p.add_argument("--layouts", default="4x4,16x1", help="micro-batch x accumulation per rank, comma separated")
    p.add_argument("--budget", type=int, default=16384,
                   help="max_tokens_per_micro_batch of the 16x1 layout (the 30B config's \"auto\" gives about "
                        "8-10k tokens on 80 GiB GPUs)")
    p.add_argument("--samples", type=int, default=256, help="encoded rows the steps draw from")
    p.add_argument("--max_length", type=int, default=1024)
    p.add_argument("--ablation", default="context_only",
                   choices=["context_only", "profile_and_context", "profile_and_history_and_context"])
    p.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps per layout and depth")
    p.add_argument("--steps", type=int, default=7, help="timed optimizer steps per layout and depth (median kept)")
    p.add_argument("--bus_gbps", type=float, default=360.0,
                   help="collective bus bandwidth of the projection, GB/s (NCCL all-gather busbw on 8 H100 SXM over "
                        "NVLink 4 is about this; NVLink 4 is 450 GB/s per direction)")
    p.add_argument("--gpus", type=int, default=8, help="GPUs of the projected Qwen3-30B-A3B run")
    p.add_argument("--assumed_mfu", type=float, default=0.4,
                   help="MFU of the compute in the CPU-side projection (no GPU to measure it)")
    p.add_argument("--json", help="rank 0 also writes the results here")
    args = p.parse_args(argv)

    count_collectives()
    import deepspeed

    on_gpu = torch.cuda.is_available()
    preset = args.model or ("30b" if on_gpu else "small")
    layers = args.layers or (2 if preset == "toy" else 4)
    depths = sorted({max(1, layers // 2), layers})
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank) if on_gpu else torch.device("cpu")
    if on_gpu:
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(1)
    deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo")
    world, rank = dist.get_world_size(), dist.get_rank()
    bf16 = on_gpu and torch.cuda.is_bf16_supported()
    dtype = torch.bfloat16 if bf16 else torch.float32
    layouts = [tuple(int(x) for x in lay.split("x")) for lay in args.layouts.split(",")]
    say = print if rank == 0 else (lambda *a, **k: None)
    t_start = time.perf_counter()

    from bench_batching_cpu import realistic_rows

    from chameleons.core.quiet import quiet_console
    from chameleons.text.batching import make_collator
    from chameleons.train import zero3
    from chameleons.train.flops import peak_flops, train_flops
    from chameleons.train.model_setup import device_policy

    quiet_console()
    rows, _ = realistic_rows(args.samples, args.max_length, args.ablation, 15)
    vocab = model_config(preset, 1).vocab_size
    rows = [dict(r, input_ids=[i % vocab for i in r["input_ids"]]) for r in rows]  # fold ids into a small vocabulary
    order = list(range(len(rows)))
    random.Random(0).shuffle(order)
    attn = device_policy(False, "auto", "packed").attn_implementation
    collate = make_collator("packed")
    peak, peak_note = peak_flops(device)
    mean_len = sum(r["length"] for r in rows) / len(rows)
    say(f"device {torch.cuda.get_device_name(device) if on_gpu else 'CPU (gloo)'} x {world} | model {preset}, "
        f"depths {depths} | {dtype} | attention {attn} | gradient checkpointing on | rows {len(rows)} "
        f"({args.ablation}, max_length {args.max_length}, mean {mean_len:.0f} tokens) | budget {args.budget} | "
        f"load average {os.getloadavg()[0]:.1f}")

    results = {}
    for depth in depths:
        cfg = model_config(preset, depth)
        engines = {}
        for layout in layouts:  # all layouts built first, then stepped in turn: load drifts hit them alike
            micro, accum = layout
            engines[layout] = build_engine(cfg, ds_config(micro, accum, world, bf16), attn, device, dtype)
        for step in range(args.warmup):
            for layout, (engine, _) in engines.items():
                run_step(engine, rows, order, layout, world, rank, device, step, args.budget, collate)
        timed = {layout: [] for layout in layouts}
        comm = {layout: collections.Counter() for layout in layouts}
        if on_gpu:
            peaks = {}
        for step in range(args.warmup, args.warmup + args.steps):
            for layout, (engine, _) in engines.items():
                COMM.clear()
                if on_gpu:
                    torch.cuda.reset_peak_memory_stats(device)
                timed[layout].append(run_step(engine, rows, order, layout, world, rank, device, step, args.budget,
                                              collate))
                for kind, (calls, nbytes) in COMM.items():
                    comm[layout][(kind, "calls")] += calls / args.steps
                    comm[layout][(kind, "bytes")] += nbytes / args.steps
                if on_gpu:
                    peaks[layout] = max(peaks.get(layout, 0), torch.cuda.max_memory_allocated(device) / 2**30)
        for layout, (engine, zero) in engines.items():
            micro, accum = layout
            steps = timed[layout]
            sec = sorted(x[0] for x in steps)[len(steps) // 2]  # median step
            tokens = sum(x[3] for x in steps) / len(steps)
            flops = torch.tensor(sum(x[2] for x in steps) / len(steps), dtype=torch.float64, device=device)
            dist.all_reduce(flops)
            kinds = sorted({k for k, _ in comm[layout]})
            r = {"depth": depth, "layout": f"{micro}x{accum}",
                 "params": sum(zero3._numel(q) for q in engine.module.parameters()),
                 "sec_per_step": sec, "real_tok_s": tokens / sec, "real_tok_s_per_rank": tokens / sec / world,
                 "micro_batches_per_step": sum(x[4] for x in steps) / len(steps), "losses": [x[1] for x in steps],
                 "comm": {k: {"calls": comm[layout][(k, "calls")], "bytes": comm[layout][(k, "bytes")]} for k in kinds},
                 "mfu": flops.item() / sec / world / peak if peak else None,
                 "peak_mem_gib": peaks[layout] if on_gpu else None,
                 "zero3_sizes": {k: zero[k] for k in ("reduce_bucket_size", "stage3_prefetch_bucket_size",
                                                      "stage3_max_live_parameters", "stage3_max_reuse_distance")}}
            results[(depth, layout)] = r
            zeros = {"calls": 0, "bytes": 0}
            ag, rs = r["comm"].get("all-gather", zeros), r["comm"].get("reduce-scatter", zeros)
            pbytes = r["params"] * (2 if bf16 else 4)
            mfu = f"MFU {r['mfu']:.1%}" if r["mfu"] is not None else "MFU n/a"
            mem = f", peak {r['peak_mem_gib']:.1f} GiB" if on_gpu else ""
            say(f"  {depth} layers {micro:>2}x{accum}: {sec * 1000:8.1f} ms/step (median of {len(steps)}), "
                f"{r['real_tok_s']:8.0f} real tok/s ({r['real_tok_s_per_rank']:.0f}/rank), {mfu}{mem}; "
                f"{r['micro_batches_per_step']:.1f} micro-batches/step; per step all-gather {ag['calls']:.0f} calls "
                f"{ag['bytes'] / 2**20:,.1f} MiB ({ag['bytes'] / pbytes:.2f}x the parameters), reduce-scatter "
                f"{rs['calls']:.0f} calls {rs['bytes'] / 2**20:,.1f} MiB ({rs['bytes'] / pbytes:.2f}x), all-reduce "
                f"{r['comm'].get('all-reduce', zeros)['calls']:.0f} calls; losses "
                + " ".join(f"{x:.4f}" for x in r["losses"]))
        del engines
        gc.collect()
        if on_gpu:
            torch.cuda.empty_cache()

    deep = depths[-1]
    if len(layouts) == 2:
        a, b = (results[(deep, lay)] for lay in layouts)
        worst = max(abs(x - y) for x, y in zip(a["losses"], b["losses"]))
        ab = lambda r, k: r["comm"].get(k, {"bytes": 0})["bytes"]  # noqa: E731
        say(f"\n{b['layout']} / {a['layout']} at {deep} layers: {b['real_tok_s'] / a['real_tok_s']:.2f}x real tokens/s; "
            f"all-gather bytes per step {ab(b, 'all-gather') / max(1, ab(a, 'all-gather')):.2f}x, reduce-scatter "
            f"{ab(b, 'reduce-scatter') / max(1, ab(a, 'reduce-scatter')):.2f}x; step losses differ by at most {worst:.1e}")

    full = model_config("30b", FULL_LAYERS)
    full_params = n_params(full)
    per_sample_flops = train_flops(full, [r["length"] for r in rows],
                                   [r["length"] - max(r["prompt_len"], 1) for r in rows]) / len(rows)
    measured = on_gpu and preset == "30b"
    say(f"\nprojected to Qwen3-30B-A3B ({full_params / 1e9:.2f} B parameters, {FULL_LAYERS} layers) on "
        + (f"{world} GPUs: t(L) = fixed + L x per_layer through the measured depths (communication and optimizer "
           f"included), peak memory likewise" if measured else
           f"{args.gpus} GPUs, bf16: all-gather + reduce-scatter bytes per parameter byte as a layer measures them "
           f"(the slope between the two depths), at "
           f"{args.bus_gbps:.0f} GB/s bus bandwidth; compute at an assumed {args.assumed_mfu:.0%} MFU of "
           f"989 TFLOP/s (H100 SXM), not measured"))
    projection = {}
    for layout in layouts:
        micro, accum = layout
        rs = [results[(d, layout)] for d in depths]
        per_rank = micro * accum
        comm_bytes = [sum(r["comm"].get(k, {"bytes": 0})["bytes"] for k in ("all-gather", "reduce-scatter"))
                      for r in rs]
        if measured:
            fixed, per_layer = fit(depths, [r["sec_per_step"] for r in rs])
            step_s = fixed + FULL_LAYERS * per_layer
            fixed_b, per_layer_b = fit(depths, comm_bytes)
            mem_fixed, mem_per_layer = fit(depths, [r["peak_mem_gib"] for r in rs])
            entry = {"sec_per_step": step_s, "bytes_per_step": fixed_b + FULL_LAYERS * per_layer_b,
                     "real_tok_s_per_gpu": per_rank * mean_len / step_s,
                     "mfu": per_rank * per_sample_flops / step_s / peak if peak else None,
                     "peak_mem_gib": mem_fixed + FULL_LAYERS * mem_per_layer}
            mfu = f"{entry['mfu']:.1%}" if entry["mfu"] is not None else "n/a"
            say(f"  {micro:>2}x{accum}: {step_s:.2f} s/step, {entry['real_tok_s_per_gpu']:,.0f} real tok/s/GPU, MFU {mfu}, "
                f"peak {entry['peak_mem_gib']:.1f} GiB; all-gather + reduce-scatter {entry['bytes_per_step'] / 1e9:,.0f} GB "
                f"per step per GPU")
        else:  # the layers' bytes per parameter byte (slope over depth), for all of the big model's parameters
            per_layer_b, per_layer_p = fit(depths, comm_bytes)[1], fit(depths, [r["params"] for r in rs])[1]
            passes = per_layer_b / (per_layer_p * (2 if bf16 else 4))
            gathered = passes * full_params * 2
            comm_s = gathered * (args.gpus - 1) / args.gpus / (args.bus_gbps * 1e9)
            compute_s = per_rank * per_sample_flops / (args.assumed_mfu * 989e12)
            entry = {"passes": passes, "bytes_per_step": gathered, "comm_s": comm_s, "compute_s": compute_s,
                     "real_tok_s_per_gpu_bound": per_rank * mean_len / max(comm_s, compute_s)}
            say(f"  {micro:>2}x{accum}: all-gather + reduce-scatter {passes:.2f} x {full_params * 2 / 1e9:.1f} GB = "
                f"{gathered / 1e9:,.0f} GB per step per GPU -> {comm_s:.2f} s; compute {compute_s:.2f} s "
                f"({per_rank} samples of {mean_len:.0f} tokens per GPU); at best "
                f"{entry['real_tok_s_per_gpu_bound']:,.0f} real tok/s/GPU, with communication and compute fully "
                f"overlapped")
        projection[f"{micro}x{accum}"] = entry
    say(f"total wall time {time.perf_counter() - t_start:.1f} s")
    if args.json and rank == 0:
        Path(args.json).write_text(json.dumps({"args": vars(args), "world": world, "results": list(results.values()),
                                               "projection": projection}, indent=1), encoding="utf-8")
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
