#!/usr/bin/env python
"""Single-GPU check at Qwen3-30B-A3B's width with 2 layers: what one GPU can tell about the 8-GPU
projections in docs/PERFORMANCE.md. One command, one JSON:

- training step time (forward + backward with gradient checkpointing + AdamW) of one packed
  micro-batch of 16 realistic samples, MFU (chameleons/flops.py) and peak memory;
- the attention and experts implementations that ran (transformers may fall back);
- torch.compile: with `--compile` the decoder layers are compiled and the graphs and recompiles
  over the timed steps counted (packed batches change length every step);
- grouped GEMM throughput of one expert projection at the rows per expert of plain ZeRO-3 (each
  GPU's own tokens over 128 experts) and of expert parallelism over 8 GPUs (8x the rows);
- checkpoint save and restore time and bytes of the model and optimizer states (torch.save/load).

    python bench/bench_single_gpu_check.py --json out.json             # GPU, bf16; meant to take < 8 minutes
    python bench/bench_single_gpu_check.py --toy --json out.json       # CPU, tiny dims: the script end to end

UNVERIFIED ON A GPU: written without one (no GPU was lent to the session that wrote it); only
`--toy` on the CPU has run.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import bench_gpu as bg  # noqa: E402


def step_time(model, optimizer, batches, warmup, steps, device):
    """Median seconds of an optimizer step over `steps` micro-batches after `warmup`."""
    from chameleons.loss import causal_lm_loss

    times = []
    for i in range(warmup + steps):
        bg.sync(device)
        t = time.perf_counter()
        causal_lm_loss(model, batches[i % len(batches)])[0].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        bg.sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def grouped_gemm(cfg, rows_per_expert: int, dtype, device, repeats: int) -> dict:
    """TFLOP/s of one expert projection (hidden -> 2 x expert width) over all experts at this many
    rows each: torch's grouped_mm where it exists, else a batched matmul."""
    e, h, f = cfg.num_experts, cfg.hidden_size, 2 * cfg.moe_intermediate_size
    x = torch.randn(e * rows_per_expert, h, dtype=dtype, device=device)
    w = torch.randn(e, h, f, dtype=dtype, device=device)
    offs = torch.arange(1, e + 1, device=device, dtype=torch.int32) * rows_per_expert
    native = bg.grouped_mm_native(device) and hasattr(torch, "_grouped_mm") and device.type == "cuda"

    def run():
        if native:
            return torch._grouped_mm(x, w, offs=offs)
        return torch.bmm(x.view(e, rows_per_expert, h), w)

    run()
    bg.sync(device)
    t = time.perf_counter()
    for _ in range(repeats):
        run()
    bg.sync(device)
    sec = (time.perf_counter() - t) / repeats
    return {"rows_per_expert": rows_per_expert, "kernel": "torch._grouped_mm" if native else "torch.bmm",
            "sec": sec, "tflops": 2 * e * rows_per_expert * h * f / sec / 1e12}


def checkpoint_times(model, optimizer) -> dict:
    """Seconds to save and restore the model and AdamW states with torch.save/load, and the bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "state.pt")
        t = time.perf_counter()
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, path)
        save = time.perf_counter() - t
        size = path.stat().st_size
        t = time.perf_counter()
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        return {"save_s": save, "restore_s": time.perf_counter() - t, "bytes": size}


def compile_counts() -> dict:
    """dynamo's own counters: frames compiled, graphs made, recompilations (a new batch length,
    a graph break) as torch records them."""
    from torch._dynamo.utils import counters

    return {name: dict(counters[name]) for name in ("frames", "stats", "recompiles", "graph_break")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--toy", action="store_true")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--samples_per_step", type=int, default=16)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--compile", action="store_true", help="torch.compile the decoder layers")
    p.add_argument("--gpus", type=int, default=8, help="GPUs of the expert-parallel run the rows are projected to")
    p.add_argument("--json", required=True)
    args = p.parse_args(argv)
    from bench_batching_cpu import realistic_rows

    from chameleons.batching import make_collator
    from chameleons.flops import peak_flops, train_flops

    on_gpu = torch.cuda.is_available() and not args.toy
    device = torch.device("cuda" if on_gpu else "cpu")
    dtype = torch.bfloat16 if on_gpu else torch.float32
    cfg = bg.model_config(args.layers, args.toy)
    bg.attention.register()  # the packed SDPA kernel training uses on CPU
    attn = bg.ours_attention(device)
    experts = "grouped_mm" if bg.grouped_mm_native(device) else "eager"
    model = bg.build_model(cfg, attn, experts, dtype, device, checkpointing=True)
    if args.compile:
        for layer in model.model.layers:
            layer.forward = torch.compile(layer.forward)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=on_gpu)
    rows, _ = realistic_rows(4 * args.samples_per_step, 1024, "context_only", 15)
    rows = [dict(r, input_ids=[i % cfg.vocab_size for i in r["input_ids"]]) for r in rows]
    collate = make_collator("packed")
    n = args.samples_per_step
    batches = [bg.to_device(collate(rows[k * n:(k + 1) * n]), device) for k in range(4)]
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(device)
    sec = step_time(model, optimizer, batches, args.warmup, args.steps, device)
    tokens = statistics.mean(sum(r["length"] for r in rows[k * n:(k + 1) * n]) for k in range(4))
    flops = statistics.mean(train_flops(cfg, [r["length"] for r in rows[k * n:(k + 1) * n]],
                                        [r["length"] - r["prompt_len"] for r in rows[k * n:(k + 1) * n]])
                            for k in range(4))
    peak, peak_note = peak_flops(device)
    lm = model.config
    plain_rows = max(1, round(tokens * cfg.num_experts_per_tok / cfg.num_experts))
    report = {
        "device": torch.cuda.get_device_name(device) if on_gpu else "cpu (toy)", "layers": args.layers,
        "dtype": str(dtype), "attention": getattr(lm, "_attn_implementation", attn),
        "experts": getattr(lm, "_experts_implementation", experts), "tokens_per_step": tokens,
        "sec_per_step": sec, "real_tok_s": tokens / sec, "mfu": flops / sec / peak if peak else None,
        "peak_note": peak_note, "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if on_gpu else None,
        "torch_compile": compile_counts() if args.compile else None,
        "grouped_gemm": [grouped_gemm(cfg, r, dtype, device, 5 if args.toy else 20)
                         for r in (plain_rows, plain_rows * args.gpus)],
        "checkpoint": checkpoint_times(model, optimizer),
    }
    Path(args.json).write_text(json.dumps(report, indent=1), encoding="utf-8")
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
